"""Serving benchmark (not a test; pytest does not collect bench_*.py): per-click latency and throughput of the
backend through its whole HTTP stack, on the davis345 images (854x480).

What runs: a local Ray (loopback) and Ray Serve with the backend as `clickmask serve` deploys it (the bundled base
model, the ingress listening on the port itself, clicks recorded into a SQLite file unless --no-db), the davis345
images served by a loopback HTTP server, and a real Label Studio 1.23.2 (the cached install of tests/ls_support.py)
for the path through Label Studio.

Clicks: for every object, the NoC protocol's simulated annotator (workers/model/clicker.py) places --clicks clicks
against the ground truth, given the base model's own answers (computed once, offline, before anything is timed, so
that the simulated annotators cost the machine nothing while they are timed). Each click is a new request carrying
the whole click history of its object, as Label Studio sends it; straight to the backend, the first click on an
image includes fetching and decoding the image. Nothing is replayed: each run uses images (and so objects) no
earlier run used, except that the runs through Label Studio share theirs, so that they differ in the regions alone
(each run in a project of its own: new image URLs, so nothing cached by an earlier run carries over).

1. Latency, one annotator, sequential: (a) POST /predict straight to the backend; (b) through Label Studio's
   interactive-annotating API (Label Studio fetches the task, calls the backend, passes the answer on; the backend
   fetches the uploaded image through Label Studio), once for each --regions count: each task first gets that many
   brush regions (other objects' masks) as a prediction and as a draft, which Label Studio sends with every request.
   Each task is opened as the labeling UI opens it (GET /api/tasks/ID) half a second before its first click: a
   task without predictions (no earlier regions) then has Label Studio ask the backend for them, and the backend
   fetches its image meanwhile; a task that has predictions (earlier regions) does not. Before these, the same
   through Label Studio with a backend that answers every click at once with a fixed brush mask (no model, no
   image): Label Studio's own time per click, the floor under the bar through Label Studio.
2. Throughput: 1, 4 and 8 simulated annotators (threads on loopback, each on its own images and objects, each
   at most --throughput-clicks clicks and --duration seconds), straight to the backend, on one replica and on two.

For every run: clicks/s (answered clicks over the run's wall time), p50 and p95 of the per-click latency, errors
(transport errors, non-200 answers, answers without one brush mask), and, for the same requests, the ingress's own
time per request beside the model replicas' prediction time within it and their difference, the serving path
(from the ingress's stats(), exact per request; `backend`, `model`, `path` in the table; `later`: the ingress's time
over the clicks after each image's first, for one annotator), with the median request body. Throughput runs also
give the CPU per answered click of each process (from /proc) and, with --profile DIR, py-spy samples of each process
(collapsed stacks, for flame graph tools; the heaviest functions are printed; py-spy is not among the project's
dependencies: `.venv/bin/pip install py-spy`).
Bars (BARS below; the serving issue): the ingress within the model's p50 + 10 ms and p95 + 20 ms and a click
through Label Studio in 100 ms (p95), with no earlier regions; 100 regions cost the ingress at most 1.2x at the
median; 60 clicks/s with 8 annotators on one replica; zero errors.

Run on an idle machine, from the repository root (about 10 minutes on this 2-core machine; a first Label Studio
install adds about 2):
    .venv/bin/python tests/bench_serving.py --json bench_serving.json
Smoke run with small counts (about 3 minutes):
    nice -n 10 .venv/bin/python tests/bench_serving.py --latency-images 3 --clicks 3 --regions 0,20 \
        --throughput-clicks 6 --annotators 2 --replicas 1 --json /tmp/bench_serving_smoke.json
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
from support import DATASETS, free_port, wait_for  # noqa: E402

DAVIS = DATASETS / "eval" / "davis345"
# The serving path's bars: the ingress's time per request within the model's own + 10 ms (p50) and + 20 ms (p95),
# with Label Studio beside it; a click through Label Studio in 100 ms (p95); 60 clicks/s from 8 annotators on one
# replica; with 100 regions on the image, the ingress's p50 at most 1.2x the empty image's; no error anywhere.
BARS = {"path_p50_ms": 10.0, "path_p95_ms": 20.0, "label_studio_p95_ms": 100.0, "clicks_per_s_8": 60.0,
        "regions_100_ratio": 1.2, "errors": 0}
APP = "bench"
INSTANT_RUN = "via Label Studio, instant backend"
OPEN_TO_FIRST_CLICK_S = 0.5  # an annotator takes longer than this to place a first click on a newly opened image


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
    firsts: list[bool] = field(default_factory=list)  # per answered click: its image's first
    later_ms: list[float] = field(default_factory=list)  # without each image's first click
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    annotators: int = 1
    replicas: int = 1
    started: str = ""
    load_before: tuple = ()
    load_after: tuple = ()
    backend: dict = field(default_factory=dict)  # the ingress's own times for the run's requests (backend_share)
    cpu_ms_per_click: dict = field(default_factory=dict)  # by process kind, over the run
    profile: dict = field(default_factory=dict)  # process -> heaviest functions (with --profile)

    def add(self, ms: float, first: bool, error: str | None) -> None:
        if error:
            self.errors.append(error)
            return
        self.latencies_ms.append(ms)
        self.firsts.append(first)
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
                "started_utc": self.started, "loadavg_before": self.load_before, "loadavg_after": self.load_after,
                **self.backend, "cpu_ms_per_click": self.cpu_ms_per_click, "profile": self.profile}


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


def cpu_by_part() -> dict[str, float]:
    """CPU seconds used so far by each kind of Serve actor (model replicas, ingress, proxy, controller) and by this
    process (the simulated annotators), from /proc."""
    parts: dict[str, float] = {"annotators (this process)": cpu_seconds(os.getpid())}
    for pid, name in serve_actors():
        parts[name] = parts.get(name, 0.0) + cpu_seconds(pid)
    return parts


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def serve_actors() -> list[tuple[int, str]]:
    """(pid, kind) of each live Ray actor: ClickModel, Backend (the ingress), ProxyActor, ServeController."""
    import ray

    return [(a["Pid"], a.get("ActorClassName", "").split(":")[-1]) for a in ray._private.state.actors().values()
            if a.get("State") == "ALIVE" and a.get("Pid")]


class Profiles:
    """py-spy sampling each Serve process (and this one) while a run goes on, kept as collapsed stacks (one line per
    stack: frames joined by ';', then the sample count): what the flame graph tools read."""

    PARTS = ("Backend", "ClickModel", "ProxyActor")

    def __init__(self, folder: Path, run_name: str, seconds: float):
        import shutil
        import subprocess

        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        folder.mkdir(parents=True, exist_ok=True)
        targets = [(pid, kind) for pid, kind in serve_actors() if kind in self.PARTS]
        self.files = {}
        self.procs = []
        for pid, kind in targets + [(os.getpid(), "annotators")]:
            out = folder / f"{run_name.replace(' ', '-')}-{kind}-{pid}.txt"
            self.files[f"{kind} {pid}"] = out
            self.procs.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--rate", "250", "--duration", str(int(seconds)), "--format",
                 "raw", "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> dict[str, list[tuple[str, float]]]:
        """The heaviest functions of each process by share of its samples (inclusive), once py-spy has written."""
        import signal

        for proc in self.procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes what it has sampled so far
        for proc in self.procs:
            proc.wait(timeout=60)
        return {name: heaviest(path) for name, path in self.files.items() if path.exists()}


def heaviest(collapsed: Path, top: int = 25) -> list[tuple[str, float]]:
    """(function, share of samples in which it is on the stack) from a py-spy collapsed-stack file."""
    totals: dict[str, int] = {}
    n = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n += int(count)
        for frame in set(stack.split(";")):
            name = frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            totals[name] = totals.get(name, 0) + int(count)
    return [(f, c / n) for f, c in sorted(totals.items(), key=lambda kv: -kv[1])[:top]] if n else []


def throughput(name: str, predict_url: str, image_url, groups: list[list[ObjectScript]], replicas: int,
               max_clicks: int, duration: float, timeout: float, profile: Path | None = None) -> Run:
    run = Run(name, annotators=len(groups), replicas=replicas)
    lock = threading.Lock()
    deadline = time.monotonic() + duration
    threads = [threading.Thread(target=annotate_direct, args=(run, lock, predict_url, image_url, group,
                                                              f"{name}-a{i}", max_clicks, deadline, timeout))
               for i, group in enumerate(groups)]
    run.started, run.load_before = datetime.now(UTC).isoformat(timespec="seconds"), os.getloadavg()
    profiles = Profiles(profile, name, duration) if profile else None
    cpu_before, t0 = cpu_by_part(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall_s, run.load_after = time.perf_counter() - t0, os.getloadavg()
    answered = max(1, len(run.latencies_ms))
    run.cpu_ms_per_click = {k: round(1000 * (v - cpu_before.get(k, 0.0)) / answered, 2)
                            for k, v in cpu_by_part().items()}
    if profiles:
        run.profile = profiles.stop()
    return run


def backend_share(requests_answered: int, firsts: list[bool] | None = None) -> dict:
    """The ingress's own figures for its last `requests_answered` answered /predict requests (its stats()): its time
    per request, the model replicas' own prediction time within it, and the difference, the serving path's share
    (proxy excluded: it is before the ingress); the median request body. With `firsts` (one annotator, so requests
    in the order sent: which was its image's first click), the ingress's time over the later clicks too."""
    from ray import serve

    recent = serve.get_deployment_handle("Backend", app_name=APP).stats.remote().result()["recent_predict_s"]
    recent = np.array(recent[-requests_answered:], float).reshape(-1, 3)
    if not len(recent):
        return {}
    backend, model = 1000 * recent[:, 0], 1000 * recent[:, 1]
    figures = {"backend": backend, "model": model, "path": backend - model}
    if firsts is not None and len(firsts) == len(recent):
        figures["backend_later"] = backend[~np.array(firsts, bool)]
    return {**{f"{k}_{q}_ms": float(np.percentile(v, int(q[1:]))) for k, v in figures.items() for q in ("p50", "p95")},
            "body_kb_p50": float(np.median(recent[:, 2])) / 1024}


def earlier_masks(entries, count: int) -> list[np.ndarray]:
    """`count` object masks of the set: they stand for what annotators drew on an image before."""
    from workers.model.datasets import read_mask

    return [read_mask(m) for e in entries for m in e.mask_paths][:count]


def brush_regions(masks: list[np.ndarray]) -> list[dict]:
    """Earlier answers on an image, as Label Studio stores them: one brush region per mask."""
    from integrations.masks import mask_to_brush

    return [{"id": f"earlier{i}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
             "original_width": m.shape[1], "original_height": m.shape[0], "image_rotation": 0,
             "value": {"format": "rle", "rle": mask_to_brush(m), "brushlabels": ["Object"]}}
            for i, m in enumerate(masks)]


def fill_task(studio, task_id: int, regions: list[dict]) -> None:
    """Put the regions on the task twice, as a prediction and as the annotator's draft: Label Studio sends both
    with every interactive request on that task."""
    studio.api("POST", "/api/predictions", json={"task": task_id, "result": regions, "score": 0.9,
                                                   "model_version": "earlier"})
    studio.api("POST", f"/api/tasks/{task_id}/drafts", json={"result": regions, "lead_time": 10.0})


def open_task(studio, task_id: int) -> None:
    """What the labeling UI does when an annotator opens a task: Label Studio asks the backend for the task's
    predictions if it has none (a batch /predict of that task), and the annotator looks at the image a moment
    before the first click (the backend uses that moment to fetch the image)."""
    studio.api("GET", f"/api/tasks/{task_id}")
    time.sleep(OPEN_TO_FIRST_CLICK_S)


def latency_through_label_studio(studio, backend_id: int, tasks: dict, scripts: list[ObjectScript],
                                 timeout: float, name: str = "latency via Label Studio") -> Run:
    run = Run(name)
    run.started, run.load_before = datetime.now(UTC).isoformat(timespec="seconds"), os.getloadavg()
    url = f"{studio.url}/api/ml/{backend_id}/interactive-annotating"
    opened: set[int] = set()
    t0 = time.perf_counter()
    for n, script in enumerate(scripts):
        if tasks[script.name] not in opened:
            open_task(studio, tasks[script.name])
            opened.add(tasks[script.name])
        for k in range(1, len(script.clicks) + 1):
            headers = studio._bearer()  # refreshed outside the timed call (access tokens last 5 minutes)
            body = {"task": tasks[script.name], "context": {"result": regions_for(script, k, f"ls-{n}")}}
            ms, error = timed_post(studio.session, url, body, headers, timeout)
            run.add(ms, k == 1, error)
    run.wall_s, run.load_after = time.perf_counter() - t0, os.getloadavg()
    return run


class InstantBackend:
    """A backend that answers every /predict at once with a fixed brush mask: through Label Studio it shows what
    Label Studio itself costs per click, the floor under any backend's figure there."""

    def __init__(self, mask: np.ndarray):
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        from integrations.label_studio import protocol
        from integrations.label_studio.labeling_config import BRUSHES, Answer

        region = protocol.brush_result(mask, Answer(BRUSHES, "tag", "image", "Object"), 0.9)
        answers = {True: protocol.dump_json(protocol.predict_response([protocol.prediction([region], 0.9, "instant")])),
                   False: protocol.dump_json(protocol.predict_response([protocol.prediction([], 0.0, "instant")]))}

        async def health(request):
            return JSONResponse(protocol.health_response("instant"))

        async def setup(request):
            await request.body()
            return JSONResponse(protocol.setup_response("instant"))

        async def predict(request):
            body = json.loads(await request.body())
            # A task opened asks for predictions (no clicks): nothing, as the real backend answers.
            clicked = bool((body.get("params") or {}).get("context"))
            return Response(answers[clicked], media_type="application/json")

        async def webhook(request):
            await request.body()
            return JSONResponse({})

        app = Starlette(routes=[Route("/health", health), Route("/setup", setup, methods=["POST"]),
                                Route("/predict", predict, methods=["POST"]),
                                Route("/webhook", webhook, methods=["POST"])])
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, "the instant backend to listen", timeout=30, every=0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def label_studio_run(studio, scripts: list[ObjectScript], backend_url: str, earlier: list[dict], timeout: float,
                     name: str) -> Run:
    """A project of the scripts' images, each task with the `earlier` regions, the backend connected; the clicks
    played through Label Studio."""
    project = studio.create_project(STANDARD_CONFIG, title=f"bench serving, {name}")
    tasks = {}
    for script in scripts:  # one file per import (Label Studio keeps one file per form key)
        for task in studio.upload_images(project, [script.path]):
            tasks[task["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[1]] = task["id"]
    if earlier:
        for task_id in tasks.values():
            fill_task(studio, task_id, earlier)
    backend_id = studio.connect_backend(project, backend_url)
    return latency_through_label_studio(studio, backend_id, tasks, scripts, timeout, name)


# ---------------------------------------------------------------------------------------------------- plumbing


def deploy(replicas: int, images, db_url: str | None) -> None:
    from ray import serve

    from orchestrator.serving.app import ServeConfig, build_app

    serve.run(build_app(ServeConfig(checkpoint="base", model_version="base", replicas=replicas, images=images,
                                    database_url=db_url)), name=APP, route_prefix="/")


def start_serving(direct: bool = True) -> str:
    """A local Ray (its own temp folder) serving HTTP on a free loopback port as `clickmask serve` does (the
    ingress listening itself; with direct=False, Serve's HTTP proxy in front, to compare); the /predict URL."""
    from orchestrator.ray_runtime import start_serving as start

    port = free_port()
    start("127.0.0.1", port, temp_dir=tempfile.mkdtemp(prefix="cm-ray-bench-"), direct=direct)
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
    """Per run: the client's latency, then the ingress's own time (all clicks, and the clicks after each image's
    first where known) and the model's within it (p50/p95, ms)."""
    head = (f"{'run':38s} {'repl':>4s} {'annot':>5s} {'clicks':>6s} {'err':>4s} {'clicks/s':>8s} "
            f"{'p50 ms':>7s} {'p95 ms':>7s} {'max ms':>7s} {'backend':>12s} {'later':>12s} {'model':>12s} "
            f"{'path':>12s} {'body KB':>8s}")
    print(head)
    print("-" * len(head))
    pair = lambda r, k: f"{r.get(k + '_p50_ms', float('nan')):5.1f}/{r.get(k + '_p95_ms', float('nan')):<6.1f}"  # noqa: E731
    for r in rows:
        print(f"{r['run']:38s} {r['replicas']:4d} {r['annotators']:5d} {r['clicks']:6d} {r['errors']:4d} "
              f"{r['clicks_per_s']:8.1f} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['max_ms']:7.1f} "
              f"{pair(r, 'backend'):>12s} {pair(r, 'backend_later'):>12s} {pair(r, 'model'):>12s} "
              f"{pair(r, 'path'):>12s} "
              f"{r.get('body_kb_p50', float('nan')):8.1f}")


def print_cpu(row: dict) -> None:
    """CPU per answered click by process and, with --profile, each process's heaviest functions."""
    parts = sorted(row["cpu_ms_per_click"].items(), key=lambda kv: -kv[1])
    print("  CPU per answered click: " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts if v >= 0.05))
    for process, functions in row["profile"].items():
        print(f"  {process}: " + "; ".join(f"{f} {share:.0%}" for f, share in functions[:12]))


def verdicts(rows: list[dict]) -> dict:
    by_name = {r["run"]: r for r in rows}
    out = {"errors": sum(r["errors"] for r in rows) == BARS["errors"]}
    empty, full = by_name.get("via Label Studio, 0 regions"), by_name.get("via Label Studio, 100 regions")
    if empty and "backend_p50_ms" in empty:
        out["ingress p50 <= model p50 + 10 ms"] = empty["backend_p50_ms"] - empty["model_p50_ms"] <= BARS["path_p50_ms"]
        out["ingress p95 <= model p95 + 20 ms"] = empty["backend_p95_ms"] - empty["model_p95_ms"] <= BARS["path_p95_ms"]
        out["through Label Studio p95 <= 100 ms"] = empty["p95_ms"] <= BARS["label_studio_p95_ms"]
    if empty and full and "backend_p50_ms" in full:
        out["100 regions: ingress p50 <= 1.2x empty"] = (full["backend_p50_ms"]
                                                          <= BARS["regions_100_ratio"] * empty["backend_p50_ms"])
        out["100 regions: through Label Studio p50 <= 1.2x empty"] = full["p50_ms"] <= BARS["regions_100_ratio"] * \
            empty["p50_ms"]
        if "backend_later_p50_ms" in full:  # not the bar: where the first clicks' image fetches are left out
            out["(100 regions, clicks after each image's first: ingress p50 <= 1.2x empty)"] = (
                full["backend_later_p50_ms"] <= BARS["regions_100_ratio"] * empty["backend_later_p50_ms"])
    for r in rows:
        if r["run"].startswith("throughput") and r["annotators"] == 8:
            met = r["clicks_per_s"] >= BARS["clicks_per_s_8"]
            out[f"8 annotators, {r['replicas']} replica(s): >= 60 clicks/s"] = met
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
    p.add_argument("--no-label-studio", action="store_true", help="skip the latency runs through Label Studio")
    p.add_argument("--regions", default="0,20,100",
                   help="earlier brush regions on each image (its prediction and its draft) for each run through "
                        "Label Studio")
    p.add_argument("--no-db", action="store_true", help="do not record clicks (default: a SQLite file)")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--through-proxy", action="store_true",
                   help="serve through Ray Serve's HTTP proxy, as with several ingress replicas (to compare)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="sample every Serve process with py-spy (not a dependency: `pip install py-spy`) during the "
                        "throughput runs; collapsed stacks here")
    args = p.parse_args(argv)
    annotator_counts = [int(a) for a in args.annotators.split(",") if a]
    replica_counts = [int(r) for r in args.replicas.split(",") if r]
    region_counts = [] if args.no_label_studio else [int(n) for n in args.regions.split(",") if n]

    from workers.model.datasets import scan

    entries = [e for e in scan(args.data) if e.mask_paths]
    objects_per_annotator = -(-args.throughput_clicks // args.clicks)
    plan = {"latency direct": args.latency_images}
    if region_counts:
        plan["via Label Studio"] = args.latency_images
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
            "bars": BARS, "nice": os.nice(0),
            "http": "Ray Serve's HTTP proxy" if args.through_proxy else "the ingress itself (direct ingress)"}
    try:
        if region_counts:
            from ls_support import LabelStudio, ensure_installed

            print("starting Label Studio ...", flush=True)
            studio = LabelStudio.start(ensure_installed(), work)
            print(f"  healthy after {studio.startup_s:.0f} s", flush=True)
        settings = ImageSettings(allowed_hosts=(images.host,), label_studio_url=studio.url if studio else None,
                                 label_studio_api_key=studio.pat if studio else None)
        predict_url = start_serving(direct=not args.through_proxy)

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
                run.backend = backend_share(len(run.latencies_ms), run.firsts)
                rows.append(run.summary())
                print_table(rows[-1:])
                ls_scripts = take(args.latency_images) if region_counts else []
                if region_counts:  # Label Studio's own floor first, on the same images and clicks
                    instant = InstantBackend(earlier_masks(entries, 1)[0])
                    try:
                        rows.append(label_studio_run(studio, ls_scripts, instant.url, [], args.timeout,
                                                     INSTANT_RUN).summary())
                    finally:
                        instant.stop()
                    print_table(rows[-1:])
                for n in region_counts:
                    earlier = brush_regions(earlier_masks(entries, n)) if n else []
                    run = label_studio_run(studio, ls_scripts, predict_url.removesuffix("/predict"), earlier,
                                           args.timeout, f"via Label Studio, {n} regions")
                    run.replicas = replicas
                    run.backend = backend_share(len(run.latencies_ms), run.firsts)
                    rows.append(run.summary())
                    print_table(rows[-1:])
            for annotators in annotator_counts:
                groups = [take(objects_per_annotator) for _ in range(annotators)]
                run = throughput(f"throughput r{replicas} a{annotators}", predict_url, image_url, groups, replicas,
                                 args.throughput_clicks, args.duration, args.timeout, args.profile)
                run.backend = backend_share(len(run.latencies_ms))
                rows.append(run.summary())
                print_table(rows[-1:])
                print_cpu(rows[-1])
    finally:
        stop_serving()
        if studio is not None:
            studio.stop()
        images.stop()
    meta["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["loadavg_at_end"] = os.getloadavg()
    print()
    print(f"started {meta['started_utc']}, load average at start {meta['loadavg_at_start']}, {meta['cpus']} CPUs, "
          f"HTTP served by {meta['http']}")
    print_table(rows)
    checks = verdicts(rows)
    print("bars:", ", ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "runs": rows, "bars_met": checks}, indent=2))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
