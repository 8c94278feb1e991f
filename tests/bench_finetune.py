"""Fine-tuning proof on the domain set (not collected by pytest: run it by hand).

    nice -n 5 .venv/bin/python tests/bench_finetune.py --out finetune.json            # the full proof
    nice -n 15 .venv/bin/python tests/bench_finetune.py --quick --model runs/x.pt     # a smoke run (minutes)
    nice -n 19 .venv/bin/python tests/bench_finetune.py --in-process --objects-per-image 3  # the job alone

--in-process runs only the job's function (workers.finetune.finetune) in this process on the fed images, split as
the scheduler splits them, without Ray, Serve, the database or the client: the quality and job-time figures alone.

What it does, as in production: the 65 DSB2018 images are split by image (20 held out, chosen by a hash of the
image name, printed and saved); a local Ray runs the Serve app (ingress + one replica) with a SQLite database and a
local object store; the images are served over HTTP on loopback (as Label Studio serves uploads). The 45 fine-tune
images are annotated through POST /webhook with ANNOTATION_CREATED bodies built like Label Studio's (one brush
region per nucleus, the SDK's mask2rle), which makes the scheduler's N trigger (N = the number fed) queue a job;
the scheduler runs it on Ray and gates it. Meanwhile a client clicks on the held-out images through /predict without
pause, from before the job to after the swap. Then a deliberately worse candidate (trained on masks mirrored left to
right, so they no longer lie on their nuclei) is run through the same gate and must be rejected.

NoC@85 / NoC@90 before and after are measured on the held-out images (the standard protocol: 20 clicks, the
evaluator's clicker) with the base and with the version that serves after the job, on the same objects: up to
--objects-per-image nuclei per image, spread over each image's masks in name order.

Bars (issue 5): NoC@85 after <= 0.6 x before; job <= 10 min on the 2-core machine; 0 failed requests and p95 <= 80 ms
while clicking through the job and the swap; the worse candidate not promoted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from support import DATASETS, SHARED  # noqa: E402
DATA = DATASETS / "domain" / "dsb2018_nuclei"
REQUESTS = SHARED / "label_studio" / "requests"
PROJECT = 5


def load_request(name: str) -> dict:
    return json.loads((REQUESTS / f"{name}.json").read_text())["body"]


def split(data: Path, held_out: int, feed: int):
    from workers.model.datasets import scan

    entries = [e for e in scan(data) if e.mask_paths]
    ranked = sorted(entries, key=lambda e: hashlib.sha256(e.stem.encode()).hexdigest())
    return sorted(ranked[held_out:held_out + feed], key=lambda e: e.stem), sorted(ranked[:held_out],
                                                                                    key=lambda e: e.stem)


def held_out_objects(entries, per_image: int):
    from workers.model.datasets import read_image, read_mask

    out = []
    for e in entries:
        step = max(1, len(e.mask_paths) // per_image)
        out.append((read_image(e.image_path), [read_mask(p) for p in e.mask_paths[::step][:per_image]]))
    return out


def noc_on(checkpoint: str, objects, max_clicks: int) -> dict:
    from workers.finetune import validate
    from workers.model.predictor import load_predictor

    return validate(load_predictor(checkpoint), objects, max_clicks, checkpoint)


class Clicker(threading.Thread):
    """Clicks without pause through /predict on the held-out images: one positive click at each nucleus's centre."""

    def __init__(self, url: str, image_urls: list[tuple[str, tuple[int, int], list[tuple[float, float]]]]):
        super().__init__(daemon=True)
        from finetune_support import predict_body

        template = load_request("predict_interactive_pos_neg_keypoints")
        self.bodies = [predict_body(template, u, size, [(x, y, True)], PROJECT, region=f"c{i}-{j}")
                       for i, (u, size, points) in enumerate(image_urls) for j, (x, y) in enumerate(points)]
        self.url, self.stop = url, threading.Event()
        self.log: list[tuple[float, float, str | None]] = []  # (time, seconds, version or None when failed)

    def run(self):
        session, i = requests.Session(), 0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                reply = session.post(self.url, json=self.bodies[i % len(self.bodies)], timeout=30)
                answer = reply.json()
                ok = reply.status_code == 200 and "errors" not in answer
                version = answer["results"][0]["model_version"] if ok else None
            except Exception:
                version = None
            self.log.append((time.time(), time.perf_counter() - t0, version))
            i += 1

    def window(self, start: float, end: float) -> dict:
        rows = [r for r in self.log if start <= r[0] <= end]
        secs = sorted(r[1] for r in rows)
        return {"requests": len(rows), "failed": sum(r[2] is None for r in rows),
                "p50_ms": 1000 * secs[len(secs) // 2] if secs else None,
                "p95_ms": 1000 * secs[int(0.95 * (len(secs) - 1))] if secs else None,
                "versions": sorted({r[2] for r in rows if r[2]})}


def mirror_masks(spec):
    """The deliberately worse candidate: every training mask mirrored left to right (off its nucleus)."""
    from pycocotools import mask as coco

    for item in spec.train:
        flipped = []
        for rle in item.masks:
            m = coco.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            enc = coco.encode(np.asfortranarray(m[:, ::-1]))
            flipped.append({"size": rle["size"], "counts": enc["counts"].decode()})
        item.masks = flipped
    return spec


def wait_job(factory, job_id: int, timeout_s: float):
    from orchestrator import jobs

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job = jobs.get(factory, job_id)
        if job.state not in jobs.ACTIVE:
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {job.state} after {timeout_s} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", default="base", help="the base checkpoint: base (bundled) or a path")
    ap.add_argument("--feed", type=int, default=45, help="images annotated through the webhook")
    ap.add_argument("--held-out", type=int, default=20)
    ap.add_argument("--objects-per-image", type=int, default=10, help="held-out nuclei evaluated per image")
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--samples", type=int, default=2000, help="CLICKMASK_FINETUNE_SAMPLES of the job")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--eval-objects", type=int, default=60, help="CLICKMASK_FINETUNE_EVAL_OBJECTS of the job")
    ap.add_argument("--no-worse", action="store_true", help="skip the deliberately worse candidate")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 fed, 3 held out, small job, 5 clicks")
    ap.add_argument("--in-process", action="store_true", help="the job function alone (no Ray, Serve, client)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.feed, args.held_out, args.objects_per_image, args.max_clicks = 6, 3, 3, 5
        args.samples, args.eval_objects = 200, 6

    from alembic import command
    from ray import serve

    from finetune_support import annotation_body
    from image_server import ImageServer
    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator import jobs, registry
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.ray_runtime import start_ray
    from orchestrator.scheduler import RunnerConfig, Scheduler
    from orchestrator.serving.app import ServeConfig, build_app
    from orchestrator.settings import FinetuneSettings
    from support import free_port
    from workers.model.datasets import read_mask

    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    fed, held = split(args.data, args.held_out, args.feed)
    report["split"] = {"rule": "images sorted by sha256(stem): the first --held-out are held out, the next --feed fed",
                       "fed": [e.stem for e in fed], "held_out": [e.stem for e in held]}
    print(f"split: {len(fed)} fed, {len(held)} held out ({sum(len(e.mask_paths) for e in fed)} / "
          f"{sum(len(e.mask_paths) for e in held)} nuclei)", flush=True)

    objects = held_out_objects(held, args.objects_per_image)
    base_path = args.model if args.model == "base" else str(Path(args.model).resolve())
    t0 = time.time()
    report["before"] = noc_on(base_path, objects, args.max_clicks)
    print(f"before: NoC@85 {report['before']['NoC@85']:.2f} NoC@90 {report['before']['NoC@90']:.2f} on "
          f"{report['before']['objects']} held-out nuclei ({time.time() - t0:.0f} s)", flush=True)

    root = Path(tempfile.mkdtemp(prefix="cm-bench-ft-"))
    server = ImageServer(args.data / "images")
    if args.in_process:
        return in_process(args, report, fed, objects, base_path, server, root)
    db_url = f"sqlite:///{root / 'clickmask.db'}"
    command.upgrade(alembic_config(db_url), "head")
    factory = make_session_factory(make_engine(db_url))
    images = ImageSettings(allowed_hosts=(server.host,))
    start_ray(num_cpus=2, temp_dir=tempfile.mkdtemp(prefix="cm-ray-"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base_name = "base" if args.model == "base" else Path(args.model).name
    serve.run(build_app(ServeConfig(checkpoint=base_path, model_version=base_name, images=images,
                                    database_url=db_url, store_url=str(root / "store"), registry_ttl_s=1.0)),
              name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}"

    targets = []
    for e in held:
        masks = [read_mask(p) for p in e.mask_paths[:: max(1, len(e.mask_paths) // 5)][:5]]
        h, w = masks[0].shape
        points = []
        for m in masks:
            ys, xs = np.nonzero(m)
            points.append((100 * (xs.mean() + 0.5) / w, 100 * (ys.mean() + 0.5) / h))
        targets.append((server.url(e.image_path.name), (w, h), points))
    clicker = Clicker(url + "/predict", targets)
    clicker.start()
    time.sleep(10)
    marks = {"clicking": time.time()}

    created = load_request("webhook_annotation_created")
    t0 = time.time()
    for i, e in enumerate(fed, 1):
        body = annotation_body(created, 1000 + i, PROJECT, i, server.url(e.image_path.name),
                               [read_mask(p) for p in e.mask_paths])
        reply = requests.post(url + "/webhook", json=body, timeout=30).json()
        assert reply["status"] == "applied", reply
    report["feed_s"] = time.time() - t0
    print(f"fed {len(fed)} annotations through /webhook in {report['feed_s']:.1f} s", flush=True)

    runner = RunnerConfig(store_url=str(root / "store"), images=images, base_name=base_name,
                          base_checkpoint=base_path,
                          finetune=FinetuneSettings(every_annotations=len(fed), every_minutes=0, samples=args.samples,
                                                    lr=args.lr, eval_objects=args.eval_objects,
                                                    min_val_objects=0 if args.quick else 20))
    marks["job_start"] = time.time()
    scheduler = Scheduler(factory, runner).start()
    while not jobs.claimable(factory) and not _last_job(factory):
        time.sleep(0.5)
    job = wait_job(factory, _last_job(factory), 3600)
    scheduler.stop()
    marks["job_end"] = time.time()
    with factory() as s:
        serving = registry.serving(s, PROJECT, base_name)
    report["job"] = {"id": job.id, "state": job.state, "trigger": job.trigger, "error": job.error,
                     "seconds": (job.finished_at - job.started_at).total_seconds(), "details": job.details}
    print(f"job {job.id}: {job.state} in {report['job']['seconds']:.0f} s; "
          f"{(job.details or {}).get('decision')}; serving {serving.name}", flush=True)
    if serving.checkpoint_key:
        deadline = time.time() + 60
        while time.time() < deadline and not any(v == serving.name for _, _, v in clicker.log[-5:]):
            time.sleep(0.2)
    time.sleep(10)
    marks["swapped"] = time.time()
    clicker.stop.set()
    clicker.join()
    report["serving"] = {"before_job": clicker.window(marks["clicking"], marks["job_start"]),
                         "during_job": clicker.window(marks["job_start"], marks["job_end"]),
                         "swap_and_after": clicker.window(marks["job_end"], marks["swapped"]),
                         "all": clicker.window(0, time.time())}
    print("serving:", json.dumps(report["serving"]), flush=True)

    after_path = base_path
    if serving.checkpoint_key:
        after_path = str(root / "store" / serving.checkpoint_key)
    report["after"] = noc_on(after_path, objects, args.max_clicks)
    report["after"]["version"] = serving.name
    print(f"after ({serving.name}): NoC@85 {report['after']['NoC@85']:.2f} NoC@90 {report['after']['NoC@90']:.2f}",
          flush=True)

    if not args.no_worse:
        worse_job = jobs.enqueue(factory, PROJECT, "bench-worse")
        t0 = time.time()
        Scheduler(factory, runner, adjust_spec=mirror_masks).tick()
        job = jobs.get(factory, worse_job)
        with factory() as s:
            still = registry.serving(s, PROJECT, base_name).name
        report["worse"] = {"state": job.state, "error": job.error, "decision": (job.details or {}).get("decision"),
                           "seconds": time.time() - t0, "serving_after": still}
        print(f"worse candidate: {report['worse']['decision']}; serving {still}", flush=True)

    b, a = report["before"], report["after"]
    report["bars"] = {
        "noc85_ratio": a["NoC@85"] / b["NoC@85"] if b["NoC@85"] else None,
        "noc85_after_le_0.6x": a["NoC@85"] <= 0.6 * b["NoC@85"],
        "job_le_10_min": report["job"]["seconds"] <= 600,
        "zero_failed": report["serving"]["all"]["failed"] == 0,
        "p95_le_80ms": (report["serving"]["all"]["p95_ms"] or 1e9) <= 80,
        "worse_not_promoted": None if args.no_worse else report["worse"]["serving_after"] == serving.name,
    }
    print("bars:", json.dumps(report["bars"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
    serve.shutdown()
    server.stop()
    return 0


def in_process(args, report: dict, fed, objects, base_path: str, server, root: Path) -> int:
    from integrations.images import ImageSettings
    from integrations.masks import encode
    from workers.finetune import AnnotatedImage, FinetuneSpec, finetune, split_by_image
    from workers.model.datasets import read_mask

    masks = {server.url(e.image_path.name): [encode(read_mask(p)).as_coco() for p in e.mask_paths] for e in fed}
    train_uris, val_uris = split_by_image(list(masks), 20)
    spec = FinetuneSpec(parent=base_path, out_key="candidate.pt", store_url=str(root), samples=args.samples,
                        lr=args.lr, eval_objects=args.eval_objects, images=ImageSettings(allowed_hosts=(server.host,)),
                        train=[AnnotatedImage(u, masks[u]) for u in train_uris],
                        val=[AnnotatedImage(u, masks[u]) for u in val_uris], nice=0)
    t0 = time.time()
    result = finetune(spec)
    report["job"] = {"seconds": time.time() - t0, "phases": result["seconds"], "framing": result["framing"],
                     "objects": result["objects"], "gate_parent": result["parent"],
                     "gate_candidate": result["candidate"], "train_images": len(train_uris),
                     "val_images": len(val_uris)}
    report["after"] = noc_on(str(root / "candidate.pt"), objects, args.max_clicks)
    b, a = report["before"], report["after"]
    print(f"job {report['job']['seconds']:.0f} s {json.dumps(result['seconds'])}, framing {result['framing']}; "
          f"gate NoC@85 {result['parent']['NoC@85']:.2f} -> {result['candidate']['NoC@85']:.2f}", flush=True)
    print(f"after: NoC@85 {a['NoC@85']:.2f} NoC@90 {a['NoC@90']:.2f} mIoU@5 {a['mIoU@5']:.3f} "
          f"(before {b['NoC@85']:.2f} / {b['NoC@90']:.2f} / {b['mIoU@5']:.3f}); ratio {a['NoC@85'] / b['NoC@85']:.2f}",
          flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
    server.stop()
    return 0


def _last_job(factory) -> int | None:
    from sqlalchemy import func, select

    from orchestrator.db import TrainingJob

    with factory() as s:
        return s.scalar(select(func.max(TrainingJob.id)))


if __name__ == "__main__":
    sys.exit(main())
