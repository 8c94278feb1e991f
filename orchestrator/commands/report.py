"""`clickmask report --project P --out DIR`: the dashboard of a project as a static page (index.html, charts inline)
plus each chart as a PNG file beside it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write a project's effort dashboard as a static HTML page",
        description="Clicks per object, acceptance without brush edits, NoC per model version, click latency and "
                    "fine-tuning jobs of a Label Studio project, from the database that CLICKMASK_DATABASE_URL "
                    "names: DIR/index.html (opens offline, no JavaScript) and DIR/<chart>.png.")
    parser.add_argument("--project", type=int, required=True, help="the Label Studio project id")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (created if missing)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.commands.common import open_database
    from orchestrator.dashboard.figures import compute
    from orchestrator.dashboard.page import render_project

    _, factory = open_database()
    with factory() as session:
        figures = compute(session, args.project)
    page = render_project(figures)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "index.html").write_text(page.html, encoding="utf-8")
        for chart, png in page.images.items():
            (args.out / f"{chart}.png").write_bytes(png)
    except OSError as exc:
        print(f"error: cannot write {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'index.html'} with {len(page.images)} chart(s)")
    if not figures.found:
        print(f"project {args.project} has nothing recorded yet: the page says so")
    return 0
