"""`clickmask db upgrade [REV]`, `clickmask db downgrade REV`, `clickmask db current`: Alembic migrations on the
database that CLICKMASK_DATABASE_URL names."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("db", help="create or migrate the database (CLICKMASK_DATABASE_URL)")
    actions = parser.add_subparsers(dest="db_action", required=True)
    up = actions.add_parser("upgrade", help="migrate up to REV (default: head, the latest)")
    up.add_argument("revision", nargs="?", default="head")
    down = actions.add_parser("downgrade", help="migrate down to REV ('base' empties the database)")
    down.add_argument("revision")
    actions.add_parser("current", help="print the database's revision and the latest one")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from alembic import command
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from migrations import alembic_config
    from orchestrator.settings import Settings

    settings = Settings.from_env()
    config = alembic_config(settings.database_url)
    try:
        if args.db_action == "upgrade":
            command.upgrade(config, args.revision)
        elif args.db_action == "downgrade":
            command.downgrade(config, args.revision)
        current, head = revisions(settings.database_url, config)
        print(f"database: {settings.database_url_safe}")
        print(f"current: {current or 'none (no tables yet)'}")
        print(f"latest: {head}")
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        # The driver's first line says what went wrong (refused, bad password, ...) without a stack trace.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"error: cannot use the database {settings.database_url_safe}: {reason}", file=sys.stderr)
        return 1
    return 0


def revisions(url: str, config) -> tuple[str | None, str | None]:
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from orchestrator.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return current, ScriptDirectory.from_config(config).get_current_head()
