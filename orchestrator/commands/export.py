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
    from orchestrator.coco_export import ExportError, export_coco
    from orchestrator.commands.common import open_database

    _, factory = open_database()
    try:
        report = export_coco(factory, args.project, args.out, polygons=args.polygons,
                             latest_only=args.latest_only, png_dir=args.png_dir, progress=not args.no_progress)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the output folder is missing rights, the disk is full, ...
        print(f"error: cannot write {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {report.images} image(s), {report.annotations} annotation(s)")
    if report.holes_filled:
        print(f"polygons: {report.holes_filled} hole(s) filled (COCO polygons cannot express holes; "
              f"the RLE export keeps them)")
    if report.skipped_images:
        print(f"skipped {report.skipped_images} image(s) whose size is unknown")
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(report.skipped.items()))
    print(f"skipped {report.skipped_total} mask(s)" + (f" ({reasons})" if reasons else ""))
    return 0

