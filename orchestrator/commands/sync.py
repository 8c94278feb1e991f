"""`clickmask sync --project P`: pull every annotation of a Label Studio project into the database."""
from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sync", help="pull every annotation of a Label Studio project into the database",
        description="Reads the project's tasks and annotations through label-studio-sdk (LABEL_STUDIO_URL, "
                    "LABEL_STUDIO_API_KEY: an owner's or administrator's personal access token) and stores them "
                    "as the webhooks would: idempotent, newer edits replace older ones, annotations deleted in "
                    "Label Studio are marked deleted.")
    parser.add_argument("--project", type=int, required=True, help="the Label Studio project id")
    parser.add_argument("--keep-missing", action="store_true",
                        help="do not mark stored annotations that no longer exist in Label Studio as deleted")
    parser.add_argument("--page-size", type=int, default=100, help="tasks per API page (default 100)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.commands.common import open_database
    from orchestrator.settings import SettingsError
    from orchestrator.sync import SyncError, make_client, sync_project

    if args.page_size < 1:
        print("error: --page-size must be at least 1", file=sys.stderr)
        return 2
    try:
        _, factory = open_database()
        client = make_client(os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY"))
    except (SettingsError, SyncError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = sync_project(factory, client, args.project, keep_missing=args.keep_missing,
                              page_size=args.page_size, progress=not args.no_progress)
    except SyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    outcomes = report.outcomes
    print(f"project {args.project}: {report.tasks} task(s), {sum(outcomes.values())} annotation(s): "
          f"{outcomes['applied']} stored or updated, {outcomes['ignored']} unchanged, "
          f"{outcomes['rejected']} not stored")
    if args.keep_missing:
        print("annotations missing from Label Studio: left as they are (--keep-missing)")
    elif report.deletions_skipped:
        print("annotations missing from Label Studio: not checked (the project changed during sync)")
    else:
        print(f"annotations missing from Label Studio, marked deleted: {report.deleted}")
    return 1 if outcomes["rejected"] else 0
