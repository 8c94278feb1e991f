"""Label Studio webhook events turned into annotation rows.

ANNOTATION_CREATED / ANNOTATION_UPDATED store the annotation's brush masks as COCO RLE; ANNOTATIONS_DELETED marks
annotations deleted. Events may arrive twice or out of order, so an event only applies if it is newer (Label
Studio's `updated_at`) than what is stored, and a deleted annotation stays deleted. Everything is checked before
anything is written, and each event is written in one transaction: a rejected event leaves no trace but a log line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, UTC
from functools import partial

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .db import Annotation, AnnotationMask, Image, Project, utcnow
from .db.models import NAME_LENGTH, URI_LENGTH
from .masks import CocoRle, MaskError, brush_to_mask, encode

log = logging.getLogger(__name__)

CREATED, UPDATED, DELETED = "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"
# Sent to the same /webhook by Label Studio but handled elsewhere (training) or of no use here.
OTHER_ACTIONS = {"START_TRAINING", "TASKS_CREATED", "TASKS_DELETED", "PROJECT_UPDATED", "ANNOTATIONS_CREATED"}
MAX_DELETED_IDS = 10_000
MAX_ID = 2**63 - 1  # Label Studio ids are stored as 64-bit integers: a larger one is refused, not sent to the database


@dataclass(frozen=True)
class Outcome:
    status: str  # "applied", "ignored" or "rejected"
    reason: str
    action: str | None = None


class Rejected(ValueError):
    """The event cannot be used; the message says why."""


@dataclass
class ParsedMask:
    region_id: str
    from_name: str
    label: str | None
    rle: CocoRle


@dataclass
class ParsedAnnotation:
    ls_id: int
    updated_at: datetime
    task_id: int | None
    completed_by: int | None
    was_cancelled: bool
    lead_time: float | None
    image_uri: str | None
    size: tuple[int, int] | None  # (width, height) of the masks
    masks: list[ParsedMask] = field(default_factory=list)


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


# ---- parsing: plain checks on untrusted JSON, no database access


def need_int(mapping: dict, key: str, where: str) -> int:
    value = mapping.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise Rejected(f"{where}.{key} is missing or not an integer from 0 to {MAX_ID}")
    return value


def fits(value: object) -> bool:
    """An optional id worth keeping: an integer the database can hold."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def need_dict(mapping: dict, key: str, where: str) -> dict:
    value = mapping.get(key)
    if not isinstance(value, dict):
        raise Rejected(f"{where}.{key} is missing or not an object")
    return value


@dataclass
class ParsedProject:
    ls_id: int
    title: str | None
    label_config: str | None
    parsed_config: dict


def parse_project(body: dict) -> ParsedProject:
    project = need_dict(body, "project", "body")
    title, config = project.get("title"), project.get("label_config")
    parsed = project.get("parsed_label_config")
    return ParsedProject(
        need_int(project, "id", "project"),
        title[:NAME_LENGTH] if isinstance(title, str) else None,
        config if isinstance(config, str) else None,
        parsed if isinstance(parsed, dict) else {},
    )


def parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise Rejected(f"{where} is missing or not a string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Rejected(f"{where} is not an ISO 8601 time: {value[:40]!r}") from None
    # Label Studio sends UTC with a Z; a time without a zone is taken as UTC too.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_annotation(body: dict) -> ParsedAnnotation:
    annotation = need_dict(body, "annotation", "body")
    results = annotation.get("result")
    if not isinstance(results, list):
        raise Rejected("annotation.result is missing or not a list")
    completed_by = annotation.get("completed_by")
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id")
    lead_time = annotation.get("lead_time")
    parsed = ParsedAnnotation(
        ls_id=need_int(annotation, "id", "annotation"),
        updated_at=parse_time(annotation.get("updated_at"), "annotation.updated_at"),
        task_id=annotation.get("task") if fits(annotation.get("task")) else None,
        completed_by=completed_by if fits(completed_by) else None,
        was_cancelled=annotation.get("was_cancelled") is True,
        lead_time=float(lead_time) if isinstance(lead_time, (int, float)) and not isinstance(lead_time, bool) else None,
        image_uri=None,
        size=None,
    )
    brushes = [r for r in results if isinstance(r, dict) and str(r.get("type", "")).lower() == "brushlabels"]
    for number, result in enumerate(brushes, 1):
        where = f"brush result {str(result.get('id', number))[:64]!r}"
        value = result.get("value")
        if not isinstance(value, dict) or value.get("format", "rle") != "rle":
            raise Rejected(f"{where}: value is not a brush RLE")
        width, height = result.get("original_width"), result.get("original_height")
        try:
            mask = brush_to_mask(value.get("rle"), width, height)
        except MaskError as exc:
            raise Rejected(f"{where}: {exc}") from None
        if parsed.size not in (None, (width, height)):
            raise Rejected(f"{where}: mask is {width}x{height} but another mask is {parsed.size[0]}x{parsed.size[1]}")
        parsed.size = (width, height)
        labels = value.get("brushlabels")
        label = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None
        from_name = result.get("from_name") if isinstance(result.get("from_name"), str) else ""
        parsed.masks.append(ParsedMask(str(result.get("id", ""))[:64], from_name[:NAME_LENGTH],
                                       label[:NAME_LENGTH] if label else None, encode(mask)))
    task = body.get("task")
    if isinstance(task, dict):
        task_id = task.get("id")
        if parsed.task_id is None and fits(task_id):
            parsed.task_id = task_id
        parsed.image_uri = image_uri(task, brushes, body)
    if parsed.masks and parsed.image_uri is None:
        raise Rejected("masks given but no image URI found in task.data")
    return parsed


def image_uri(task: dict, brushes: list[dict], body: dict) -> str | None:
    """The task field holding the image: the one the brush control's Image tag reads ($image -> data["image"])."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    parsed_config = body["project"].get("parsed_label_config")
    keys = []
    for brush in brushes:
        name = brush.get("from_name")
        control = parsed_config.get(name) if isinstance(parsed_config, dict) and isinstance(name, str) else None
        inputs = control.get("inputs") if isinstance(control, dict) else None
        if isinstance(inputs, list):
            keys += [i.get("value") for i in inputs if isinstance(i, dict) and isinstance(i.get("value"), str)]
    if not keys:  # no parsed config: accept a task with a single string field
        strings = [k for k, v in data.items() if isinstance(v, str)]
        keys = strings if len(strings) == 1 else []
    uri = data.get(keys[0]) if keys else None
    if not isinstance(uri, str) or not uri:
        return None
    if len(uri.encode("utf-8")) > URI_LENGTH:
        raise Rejected(f"image URI longer than {URI_LENGTH} bytes")
    return uri


def parse_deleted_ids(body: dict) -> list[int]:
    items = body.get("annotations")
    if not isinstance(items, list) or not items:
        raise Rejected("body.annotations is missing or empty")
    if len(items) > MAX_DELETED_IDS:
        raise Rejected(f"more than {MAX_DELETED_IDS} annotations in one deletion")
    ids = []
    for item in items:
        if not isinstance(item, dict):
            raise Rejected("body.annotations holds something other than {id: ...} objects")
        ids.append(need_int(item, "id", "annotations[]"))
    return sorted(set(ids))


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
                       width=m.rle.width, rle_counts=m.rle.counts, area=m.rle.area)
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
