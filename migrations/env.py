"""Alembic's entry point: runs migrations on the URL given by the caller or by the settings."""
from __future__ import annotations

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from orchestrator.db.engine import make_engine, normalize_url
from orchestrator.db.models import Base
from orchestrator.settings import Settings

config = context.config


def database_url() -> str:
    return config.attributes.get("database_url") or Settings.from_env().database_url


def configure(**kwargs) -> None:
    context.configure(
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead, so later migrations work on both.
        render_as_batch=kwargs.pop("dialect_name") == "sqlite",
        **kwargs,
    )


def run_offline() -> None:
    url = normalize_url(database_url())
    configure(url=url, literal_binds=True, dialect_name=url.get_backend_name())
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    configure(connection=connection, dialect_name=connection.dialect.name)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    engine = make_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
