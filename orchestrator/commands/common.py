"""What several commands share: the database they work on, made ready, and how a database failure reads. (A failure
that a command does not handle itself reaches orchestrator.cli, which prints `database_problem` for it.)"""
from __future__ import annotations


def migrate(database_url: str) -> None:
    from alembic import command

    from migrations import alembic_config

    command.upgrade(alembic_config(database_url), "head")


def open_database(migrated: bool = False):
    """(settings, session factory) for CLICKMASK_DATABASE_URL; with `migrated`, the tables are created or brought
    up to date first (commands that may be the first to touch a new database)."""
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.settings import Settings

    settings = Settings.from_env()
    if migrated:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(settings.database_url)
    return settings, make_session_factory(make_engine(settings.database_url))


def database_problem(exc: Exception, url_safe: str) -> str:
    """The driver's first line (refused, no such table, ...) without a stack trace, and what to do about tables."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    hint = "; run `clickmask db upgrade` first" if "no such table" in reason or "does not exist" in reason else ""
    return f"cannot use the database {url_safe}: {reason}{hint}"
