"""`clickmask export --project P --format coco --out FILE`: a project's submitted masks as COCO (exact RLE)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a project's submitted masks from the database (COCO, exact RLE)",
        description="Writes every submitted, not deleted, not cancelled mask of a Label Studio project as COCO "
                    "JSON, from the database that CLICKMASK_DATABASE_URL names. Masks that cannot be exported are "
                    "skipped with a message and counted.")
    parser.add_argument("--project", type=int, required=True, help="the Label Studio project id")
    parser.add_argument("--format", choices=["coco"], default="coco")
    parser.add_argument("--out", type=Path, required=True, help="the COCO JSON file to write")
    parser.add_argument("--polygons", action="store_true",
                        help="outer polygons instead of RLE (holes are filled: COCO polygons cannot express them)")
    parser.add_argument("--latest-only", action="store_true", help="only the latest annotation of each task")
    parser.add_argument("--png-dir", type=Path, help="also write each mask as <annotation id>.png here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from orchestrator.coco_export import ExportError, export_coco
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.settings import Settings

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        report = export_coco(make_session_factory(engine), args.project, args.out, polygons=args.polygons,
                             latest_only=args.latest_only, png_dir=args.png_dir, progress=not args.no_progress)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"error: {database_problem(exc, settings.database_url_safe)}", file=sys.stderr)
        return 1
    except OSError as exc:  # the output folder is missing rights, the disk is full, ...
        print(f"error: cannot write {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"wrote {args.out}: {report.images} image(s), {report.annotations} annotation(s)")
    if report.holes_filled:
        print(f"polygons: {report.holes_filled} hole(s) filled (COCO polygons cannot express holes; "
              f"the RLE export keeps them)")
    if report.skipped_images:
        print(f"skipped {report.skipped_images} image(s) whose size is unknown")
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(report.skipped.items()))
    print(f"skipped {report.skipped_total} mask(s)" + (f" ({reasons})" if reasons else ""))
    return 0


def database_problem(exc: Exception, url_safe: str) -> str:
    """The driver's first line (refused, no such table, ...) without a stack trace, and what to do about tables."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    hint = "; run `clickmask db upgrade` first" if "no such table" in reason or "does not exist" in reason else ""
    return f"cannot use the database {url_safe}: {reason}{hint}"
