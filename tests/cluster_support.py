"""A two-node Ray cluster on this machine (ray.cluster_utils.Cluster) serving the backend, and a node taken away
while annotators click; run by tests/test_faults.py in a process of its own (a process holds one Ray connection,
and the test run's own Ray is another cluster). Prints one JSON line: what each annotator saw before and after.

The head declares the ingress resource (orchestrator.placement), so the ingress and Serve's proxy live there, with
CPUs for the ingress and one model replica; a second node with one CPU joins, and a second replica (asking for one
CPU) can only go there. That node is then removed without a graceful stop, as when a machine dies.

    python tests/cluster_support.py WORK_DIR
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import REQUESTS  # noqa: E402
from finetune_support import disk_images, predict_body, tiny_checkpoint  # noqa: E402
from image_server import ImageServer  # noqa: E402
from support import free_port, wait_for  # noqa: E402

APP = "nodes"
ANNOTATORS = 4
IMAGES_EACH = 3  # 12 images in all: the router spreads them over the two replicas (4 left both on one now and then)
SIZE = (128, 96)
START_TIMEOUT_S = 300.0


class Annotator(threading.Thread):
    """Clicks on its own images without pause, one object after another, each on the next image, until told to
    stop; notes each click's outcome with the phase it was sent in."""

    def __init__(self, url: str, image_urls: list[str], template: dict, name: str):
        super().__init__(daemon=True)
        self.url, self.image_urls, self.template, self.name = url, image_urls, template, name
        self.phase, self.stop, self.outcomes = "before", threading.Event(), []

    def run(self) -> None:
        session, n = requests.Session(), 0
        history = [(35.0, 40.0, True), (5.0, 5.0, False), (40.0, 55.0, True), (90.0, 90.0, False)]
        while not self.stop.is_set():
            k, item = n % len(history) + 1, n // len(history)
            image_url = self.image_urls[item % len(self.image_urls)]
            body = predict_body(self.template, image_url, SIZE, history[:k], 1, f"{self.name}-{item}")
            phase = self.phase
            try:
                reply = session.post(self.url, json=body, timeout=120)
                answer = reply.json()
                ok = reply.status_code == 200 and "errors" not in answer and len(answer["results"][0]["result"]) == 1
                self.outcomes.append((phase, None if ok else reply.text[:200]))
            except (requests.RequestException, ValueError) as exc:
                self.outcomes.append((phase, repr(exc)[:200]))
            n += 1


def main(work: Path) -> dict:
    # Ray's files (and the address file Cluster writes for `ray.init()` to find) in a folder of this run's own,
    # short because Ray's socket paths have a length limit: no other Ray on the machine sees this cluster.
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="cm-ray-nodes-")
    os.mkdir(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
    # Both nodes listen on loopback only; without this, Ray turns 127.0.0.1 in the address a driver joins into the
    # machine's outward address, where nothing listens (read when ray is first imported).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from integrations.images import ImageSettings
    from orchestrator.placement import INGRESS_RESOURCE
    from orchestrator.ray_runtime import start_ray
    from orchestrator.serving.app import ServeConfig, build_app

    template = json.loads((REQUESTS / "predict_interactive_pos_neg_keypoints.json").read_text())["body"]
    (work / "images").mkdir(parents=True, exist_ok=True)
    names = [name for name, _ in disk_images(work / "images", ANNOTATORS * IMAGES_EACH)]
    images = ImageServer(work / "images")
    checkpoint = tiny_checkpoint(work / "tiny.pt")
    node = dict(node_ip_address="127.0.0.1", include_dashboard=False)
    cluster = Cluster(initialize_head=True, head_node_args=dict(node, num_cpus=2, resources={INGRESS_RESOURCE: 1}))
    try:
        start_ray(address=cluster.address)
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(checkpoint=str(checkpoint), model_version="tiny", replicas=1, cpus_per_replica=1,
                             images=ImageSettings(allowed_hosts=(images.host,)))
        serve.run(build_app(config), name=APP, route_prefix="/")  # the ingress and a replica fill the head
        worker = cluster.add_node(**node, num_cpus=1)
        cluster.wait_for_nodes()
        serve.run(build_app(replace(config, replicas=2)), name=APP, route_prefix="/")
        model = serve.get_deployment_handle("ClickModel", APP)
        nodes_seen: set[str] = set()

        def both_nodes_serve() -> bool:
            nodes_seen.add(model.stats.remote().result()["node"])
            return len(nodes_seen) == 2

        wait_for(both_nodes_serve, "a replica on each node", START_TIMEOUT_S)
        annotators = [Annotator(f"http://127.0.0.1:{port}/predict",
                                [images.url(name) for name in names[i::ANNOTATORS]], template, f"a{i}")
                      for i in range(ANNOTATORS)]
        for a in annotators:
            a.start()
        wait_for(lambda: all(len(a.outcomes) >= 8 for a in annotators), "clicks before the node goes", START_TIMEOUT_S)
        held: dict[str, int] = {}  # node -> images its replica holds (the router spreads images over replicas)

        def both_replicas_seen() -> bool:
            stats = model.stats.remote().result()
            held[stats["node"]] = stats["images"]
            return len(held) == 2

        wait_for(both_replicas_seen, "both replicas' stats", START_TIMEOUT_S)
        for a in annotators:
            a.phase = "during"
        cluster.remove_node(worker, allow_graceful=False)
        # Until every annotator has had 8 good answers after the loss, however long Ray takes to notice it.
        after = [len(a.outcomes) for a in annotators]
        wait_for(lambda: all(sum(1 for _, e in a.outcomes[n:] if e is None) >= 8 for a, n in zip(annotators, after)),
                 "answers after the node went", START_TIMEOUT_S)
        for a in annotators:
            a.phase = "after"
        wait_for(lambda: all(sum(1 for p, _ in a.outcomes if p == "after") >= 8 for a in annotators),
                 "clicks once recovered", START_TIMEOUT_S)
        for a in annotators:
            a.stop.set()
        for a in annotators:
            a.join(150)
        serving = {model.stats.remote().result()["node"] for _ in range(8)}
        return {"head": cluster.head_node.node_id, "worker": worker.node_id, "serving_nodes": sorted(serving),
                "worker_images_before_loss": held[worker.node_id],
                "annotators": [{"clicks": {p: sum(1 for q, _ in a.outcomes if q == p) for p in ("before", "during",
                                                                                                "after")},
                                "errors": {p: [e for q, e in a.outcomes if q == p and e] for p in ("before", "during",
                                                                                                   "after")}}
                               for a in annotators]}
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            images.stop()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
