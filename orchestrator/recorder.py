"""Recording clicks and their masks off the request path.

The serving code calls `Recorder.record(click)`, which only puts the click on a bounded queue and never waits for
the database. A writer thread takes what has queued up and writes it in one short transaction per batch, and lets a
batch gather for up to `linger_s` after its first click: the writer runs in the serving process, on its cores and
under the GIL its request path needs, and a transaction per click costs it three times the CPU (at 20 clicks a
second, 2.3 against 0.8 ms per click on SQLite, 3.4 against 1.0 on PostgreSQL: tests/bench_recording.py
--writer-cpu). A clean `stop()` writes everything still queued. When the database is down, the writer keeps the
batch and tries again, less and less often (every `MAX_RETRY_DELAY_S` at most), until the database is back, so an
outage loses no queued click; meanwhile new clicks queue up to the bound, and when the queue is full they are
dropped at once. A stopping recorder gives a batch `attempts` tries at most. Every drop is counted, logged, and
shown by `status()`, so an outage is visible without making an annotator wait.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, tuple_
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .db import Click, Image, InteractionSession, ModelVersion, PredictedMask, Project
from .db.engine import conflict_free_insert
from integrations.masks import CocoRle

log = logging.getLogger(__name__)

CACHE_LIMIT = 50_000  # ids remembered per kind; cleared when exceeded (a cache miss only costs a query)
DROP_LOG_INTERVAL_S = 10.0
MAX_RETRY_DELAY_S = 5.0  # how long a writer waiting for the database sleeps between tries, at most


@dataclass(frozen=True, slots=True)
class ClickRecord:
    """One answered click. `session_key` names the object being segmented (chosen by the server, e.g. a UUID);
    `seq` is the click's 1-based order in it; x, y are image pixels; `mask` is the answer as COCO RLE."""

    project: int  # Label Studio project id
    image_uri: str
    image_width: int
    image_height: int
    session_key: str
    seq: int
    x: float
    y: float
    positive: bool
    clicked_at: datetime
    mask: CocoRle | None = None
    score: float | None = None
    latency_ms: float | None = None
    model_version: str | None = None
    annotator: str | None = None
    label: str | None = None
    image_hash: str | None = None

    def __post_init__(self) -> None:
        # Cheap checks that would otherwise fail a whole batch later, away from the code that made the mistake.
        if self.clicked_at.tzinfo is None:
            raise ValueError("clicked_at must be timezone-aware")
        if not 0 < len(self.session_key) <= 64:
            raise ValueError("session_key must be 1 to 64 characters")
        if self.seq < 1:
            raise ValueError("seq starts at 1")


@dataclass(frozen=True)
class RecorderStatus:
    healthy: bool  # False after a failed write, until a write succeeds
    running: bool
    queued: int  # waiting to be written: in the queue or in the batch the writer holds
    capacity: int  # clicks the queue holds before new ones are dropped (CLICKMASK_RECORDER_QUEUE_SIZE)
    recorded: int
    dropped: int
    last_error: str | None


