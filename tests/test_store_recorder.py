"""Recording clicks off the request path, on SQLite and PostgreSQL: nothing lost on a clean stop, drops counted
and logged when the database is down, never a blocked caller."""
import time
from datetime import datetime, timedelta, UTC

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select, text

from orchestrator.db import Click, Image, InteractionSession, ModelVersion, PredictedMask, make_engine
from orchestrator.db import make_session_factory
from integrations.masks import CocoRle, decode, encode
from orchestrator.recorder import ClickRecord, Recorder
from support import wait_for

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def mask_for(i: int, h: int = 60, w: int = 80) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[5 : 10 + i % 40, 3 : 20 + i % 50] = True
    return mask


def click(i: int, session: str = "s-1", image: str = "s3://bucket/a.png", with_mask: bool = True, **changes):
    values = dict(
        project=7, image_uri=image, image_width=80, image_height=60, session_key=session, seq=i + 1,
        x=10.0 + i, y=20.5, positive=i % 3 != 2, clicked_at=T0 + timedelta(seconds=i),
        mask=encode(mask_for(i)) if with_mask else None, score=0.5 + i / 1000, latency_ms=30.0 + i,
        model_version="base-1", annotator="ann@example.com", label="Cat",
    )
    values.update(changes)
    return ClickRecord(**values)


def stored_rle(mask) -> CocoRle:
    return CocoRle(mask.rle_counts, mask.height, mask.width, mask.area)


def count(session_factory, model) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_clicks_and_masks_are_recorded(session_factory):
    with Recorder(session_factory) as recorder:
        for i in range(30):
            assert recorder.record(click(i, session=f"s-{i % 3}", image=f"img-{i % 2}.png", with_mask=i != 4))
        assert recorder.flush(timeout=30)
        status = recorder.status()
    assert (status.recorded, status.dropped, status.healthy) == (30, 0, True)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 2
        assert session.scalar(select(func.count()).select_from(InteractionSession)) == 3
        version = session.scalars(select(ModelVersion)).one()
        assert (version.name, version.status) == ("base-1", "unknown")
        clicks = session.scalars(select(Click).order_by(Click.seq)).all()
        assert [c.seq for c in clicks] == list(range(1, 31))
        for i, row in enumerate(clicks):
            expected = (10.0 + i, 20.5, i % 3 != 2, T0 + timedelta(seconds=i))
            assert (row.x, row.y, row.positive, row.clicked_at) == expected
            assert row.model_version_id == version.id
            if i == 4:
                assert row.mask is None
                continue
            assert np.array_equal(decode(stored_rle(row.mask)), mask_for(i))
            assert (row.mask.score, row.mask.latency_ms) == (pytest.approx(0.5 + i / 1000), 30.0 + i)
        first = session.scalars(select(InteractionSession).where(InteractionSession.key == "s-0")).one()
        assert (first.annotator, first.label, first.started_at) == ("ann@example.com", "Cat", T0)


def test_clicks_arriving_one_by_one_share_transactions(session_factory):
    """Each transaction costs the serving process CPU: clicks coming one at a time, as annotators send them, are
    gathered into a few batches (each waits at most linger_s), none lost."""
    batches = []

    class CountingRecorder(Recorder):
        def _write(self, batch):
            batches.append(len(batch))
            super()._write(batch)

    with CountingRecorder(session_factory, linger_s=1.0) as recorder:
        for i in range(20):  # one at a time: the next only once the writer has taken the last from the queue
            assert recorder.record(click(i))
            wait_for(lambda: recorder.queue.qsize() == 0, "the writer to take the click", timeout=30, every=0.005)
        assert recorder.flush(timeout=30)
    assert sum(batches) == 20 and len(batches) <= 3, batches
    assert count(session_factory, Click) == 20


def test_clean_stop_writes_everything_still_queued(session_factory):
    recorder = Recorder(session_factory, queue_size=5000, batch_size=200).start()
    for i in range(2000):
        assert recorder.record(click(i, session=f"s-{i // 10}", with_mask=i % 2 == 0))
    status = recorder.stop()
    assert (status.recorded, status.dropped, status.queued, status.running) == (2000, 0, 0, False)
    assert count(session_factory, Click) == 2000
    assert count(session_factory, PredictedMask) == 1000
    assert not recorder.record(click(0))  # stopped: refused, counted
    assert recorder.status().dropped == 1


