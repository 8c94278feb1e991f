"""The model registry: which version each project serves, and the history that promotion and rollback move along.

Each Label Studio project has its own line of versions starting at the base model (one `model_versions` row with
no project, named as the deployment names its checkpoint: "base" for the bundled model). A project serves its
most recently promoted version that is still `promoted`, or the base when it has none. So:
  promote V   sets V promoted (now): it serves;
  rollback    retires the serving version: the one promoted before it serves again (or the base);
  promote of the base retires every promoted version of the project.
Serving reads this on every request (cached for a second or two by the ingress), so promotion and rollback are
plain registry updates: no redeploy, no restart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import ModelVersion, Project, utcnow
from .db.engine import conflict_free_insert

BASE_NAME = "base"


class RegistryError(ValueError):
    """A promotion or rollback that cannot be done; the message says why."""


@dataclass(frozen=True)
class Serving:
    """What a project serves: the version's name and its checkpoint key in the object store (None: the base)."""

    name: str
    checkpoint_key: str | None
    version_id: int | None = None


def base_version_name(model: str) -> str:
    """The registry name of the checkpoint served as the base: "base" for the bundled one, else its file name."""
    return "base" if model == "base" else os.path.basename(model)


def ensure_base(session: Session, name: str = BASE_NAME) -> ModelVersion:
    """The base version's row, added on first use. The recorder (naming the version of each click it writes) and a
    fine-tuning job can both be first at the same moment, so the row is inserted only if its name is still free."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if row is None:
        session.execute(conflict_free_insert(session, ModelVersion, ["name"]), [
            {"name": name, "project_id": None, "checkpoint_uri": None, "status": "promoted", "promoted_at": utcnow()}])
        row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    return row


def find_project(session: Session, ls_project_id: int) -> Project | None:
    return session.scalar(select(Project).where(Project.ls_project_id == ls_project_id))


def serving_row(session: Session, project_id: int) -> ModelVersion | None:
    """The project's serving fine-tuned version, or None when it serves the base."""
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.project_id == project_id, ModelVersion.status == "promoted")
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )


def serving(session: Session, ls_project_id: int | None, base_name: str = BASE_NAME) -> Serving:
    project = find_project(session, ls_project_id) if ls_project_id is not None else None
    row = serving_row(session, project.id) if project is not None else None
    if row is None:
        return Serving(base_name, None)
    return Serving(row.name, row.checkpoint_uri, row.id)


def versions(session: Session, ls_project_id: int | None = None, base_name: str = BASE_NAME) -> list[ModelVersion]:
    """The base first, then the project's versions (every project's without one), oldest first."""
    base = ensure_base(session, base_name)
    query = select(ModelVersion).where(ModelVersion.project_id.is_not(None)).order_by(ModelVersion.id)
    if ls_project_id is not None:
        project = find_project(session, ls_project_id)
        if project is None:
            return [base]
        query = query.where(ModelVersion.project_id == project.id)
    return [base, *session.scalars(query)]


def promote(session: Session, name: str, ls_project_id: int | None = None, base_name: str = BASE_NAME) -> Serving:
    """Make `name` the serving version of its project (the base needs `ls_project_id`)."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if row is None:
        raise RegistryError(f"no model version named {name!r}")
    if row.project_id is None:
        if ls_project_id is None:
            raise RegistryError(f"{name!r} is a base version: say which project goes back to it (--project)")
        project = find_project(session, ls_project_id)
        if project is None:
            raise RegistryError(f"no project {ls_project_id} is known")
        for current in session.scalars(select(ModelVersion).where(
                ModelVersion.project_id == project.id, ModelVersion.status == "promoted")):
            current.status = "retired"
        session.flush()
        return Serving(row.name, None, row.id)
    if ls_project_id is not None:
        project = find_project(session, ls_project_id)
        if project is None or project.id != row.project_id:
            raise RegistryError(f"{name!r} belongs to another project")
    row.status, row.promoted_at = "promoted", utcnow()
    session.flush()
    return Serving(row.name, row.checkpoint_uri, row.id)


def rollback(session: Session, ls_project_id: int, base_name: str = BASE_NAME) -> tuple[str, Serving]:
    """Retire the project's serving version; returns (the retired name, what serves now)."""
    project = find_project(session, ls_project_id)
    current = serving_row(session, project.id) if project is not None else None
    if current is None:
        raise RegistryError(f"project {ls_project_id} serves the base model: nothing to roll back")
    current.status = "retired"
    session.flush()
    return current.name, serving(session, ls_project_id, base_name)


def version_names(session: Session, base_name: str = BASE_NAME) -> list[str]:
    """Read only (a GET lists these): the base, then every project's versions that were not rejected."""
    rows = session.scalars(select(ModelVersion.name).where(
        ModelVersion.project_id.is_not(None), ModelVersion.status != "rejected").order_by(ModelVersion.id))
    return [base_name, *rows]
