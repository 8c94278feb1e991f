"""Autoscaling proof on a two-node Ray cluster on one machine (not a test; pytest does not collect bench_*.py).

What runs: ray.cluster_utils.Cluster with a head node that stays (one CPU, for the ingress, and the ingress resource
of orchestrator.placement) and a worker node standing in for the GPU group (CPUs and the replica resource: model
replicas only);
Ray Serve with its HTTP proxy on the head; the backend as the deployed application builds it (orchestrator.serving.app,
replicas between --min and --max on ongoing requests), recording every click into a throwaway PostgreSQL database;
the davis345 images from a loopback HTTP server.

Load: simulated annotators (threads, each on its own images, each click a request carrying the object's whole
click history, as Label Studio sends it; clicks from the NoC clicker with the base model, placed before anything
is timed). Phases: quiet (--quiet-annotators) -> burst (--burst-annotators, --burst-s seconds) -> quiet again until
the replicas are back to the minimum. The burst annotators click back to back (no thinking time): the point is
load on the replicas, not a human's pace.

What it shows, once a second: the phase, annotators, running model replicas, answered clicks and failed clicks.
At the end: replicas added under the burst and removed after, every failed click (the bar: none), latency per phase,
and on which node the ingress and each replica ran (the ingress must be on the head).

On a 2-core machine this proves the mechanism (scaling up, down, placement, no failed click), not throughput: the
replicas, the ingress, the proxy and the simulated annotators share the same two cores, so more replicas add no
clicks per second here.

Run from the repository root (about 5 minutes):
    nice -n 10 .venv/bin/python tests/bench_autoscale.py --json bench_autoscale.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, UTC
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_serving import DAVIS, click_scripts, cpu_by_part, predict_body, timed_post  # noqa: E402

APP = "clickmask"


class Load:
    """Simulated annotators that can be added and stopped while the run goes on; every click timed and kept."""

    def __init__(self, predict_url: str, image_url, groups, timeout: float):
        self.predict_url, self.image_url, self.groups, self.timeout = predict_url, image_url, groups, timeout
        self.lock = threading.Lock()
        self.clicks: list[tuple[float, str, float, str | None]] = []  # (time, phase, ms, error)
        self.phase = "start"
        self.stops: list[threading.Event] = []
        self.threads: list[threading.Thread] = []

    def set_annotators(self, n: int) -> None:
        while len(self.stops) < n:
            stop = threading.Event()
            i = len(self.stops)
            thread = threading.Thread(target=self._annotate, args=(i, stop), daemon=True)
            self.stops.append(stop)
            self.threads.append(thread)
            thread.start()
        while len(self.stops) > n:
            self.stops.pop().set()

    def _annotate(self, i: int, stop: threading.Event) -> None:
        session, rounds = requests.Session(), 0
        scripts = self.groups[i % len(self.groups)]
        while not stop.is_set():
            for n, script in enumerate(scripts):
                tag = f"a{i}-r{rounds}-o{n}"  # a new object each round: every click is real work
                for k in range(1, len(script.clicks) + 1):
                    if stop.is_set():
                        return
                    body = predict_body(script, self.image_url(script), 1000 + n, k, tag)
                    ms, error = timed_post(session, self.predict_url, body, None, self.timeout)
                    with self.lock:
                        self.clicks.append((time.monotonic(), self.phase, ms, error))
            rounds += 1

    def stop_all(self) -> None:
        self.set_annotators(0)
        for t in self.threads:
            t.join(self.timeout + 5)


def running_replicas(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or deployment not in app.deployments:
        return 0
    return app.deployments[deployment].replica_states.get("RUNNING", 0)


def replica_nodes() -> dict[str, list[str]]:
    """Serve replica actor class -> node ids of its live actors (from Ray's actor table)."""
    import ray

    nodes: dict[str, list[str]] = {}
    for actor in ray._private.state.actors().values():
        name = actor.get("ActorClassName", "")
        if actor.get("State") == "ALIVE" and name.startswith("ServeReplica:"):
            nodes.setdefault(name.split(":")[-1], []).append(actor["Address"]["NodeID"])
    return nodes


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DAVIS)
    p.add_argument("--min", type=int, default=1, help="CLICKMASK_REPLICAS: replicas at rest")
    p.add_argument("--max", type=int, default=3, help="CLICKMASK_MAX_REPLICAS: replicas at most")
    p.add_argument("--worker-cpus", type=int, default=3, help="logical CPUs of the worker node (one per replica)")
    p.add_argument("--quiet-annotators", type=int, default=1)
    p.add_argument("--burst-annotators", type=int, default=12)
    p.add_argument("--quiet-s", type=float, default=20.0, help="quiet phase before the burst")
    p.add_argument("--burst-s", type=float, default=120.0)
    p.add_argument("--settle-s", type=float, default=180.0, help="longest wait for the replicas to go back down")
    p.add_argument("--upscale-delay", type=float, default=5.0)
    p.add_argument("--downscale-delay", type=float, default=20.0)
    p.add_argument("--images", type=int, default=24, help="images (one object each) the annotators share out")
    p.add_argument("--clicks", type=int, default=3, help="NoC clicks per object")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from workers.model.datasets import scan

    entries = [e for e in scan(args.data) if e.mask_paths][:args.images]
    print(f"placing NoC clicks with the base model on {len(entries)} images ...", flush=True)
    scripts = click_scripts(entries, args.clicks)
    groups = [scripts[i::args.burst_annotators] for i in range(args.burst_annotators)]

    import ray
    from alembic import command
    from ray import serve
    from ray.cluster_utils import Cluster

    from image_server import ImageServer
    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.placement import INGRESS_RESOURCE, REPLICA_RESOURCE
    from orchestrator.ray_runtime import WORKER_ENV
    from orchestrator.serving.app import ServeConfig, build_app
    from store_support import create_database, drop_database, postgres_server_url
    from support import free_port

    os.environ.update(WORKER_ENV)  # the raylets, and so every worker, inherit these
    # A private Ray temp dir: the cluster writes its address file there, never into a Ray of the machine's.
    ray_tmp = tempfile.mkdtemp(prefix="cm-ray-as-")
    os.environ["RAY_TMPDIR"] = ray_tmp
    os.makedirs(os.path.join(ray_tmp, "ray"), exist_ok=True)
    db = create_database(postgres_server_url(), prefix=f"clickmask_autoscale_{uuid.uuid4().hex[:4]}")
    db_url = db.render_as_string(hide_password=False)
    command.upgrade(alembic_config(db_url), "head")
    images = ImageServer(args.data / "images")
    node_args = dict(node_ip_address="127.0.0.1", include_dashboard=False)
    started = datetime.now(UTC)
    load_at_start = os.getloadavg()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        node_args, num_cpus=1, resources={INGRESS_RESOURCE: 1}, temp_dir=os.path.join(ray_tmp, "ray")))
    worker = cluster.add_node(**node_args, num_cpus=args.worker_cpus, resources={REPLICA_RESOURCE: 1})
    # Everything stays on loopback; ray.init would swap 127.0.0.1 in the address for the machine's own IP, where
    # nothing listens.
    ray._private.services.resolve_ip_for_localhost = lambda host: host
    ray.init(address=cluster.address, log_to_driver=False)
    head_id = cluster.head_node.node_id
    timeline: list[dict] = []
    load = None
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        config = ServeConfig(replicas=args.min, max_replicas=args.max, upscale_delay_s=args.upscale_delay,
                             downscale_delay_s=args.downscale_delay, database_url=db_url,
                             images=ImageSettings(allowed_hosts=(images.host,)))
        serve.run(build_app(config), name=APP, route_prefix="/")
        predict_url = f"http://127.0.0.1:{port}/predict"
        load = Load(predict_url, lambda s: images.url(s.name), groups, args.timeout)
        t0 = time.monotonic()

        def tick(phase: str) -> None:
            time.sleep(1.0)
            with load.lock:
                answered = sum(1 for c in load.clicks if c[3] is None)
                failures = [c[3] for c in load.clicks if c[3] is not None]
                failed = len(failures)
            row = {"t": round(time.monotonic() - t0, 1), "phase": phase, "annotators": len(load.stops),
                   "replicas": running_replicas("ClickModel"), "answered": answered, "failed": failed}
            timeline.append(row)
            print(f"{row['t']:6.1f}s {phase:7s} annotators {row['annotators']:2d} replicas {row['replicas']} "
                  f"answered {answered:5d} failed {failed}" + (f" (last: {failures[-1]})" if failed else ""),
                  flush=True)

        def phase(name: str, annotators: int, seconds: float, until=None) -> None:
            load.phase = name
            load.set_annotators(annotators)
            end = time.monotonic() + seconds
            while time.monotonic() < end and not (until and until()):
                tick(name)

        phase("quiet", args.quiet_annotators, args.quiet_s)
        # CPU per answered click, by part, over the second half of the burst (the replicas are up by then).
        phase("burst", args.burst_annotators, args.burst_s / 2)
        cpu_before, answered_before = cpu_by_part(), sum(1 for c in load.clicks if c[3] is None)
        phase("burst", args.burst_annotators, args.burst_s / 2)
        cpu_after, answered_after = cpu_by_part(), sum(1 for c in load.clicks if c[3] is None)
        placement_under_burst = replica_nodes()
        phase("after", args.quiet_annotators, args.settle_s, until=lambda: running_replicas("ClickModel") <= args.min)
        load.stop_all()
    finally:
        if load is not None:
            load.stop_all()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            images.stop()
            drop_database(db)

    per_phase = {}
    for name in ("quiet", "burst", "after"):
        ms = [c[2] for c in load.clicks if c[1] == name and c[3] is None]
        per_phase[name] = {"answered": len(ms), "failed": sum(1 for c in load.clicks if c[1] == name and c[3]),
                           "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95)}
    burst_rows = [r for r in timeline if r["phase"] == "burst"]
    after_rows = [r for r in timeline if r["phase"] == "after"]
    peak = max(r["replicas"] for r in timeline)
    first_up = next((r["t"] for r in burst_rows if r["replicas"] > args.min), None)
    back_down = next((r["t"] for r in after_rows if r["replicas"] <= args.min), None)
    errors = sorted({c[3] for c in load.clicks if c[3]})
    ingress_nodes = placement_under_burst.get("Backend", [])
    model_nodes = placement_under_burst.get("ClickModel", [])
    result = {
        "started_utc": started.isoformat(timespec="seconds"), "loadavg_at_start": load_at_start,
        "loadavg_at_end": os.getloadavg(), "cpus": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()},
        "phases": per_phase, "peak_replicas": peak, "first_scale_up_t": first_up,
        "burst_end_t": burst_rows[-1]["t"] if burst_rows else None, "back_to_min_t": back_down,
        "failed_clicks": sum(v["failed"] for v in per_phase.values()), "error_samples": errors[:5],
        "ingress_on_head": bool(ingress_nodes) and all(n == head_id for n in ingress_nodes),
        "replicas_on_worker": bool(model_nodes) and all(n == worker.node_id for n in model_nodes),
        "timeline": timeline,
        "cpu_ms_per_click": {k: 1000 * (cpu_after[k] - cpu_before.get(k, 0.0)) / max(1, answered_after -
                                                                                   answered_before)
                             for k in cpu_after},
    }
    print()
    print(f"started {result['started_utc']}, load average at start {load_at_start[0]:.2f}, {os.cpu_count()} CPUs")
    for name, v in per_phase.items():
        print(f"  {name:6s} answered {v['answered']:5d} failed {v['failed']} p50 {v['p50_ms']:.0f} ms "
              f"p95 {v['p95_ms']:.0f} ms")
    changes = [r for i, r in enumerate(timeline) if i == 0 or (r["replicas"], r["phase"]) !=
               (timeline[i - 1]["replicas"], timeline[i - 1]["phase"])]
    print("  " + ", ".join(f"{r['t']:.0f} s {r['phase']} {r['replicas']} replica(s)" for r in changes))
    print(f"  replicas: {args.min} at rest, {peak} at the peak (first added at {first_up} s), back to {args.min} at "
          f"{back_down} s (burst ended at {result['burst_end_t']} s)")
    print(f"  ingress on the head node: {result['ingress_on_head']}; model replicas on the worker node: "
          f"{result['replicas_on_worker']}")
    print(f"  failed clicks: {result['failed_clicks']} {errors[:3]}")
    print("  CPU per answered click under the burst: " + ", ".join(
        f"{k} {v:.1f} ms" for k, v in sorted(result["cpu_ms_per_click"].items(), key=lambda kv: -kv[1])))
    ok = result["failed_clicks"] == 0 and peak > args.min and back_down is not None and result["ingress_on_head"]
    print("proof:", "PASS" if ok else "FAIL")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"written {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
