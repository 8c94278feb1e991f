"""A project's effort in numbers, read from the database only (no writes, no Ray, no HTTP).

Definitions (the page states them too):
- an object is an interaction session (one object on one image, clicked by one annotator); its clicks are the
  longest click history the backend answered for it (the `seq` of its last recorded click);
- a click's model version is the one that answered it; an object's is the one that answered its last click;
- click latency is the time the backend took to answer a click (as recorded with its predicted mask);
- a submitted mask was accepted without a manual brush edit when it matches a mask the model answered as the last
  click of an object on the same image: IoU >= ACCEPT_IOU (brushing changes more than that; the 1% margin absorbs
  a brush stroke that adds no pixel inside the image). Masks with no object clicked on their image were drawn by
  hand.
Percentiles are numpy's default (linear interpolation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db import (
    Annotation,
    AnnotationMask,
    Click,
    InteractionSession,
    ModelVersion,
    PredictedMask,
    Project,
    TrainingJob,
    utcnow,
)
from ..jobs import submitted

ACCEPT_IOU = 0.99
HOURLY_UP_TO = timedelta(days=2)  # a shorter span of work is shown by the hour, a longer one by the day
UNKNOWN_VERSION = "(not recorded)"


@dataclass(frozen=True)
class Spread:
    """n values summarised by two percentiles (`low` the median, `high` the 90th or 95th)."""

    n: int
    low: float
    high: float

    @classmethod
    def of(cls, values, high_q: float) -> Spread | None:
        if len(values) == 0:
            return None
        low, high = np.percentile(np.asarray(values, dtype=float), [50, high_q])
        return cls(len(values), float(low), float(high))


@dataclass(frozen=True)
class Acceptance:
    masks: int  # submitted masks (not deleted, not cancelled)
    accepted: int  # matching a mask the model answered
    edited: int  # an object was clicked on the image, but the mask differs
    drawn: int  # no object clicked on the image: drawn by hand


@dataclass(frozen=True)
class VersionMetrics:
    """A version's validation figures as its job recorded them (None: not recorded), with its parent's on the same
    validation objects."""

    name: str
    status: str
    created_at: datetime
    validation: dict | None
    parent: str | None
    parent_validation: dict | None
    decision: str | None


@dataclass(frozen=True)
class Job:
    id: int
    state: str
    trigger: str
    outcome: str  # promoted | not promoted | failed | cancelled | running | queued
    start: datetime  # started, or queued when it never started
    end: datetime | None  # finished; None while it runs or waits
    result_version: str | None
    note: str  # the gate's reason or the error's first line


@dataclass
class ProjectFigures:
    ls_project_id: int
    title: str
    generated_at: datetime
    found: bool  # False: the database has never heard of this project
    objects: int = 0
    clicks: int = 0
    bucket: str = "hour"
    clicks_over_time: list[tuple[datetime, Spread]] = field(default_factory=list)  # median, p90
    clicks_by_version: list[tuple[str, Spread]] = field(default_factory=list)
    latency_all: Spread | None = None  # p50, p95 in ms
    latency_over_time: list[tuple[datetime, Spread]] = field(default_factory=list)
    latency_by_version: list[tuple[str, Spread]] = field(default_factory=list)
    acceptance: Acceptance = field(default_factory=lambda: Acceptance(0, 0, 0, 0))
    versions: list[VersionMetrics] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)


def projects(session: Session) -> list[tuple[int, str]]:
    """(Label Studio id, title) of every project the database knows."""
    return [tuple(row) for row in session.execute(select(Project.ls_project_id, Project.title)
                                                  .order_by(Project.ls_project_id))]


def compute(session: Session, ls_project_id: int, now: datetime | None = None) -> ProjectFigures:
    now = now or utcnow()
    project = session.scalar(select(Project).where(Project.ls_project_id == ls_project_id))
    if project is None:
        return ProjectFigures(ls_project_id, "", now, found=False)
    names = {vid: name for vid, name in session.execute(select(ModelVersion.id, ModelVersion.name))}
    figures = ProjectFigures(ls_project_id, project.title, now, found=True)
    _effort(session, project.id, names, figures)
    _latency(session, project.id, names, figures)
    figures.acceptance = _acceptance(session, project.id)
    figures.versions = _versions(session, project.id, names)
    figures.jobs = _jobs(session, project.id, names)
    return figures


# ---- clicks per object


def _last_clicks(project_id: int):
    """Each object's last click: (session id, its seq)."""
    return (select(Click.session_id, func.max(Click.seq).label("last"))
            .join(InteractionSession, Click.session_id == InteractionSession.id)
            .where(InteractionSession.project_id == project_id).group_by(Click.session_id).subquery())


def _effort(session: Session, project_id: int, names: dict, figures: ProjectFigures) -> None:
    last = _last_clicks(project_id)
    rows = session.execute(
        select(InteractionSession.id, InteractionSession.started_at, last.c.last, Click.model_version_id)
        .join(last, last.c.session_id == InteractionSession.id)
        .join(Click, (Click.session_id == InteractionSession.id) & (Click.seq == last.c.last))
        .order_by(InteractionSession.id)).all()
    per_object: dict[int, tuple[datetime, int, int | None]] = {}
    for sid, started, clicks, version_id in rows:  # a seq recorded twice (a repeated request) counts once
        per_object.setdefault(sid, (started, clicks, version_id))
    figures.objects = len(per_object)
    figures.clicks = int(session.scalar(select(func.count(Click.id)).join(InteractionSession).where(
        InteractionSession.project_id == project_id)) or 0)
    if not per_object:
        return
    starts = [started for started, _, _ in per_object.values()]
    figures.bucket = "hour" if max(starts) - min(starts) <= HOURLY_UP_TO else "day"
    over_time: dict[datetime, list[int]] = {}
    by_version: dict[int | None, list[int]] = {}
    for started, clicks, version_id in per_object.values():
        over_time.setdefault(_bucket(started, figures.bucket), []).append(clicks)
        by_version.setdefault(version_id, []).append(clicks)
    figures.clicks_over_time = [(t, Spread.of(v, 90)) for t, v in sorted(over_time.items())]
    figures.clicks_by_version = _by_version(by_version, names, 90)


