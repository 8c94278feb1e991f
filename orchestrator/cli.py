"""The `clickmask` command. Each command group lives in its own module under `orchestrator.commands` and adds
itself to the parser with `register(subparsers)`; heavy imports stay inside the handlers so `--help` is fast."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ["train", "evaluate", "bench", "serve", "db", "export", "sync", "finetune", "models", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clickmask", description="Click-to-mask labeling backend.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"orchestrator.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"orchestrator.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestrator.settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SettingsError as exc:  # a CLICKMASK_* variable that cannot be used: say which, no stack trace
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a database that is down or unmigrated, in a command that does not say so itself
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(exc, SQLAlchemyError):
            raise
        from orchestrator.commands.export import database_problem
        from orchestrator.settings import Settings

        print(f"error: {database_problem(exc, Settings.from_env().database_url_safe)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
