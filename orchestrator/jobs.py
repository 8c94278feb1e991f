"""Fine-tuning jobs in the database: queueing with coalescing, claiming, heartbeats, snapshots, trigger counts.

The `training_jobs` table is the queue. A trigger (webhook, command line, schedule) adds a queued job, or returns the
one already queued for the project (a trigger during a running job is thus remembered and runs after it, and any
number of triggers coalesce into one job). A runner claims a queued job by moving it to running; the database allows
one queued and one running job per project (partial unique indexes, migration 0002), so two runners can never run a
project twice. A running job's runner beats every few seconds; a job without a beat for long is marked failed.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from .db import Annotation, Image, Project, TrainingJob, utcnow
from integrations.label_studio.webhooks import fits

ACTIVE = ("queued", "running")


def enqueue(factory: sessionmaker[Session], ls_project_id: int, trigger: str) -> int:
    """The id of the project's queued job, queued now if there was none."""
    for attempt in (1, 2, 3):
        try:
            with factory.begin() as session:
                project = session.scalar(select(Project).where(Project.ls_project_id == ls_project_id))
                if project is None:
                    project = Project(ls_project_id=ls_project_id)
                    session.add(project)
                    session.flush()
                queued = session.scalar(select(TrainingJob).where(
                    TrainingJob.project_id == project.id, TrainingJob.state == "queued"))
                if queued is not None:
                    return queued.id
                job = TrainingJob(project_id=project.id, state="queued", trigger=trigger[:32])
                session.add(job)
                session.flush()
                return job.id
        except IntegrityError:  # another trigger queued (or created the project) at the same moment: use theirs
            if attempt == 3:
                raise
    raise AssertionError("unreachable")


def claimable(factory: sessionmaker[Session]) -> list[int]:
    """Queued jobs whose project runs nothing, oldest first."""
    with factory() as session:
        running = select(TrainingJob.project_id).where(TrainingJob.state == "running")
        return list(session.scalars(select(TrainingJob.id).where(
            TrainingJob.state == "queued", TrainingJob.project_id.not_in(running)).order_by(TrainingJob.id)))


def claim(factory: sessionmaker[Session], job_id: int) -> bool:
    """Move a queued job to running; False when it is not queued any more or its project already runs one."""
    now = utcnow()
    try:
        with factory.begin() as session:
            moved = session.execute(update(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.state == "queued")
                                    .values(state="running", started_at=now, heartbeat_at=now)).rowcount
        return moved == 1
    except IntegrityError:
        return False


def beat(factory: sessionmaker[Session], job_id: int) -> None:
    with factory.begin() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.state == "running")
                        .values(heartbeat_at=utcnow()))


def finish(factory: sessionmaker[Session], job_id: int, state: str, error: str | None = None, **values) -> None:
    with factory.begin() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                        .values(state=state, error=error, finished_at=utcnow(), **values))


def fail_stale(factory: sessionmaker[Session], silent_for_s: float) -> list[int]:
    """Mark failed the running jobs whose runner has not beaten for `silent_for_s` (it crashed or was killed)."""
    cutoff = utcnow() - timedelta(seconds=silent_for_s)
    with factory.begin() as session:
        stale = list(session.scalars(select(TrainingJob).where(
            TrainingJob.state == "running", TrainingJob.heartbeat_at < cutoff)))
        for job in stale:
            job.state, job.finished_at = "failed", utcnow()
            job.error = f"the runner stopped beating (no heartbeat for {silent_for_s:.0f} s): crashed or killed"
        return [job.id for job in stale]


def get(factory: sessionmaker[Session], job_id: int) -> TrainingJob | None:
    with factory() as session:
        return session.get(TrainingJob, job_id)


# ---- what a job trains on


@dataclass
class SnapshotImage:
    image_id: int
    uri: str
    masks: list[dict]  # COCO RLE


def submitted(project_id: int):
    """Annotations that count: not deleted, not cancelled, on a known image."""
    return (Annotation.project_id == project_id, Annotation.deleted_at.is_(None), Annotation.was_cancelled.is_(False),
            Annotation.image_id.is_not(None))


def snapshot(session: Session, project_id: int) -> list[SnapshotImage]:
    """One annotation per image, the most recently updated one (several annotators of one task would otherwise
    give the same object twice), with its masks; images without masks are left out."""
    rows = session.scalars(select(Annotation).where(*submitted(project_id)).options(selectinload(Annotation.masks))
                           .order_by(Annotation.image_id, Annotation.updated_at.desc(), Annotation.id.desc()))
    latest: dict[int, Annotation] = {}
    for row in rows:
        latest.setdefault(row.image_id, row)
    images = {im.id: im for im in session.scalars(select(Image).where(Image.id.in_(list(latest))))}
    return [SnapshotImage(image_id, images[image_id].uri,
                          [{"size": [m.height, m.width], "counts": m.rle_counts} for m in ann.masks])
            for image_id, ann in sorted(latest.items()) if ann.masks]


# ---- triggers


def last_job_time(session: Session, project_id: int) -> datetime | None:
    """When the project's last job took its snapshot (or was queued, if it has not started)."""
    job = session.scalar(select(TrainingJob).where(TrainingJob.project_id == project_id)
                         .order_by(TrainingJob.id.desc()).limit(1))
    return None if job is None else (job.started_at or job.created_at)


def new_annotations(session: Session, project_id: int, since: datetime | None) -> tuple[int, datetime | None]:
    """(count of submitted annotations recorded after `since`, when the oldest of them was recorded)."""
    query = select(func.count(), func.min(Annotation.recorded_at)).where(*submitted(project_id))
    if since is not None:
        query = query.where(Annotation.recorded_at > since)
    count, oldest = session.execute(query).one()
    return int(count), oldest


def has_active_job(session: Session, project_id: int) -> bool:
    return session.scalar(select(func.count()).where(
        TrainingJob.project_id == project_id, TrainingJob.state.in_(ACTIVE))) > 0


def due_projects(factory: sessionmaker[Session], every_annotations: int, every_minutes: float) -> list[tuple[int, str]]:
    """(ls project id, trigger) for each project with no active job that has N new annotations since its last job,
    or any new annotation and T minutes since its last job (or since the oldest new annotation, before any job)."""
    due = []
    now = utcnow()
    with factory() as session:
        for project in session.scalars(select(Project)):
            if has_active_job(session, project.id):
                continue
            since = last_job_time(session, project.id)
            count, oldest = new_annotations(session, project.id, since)
            if not count:
                continue
            if every_annotations and count >= every_annotations:
                due.append((project.ls_project_id, "annotations"))
            elif every_minutes and now - (since or oldest) >= timedelta(minutes=every_minutes):
                due.append((project.ls_project_id, "schedule"))
    return due


def request_from_webhook(factory: sessionmaker[Session], body: object) -> int | None:
    """START_TRAINING from Label Studio: the queued job's id, or None when the body names no project."""
    project = body.get("project") if isinstance(body, dict) else None
    ls_id = project.get("id") if isinstance(project, dict) else None
    if not fits(ls_id):
        return None
    return enqueue(factory, ls_id, "webhook")
