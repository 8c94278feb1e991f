"""Label Studio webhook events turned into annotation rows.

ANNOTATION_CREATED / ANNOTATION_UPDATED store the annotation's brush and polygon regions as masks (COCO RLE);
ANNOTATIONS_DELETED marks annotations deleted. Events may arrive twice or out of order, so an event only applies if
it is newer (Label Studio's `updated_at`) than what is stored, and a deleted annotation stays deleted. Everything is
checked before anything is written, and each event is written in one transaction: a rejected event leaves no trace
but a log line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from integrations.label_studio.webhooks import (
    CREATED,
    DELETED,
    OTHER_ACTIONS,
    UPDATED,
    ParsedAnnotation,
    ParsedProject,
    Rejected,
    parse_annotation,
    parse_deleted_ids,
    parse_project,
)

from .db import Annotation, AnnotationMask, Image, Project, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: str  # "applied", "ignored" or "rejected"
    reason: str
    action: str | None = None


def handle_event(session_factory: sessionmaker[Session], body: object) -> Outcome:
    """Apply one webhook body. Database errors propagate (the caller decides how to answer); bad input does not."""
    action = body.get("action") if isinstance(body, dict) else None
    try:
        if not isinstance(body, dict):
            raise Rejected("the body is not a JSON object")
        if action in (CREATED, UPDATED):
            project = parse_project(body)
            parsed = parse_annotation(body)
            apply = partial(apply_annotation, project_in=project, parsed=parsed)
        elif action == DELETED:
            project = parse_project(body)
            ids = parse_deleted_ids(body)
            apply = partial(apply_deletions, project_in=project, ids=ids)
        elif action in OTHER_ACTIONS:
            return finish(Outcome("ignored", "not an annotation event", action))
        else:
            return finish(Outcome("ignored", f"unknown action {str(action)[:64]!r}", None))
        return finish(run_in_transaction(session_factory, apply, action))
    except Rejected as exc:
        return finish(Outcome("rejected", str(exc), action if isinstance(action, str) else None))


def finish(outcome: Outcome) -> Outcome:
    level = logging.WARNING if outcome.status == "rejected" else logging.INFO
    log.log(level, "webhook %s %s: %s", outcome.action or "event", outcome.status, outcome.reason)
    return outcome


def run_in_transaction(session_factory, apply, action: str) -> Outcome:
    # Two deliveries of a new annotation processed at once both try to insert it: the loser retries and then sees
    # the winner's row, which makes it a duplicate.
    for attempt in (1, 2):
        try:
            with session_factory.begin() as session:
                status, reason = apply(session)
            return Outcome(status, reason, action)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# ---- applying: one transaction per event


def get_project(session: Session, parsed: ParsedProject) -> Project:
    project = session.scalar(select(Project).where(Project.ls_project_id == parsed.ls_id))
    if project is None:
        project = Project(ls_project_id=parsed.ls_id)
        session.add(project)
    if parsed.title is not None:
        project.title = parsed.title
    if parsed.label_config:
        project.label_config = parsed.label_config
    session.flush()
    return project


def apply_annotation(session: Session, project_in: ParsedProject, parsed: ParsedAnnotation) -> tuple[str, str]:
    row = session.scalar(
        select(Annotation).where(Annotation.ls_annotation_id == parsed.ls_id).with_for_update()
    )
    if row is not None and row.deleted_at is not None:
        return "ignored", f"annotation {parsed.ls_id} was deleted"
    if row is not None and row.updated_at is not None and row.updated_at >= parsed.updated_at:
        return "ignored", f"annotation {parsed.ls_id} is already stored as of {row.updated_at.isoformat()}"
    project = get_project(session, project_in)
    if row is not None and row.project_id != project.id:
        raise Rejected(f"annotation {parsed.ls_id} belongs to another project")
    image = get_image(session, project, parsed) if parsed.image_uri else None
    if row is None:
        row = Annotation(ls_annotation_id=parsed.ls_id, project_id=project.id)
        session.add(row)
    row.image_id = image.id if image else None
    row.ls_task_id, row.completed_by = parsed.task_id, parsed.completed_by
    row.was_cancelled, row.lead_time, row.updated_at = parsed.was_cancelled, parsed.lead_time, parsed.updated_at
    row.masks = [
        AnnotationMask(region_id=m.region_id, from_name=m.from_name, label=m.label, height=m.rle.height,
                       width=m.rle.width, rle_counts=m.rle.counts, area=m.rle.area, polygon=m.polygon)
        for m in parsed.masks
    ]
    return "applied", f"annotation {parsed.ls_id} stored with {len(parsed.masks)} mask(s)"


def get_image(session: Session, project: Project, parsed: ParsedAnnotation) -> Image:
    image = session.scalar(select(Image).where(Image.project_id == project.id, Image.uri == parsed.image_uri))
    if image is None:
        image = Image(project_id=project.id, uri=parsed.image_uri, ls_task_id=parsed.task_id)
        session.add(image)
    elif image.ls_task_id is None:
        image.ls_task_id = parsed.task_id  # first seen through a click, which names no task
    if parsed.size is not None:
        if image.width is not None and (image.width, image.height) != parsed.size:
            # Raised inside the transaction: the project row written above is rolled back with it.
            raise Rejected(
                f"masks are {parsed.size[0]}x{parsed.size[1]} but image {parsed.image_uri!r} is "
                f"{image.width}x{image.height}"
            )
        image.width, image.height = parsed.size
    session.flush()
    return image


def apply_deletions(session: Session, project_in: ParsedProject, ids: list[int]) -> tuple[str, str]:
    project = get_project(session, project_in)
    rows = {
        row.ls_annotation_id: row
        for row in session.scalars(select(Annotation).where(Annotation.ls_annotation_id.in_(ids)).with_for_update())
    }
    now, unknown = utcnow(), 0
    for ls_id in ids:
        row = rows.get(ls_id)
        if row is None:
            # Deleted before its creation reached us: keep a tombstone so the late creation is ignored.
            session.add(Annotation(ls_annotation_id=ls_id, project_id=project.id, deleted_at=now))
            unknown += 1
        elif row.deleted_at is None:
            row.deleted_at = now
            row.masks = []
    return "applied", f"{len(ids)} annotation(s) marked deleted ({unknown} not seen before)"
