"""Benchmark of click recording (not a test; pytest does not collect bench_*.py).

1. Overhead on the caller per click: what the serving code adds to each answered click to have it recorded,
   i.e. encoding the predicted mask as COCO RLE, building the record and queueing it, measured while the writer
   thread is writing to the database at the same time. Clicks arrive at a steady rate (--rate per second).
2. Bulk recording: how many clicks, each with its mask, the writer gets into the database per second when a large
   backlog is queued at once (time from the first record() to the end of a clean stop, all rows checked).

3. Fleet load (--fleet, PostgreSQL): clicks with their masks arriving at a steady rate (--fleet-rate, 1,000 per
   second by default: 1,000 annotators clicking every second or so), spread over --fleet-writers recorders, each in
   its own process with its own engine and connection pool, as each ingress replica of a fleet has. Reports the
   rate written while the clicks kept coming, the click-to-commit latency (from record() to the end of the
   transaction that wrote it: median, p95, max), the transaction time, the clicks left queued when the load
   stopped, the connections the database saw, and the disk the rows took per click.

4. Writer CPU (--writer-cpu): the CPU time the writer thread spends per click when clicks come one at a time at an
   annotator's pace (--pace per second, as one busy ingress sees them), with the writer sending each click as it
   comes (linger 0) and letting a batch gather (the default linger), side by side, --rounds times. That thread
   shares the ingress's GIL and cores with the request path.

Both on a SQLite file and on a throwaway PostgreSQL database (CLICKMASK_TEST_POSTGRES_URL or the local default).
Run: nice -n 10 .venv/bin/python tests/bench_recording.py
Fleet: nice -n 10 .venv/bin/python tests/bench_recording.py --fleet --fleet-writers 1,2,4
Writer CPU: .venv/bin/python tests/bench_recording.py --writer-cpu
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, UTC
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alembic import command  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from migrations import alembic_config  # noqa: E402
from orchestrator.db import Click, PredictedMask, make_engine, make_session_factory  # noqa: E402
from integrations.masks import encode  # noqa: E402
from orchestrator.recorder import ClickRecord, Recorder  # noqa: E402
from store_support import create_database, drop_database, postgres_server_url  # noqa: E402

H, W = 480, 854  # a DAVIS frame


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
        clicked_at=datetime.now(UTC), mask=mask_rle, score=0.9, latency_ms=42.0,
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


def writer_cpu(session_factory, clicks: int, pace: float, linger_s: float, first: int) -> tuple[float, int]:
    """(writer CPU ms per click, transactions) for `clicks` clicks recorded one at a time, `pace` per second."""
    rle = encode(blob_mask(first))
    spent, transactions = [0.0], [0]

    class MeteredRecorder(Recorder):
        def _run(self):
            t0 = time.thread_time()
            try:
                super()._run()
            finally:
                spent[0] = time.thread_time() - t0

        def _write(self, batch):
            transactions[0] += 1
            super()._write(batch)

    recorder = MeteredRecorder(session_factory, linger_s=linger_s).start()
    next_at = time.perf_counter()
    for i in range(first, first + clicks):
        recorder.record(make_click(i, rle))
        next_at += 1.0 / pace
        time.sleep(max(0.0, next_at - time.perf_counter()))
    status = recorder.stop()
    assert status.dropped == 0 and status.recorded == clicks, status
    return 1000 * spent[0] / clicks, transactions[0]


def run_writer_cpu(name: str, url: str, args) -> None:
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        pooled: dict[float, list[float]] = {0.0: [], Recorder(factory).linger_s: []}
        for round_ in range(1, args.rounds + 1):
            for linger in pooled:
                ms, transactions = writer_cpu(factory, args.pace_clicks, args.pace, linger,
                                              first=(round_ * 10 + int(linger * 100)) * 10**5)
                pooled[linger].append(ms)
                print(f"{name:10s} round {round_}, linger {linger:g} s: {args.pace_clicks} clicks at "
                      f"{args.pace:g}/s in {transactions} transactions, writer CPU {ms:.2f} ms per click", flush=True)
        for linger, values in pooled.items():
            print(f"{name:10s} linger {linger:g} s: writer CPU per click, median of {len(values)} rounds "
                  f"{statistics.median(values):.2f} ms (rounds: {', '.join(f'{v:.2f}' for v in values)})",
                  flush=True)
    finally:
        engine.dispose()


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


def fleet_writer(url: str, rate: float, seconds: float, first: int, pool: tuple[int, int], out) -> None:
    """One ingress replica's recorder (in its own process): clicks recorded at `rate` for `seconds`, paced in
    10 ms steps; puts its figures on `out`."""
    engine = make_engine(url, pool_size=pool[0], max_overflow=pool[1])
    commits: list[tuple[float, float]] = []  # (monotonic time of the commit, click-to-commit ms) per click
    transactions: list[float] = []

    class TimedRecorder(Recorder):
        def _write(self, batch):
            t0 = time.perf_counter()
            super()._write(batch)
            transactions.append((time.perf_counter() - t0) * 1000)
            now, wall = time.monotonic(), datetime.now(UTC)
            commits.extend((now, (wall - c.clicked_at).total_seconds() * 1000) for c in batch)

    rles = [encode(blob_mask(i)) for i in range(64)]
    recorder = TimedRecorder(make_session_factory(engine), queue_size=100_000).start()
    step, i = 0.01, first
    start = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        due = first + int(rate * (now - start))  # by the clock: a late step catches up
        while i < due:
            recorder.record(make_click(i, rles[i % len(rles)]))
            i += 1
        time.sleep(max(0.0, step - (time.monotonic() - now)))
    queued_at_end = recorder.queue.qsize()
    status = recorder.stop(timeout=300)
    engine.dispose()
    in_window = [ms for t, ms in commits if t <= end]
    out.put({"offered": i - first, "written_in_window": len(in_window), "seconds": seconds,
             "latencies_ms": [ms for _, ms in commits], "transactions_ms": transactions,
             "queued_at_end": queued_at_end, "dropped": status.dropped, "recorded": status.recorded})


def connections(url: str, database: str, stop: threading.Event, peak: list[int]) -> None:
    """Sample the connections open on the benchmark's database every 0.2 s; keep the peak."""
    from sqlalchemy import text

    engine = make_engine(url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")  # a fresh view each time
    with engine.connect() as conn:
        while not stop.is_set():
            count = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                                 {"d": database}).scalar_one()
            peak[0] = max(peak[0], int(count) - 1)  # not this sampler's own
            stop.wait(0.2)
    engine.dispose()


