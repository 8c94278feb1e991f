"""Helpers for the storage tests and the recording benchmark: throwaway PostgreSQL databases and schemas, so
parallel or repeated runs never share tables, and free loopback ports. Used by conftest.py and bench_recording.py."""
from __future__ import annotations

import os
import secrets
import socket

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_server_url() -> URL:
    """CI sets CLICKMASK_TEST_POSTGRES_URL; locally the same server is assumed."""
    url = make_url(os.environ.get("CLICKMASK_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL)
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def _admin(url: URL):
    # CREATE/DROP DATABASE cannot run inside a transaction.
    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


def create_database(server: URL, prefix: str = "clickmask_test") -> URL:
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    engine = _admin(server)
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return server.set(database=name)


def drop_database(url: URL) -> None:
    engine = _admin(url.set(database="postgres"))
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    finally:
        engine.dispose()


def create_schema(database: URL) -> URL:
    """A fresh schema; the returned URL makes it the search path, so tables and alembic_version land in it."""
    name = f"t_{secrets.token_hex(6)}"
    engine = _admin(database)
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
    finally:
        engine.dispose()
    return database.update_query_dict({"options": f"-csearch_path={name}"})


def drop_schema(url: URL) -> None:
    name = url.query["options"].split("=", 1)[1]
    engine = _admin(url.difference_update_query(["options"]))
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
