"""Serving benchmark (not a test; pytest does not collect bench_*.py): per-click latency and throughput of the
backend through its whole HTTP stack, on the davis345 images (854x480).

What runs: a local Ray (loopback) and Ray Serve with the backend as `clickmask serve` deploys it (the bundled base
model, clicks recorded into a SQLite file unless --no-db), the davis345 images served by a loopback HTTP server,
and a real Label Studio 1.23.2 (the cached install of tests/ls_support.py) for the path through Label Studio.

Clicks: for every object, the NoC protocol's simulated annotator (workers/model/clicker.py) places --clicks clicks
against the ground truth, given the base model's own answers (computed once, offline, before anything is timed, so
that the simulated annotators cost the machine nothing while they are timed). Each click is a new request carrying
the whole click history of its object, as Label Studio sends it; the first click on an image includes fetching and
decoding the image. Nothing is replayed: each run uses images (and so objects) no earlier run used.

1. Latency, one annotator, sequential: (a) POST /predict straight to the backend; (b) through Label Studio's
   interactive-annotating API (Label Studio fetches the task, calls the backend, passes the answer on; the backend
   fetches the uploaded image through Label Studio).
2. Throughput: 1, 4 and 8 simulated annotators (threads on loopback, each on its own images and objects, each
   at most --throughput-clicks clicks and --duration seconds), straight to the backend, on one replica and on two.

For every run: clicks/s (answered clicks over the run's wall time), p50 and p95 of the per-click latency (also
without each image's first click), and errors (transport errors, non-200 answers, answers without one brush mask).
Bars (the serving issue): backend p95 <= 80 ms per click, >= 15 clicks/s with 8 annotators, zero errors.

Run on an idle machine, from the repository root (5 minutes on this 2-core machine while busy: 1.5 placing the
clicks, 1 starting Label Studio, 2.5 of runs; less when idle; a first Label Studio install adds about 2):
    .venv/bin/python tests/bench_serving.py --json bench_serving.json
Smoke run with small counts on a busy machine (about 2 minutes):
    nice -n 10 .venv/bin/python tests/bench_serving.py --latency-images 4 --clicks 3 --throughput-clicks 12 \\
        --annotators 1,4 --replicas 1 --json /tmp/bench_serving_smoke.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ls_support import STANDARD_CONFIG, smart_keypoint  # noqa: E402
from support import DATASETS, free_port  # noqa: E402

DAVIS = DATASETS / "eval" / "davis345"
BARS = {"backend_p95_ms": 80.0, "clicks_per_s_8": 15.0, "errors": 0}
APP = "bench"


# ------------------------------------------------------------------------------------------------ click scripts


@dataclass
class ObjectScript:
    """One object: its image, size and the clicks (x, y, positive) in image pixels, first to last."""

    name: str
    path: Path
    width: int
    height: int
    clicks: list[tuple[float, float, bool]]


def click_scripts(entries, clicks: int) -> list[ObjectScript]:
    """The NoC clicker's clicks for each object, with the base model's answers fed back (one torch thread, as in
    a replica)."""
    import torch

    from workers.model.datasets import read_ignore, read_image, read_mask
    from workers.model.evaluator import evaluate_object
    from workers.model.predictor import load_predictor

    torch.set_num_threads(1)
    predictor = load_predictor("base")
    scripts = []
    for entry in entries:
        image = read_image(entry.image_path)
        predictor.set_image(image)
        for mask_path in entry.mask_paths:
            _, made, _, _ = evaluate_object(predictor, read_mask(mask_path), read_ignore(mask_path), clicks)
            scripts.append(ObjectScript(entry.image_path.name, entry.image_path, image.shape[1], image.shape[0],
                                        made))
    return scripts


def regions_for(script: ObjectScript, k: int, tag: str) -> list[dict]:
    """The smart keypoints of the first k clicks, in percent, as the labeling UI puts them in the context."""
    w, h = script.width, script.height
    return [smart_keypoint(x * 100 / w, y * 100 / h, w, h, positive=p, region_id=f"{tag}-{i}")
            for i, (x, y, p) in enumerate(script.clicks[:k])]


def predict_body(script: ObjectScript, image_url: str, task_id: int, k: int, tag: str) -> dict:
    """An interactive /predict body in the shape Label Studio 1.23.2 sends (the recorded request the tests replay)."""
    return {
        "tasks": [{"id": task_id, "data": {"image": image_url}, "annotations": [], "drafts": [], "predictions": [],
                   "meta": {}, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                   "is_labeled": False, "overlap": 1, "inner_id": task_id, "total_annotations": 0,
                   "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
                   "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1,
                   "updated_by": None, "file_upload": script.name, "comment_authors": []}],
        "project": "1.1767225600",
        "label_config": STANDARD_CONFIG,
        "params": {"login": None, "password": None, "context": {"result": regions_for(script, k, tag)}},
    }


def answer_error(status: int, answer: dict | None) -> str | None:
    """None for a good interactive answer (one brush mask), else what was wrong. Straight from the backend the
    answer is {"results": [prediction]}; through Label Studio it is {"data": prediction}."""
    if status != 200:
        return f"HTTP {status}"
    if not isinstance(answer, dict):
        return "not JSON"
    prediction = answer.get("data") if "data" in answer else (answer.get("results") or [None])[0]
    if not isinstance(prediction, dict) or answer.get("errors") or prediction.get("errors"):
        return f"errors: {str(answer.get('errors') or (prediction or {}).get('errors'))[:200]}"
    result = prediction.get("result") or []
    if len(result) != 1 or not result[0].get("value", {}).get("rle"):
        return "no brush mask"
    return None


# ------------------------------------------------------------------------------------------------------ timing


@dataclass
class Run:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    later_ms: list[float] = field(default_factory=list)  # without each image's first click
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    annotators: int = 1
    replicas: int = 1
    started: str = ""
    load_before: tuple = ()
    load_after: tuple = ()

    def add(self, ms: float, first: bool, error: str | None) -> None:
        if error:
            self.errors.append(error)
            return
        self.latencies_ms.append(ms)
        if not first:
            self.later_ms.append(ms)

    def summary(self) -> dict:
        def pct(values, q):
            return float(np.percentile(values, q)) if values else float("nan")

        n = len(self.latencies_ms)
        return {"run": self.name, "annotators": self.annotators, "replicas": self.replicas, "clicks": n,
                "errors": len(self.errors), "error_samples": sorted(set(self.errors))[:5],
                "wall_s": round(self.wall_s, 2), "clicks_per_s": n / self.wall_s if self.wall_s else float("nan"),
                "p50_ms": pct(self.latencies_ms, 50), "p95_ms": pct(self.latencies_ms, 95),
                "p95_later_ms": pct(self.later_ms, 95), "mean_ms": statistics.fmean(self.latencies_ms) if n else
                float("nan"), "max_ms": max(self.latencies_ms, default=float("nan")),
                "started_utc": self.started, "loadavg_before": self.load_before, "loadavg_after": self.load_after}


def timed_post(session: requests.Session, url: str, body: dict, headers: dict | None, timeout: float):
    """(milliseconds, error or None) of one request, the answer parsed as the client must."""
    t0 = time.perf_counter()
    try:
        response = session.post(url, json=body, headers=headers, timeout=timeout)
        answer = response.json() if response.content else None
        ms = (time.perf_counter() - t0) * 1000
        return ms, answer_error(response.status_code, answer)
    except (requests.RequestException, ValueError) as exc:
        return (time.perf_counter() - t0) * 1000, f"{type(exc).__name__}: {str(exc)[:120]}"


def annotate_direct(run: Run, lock: threading.Lock, predict_url: str, image_url, scripts: list[ObjectScript],
                    tag: str, max_clicks: int, deadline: float, timeout: float) -> None:
    """One simulated annotator straight at the backend: its objects in order, each click a request."""
    session, done, seen = requests.Session(), 0, set()
    for n, script in enumerate(scripts):
        for k in range(1, len(script.clicks) + 1):
            if done >= max_clicks or time.monotonic() > deadline:
                return
            body = predict_body(script, image_url(script), 1000 + n, k, f"{tag}-{n}")
            ms, error = timed_post(session, predict_url, body, None, timeout)
            with lock:
                run.add(ms, script.name not in seen, error)
            seen.add(script.name)
            done += 1


def throughput(name: str, predict_url: str, image_url, groups: list[list[ObjectScript]], replicas: int,
               max_clicks: int, duration: float, timeout: float) -> Run:
    run = Run(name, annotators=len(groups), replicas=replicas)
    lock = threading.Lock()
    deadline = time.monotonic() + duration
    threads = [threading.Thread(target=annotate_direct, args=(run, lock, predict_url, image_url, group,
                                                              f"{name}-a{i}", max_clicks, deadline, timeout))
               for i, group in enumerate(groups)]
    run.started, run.load_before = datetime.now(UTC).isoformat(timespec="seconds"), os.getloadavg()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall_s, run.load_after = time.perf_counter() - t0, os.getloadavg()
    return run


def latency_through_label_studio(studio, backend_id: int, tasks: dict, scripts: list[ObjectScript],
                                 timeout: float) -> Run:
    run = Run("latency via Label Studio")
    run.started, run.load_before = datetime.now(UTC).isoformat(timespec="seconds"), os.getloadavg()
    url = f"{studio.url}/api/ml/{backend_id}/interactive-annotating"
    t0 = time.perf_counter()
    for n, script in enumerate(scripts):
        for k in range(1, len(script.clicks) + 1):
            headers = studio._bearer()  # refreshed outside the timed call (access tokens last 5 minutes)
            body = {"task": tasks[script.name], "context": {"result": regions_for(script, k, f"ls-{n}")}}
            ms, error = timed_post(studio.session, url, body, headers, timeout)
            run.add(ms, k == 1, error)
    run.wall_s, run.load_after = time.perf_counter() - t0, os.getloadavg()
    return run


# ---------------------------------------------------------------------------------------------------- plumbing


def deploy(replicas: int, images, db_url: str | None) -> None:
    from ray import serve

    from orchestrator.serving.app import ServeConfig, build_app

    serve.run(build_app(ServeConfig(checkpoint="base", model_version="base", replicas=replicas, images=images,
                                    database_url=db_url)), name=APP, route_prefix="/")


def start_serving() -> str:
    """A local Ray (its own temp folder) and Serve's HTTP proxy on a free loopback port; the /predict URL."""
    from ray import serve

    from orchestrator.ray_runtime import start_ray

    start_ray(temp_dir=tempfile.mkdtemp(prefix="cm-ray-bench-"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}/predict"


def stop_serving() -> None:
    """Tear down the benchmark's Serve app and its local Ray, whatever state a failed run left them in."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    except Exception:
        pass
    if ray.is_initialized():
        ray.shutdown()


def warm_up(predict_url: str, image_url, script: ObjectScript, timeout: float, replicas: int) -> None:
    """First requests after a deploy (every replica's first prediction, the proxy's first route) are not timed."""
    session = requests.Session()
    for r in range(3 * replicas):
        for k in range(1, len(script.clicks) + 1):
            ms, error = timed_post(session, predict_url, predict_body(script, image_url(script), 1, k, f"warm{r}"),
                                   None, timeout)
            if error:
                raise RuntimeError(f"warm-up request failed: {error}")


def print_table(rows: list[dict]) -> None:
    head = (f"{'run':34s} {'repl':>4s} {'annot':>5s} {'clicks':>6s} {'err':>4s} {'clicks/s':>8s} "
            f"{'p50 ms':>7s} {'p95 ms':>7s} {'p95 later':>9s} {'max ms':>7s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['run']:34s} {r['replicas']:4d} {r['annotators']:5d} {r['clicks']:6d} {r['errors']:4d} "
              f"{r['clicks_per_s']:8.1f} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['p95_later_ms']:9.1f} "
              f"{r['max_ms']:7.1f}")


def verdicts(rows: list[dict]) -> dict:
    direct = [r for r in rows if r["run"] == "latency direct"]
    eight = [r for r in rows if r["run"].startswith("throughput") and r["annotators"] == 8]
    out = {"errors": sum(r["errors"] for r in rows) == BARS["errors"]}
    if direct:
        out["backend_p95_ms"] = direct[0]["p95_ms"] <= BARS["backend_p95_ms"]
    for r in eight:
        out[f"clicks_per_s_8 ({r['replicas']} replica(s))"] = r["clicks_per_s"] >= BARS["clicks_per_s_8"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DAVIS, help="dataset folder (default: shared davis345)")
    p.add_argument("--clicks", type=int, default=5, help="NoC clicks per object (default 5)")
    p.add_argument("--latency-images", type=int, default=30, help="images for each latency run (default 30)")
    p.add_argument("--annotators", default="1,4,8", help="concurrent annotators per throughput run")
    p.add_argument("--replicas", default="1,2", help="model replica counts for the throughput runs")
    p.add_argument("--throughput-clicks", type=int, default=40, help="at most this many clicks per annotator")
    p.add_argument("--duration", type=float, default=60.0, help="at most this many seconds per throughput run")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--no-label-studio", action="store_true", help="skip the latency run through Label Studio")
    p.add_argument("--no-db", action="store_true", help="do not record clicks (default: a SQLite file)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    annotator_counts = [int(a) for a in args.annotators.split(",") if a]
    replica_counts = [int(r) for r in args.replicas.split(",") if r]

    from workers.model.datasets import scan

    entries = [e for e in scan(args.data) if e.mask_paths]
    objects_per_annotator = -(-args.throughput_clicks // args.clicks)
    plan = {"latency direct": args.latency_images, "latency via Label Studio": 0 if args.no_label_studio else
            args.latency_images}
    for r in replica_counts:
        for a in annotator_counts:
            plan[f"throughput r{r} a{a}"] = a * objects_per_annotator
    needed = sum(plan.values()) + 1  # + the warm-up image
    if needed > len(entries):
        # More images than the set holds: later runs reuse images (objects get new keys, images may be cached).
        print(f"note: the plan needs {needed} images, {args.data} has {len(entries)}: images are reused")
    ordered = [entries[i % len(entries)] for i in range(needed)]
    t0 = time.perf_counter()
    print(f"placing NoC clicks with the base model on {needed} images ...", flush=True)
    scripts = click_scripts(ordered, args.clicks)
    print(f"  {sum(len(s.clicks) for s in scripts)} clicks in {time.perf_counter() - t0:.0f} s", flush=True)
    warm, pool = scripts[0], scripts[1:]

    def take(n: int) -> list[ObjectScript]:
        nonlocal pool
        head, pool = pool[:n], pool[n:]
        return head

    from alembic import command

    from image_server import ImageServer
    from integrations.images import ImageSettings
    from migrations import alembic_config

    work = Path(tempfile.mkdtemp(prefix="cm-bench-serving-"))
    db_url = None if args.no_db else f"sqlite:///{work / 'clickmask.db'}"
    if db_url:
        command.upgrade(alembic_config(db_url), "head")
    images = ImageServer(args.data / "images")
    studio = None
    rows: list[dict] = []
    meta = {"started_utc": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()},
            "bars": BARS, "nice": os.nice(0)}
    try:
        if not args.no_label_studio:
            from ls_support import LabelStudio, ensure_installed

            print("starting Label Studio ...", flush=True)
            studio = LabelStudio.start(ensure_installed(), work)
            print(f"  healthy after {studio.startup_s:.0f} s", flush=True)
        settings = ImageSettings(allowed_hosts=(images.host,), label_studio_url=studio.url if studio else None,
                                 label_studio_api_key=studio.pat if studio else None)
        predict_url = start_serving()

        def image_url(script: ObjectScript) -> str:
            return images.url(script.name)

        for replicas in replica_counts:
            print(f"deploying the backend with {replicas} replica(s) ...", flush=True)
            deploy(replicas, settings, db_url)
            warm_up(predict_url, image_url, warm, args.timeout, replicas)
            if replicas == replica_counts[0]:
                run = Run("latency direct", replicas=replicas)
                run.started, run.load_before = datetime.now(UTC).isoformat(timespec="seconds"), \
                    os.getloadavg()
                lock, t_start = threading.Lock(), time.perf_counter()
                annotate_direct(run, lock, predict_url, image_url, take(args.latency_images), "lat", 10**9,
                                float("inf"), args.timeout)
                run.wall_s, run.load_after = time.perf_counter() - t_start, os.getloadavg()
                rows.append(run.summary())
                print_table(rows[-1:])
                if studio is not None:
                    ls_scripts = take(args.latency_images)
                    project = studio.create_project(STANDARD_CONFIG, title="bench serving")
                    tasks = {}
                    for script in ls_scripts:  # one file per import (Label Studio keeps one file per form key)
                        for task in studio.upload_images(project, [script.path]):
                            tasks[task["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[1]] = task["id"]
                    backend_id = studio.connect_backend(project, predict_url.removesuffix("/predict"))
                    run = latency_through_label_studio(studio, backend_id, tasks, ls_scripts, args.timeout)
                    run.replicas = replicas
                    rows.append(run.summary())
                    print_table(rows[-1:])
            for annotators in annotator_counts:
                groups = [take(objects_per_annotator) for _ in range(annotators)]
                run = throughput(f"throughput r{replicas} a{annotators}", predict_url, image_url, groups, replicas,
                                 args.throughput_clicks, args.duration, args.timeout)
                rows.append(run.summary())
                print_table(rows[-1:])
    finally:
        stop_serving()
        if studio is not None:
            studio.stop()
        images.stop()
    meta["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["loadavg_at_end"] = os.getloadavg()
    print()
    print(f"started {meta['started_utc']}, load average at start {meta['loadavg_at_start']}, {meta['cpus']} CPUs")
    print_table(rows)
    checks = verdicts(rows)
    print("bars:", ", ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "runs": rows, "bars_met": checks}, indent=2))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