def fleet(url: str, database: str, rate: float, writers: int, seconds: float, pool: tuple[int, int],
          first: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=connections, args=(url, database, stop, peak), daemon=True)
    sampler.start()
    procs = [ctx.Process(target=fleet_writer, args=(url, rate / writers, seconds, first + w * 10**7, pool, out))
             for w in range(writers)]
    for p in procs:
        p.start()
    parts = [out.get() for _ in procs]
    for p in procs:
        p.join()
    stop.set()
    sampler.join()
    latencies = [ms for part in parts for ms in part["latencies_ms"]]
    transactions = [ms for part in parts for ms in part["transactions_ms"]]
    return {"writers": writers, "offered_per_s": sum(p["offered"] for p in parts) / seconds,
            "written_per_s": sum(p["written_in_window"] for p in parts) / seconds,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "max_ms": max(latencies),
            "transaction_p95_ms": percentile(transactions, 95), "transactions": len(transactions),
            "queued_at_end": sum(p["queued_at_end"] for p in parts),
            "dropped": sum(p["dropped"] for p in parts), "recorded": sum(p["recorded"] for p in parts),
            "peak_connections": peak[0]}


def disk_per_click(url: str) -> float:
    """Bytes on disk (tables, indexes, TOAST) of clicks and predicted masks, per click."""
    from sqlalchemy import text

    engine = make_engine(url)
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_total_relation_size('clicks') + pg_total_relation_size('predicted_masks')"
                                 )).scalar_one()
        count = conn.execute(select(func.count()).select_from(Click)).scalar_one()
    engine.dispose()
    return size / count


def run_fleet(args) -> None:
    url = create_database(postgres_server_url(), prefix=f"clickmask_bench_{uuid.uuid4().hex[:4]}")
    try:
        text_url = url.render_as_string(hide_password=False)
        command.upgrade(alembic_config(text_url), "head")
        pool = (args.pool_size, args.max_overflow)
        print(f"fleet: {args.fleet_rate:g} clicks/s with {H}x{W} masks for {args.fleet_seconds:g} s per run, "
              f"pool_size={pool[0]} max_overflow={pool[1]} per writer", flush=True)
        for n, writers in enumerate(int(w) for w in args.fleet_writers.split(",")):
            r = fleet(text_url, url.database, args.fleet_rate, writers, args.fleet_seconds, pool, (n + 50) * 10**8)
            print(f"fleet {writers} writer(s): offered {r['offered_per_s']:.0f}/s, written {r['written_per_s']:.0f}/s "
                  f"while offered; click-to-commit p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, max "
                  f"{r['max_ms']:.0f} ms; transaction p95 {r['transaction_p95_ms']:.0f} ms over "
                  f"{r['transactions']}; queued at the end {r['queued_at_end']}, dropped {r['dropped']}; "
                  f"peak connections {r['peak_connections']}", flush=True)
        print(f"fleet: {disk_per_click(text_url):.0f} bytes on disk per click with its mask", flush=True)
    finally:
        drop_database(url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=2000, help="clicks timed per overhead round")
    parser.add_argument("--rate", type=float, default=200.0, help="clicks per second during the overhead run")
    parser.add_argument("--bulk", type=int, default=20000, help="clicks per bulk round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--fleet", action="store_true", help="only the fleet load on PostgreSQL")
    parser.add_argument("--fleet-rate", type=float, default=1000.0, help="clicks per second offered in all")
    parser.add_argument("--fleet-writers", default="1,2,4", help="recorders (ingress replicas) sharing the rate")
    parser.add_argument("--fleet-seconds", type=float, default=30.0)
    parser.add_argument("--pool-size", type=int, default=5, help="connection pool per writer (SQLAlchemy's default)")
    parser.add_argument("--max-overflow", type=int, default=10)
    parser.add_argument("--writer-cpu", action="store_true", help="only the writer's CPU per click, by linger")
    parser.add_argument("--pace", type=float, default=20.0, help="clicks per second for --writer-cpu")
    parser.add_argument("--pace-clicks", type=int, default=200, help="clicks per --writer-cpu round")
    args = parser.parse_args()
    print(f"clickmask recording benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    if args.fleet:
        run_fleet(args)
        return 0
    run = run_writer_cpu if args.writer_cpu else run_on
    for name in args.databases.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                run(name, f"sqlite:///{Path(tmp) / 'bench.db'}", args)
        elif name == "postgresql":
            url = create_database(postgres_server_url(), prefix=f"clickmask_bench_{uuid.uuid4().hex[:4]}")
            try:
                run(name, url.render_as_string(hide_password=False), args)
            finally:
                drop_database(url)
        else:
            parser.error(f"unknown database {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
