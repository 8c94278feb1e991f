"""Load benchmark (not a test; pytest does not collect bench_*.py): 16 simulated annotators clicking on different
images for minutes against the served backend, with the memory of the ingress and the model replica sampled
throughout.

What runs: as tests/bench_serving.py (whose pieces this reuses): a local Ray (loopback) and Ray Serve with the
backend as `clickmask serve` deploys it (the bundled base model, one replica, clicks recorded into a SQLite file),
the davis345 images (854x480) on a loopback HTTP server, and clicks placed beforehand by the NoC clicker with the
base model's own answers. Annotator i works through its own images (i, i + N, i + 2N, ... of --images), object after
object, each click a request carrying the object's whole click history; at the end of its images it starts again
with new object keys (the images may still be cached). Each annotator waits --think-s between an answer and its
next click (an annotator looks at the mask before clicking again; 0: as fast as the backend answers). A run ends
after --duration seconds or --max-clicks clicks per annotator, whichever comes first.

Sampled every --sample-s seconds through the deployments' stats(): the resident memory (RSS) of the ingress and of
the replica, the decoded images in the ingress's cache (bounded by --image-cache-mb, set low so that the bound is
reached within the run), the images and objects the replica holds (at most IMAGES_PER_REPLICA images and
OBJECTS_PER_IMAGE objects per image), and the recorder's queue and drops.

Reported per run: clicks, errors, clicks/s, p50/p95/max latency overall and per minute (a drift would show there),
and memory: RSS after the first minute and at the end, the largest cache and state sizes against their bounds.

    nice -n 5 .venv/bin/python tests/bench_load.py --json bench_load.json
Smoke run (about 3 minutes on a busy machine):
    nice -n 10 .venv/bin/python tests/bench_load.py --annotators 4 --images 8 --duration 20 --think-s 0.5 \\
        --json /tmp/bench_load_smoke.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime, UTC
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_serving import (APP, DAVIS, ObjectScript, Run, click_scripts, deploy, predict_body, start_serving,
                           stop_serving, timed_post, warm_up)

BAR_P95_MS = 80.0


def annotate(run: Run, lock: threading.Lock, predict_url: str, image_url, scripts: list[ObjectScript], tag: str,
             max_clicks: int, deadline: float, think_s: float, timeout: float, log: list) -> None:
    """One annotator: its objects in order, round after round, until the deadline or max_clicks."""
    session, done, seen, lap = requests.Session(), 0, set(), 0
    while True:
        for n, script in enumerate(scripts):
            for k in range(1, len(script.clicks) + 1):
                if done >= max_clicks or time.monotonic() > deadline:
                    return
                body = predict_body(script, image_url(script), 1000 + n, k, f"{tag}-{lap}-{n}")
                ms, error = timed_post(session, predict_url, body, None, timeout)
                first = (script.name, lap) not in seen
                with lock:
                    run.add(ms, first, error)
                    log.append((time.monotonic(), ms, error))
                seen.add((script.name, lap))
                done += 1
                if think_s:
                    time.sleep(think_s)
        lap += 1


class Sampler(threading.Thread):
    """Every `every` seconds, the stats() of the ingress and the model replica."""

    def __init__(self, every: float):
        super().__init__(daemon=True)
        from ray import serve

        self.ingress = serve.get_deployment_handle("Backend", APP)
        self.model = serve.get_deployment_handle("ClickModel", APP)
        self.every, self.samples, self.stop = every, [], threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> dict:
        ingress, model = self.ingress.stats.remote().result(), self.model.stats.remote().result()
        return {"t_s": round(time.monotonic() - self.t0, 1), "ingress": ingress, "replica": model}

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # a sample that failed is reported, the run goes on
                self.samples.append({"t_s": round(time.monotonic() - self.t0, 1), "error": repr(exc)[:200]})


def per_minute(log: list, t0: float) -> list[dict]:
    rows = []
    for minute in range(int((max((t for t, _, _ in log), default=t0) - t0) // 60) + 1):
        ms = [m for t, m, e in log if e is None and minute * 60 <= t - t0 < (minute + 1) * 60]
        errors = sum(1 for t, _, e in log if e is not None and minute * 60 <= t - t0 < (minute + 1) * 60)
        if ms:
            rows.append({"minute": minute + 1, "clicks": len(ms), "errors": errors,
                         "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))})
    return rows


def memory_summary(samples: list[dict], start_s: float, end_s: float) -> dict:
    """RSS after the first minute of the run and at its end; the largest sizes against their bounds."""
    from workers.serving import IMAGES_PER_REPLICA, OBJECTS_PER_IMAGE

    good = [s for s in samples if "error" not in s and start_s <= s["t_s"] <= end_s]
    if not good:
        return {"samples": 0}
    settled = [s for s in good if s["t_s"] >= start_s + 60] or good
    mb = 2 ** 20

    def rss(s, part):
        return s[part]["rss_bytes"] / mb

    return {
        "samples": len(good),
        "ingress_rss_mb": {"after_1_min": rss(settled[0], "ingress"), "end": rss(good[-1], "ingress"),
                           "max": max(rss(s, "ingress") for s in good)},
        "replica_rss_mb": {"after_1_min": rss(settled[0], "replica"), "end": rss(good[-1], "replica"),
                           "max": max(rss(s, "replica") for s in good)},
        "image_cache_mb": {"max": max(s["ingress"]["image_cache_bytes"] for s in good) / mb,
                           "bound": good[0]["ingress"]["image_cache_max_bytes"] / mb,
                           "max_images": max(s["ingress"]["image_cache_images"] for s in good)},
        "replica_images": {"max": max(s["replica"]["images"] for s in good), "bound": IMAGES_PER_REPLICA},
        "replica_objects_per_image": {"max": max(s["replica"]["max_objects_per_image"] for s in good),
                                      "bound": OBJECTS_PER_IMAGE},
        "replica_objects": {"max": max(s["replica"]["objects"] for s in good)},
        "replica_state_mb": {"max": max((s["replica"]["object_bytes"] + s["replica"]["image_bytes"]) / mb
                                        for s in good)},
        "recorder": {k: good[-1]["ingress"]["recorder"][k] for k in ("recorded", "dropped", "queued", "healthy")}
        if good[-1]["ingress"]["recorder"] else None,
        "max_recorder_queue": max((s["ingress"]["recorder"] or {}).get("queued", 0) for s in good),
    }


def print_run(row: dict) -> None:
    print(f"{row['run']}: {row['clicks']} clicks, {row['errors']} errors, {row['clicks_per_s']:.1f} clicks/s, "
          f"p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, max {row['max_ms']:.1f} ms "
          f"(p95 of later clicks {row['p95_later_ms']:.1f} ms), {row['wall_s']:.0f} s")
    for m in row["per_minute"]:
        print(f"  minute {m['minute']}: {m['clicks']} clicks, {m['errors']} errors, p50 {m['p50_ms']:.1f} ms, "
              f"p95 {m['p95_ms']:.1f} ms")
    mem = row["memory"]
    if mem.get("samples"):
        for part in ("ingress_rss_mb", "replica_rss_mb"):
            v = mem[part]
            print(f"  {part}: {v['after_1_min']:.0f} after the first minute, {v['end']:.0f} at the end, "
                  f"max {v['max']:.0f}")
        c = mem["image_cache_mb"]
        print(f"  image cache: max {c['max']:.1f} MB ({c['max_images']} images) of {c['bound']:.0f} MB; replica: "
              f"max {mem['replica_images']['max']} images of {mem['replica_images']['bound']}, max "
              f"{mem['replica_objects_per_image']['max']} objects per image of "
              f"{mem['replica_objects_per_image']['bound']}, state max {mem['replica_state_mb']['max']:.1f} MB; "
              f"recorder {mem['recorder']}, queue max {mem['max_recorder_queue']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DAVIS, help="dataset folder (default: shared davis345)")
    p.add_argument("--annotators", type=int, default=16)
    p.add_argument("--images", type=int, default=160, help="images, shared out among the annotators (default 160)")
    p.add_argument("--clicks", type=int, default=5, help="NoC clicks per object (default 5)")
    p.add_argument("--think-s", default="1,0", help="pause after each answer, one run per value (default 1,0)")
    p.add_argument("--duration", type=float, default=180.0, help="seconds per run at most (default 180)")
    p.add_argument("--max-clicks", type=int, default=2000, help="clicks per annotator per run at most")
    p.add_argument("--image-cache-mb", type=float, default=64.0, help="the ingress's image cache (default 64)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--json", type=Path, help="write the figures and samples here")
    args = p.parse_args(argv)
    if args.images < args.annotators:
        p.error("--images must be at least --annotators (every annotator has images of its own)")

    from workers.model.datasets import scan

    entries = [e for e in scan(args.data) if e.mask_paths][: args.images + 1]
    t0 = time.perf_counter()
    print(f"placing NoC clicks with the base model on {len(entries)} images ...", flush=True)
    scripts = click_scripts(entries, args.clicks)
    print(f"  {sum(len(s.clicks) for s in scripts)} clicks in {time.perf_counter() - t0:.0f} s", flush=True)
    warm, pool = scripts[0], scripts[1:]
    groups = [pool[i:: args.annotators] for i in range(args.annotators)]

    from alembic import command

    from image_server import ImageServer
    from integrations.images import ImageSettings
    from migrations import alembic_config

    work = Path(tempfile.mkdtemp(prefix="cm-bench-load-"))
    db_url = f"sqlite:///{work / 'clickmask.db'}"
    command.upgrade(alembic_config(db_url), "head")
    images = ImageServer(args.data / "images")
    meta = {"started_utc": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()},
            "nice": os.nice(0)}
    rows, sampler = [], None
    try:
        settings = ImageSettings(allowed_hosts=(images.host,), cache_bytes=int(args.image_cache_mb * 2 ** 20))
        predict_url = start_serving()

        def image_url(script: ObjectScript) -> str:
            return images.url(script.name)

        print("deploying the backend with 1 replica ...", flush=True)
        deploy(1, settings, db_url)
        warm_up(predict_url, image_url, warm, args.timeout, 1)
        sampler = Sampler(args.sample_s)
        sampler.samples.append(sampler.sample())
        sampler.start()
        for think in [float(t) for t in args.think_s.split(",") if t]:
            run = Run(f"{args.annotators} annotators, think {think:g} s", annotators=args.annotators)
            lock, log = threading.Lock(), []
            deadline = time.monotonic() + args.duration
            threads = [threading.Thread(target=annotate, args=(run, lock, predict_url, image_url, group,
                                                               f"t{think}-a{i}", args.max_clicks, deadline, think,
                                                               args.timeout, log))
                       for i, group in enumerate(groups)]
            run.started, run.load_before = datetime.now(UTC).isoformat(timespec="seconds"), os.getloadavg()
            start_s, wall0 = time.monotonic() - sampler.t0, time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            run.wall_s, run.load_after = time.monotonic() - wall0, os.getloadavg()
            row = run.summary()
            row.update(think_s=think, per_minute=per_minute(log, wall0),
                       memory=memory_summary(sampler.samples, start_s, time.monotonic() - sampler.t0))
            rows.append(row)
            print_run(row)
        sampler.stop.set()
        sampler.join()
        sampler.samples.append(sampler.sample())
    finally:
        stop_serving()
        images.stop()
    meta["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["loadavg_at_end"] = os.getloadavg()
    print()
    print(f"started {meta['started_utc']}, load average at start {meta['loadavg_at_start']}, {meta['cpus']} CPUs")
    for row in rows:
        print_run(row)
        print(f"  errors: {'PASS' if row['errors'] == 0 else 'FAIL'}; p95 <= {BAR_P95_MS:g} ms: "
              f"{'PASS' if row['p95_ms'] <= BAR_P95_MS else 'FAIL (measured degradation above)'}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "runs": rows, "samples": sampler.samples if sampler else []},
                                        indent=1, default=str))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