def test_full_queue_drops_at_once_and_counts(session_factory, caplog):
    recorder = Recorder(session_factory, queue_size=5)
    results = [recorder.record(click(i)) for i in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert recorder.status().dropped == 3
    assert "queue is full" in caplog.text
    recorder.start()
    assert recorder.flush(timeout=30)
    assert recorder.stop().recorded == 5
    assert count(session_factory, Click) == 5


def test_a_bad_click_drops_only_itself(session_factory, caplog):
    recorder = Recorder(session_factory)
    for i in range(6):  # queued before the writer starts, so they form one batch
        recorder.record(click(i, positive=None) if i == 3 else click(i))
    status = recorder.start().stop()
    assert (status.recorded, status.dropped) == (5, 1)
    assert "s-1#4 refused by the database" in caplog.text
    with session_factory() as session:
        assert session.scalars(select(Click.seq).order_by(Click.seq)).all() == [1, 2, 3, 5, 6]


def test_two_recorders_share_images_sessions_and_versions(session_factory):
    # Two serving replicas recording clicks on the same object at the same time.
    first, second = Recorder(session_factory, batch_size=7).start(), Recorder(session_factory, batch_size=5).start()
    for i in range(200):
        (first if i % 2 else second).record(click(i, session=f"s-{i % 4}"))
    assert first.stop().recorded + second.stop().recorded == 200
    assert count(session_factory, Click) == 200
    assert count(session_factory, Image) == 1
    assert count(session_factory, InteractionSession) == 4
    assert count(session_factory, ModelVersion) == 1


def test_naive_click_time_is_refused_at_once():
    with pytest.raises(ValueError, match="timezone"):
        click(0, clicked_at=datetime(2026, 1, 1))


@pytest.fixture(params=["sqlite", "postgresql"])
def unreachable_database(request, tmp_path):
    """A database that refuses every connection, like a server that is down."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'c.db'}")  # the folder does not exist
    else:
        from support import free_port

        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    yield make_session_factory(engine)
    engine.dispose()


def test_database_outage_is_a_counted_logged_drop_not_a_blocked_caller(unreachable_database, caplog):
    # Retries slow enough that the writer takes at most a batch or two while the 100 calls run, even on a busy
    # machine: what is refused at the door then depends on the queue bound, not on thread scheduling.
    recorder = Recorder(unreachable_database, queue_size=10, attempts=2, retry_delay_s=0.5).start()
    started = time.perf_counter()
    accepted = [recorder.record(click(i)) for i in range(100)]
    elapsed = time.perf_counter() - started
    # Not a benchmark: a caller that waited for the database even once would take seconds here.
    assert elapsed < 1.0, f"100 record() calls took {elapsed:.2f} s"
    assert accepted.count(False) >= 80
    # Every accepted click still waits, whether in the queue or in the batch the writer keeps retrying.
    assert recorder.status().queued == accepted.count(True)
    status = recorder.stop(timeout=30)
    assert (status.recorded, status.dropped, status.healthy) == (0, 100, False)
    assert status.last_error.startswith("database unavailable")
    assert "recording clicks failed" in caplog.text and "dropped" in caplog.text


@pytest.mark.postgres
def test_recording_survives_lost_connections(postgres_database):
    from alembic import command

    from migrations import alembic_config
    from store_support import create_schema, drop_schema

    url = create_schema(postgres_database)
    command.upgrade(alembic_config(url.render_as_string(hide_password=False)), "head")
    engine = make_engine(url)
    recorder = Recorder(make_session_factory(engine), retry_delay_s=0.05).start()
    try:
        for i in range(50):
            recorder.record(click(i))
        assert recorder.flush(30)
        admin = create_engine(postgres_database, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            killed = connection.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalar()
        admin.dispose()
        assert killed >= 1  # the recorder's pooled connection was among them
        for i in range(50, 100):
            recorder.record(click(i))
        status = recorder.stop()
        assert (status.recorded, status.dropped) == (100, 0)
        assert count(make_session_factory(engine), Click) == 100
    finally:
        engine.dispose()
        drop_schema(url)