class Recorder:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        queue_size: int = 10_000,
        batch_size: int = 500,
        attempts: int = 2,  # tries per batch once stopping
        retry_delay_s: float = 0.5,
        linger_s: float = 0.25,  # how long a batch may wait for more clicks after its first
    ):
        self.session_factory = session_factory
        self.queue: queue.Queue[ClickRecord] = queue.Queue(maxsize=queue_size)
        self.batch_size, self.attempts, self.retry_delay_s = batch_size, attempts, retry_delay_s
        self.linger_s = linger_s
        self.lock = threading.Lock()
        self.recorded = self.dropped = 0
        self.healthy, self.last_error = True, None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_drop_log = 0.0
        self.ids: dict[str, dict] = {"project": {}, "image": {}, "session": {}, "version": {}}

    # ---- the caller's side: never blocks

    def start(self) -> Recorder:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="clickmask-recorder", daemon=True)
            self.thread.start()
        return self

    def record(self, click: ClickRecord) -> bool:
        """Queue a click for writing; False if it was dropped (recorder stopped or queue full)."""
        if self.stopping.is_set():
            self._drop(1, "the recorder is stopped")
            return False
        try:
            self.queue.put_nowait(click)
        except queue.Full:
            self._drop(1, f"the queue is full ({self.queue.maxsize} clicks waiting; database slow or down)")
            return False
        return True

    def status(self) -> RecorderStatus:
        with self.lock:
            return RecorderStatus(self.healthy, bool(self.thread and self.thread.is_alive()), self.waiting(),
                                  self.queue.maxsize, self.recorded, self.dropped, self.last_error)

    def waiting(self) -> int:
        """Clicks taken but not yet written or dropped (a click leaves the count when its batch is done with)."""
        with self.queue.mutex:
            return self.queue.unfinished_tasks

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every click queued so far is written or dropped; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.queue.all_tasks_done.wait(remaining)
        return True

    def stop(self, timeout: float = 30.0) -> RecorderStatus:
        """Stop taking clicks and write the queued ones; what cannot be written in `timeout` is counted dropped."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)
            # Left over: clicks not written in time, or queued by a record() racing with stop() after the writer
            # had finished. Counted, so nothing is lost silently.
            reason = f"not written within {timeout:.0f} s of stopping" if self.thread.is_alive() else "queued too late"
            self._drop(self._drain_queue(), reason, force_log=True)
        else:
            self._drop(self._drain_queue(), "the recorder was never started", force_log=True)
        return self.status()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the writer thread

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._write_with_retries(batch)
                for _ in batch:
                    self.queue.task_done()
            elif self.stopping.is_set():
                return

    def _take(self) -> list[ClickRecord]:
        try:
            batch = [self.queue.get(timeout=0.05)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.linger_s
        # A batch never holds more than the queue may: what waits for the database stays within twice the bound.
        limit = min(self.batch_size, self.queue.maxsize) if self.queue.maxsize > 0 else self.batch_size
        while len(batch) < limit:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.queue.get(timeout=remaining) if remaining > 0 and not self.stopping.is_set()
                             else self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_with_retries(self, batch: list[ClickRecord]) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                self._write(batch)
                self._set_health(True, None, len(batch))
                return
            except (OperationalError, InterfaceError) as exc:
                self._set_health(False, f"database unavailable: {first_line(exc)}")
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    self._set_health(False, f"database connection lost: {first_line(exc)}")
                else:  # the data, not the database: do not retry, save what can be saved
                    self._write_one_by_one(batch)
                    return
            except (SQLAlchemyError, ValueError, TypeError):
                self._write_one_by_one(batch)
                return
            # The database is away: keep the batch until it is back (the queue's bound caps what waits). Only a
            # stopping recorder gives up, so that shutdown never waits through an outage.
            if self.stopping.is_set() and attempt >= self.attempts:
                break
            self.stopping.wait(min(self.retry_delay_s * attempt, MAX_RETRY_DELAY_S))
        self._drop(len(batch), self.last_error or "database unavailable", force_log=True)

    def _write_one_by_one(self, batch: list[ClickRecord]) -> None:
        for click in batch:
            try:
                self._write([click])
                self._set_health(True, None, 1)
            except (SQLAlchemyError, ValueError, TypeError) as exc:
                self._drop(1, f"click {click.session_key}#{click.seq} refused by the database: {first_line(exc)}")

    def _write(self, batch: list[ClickRecord]) -> None:
        learned: dict[str, dict] = {kind: {} for kind in self.ids}
        with self.session_factory.begin() as session:
            ids = Resolver(session, self.ids, learned)
            projects = ids.resolve("project", Project, ["ls_project_id"], [{"ls_project_id": c.project} for c in batch])
            images = ids.resolve("image", Image, ["project_id", "uri"], [
                {"project_id": projects[(c.project,)], "uri": c.image_uri, "width": c.image_width,
                 "height": c.image_height, "content_hash": c.image_hash} for c in batch])
            versions = ids.resolve("version", ModelVersion, ["name"], [
                {"name": c.model_version, "status": "unknown"} for c in batch if c.model_version])
            sessions = ids.resolve("session", InteractionSession, ["key"], [
                {"key": c.session_key, "project_id": projects[(c.project,)],
                 "image_id": images[(projects[(c.project,)], c.image_uri)], "annotator": c.annotator,
                 "label": c.label, "started_at": c.clicked_at} for c in batch])
            click_ids = session.scalars(
                insert(Click).returning(Click.id, sort_by_parameter_order=True),
                [{"session_id": sessions[(c.session_key,)], "seq": c.seq, "x": c.x, "y": c.y,
                  "positive": c.positive, "clicked_at": c.clicked_at,
                  "model_version_id": versions.get((c.model_version,))} for c in batch],
            ).all()
            masks = [
                {"click_id": click_id, "height": c.mask.height, "width": c.mask.width, "rle_counts": c.mask.counts,
                 "area": c.mask.area, "score": c.score, "latency_ms": c.latency_ms}
                for click_id, c in zip(click_ids, batch) if c.mask is not None
            ]
            if masks:
                session.execute(insert(PredictedMask), masks)
        # Only ids from a committed transaction may be remembered.
        for kind, found in learned.items():
            if len(self.ids[kind]) + len(found) > CACHE_LIMIT:
                self.ids[kind].clear()
            self.ids[kind].update(found)

    # ---- bookkeeping

    def _set_health(self, healthy: bool, error: str | None, recorded: int = 0) -> None:
        with self.lock:
            if not healthy and self.healthy:
                log.error("recording clicks failed: %s", error)
            elif healthy and not self.healthy:
                log.warning("recording clicks works again")
            self.healthy, self.recorded = healthy, self.recorded + recorded
            if error:
                self.last_error = error

    def _drop(self, count: int, reason: str, force_log: bool = False) -> None:
        if count <= 0:
            return
        with self.lock:
            self.dropped += count
            now = time.monotonic()
            # A full queue drops on every click: log a running total now and then rather than a line per click.
            if force_log or now - self.last_drop_log >= DROP_LOG_INTERVAL_S:
                self.last_drop_log = now
                log.warning("dropped %d click(s): %s (%d dropped in total)", count, reason, self.dropped)

    def _drain_queue(self) -> int:
        count = 0
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return count
            self.queue.task_done()
            count += 1


class Resolver:
    """Ids of the rows a batch refers to, creating the missing ones. Safe against another writer creating the same
    row at the same time: inserts skip conflicts, and ids are read back afterwards."""

    def __init__(self, session: Session, cache: dict[str, dict], learned: dict[str, dict]):
        self.session, self.cache, self.learned = session, cache, learned

    def resolve(self, kind: str, model, key_columns: list[str], rows: list[dict]) -> dict[tuple, int]:
        known = {**self.cache[kind], **self.learned[kind]}
        wanted = {}
        for row in rows:
            key = tuple(row[c] for c in key_columns)
            if key not in known:
                wanted.setdefault(key, row)
        if wanted:
            found = self._lookup(model, key_columns, list(wanted))
            missing = [row for key, row in wanted.items() if key not in found]
            if missing:
                self.session.execute(conflict_free_insert(self.session, model, key_columns), missing)
                found.update(self._lookup(model, key_columns, [k for k in wanted if k not in found]))
            self.learned[kind].update(found)
            known.update(found)
        return known

    def _lookup(self, model, key_columns: list[str], keys: list[tuple]) -> dict[tuple, int]:
        columns = [getattr(model, c) for c in key_columns]
        condition = columns[0].in_([k[0] for k in keys]) if len(columns) == 1 else tuple_(*columns).in_(keys)
        return {tuple(row[:-1]): row[-1] for row in self.session.execute(select(*columns, model.id).where(condition))}


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:300] if text else exc.__class__.__name__
