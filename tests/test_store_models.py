"""The models on a migrated database, on SQLite and PostgreSQL: round trips, constraints, cascades."""
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone, UTC
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, StatementError

from orchestrator.db import (
    Annotation,
    AnnotationMask,
    Click,
    Image,
    InteractionSession,
    ModelVersion,
    PredictedMask,
    Project,
    TrainingJob,
)

T0 = datetime(2026, 11, 25, 5, 57, 52, 460419, tzinfo=UTC)


def populate(session):
    project = Project(ls_project_id=1, title="p", label_config="<View/>")
    image = Image(uri="/data/upload/1/a.png", width=400, height=300, content_hash="ab" * 32)
    session.add(project)
    session.flush()
    image.project_id = project.id
    base = ModelVersion(name="base-1", status="promoted", checkpoint_uri="checkpoints/base-1.pt",
                        metrics={"noc90": 4.2})
    session.add_all([image, base])
    session.flush()
    tuned = ModelVersion(name="ft-2", parent_id=base.id, project_id=project.id, status="candidate")
    interaction = InteractionSession(key="s-1", project_id=project.id, image_id=image.id, annotator="1", label="Cat")
    session.add_all([tuned, interaction])
    session.flush()
    click = Click(session_id=interaction.id, seq=1, x=12.5, y=40.0, positive=True, clicked_at=T0,
                  model_version_id=base.id)
    click.mask = PredictedMask(height=300, width=400, rle_counts="abc", area=10, score=0.9, latency_ms=31.5)
    annotation = Annotation(ls_annotation_id=7, project_id=project.id, image_id=image.id, updated_at=T0)
    annotation.masks.append(AnnotationMask(region_id="r", from_name="brush", label="Cat", height=300, width=400,
                                           rle_counts="xyz", area=5))
    job = TrainingJob(project_id=project.id, base_version_id=base.id, result_version_id=tuned.id, state="succeeded",
                      started_at=T0, finished_at=T0 + timedelta(minutes=3), train_count=80, val_count=20)
    session.add_all([click, annotation, job])
    return project


def test_round_trip_keeps_values_and_aware_utc_times(session_factory):
    with session_factory.begin() as session:
        populate(session)
    with session_factory() as session:
        click = session.scalars(select(Click)).one()
        assert (click.x, click.y, click.positive, click.seq) == (12.5, 40.0, True, 1)
        assert click.clicked_at == T0 and click.clicked_at.tzinfo is not None
        assert click.mask.latency_ms == 31.5 and click.mask.rle_counts == "abc"
        version = session.scalars(select(ModelVersion).where(ModelVersion.name == "base-1")).one()
        assert version.metrics == {"noc90": 4.2}
        job = session.scalars(select(TrainingJob)).one()
        assert job.finished_at - job.started_at == timedelta(minutes=3)
        annotation = session.scalars(select(Annotation)).one()
        assert [m.label for m in annotation.masks] == ["Cat"]
        assert annotation.recorded_at.tzinfo is not None


def test_other_zones_are_stored_as_utc(session_factory):
    paris = timezone(timedelta(hours=1))
    with session_factory.begin() as session:
        project = populate(session)
        session.flush()
        session.add(Annotation(ls_annotation_id=8, project_id=project.id, updated_at=T0.astimezone(paris)))
    with session_factory() as session:
        stored = session.scalars(select(Annotation.updated_at).where(Annotation.ls_annotation_id == 8)).one()
        assert stored == T0 and stored.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(session_factory):
    with pytest.raises(StatementError, match="naive datetime"):
        with session_factory.begin() as session:
            project = populate(session)
            session.flush()
            session.add(Annotation(ls_annotation_id=9, project_id=project.id, updated_at=datetime(2026, 1, 1)))
            session.flush()


def test_unique_constraints_hold(session_factory):
    with session_factory.begin() as session:
        populate(session)
    for duplicate in (
        lambda s: Project(ls_project_id=1),
        lambda s: Image(project_id=s.scalar(select(Project.id)), uri="/data/upload/1/a.png"),
        lambda s: ModelVersion(name="base-1"),
    ):
        with pytest.raises(IntegrityError):
            with session_factory.begin() as session:
                session.add(duplicate(session))


def test_deleting_a_project_cascades_to_everything_recorded_for_it(session_factory):
    with session_factory.begin() as session:
        populate(session)
    with session_factory.begin() as session:
        session.delete(session.scalars(select(Project)).one())
    with session_factory() as session:
        for model in (Image, InteractionSession, Click, PredictedMask, Annotation, AnnotationMask, TrainingJob):
            assert session.scalar(select(func.count()).select_from(model)) == 0, model.__tablename__
        # The base model belongs to no project and survives; the project's fine-tuned version goes with it.
        assert session.scalars(select(ModelVersion.name)).all() == ["base-1"]


def test_unreachable_postgres_fails_the_run_instead_of_skipping(tmp_path):
    from support import free_port

    env = dict(os.environ, CLICKMASK_TEST_POSTGRES_URL=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "postgresql",
         f"{Path(__file__).resolve()}::test_unique_constraints_hold"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "PostgreSQL is not reachable" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]