def _bucket(moment: datetime, size: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if size == "day" else moment


def _by_version(groups: dict[int | None, list], names: dict, high_q: float) -> list[tuple[str, Spread]]:
    """Oldest version first (ids grow with time); clicks whose version was not recorded last."""
    order = sorted(groups, key=lambda v: (v is None, v or 0))
    return [(names.get(v, UNKNOWN_VERSION), Spread.of(groups[v], high_q)) for v in order]


# ---- latency


def _latency(session: Session, project_id: int, names: dict, figures: ProjectFigures) -> None:
    rows = session.execute(
        select(Click.clicked_at, Click.model_version_id, PredictedMask.latency_ms)
        .join(PredictedMask, PredictedMask.click_id == Click.id)
        .join(InteractionSession, Click.session_id == InteractionSession.id)
        .where(InteractionSession.project_id == project_id, PredictedMask.latency_ms.is_not(None))).all()
    if not rows:
        return
    figures.latency_all = Spread.of([ms for _, _, ms in rows], 95)
    over_time: dict[datetime, list[float]] = {}
    by_version: dict[int | None, list[float]] = {}
    for clicked_at, version_id, ms in rows:
        over_time.setdefault(_bucket(clicked_at, figures.bucket), []).append(ms)
        by_version.setdefault(version_id, []).append(ms)
    figures.latency_over_time = [(t, Spread.of(v, 95)) for t, v in sorted(over_time.items())]
    figures.latency_by_version = _by_version(by_version, names, 95)


# ---- acceptance without a brush edit


def _acceptance(session: Session, project_id: int) -> Acceptance:
    from pycocotools import mask as coco_mask

    last = _last_clicks(project_id)
    answered: dict[int, list[dict]] = {}  # image id -> the last masks the model answered for its objects
    for image_id, h, w, counts in session.execute(
            select(InteractionSession.image_id, PredictedMask.height, PredictedMask.width, PredictedMask.rle_counts)
            .join(last, last.c.session_id == InteractionSession.id)
            .join(Click, (Click.session_id == InteractionSession.id) & (Click.seq == last.c.last))
            .join(PredictedMask, PredictedMask.click_id == Click.id)):
        answered.setdefault(image_id, []).append({"size": [h, w], "counts": counts.encode("ascii")})
    masks = accepted = drawn = 0
    for image_id, h, w, counts in session.execute(
            select(Annotation.image_id, AnnotationMask.height, AnnotationMask.width, AnnotationMask.rle_counts)
            .join(Annotation, AnnotationMask.annotation_id == Annotation.id).where(*submitted(project_id))):
        masks += 1
        candidates = [rle for rle in answered.get(image_id, []) if rle["size"] == [h, w]]
        if not answered.get(image_id):
            drawn += 1
            continue
        if not candidates:
            continue
        mask = {"size": [h, w], "counts": counts.encode("ascii")}
        best = float(np.max(coco_mask.iou(candidates, [mask], [0])))
        accepted += best >= ACCEPT_IOU
    return Acceptance(masks, int(accepted), masks - int(accepted) - drawn, drawn)


# ---- model versions and jobs


def _versions(session: Session, project_id: int, names: dict) -> list[VersionMetrics]:
    rows = session.scalars(select(ModelVersion).where(ModelVersion.project_id == project_id)
                           .order_by(ModelVersion.id))
    out = []
    for v in rows:
        metrics = v.metrics if isinstance(v.metrics, dict) else {}
        out.append(VersionMetrics(
            v.name, v.status, v.created_at, _numbers(metrics.get("validation")), names.get(v.parent_id),
            _numbers(metrics.get("parent_validation")), metrics.get("decision")))
    return out


def _numbers(metrics) -> dict | None:
    """The NoC figures of a recorded metrics dict, None when there are none to show."""
    if not isinstance(metrics, dict):
        return None
    kept = {k: float(metrics[k]) for k in ("NoC@85", "NoC@90", "mIoU@5")
            if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)}
    return kept or None


def _jobs(session: Session, project_id: int, names: dict) -> list[Job]:
    out = []
    for job in session.scalars(select(TrainingJob).where(TrainingJob.project_id == project_id)
                               .order_by(TrainingJob.id)):
        details = job.details if isinstance(job.details, dict) else {}
        decision = details.get("decision") if isinstance(details.get("decision"), dict) else {}
        if job.state == "succeeded":
            outcome = "promoted" if decision.get("promoted") else "not promoted"
            note = str(decision.get("reason") or "")
        else:
            outcome, note = job.state, (job.error or "").strip().splitlines()[0] if job.error else ""
        out.append(Job(job.id, job.state, job.trigger, outcome, job.started_at or job.created_at, job.finished_at,
                       names.get(job.result_version_id), note))
    return out
