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
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _explained(exc)


def _explained(exc: Exception) -> int:
    """The exit code for a failure that needs no stack trace: a CLICKMASK_* variable that cannot be used, or a
    database that is down or unmigrated in a command that does not say so itself; anything else is raised again.
    Imported here, not above, so that `train` and `evaluate` run where only the model's packages are installed."""
    try:
        from sqlalchemy.exc import SQLAlchemyError

        from orchestrator.settings import Settings, SettingsError
    except ModuleNotFoundError:  # only the model's packages are installed: none of these failures can happen
        raise exc from None
    if isinstance(exc, SettingsError):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, SQLAlchemyError):
        from orchestrator.commands.common import database_problem

        print(f"error: {database_problem(exc, Settings.from_env().database_url_safe)}", file=sys.stderr)
        return 1
    raise exc


if __name__ == "__main__":
    sys.exit(main())
