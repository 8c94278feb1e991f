"""Benchmark of click recording (not a test; pytest does not collect bench_*.py).

1. Overhead on the caller per click: what the serving code adds to each answered click to have it recorded,
   i.e. encoding the predicted mask as COCO RLE, building the record and queueing it, measured while the writer
   thread is writing to the database at the same time. Clicks arrive at a steady rate (--rate per second).
2. Bulk recording: how many clicks, each with its mask, the writer gets into the database per second when a large
   backlog is queued at once (time from the first record() to the end of a clean stop, all rows checked).

Both on a SQLite file and on a throwaway PostgreSQL database (CLICKMASK_TEST_POSTGRES_URL or the local default).
Run: nice -n 10 .venv/bin/python tests/bench_recording.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alembic import command  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from migrations import alembic_config  # noqa: E402
from orchestrator.db import Click, PredictedMask, make_engine, make_session_factory  # noqa: E402
from orchestrator.masks import encode  # noqa: E402
from orchestrator.recorder import ClickRecord, Recorder  # noqa: E402
from store_support import create_database, drop_database, postgres_server_url  # noqa: E402

H, W = 480, 854  # the size DESIGN.md measured brush RLE on


def blob_mask(i: int) -> np.ndarray:
    """An object-like mask: an ellipse whose size and place change with i."""
    yy, xx = np.ogrid[:H, :W]
    cy, cx = 140 + (i * 37) % 200, 200 + (i * 53) % 450
    ry, rx = 40 + i % 60, 60 + i % 90
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_click(i: int, mask_rle) -> ClickRecord:
    return ClickRecord(
        project=1, image_uri=f"s3://bench/images/{i // 50}.jpg", image_width=W, image_height=H,
        session_key=f"bench-{i // 5}", seq=i % 5 + 1, x=float(i % W), y=float(i % H), positive=i % 4 != 3,
        clicked_at=datetime.now(timezone.utc), mask=mask_rle, score=0.9, latency_ms=42.0,
        model_version="base-1", annotator="bench", label="Object",
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def overhead(session_factory, clicks: int, rate: float, first: int, write: bool = True):
    """Per-click caller time (ms) for the whole recording path, and for queueing alone. With write=False nothing
    is queued and no writer runs: the same loop then shows how much of the figure is this machine's own noise."""
    masks = [blob_mask(i) for i in range(64)]
    total, queue_only = [], []
    recorder = Recorder(session_factory, queue_size=clicks + 1)
    if write:
        recorder.start()
    interval = 1.0 / rate
    next_at = time.perf_counter()
    for i in range(first, first + clicks):
        next_at += interval
        mask = masks[i % len(masks)]
        t0 = time.perf_counter_ns()
        rle = encode(mask)
        record = make_click(i, rle)
        t1 = time.perf_counter_ns()
        if write:
            recorder.record(record)
        t2 = time.perf_counter_ns()
        total.append((t2 - t0) / 1e6)
        queue_only.append((t2 - t1) / 1e6)
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    if write:
        status = recorder.stop()
        assert status.dropped == 0 and status.recorded == clicks, status
    return total, queue_only


def summary(values: list[float]) -> str:
    return (f"median {statistics.median(values):.3f} ms, p95 {percentile(values, 95):.3f} ms, "
            f"max {max(values):.3f} ms")


def bulk(session_factory, clicks: int, first: int) -> dict:
    rles = [encode(blob_mask(i)) for i in range(64)]
    # New sessions and images every round, as fresh labeling work would bring.
    records = [make_click(first + i, rles[i % len(rles)]) for i in range(clicks)]
    with session_factory() as session:
        before = session.scalar(select(func.count()).select_from(Click))
    recorder = Recorder(session_factory, queue_size=clicks + 1)
    started = time.perf_counter()
    recorder.start()
    for record in records:
        recorder.record(record)
    status = recorder.stop(timeout=600)
    elapsed = time.perf_counter() - started
    assert status.dropped == 0 and status.recorded == clicks, status
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Click)) - before == clicks
        assert session.scalar(select(func.count()).select_from(PredictedMask)) >= clicks
    return {"seconds": elapsed, "clicks_per_s": clicks / elapsed}


def run_on(name: str, url: str, args) -> None:
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        baseline, _ = overhead(factory, args.clicks, args.rate, first=0, write=False)
        print(f"{name:10s} baseline (mask encoding and record built, nothing queued or written): "
              f"{summary(baseline)}", flush=True)
        pooled, pooled_queue = [], []
        for round_ in range(1, args.rounds + 1):
            total, queue_only = overhead(factory, args.clicks, args.rate, first=round_ * 10**6)
            pooled += total
            pooled_queue += queue_only
            print(f"{name:10s} overhead round {round_}: {args.clicks} clicks at {args.rate:g}/s: {summary(total)}",
                  flush=True)
        print(f"{name:10s} overhead, all {len(pooled)} clicks: {summary(pooled)} "
              f"(of which queueing: {summary(pooled_queue)})", flush=True)
        for round_ in range(1, args.rounds + 1):
            b = bulk(factory, args.bulk, first=(args.rounds + round_) * 10**6)
            print(f"{name:10s} bulk round {round_}: {args.bulk} clicks with {H}x{W} masks in {b['seconds']:.2f} s "
                  f"= {b['clicks_per_s']:.0f} clicks/s", flush=True)
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=2000, help="clicks timed per overhead round")
    parser.add_argument("--rate", type=float, default=200.0, help="clicks per second during the overhead run")
    parser.add_argument("--bulk", type=int, default=20000, help="clicks per bulk round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"clickmask recording benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    for name in args.databases.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                run_on(name, f"sqlite:///{Path(tmp) / 'bench.db'}", args)
        elif name == "postgresql":
            url = create_database(postgres_server_url(), prefix=f"clickmask_bench_{uuid.uuid4().hex[:4]}")
            try:
                run_on(name, url.render_as_string(hide_password=False), args)
            finally:
                drop_database(url)
        else:
            parser.error(f"unknown database {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
