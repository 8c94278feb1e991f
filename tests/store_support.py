"""Helpers for the storage tests and the recording benchmark: throwaway PostgreSQL databases and schemas, so
parallel or repeated runs never share tables, free loopback ports, and PostgreSQL and S3 servers of a test's own
for the fault tests to stop. Used by conftest.py, bench_recording.py and test_faults.py."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from support import free_port

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


# ---------------------------------------------------------------------------------------------------------------
# Servers of a test's own, which the fault tests stop and start again (the shared ones are never touched).


def postgres_bin_dir() -> Path:
    """Where pg_ctl and initdb are: on PATH, or in Debian's versioned folders (newest first)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "pg_ctl").is_file():
            return folder
    raise FileNotFoundError("PostgreSQL server binaries (pg_ctl, initdb) not found")


class PrivatePostgres:
    """A PostgreSQL server of its own: initdb into a fresh folder, pg_ctl on a free loopback port, trust auth for
    the `postgres` role. PostgreSQL refuses to run as root, so under root it runs as the `postgres` user."""

    def __init__(self):
        self.bin = postgres_bin_dir()
        # Under /tmp with a short name: the postgres user must reach it, and the socket path has a length limit.
        self.root = Path(tempfile.mkdtemp(prefix="cm-pg-"))
        self.data, self.port = self.root / "data", free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "-t", "120",
                 "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when the server is stopped for maintenance."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed: {(done.stderr or done.stdout).strip()[-500:]}")


class MotoProcess:
    """moto's S3 server as a process of its own on a free loopback port, so that a test can stop it, freeze it
    (SIGSTOP: connections are accepted and never answered) or kill it."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.thaw()
        self.process.kill()
        self.process.wait(30)
