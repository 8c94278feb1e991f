"""The backend when what it depends on fails: a stopped or frozen S3 server, Label Studio gone, the database stopped
and started again, a model replica killed while an annotator clicks. Real components throughout: the backend on
the test run's Ray Serve, a PostgreSQL server and a moto S3 server of this module's own (so stopping them touches
nothing else), images on loopback HTTP servers. A small untrained network: these tests are about what fails and
what keeps working, not mask quality."""
from __future__ import annotations

import os
import signal
import threading
import time

import boto3
import cv2
import numpy as np
import pytest
import requests

from finetune_support import annotation_body, disk_images, predict_body, tiny_checkpoint
from image_server import ImageServer
from store_support import MotoProcess, PrivatePostgres
from support import wait_for

SIZE = (128, 96)  # w, h of the disk images
BUCKET = "fault-images"
APP = "faults"
PROJECT = 7
OUTAGE_S = 8.0  # how long the database stays down once the recorder has noticed


@pytest.fixture(scope="module")
def backend(serve_http, tmp_path_factory, ls_request):
    """The backend with three image sources (an allowed web host, Label Studio's uploads, an S3 bucket) and
    clicks recorded in PostgreSQL; each source and the database can be stopped by a test."""
    from alembic import command
    from ray import serve

    from conftest import FAKE_AWS
    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.serving.app import ServeConfig, build_app

    root = tmp_path_factory.mktemp("faults")
    for folder in ("web", "studio/data/upload/1", "s3"):
        (root / folder).mkdir(parents=True)
    images = {name: masks for name, masks in disk_images(root / "web", 8)}
    disk_images(root / "studio/data/upload/1", 4)
    disk_images(root / "s3", 4)
    web, studio, moto, postgres = ImageServer(root / "web"), ImageServer(root / "studio"), MotoProcess(), None
    try:
        s3 = boto3.client("s3", endpoint_url=moto.url, aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        for path in sorted((root / "s3").iterdir()):
            s3.upload_file(str(path), BUCKET, path.name)
        postgres = PrivatePostgres()
        postgres.start()
        command.upgrade(alembic_config(postgres.url), "head")
        settings = ImageSettings(allowed_hosts=(web.host,), allowed_buckets=(BUCKET,), s3_endpoint_url=moto.url,
                                 label_studio_url=f"http://{studio.host}", timeout_s=3)
        checkpoint = tiny_checkpoint(root / "tiny.pt")
        serve.run(build_app(ServeConfig(checkpoint=str(checkpoint), model_version="tiny", images=settings,
                                        database_url=postgres.url, cpus_per_replica=0)),
                  name=APP, route_prefix=f"/{APP}")
        yield {"url": f"{serve_http}/{APP}", "web": web, "studio": studio, "moto": moto, "postgres": postgres,
               "checkpoint": checkpoint, "root": root, "masks": images,
               "predict": ls_request("predict_interactive_pos_neg_keypoints"),
               "created": ls_request("webhook_annotation_created")}
        serve.delete(APP)
    finally:
        web.stop()
        studio.stop()
        moto.kill()
        if postgres is not None:
            postgres.remove()


def click(backend, image: str, clicks: list[tuple[float, float, bool]], region: str = "r0",
          project: int = PROJECT) -> dict:
    """POST one interactive /predict as Label Studio does (clicks in image pixels); the parsed answer. A generous
    timeout: what is tested is that an answer comes, not how soon."""
    w, h = SIZE
    percent = [(x * 100 / w, y * 100 / h, positive) for x, y, positive in clicks]
    body = predict_body(backend["predict"], image, SIZE, percent, project, region)
    reply = requests.post(backend["url"] + "/predict", json=body, timeout=180)
    assert reply.status_code == 200, reply.text[:300]
    return reply.json()


def mask_of(answer: dict) -> np.ndarray:
    """The one brush mask of a good answer."""
    from label_studio_sdk.converter.brush import decode_rle

    assert "errors" not in answer, answer
    (result,) = answer["results"][0]["result"]
    h, w = result["original_height"], result["original_width"]
    return decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def error_of(answer: dict) -> str:
    """The message Label Studio shows: it passes results[0] on, so the error must be there."""
    assert answer["results"][0]["result"] == [], answer
    return " ".join(answer["results"][0]["errors"])


ON_DISK = [(40.0, 40.0, True)]  # inside the first disk image's disk


def test_a_frozen_or_stopped_s3_server_is_a_clear_unavailable_error_and_other_images_still_work(backend):
    moto = backend["moto"]
    s3_image = f"s3://{BUCKET}/disk0.png"
    mask_of(click(backend, s3_image, ON_DISK, region="s3-seen"))
    moto.freeze()  # connections are accepted and never answered: the fetch's time limit must end the wait
    try:
        message = error_of(click(backend, f"s3://{BUCKET}/disk1.png", ON_DISK, region="s3-frozen"))
        assert "S3 is unavailable" in message and "try again" in message
        mask_of(click(backend, backend["web"].url("disk1.png"), ON_DISK, region="web-while-frozen"))
    finally:
        moto.thaw()
    moto.kill()  # now nothing listens: refused at once
    message = error_of(click(backend, f"s3://{BUCKET}/disk2.png", ON_DISK, region="s3-stopped"))
    assert "S3 is unavailable (EndpointConnectionError)" in message and "testing" not in message
    mask_of(click(backend, backend["web"].url("disk2.png"), ON_DISK, region="web-while-stopped"))
    mask_of(click(backend, "/data/upload/1/disk2.png", ON_DISK, region="studio-while-stopped"))
    # An image fetched before the outage is held by the backend: its annotator goes on clicking.
    mask_of(click(backend, s3_image, ON_DISK + [(5.0, 5.0, False)], region="s3-seen"))


def test_label_studio_unreachable_is_a_clear_error_and_other_images_still_work(backend):
    mask_of(click(backend, "/data/upload/1/disk0.png", ON_DISK, region="studio-seen"))
    backend["studio"].stop()
    message = error_of(click(backend, "/data/upload/1/disk1.png", ON_DISK, region="studio-gone"))
    assert message.endswith("/data/upload/1/disk1.png: Label Studio is unavailable (ConnectionError); try again later")
    mask_of(click(backend, backend["web"].url("disk3.png"), ON_DISK, region="web-without-studio"))
    mask_of(click(backend, "/data/upload/1/disk0.png", ON_DISK + [(5.0, 5.0, False)], region="studio-seen"))


def test_database_stopped_and_restarted_clear_errors_no_lost_click_or_event(backend):
    from ray import serve
    from sqlalchemy import create_engine, text

    project, image = PROJECT + 1, backend["web"].url("disk4.png")
    masks = backend["masks"]["disk4.png"]
    ingress = serve.get_deployment_handle("Backend", APP)
    history = [(40.0, 40.0, True), (5.0, 5.0, False), (60.0, 50.0, True), (120.0, 90.0, False), (45.0, 30.0, True),
               (2.0, 90.0, False)]
    event = annotation_body(backend["created"], 501, project, 1, image, masks)
    for k in (1, 2):
        mask_of(click(backend, image, history[:k], region="db", project=project))
    assert requests.post(backend["url"] + "/webhook", json=event, timeout=60).json()["status"] == "applied"

    backend["postgres"].stop()
    try:
        for k in (3, 4, 5):  # annotators go on clicking: recording waits, they do not
            mask_of(click(backend, image, history[:k], region="db", project=project))
        late = annotation_body(backend["created"], 502, project, 2, image, masks)
        refused = requests.post(backend["url"] + "/webhook", json=late, timeout=60)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert refused.json() == {"errors": ["database unavailable: the event was not stored, send it again"]}
        setup = requests.post(backend["url"] + "/setup", json={"project": f"{project}.1", "schema":
                                                                backend["predict"]["label_config"]}, timeout=60)
        assert setup.json() == {"model_version": "tiny"}  # the registry being away falls back to the base
        assert requests.get(backend["url"] + "/versions", timeout=60).json() == {"versions": ["tiny"]}
        wait_for(lambda: not ingress.stats.remote().result()["recorder"]["healthy"], "the recorder to notice")
        status = ingress.stats.remote().result()["recorder"]
        assert status["last_error"].startswith("database unavailable") and status["queued"] >= 1
        time.sleep(OUTAGE_S)  # an outage longer than a writer's first tries: the clicks must wait, not be dropped
    finally:
        backend["postgres"].start()
    mask_of(click(backend, image, history, region="db", project=project))
    assert requests.post(backend["url"] + "/webhook", json=late, timeout=60).json()["status"] == "applied"

    engine = create_engine(backend["postgres"].url)
    try:
        def seqs() -> list[int]:
            with engine.connect() as c:
                return list(c.execute(text(
                    "select c.seq from clicks c join interaction_sessions s on s.id = c.session_id "
                    "join projects p on p.id = s.project_id where p.ls_project_id = :p order by c.seq"),
                    {"p": project}).scalars())

        wait_for(lambda: len(seqs()) >= len(history), "every answered click to be written")
        assert seqs() == [1, 2, 3, 4, 5, 6]
        with engine.connect() as c:
            stored = c.execute(text("select ls_annotation_id from annotations order by 1")).scalars().all()
        assert stored == [501, 502]
    finally:
        engine.dispose()
    status = ingress.stats.remote().result()["recorder"]
    assert status["healthy"] and status["dropped"] == 0


def test_a_killed_replica_is_restarted_and_the_annotator_goes_on_with_the_object_rebuilt(backend):
    import torch
    from ray import serve

    from workers.model import Click
    from workers.model.predictor import load_predictor
    from workers.serving import replay

    model = serve.get_deployment_handle("ClickModel", APP)
    killed = model.stats.remote().result()["pid"]
    image, history = "disk5.png", [(44.0, 42.0, True), (6.0, 6.0, False), (60.0, 55.0, True), (110.0, 85.0, False),
                                   (30.0, 35.0, True), (70.0, 20.0, False)]
    url = backend["web"].url(image)
    answers: dict[int, dict] = {}
    failures: list[str] = []

    def annotate(ks):
        for k in ks:
            try:
                answers[k] = click(backend, url, history[:k], region="kill")
                mask_of(answers[k])
            except (AssertionError, requests.RequestException) as exc:
                failures.append(f"click {k}: {exc}")

    annotate([1, 2])
    clicking = threading.Thread(target=annotate, args=([3, 4, 5, 6],))
    clicking.start()  # the annotator goes on clicking while the replica's process is killed
    os.kill(killed, signal.SIGKILL)
    clicking.join()
    assert len(failures) <= 1, failures
    assert model.stats.remote().result()["pid"] != killed  # Ray Serve started another replica

    # Every answer, before and after the kill, is the chain of predictions over the click history.
    torch.set_num_threads(1)
    predictor = load_predictor(str(backend["checkpoint"]))
    rgb = cv2.cvtColor(cv2.imread(str(backend["root"] / "web" / image)), cv2.COLOR_BGR2RGB)
    predictor.set_image(rgb)
    for k, answer in answers.items():
        if "errors" in answer:
            continue
        expected = replay(predictor, [Click(x, y, p) for x, y, p in history[:k]], None).mask
        served = mask_of(answer)
        iou = (served & expected).sum() / max(1, (served | expected).sum())
        assert iou > 0.98, f"click {k}: IoU {iou:.3f} with the chain over its history"
    assert 6 in answers and "errors" not in answers[6]


@pytest.mark.ray  # a cluster of its own, not the ray_cluster fixture
def test_a_node_lost_from_a_two_node_cluster_serving_goes_on_on_the_other(tmp_path):
    """A Ray cluster of two nodes on this machine, one model replica on each; the node without the ingress goes
    away while four annotators click. Run in a process of its own (tests/cluster_support.py): this process already
    holds a connection to the test run's Ray."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, str(Path(__file__).with_name("cluster_support.py")), str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert report["worker_images_before_loss"] >= 1  # the lost node was serving some of the annotators
    assert report["serving_nodes"] == [report["head"]]  # the replica left runs on the node that stayed
    for annotator in report["annotators"]:
        errors = annotator["errors"]
        assert errors["before"] == [] and errors["after"] == [], errors
        assert len(errors["during"]) <= 1, errors  # at most the click that was on the lost node
        assert annotator["clicks"]["before"] >= 8 and annotator["clicks"]["after"] >= 8
