"""`clickmask models list | promote VERSION | rollback`: the registry of model versions, per project.

Promotion and rollback only change the registry; a running server picks the change up within a couple of seconds
(its cache of each project's serving version), with no redeploy.
"""
from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, promote and roll back model versions",
                       description="Each Label Studio project has its own line of versions from the base model.")
    p.add_argument("--model", default=os.environ.get("CLICKMASK_MODEL", "base"),
                   help="the served base checkpoint (its registry name is 'base' or its file name)")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every version (the base first) and what each project serves")
    listing.add_argument("--project", type=int, help="only this Label Studio project's versions")
    promote = actions.add_parser("promote", help="serve VERSION in its project")
    promote.add_argument("version")
    promote.add_argument("--project", type=int, help="needed to go back to the base version")
    rollback = actions.add_parser("rollback", help="go back to the version the project served before")
    rollback.add_argument("--project", type=int, required=True)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator import registry
    from orchestrator.commands.common import open_database
    from orchestrator.registry import base_version_name

    _, factory = open_database(migrated=True)
    base = base_version_name(args.model)
    try:
        with factory.begin() as session:
            if args.action == "list":
                print(listing(session, args.project, base))
            elif args.action == "promote":
                now = registry.promote(session, args.version, args.project, base)
                print(f"promoted {args.version}: {_project_of(session, args.version, args.project)} serves {now.name}")
            else:
                retired, now = registry.rollback(session, args.project, base)
                print(f"project {args.project}: retired {retired}, serves {now.name}")
    except registry.RegistryError as exc:
        print(f"clickmask models: {exc}", file=sys.stderr)
        return 2
    return 0


def _project_of(session, name: str, ls_project: int | None) -> str:
    from sqlalchemy import select

    from orchestrator.db import ModelVersion, Project

    if ls_project is not None:
        return f"project {ls_project}"
    pid = session.scalar(select(Project.ls_project_id).join(ModelVersion, ModelVersion.project_id == Project.id)
                         .where(ModelVersion.name == name))
    return f"project {pid}"


def listing(session, ls_project: int | None, base: str) -> str:
    from sqlalchemy import select

    from orchestrator import registry
    from orchestrator.db import ModelVersion, Project

    projects = {p.id: p.ls_project_id for p in session.scalars(select(Project))}
    names = {v.id: v.name for v in session.scalars(select(ModelVersion))}
    serving = {registry.serving(session, ls, base).name for ls in projects.values()
               if ls_project is None or ls == ls_project}
    rows = [("version", "project", "parent", "status", "NoC@85", "NoC@90", "mIoU@5", "created")]
    for v in registry.versions(session, ls_project, base):
        m = (v.metrics or {}).get("validation", {})
        fmt = lambda k, d, m=m: f"{m[k]:.{d}f}" if k in m else "-"
        status = v.status + (" *serving" if v.name in serving and v.project_id is not None else "")
        if v.project_id is None:
            status = "bundled base" if base == "base" else "base"
        rows.append((v.name, str(projects.get(v.project_id, "-")), names.get(v.parent_id, "-"), status,
                     fmt("NoC@85", 2), fmt("NoC@90", 2), fmt("mIoU@5", 3), v.created_at.strftime("%Y-%m-%d %H:%M")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
