"""The backend as Label Studio meets it: the ingress and model replicas on a real local Ray Serve, images from a
real HTTP server on loopback, clicks recorded in a real SQLite database. The model is a small untrained network:
these tests are about the protocol, state and errors, not mask quality."""
from __future__ import annotations

import copy
import time

import cv2
import numpy as np
import pytest
import requests
import torch

from image_server import ImageServer
from model_support import disk_scene
from workers.model.checkpoint import save_checkpoint
from workers.model.network import ClickSegNet, NetConfig

W, H = 320, 240


@pytest.fixture(scope="session")
def served(serve_http, tmp_path_factory, ls_request):
    """Two apps on one Serve: /open without auth, /locked with Basic auth; both record into one SQLite file."""
    from ray import serve

    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.serving.app import ServeConfig, build_app

    root = tmp_path_factory.mktemp("serving")
    rgb, mask = disk_scene(h=H, w=W, cx=150, cy=120, r=50)
    cv2.imwrite(str(root / "disk.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (root / "junk.png").write_bytes(b"this is not an image")
    images = ImageServer(root)
    torch.manual_seed(0)
    checkpoint = root / "tiny.pt"
    save_checkpoint(checkpoint, ClickSegNet(NetConfig(widths=(8, 16, 16, 24, 24), blocks=(1, 1, 1, 1),
                                                      decoder_width=16)))
    db_url = f"sqlite:///{root / 'clicks.db'}"
    from alembic import command

    command.upgrade(alembic_config(db_url), "head")
    settings = ImageSettings(allowed_hosts=(images.host,))
    # No CPU reservation: the two apps stay up for the whole run, beside other modules' apps on the 2-CPU cluster.
    common = dict(checkpoint=str(checkpoint), model_version="tiny-1", images=settings, database_url=db_url,
                  cpus_per_replica=0)
    serve.run(build_app(ServeConfig(**common)), name="open", route_prefix="/open")
    serve.run(build_app(ServeConfig(**common, basic_auth=("annotator", "s3cret"))), name="locked",
              route_prefix="/locked")
    yield {"url": serve_http, "images": images, "db_url": db_url, "mask": mask,
           "body": ls_request("predict_interactive_pos_neg_keypoints")}
    serve.delete("open")
    serve.delete("locked")
    images.stop()


def interactive(base: dict, image_url: str, clicks: list[tuple[float, float, bool]], first_id: str = "r0",
                size: tuple[int, int] = (W, H)) -> dict:
    """An interactive /predict body like Label Studio's, with smart keypoints at (x%, y%, positive), for an image
    that Label Studio believes is `size` (width, height)."""
    body = copy.deepcopy(base)
    body["tasks"][0]["data"]["image"] = image_url
    template = body["params"]["context"]["result"][0]
    regions = []
    for i, (x, y, positive) in enumerate(clicks):
        r = copy.deepcopy(template)
        r.update(id=first_id if i == 0 else f"{first_id}-{i}", is_positive=positive, original_width=size[0],
                 original_height=size[1])
        r["value"].update(x=x, y=y)
        regions.append(r)
    body["params"]["context"]["result"] = regions
    return body


def decode_brush(result: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = result["original_height"], result["original_width"]
    return decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3]


def test_health_and_setup_answer_fast_with_the_model_version(served, ls_request):
    t0 = time.perf_counter()
    assert requests.get(served["url"] + "/open/health", timeout=5).json()["status"] == "UP"
    setup = requests.post(served["url"] + "/open/setup", json=ls_request("setup"), timeout=5)
    assert time.perf_counter() - t0 < 1.0
    assert setup.status_code == 200 and setup.json() == {"model_version": "tiny-1"}
    versions = requests.get(served["url"] + "/open/versions", timeout=5).json()
    assert versions == {"versions": ["tiny-1"]}


def test_interactive_click_gets_one_brush_mask_at_the_natural_size(served):
    body = interactive(served["body"], served["images"].url("disk.png"), [(46.9, 50.0, True), (90.0, 10.0, False)])
    answer = requests.post(served["url"] + "/open/predict", json=body, timeout=60).json()
    assert "errors" not in answer, answer
    (prediction,) = answer["results"]
    assert prediction["model_version"] == "tiny-1"
    (result,) = prediction["result"]
    from integrations.label_studio.labeling_config import parse_label_config

    config = parse_label_config(body["label_config"])
    assert result["type"] == "brushlabels"
    assert (result["from_name"], result["to_name"]) == (config.answers[0][1].name, config.image_name)
    assert result["value"]["brushlabels"] == ["Cat"]
    mask = decode_brush(result)
    assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 255}


def test_a_further_click_builds_on_the_cached_object_and_annotators_stay_apart(served):
    from ray import serve

    from workers.model import Click
    from workers.serving import SegmentRequest

    handle = serve.get_deployment_handle("ClickModel", "open").options(multiplexed_model_id="img-state")
    rgb, _ = disk_scene(h=H, w=W)
    first = handle.segment.remote(SegmentRequest("img-state", "alice", [Click(60, 50, True)])).result()
    assert first is None  # the replica has not seen the image: it asks for it
    first = handle.segment.remote(SegmentRequest("img-state", "alice", [Click(60, 50, True)]), rgb).result()
    assert not first.incremental
    two = [Click(60, 50, True), Click(5, 5, False)]
    second = handle.segment.remote(SegmentRequest("img-state", "alice", two)).result()
    assert second.incremental and second.mask().shape == (H, W)
    other = handle.segment.remote(SegmentRequest("img-state", "bob", two)).result()
    assert not other.incremental  # bob's first request: alice's state is not his
    edited = handle.segment.remote(SegmentRequest("img-state", "alice", [Click(61, 50, True), Click(5, 5, False)]))
    assert not edited.result().incremental  # an edited history is predicted afresh, never on stale state


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b["params"]["context"]["result"][0]["value"].update(x=140.0), "x"),
    (lambda b: b["params"]["context"]["result"][0]["value"].update(keypointlabels=["Zebra"]), "label"),
    (lambda b: b["params"]["context"].update(result=[]), "smart region"),
    (lambda b: b["tasks"][0]["data"].update(image="http://169.254.169.254/latest/meta-data"), "allowed"),
    (lambda b: b["tasks"][0]["data"].update(image="JUNK"), ""),
])
def test_bad_interactive_requests_get_errors_label_studio_shows(served, mutate, message):
    body = interactive(served["body"], served["images"].url("disk.png"), [(50.0, 50.0, True)], first_id="bad")
    mutate(body)
    reply = requests.post(served["url"] + "/open/predict", json=body, timeout=30)
    assert reply.status_code in (200, 400)
    assert "errors" in reply.json(), reply.text[:300]
    errors = reply.json()["errors"]
    assert errors and message.lower() in " ".join(errors).lower()
    assert "Traceback" not in reply.text
    assert requests.get(served["url"] + "/open/health", timeout=5).status_code == 200


def test_undecodable_images_and_broken_json_are_refused_and_serving_goes_on(served):
    body = interactive(served["body"], served["images"].url("junk.png"), [(50.0, 50.0, True)], first_id="junk")
    reply = requests.post(served["url"] + "/open/predict", json=body, timeout=30)
    assert reply.json()["errors"]
    broken = requests.post(served["url"] + "/open/predict", data=b'{"tasks": [', timeout=30,
                           headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "JSON" in broken.json()["errors"][0]
    good = interactive(served["body"], served["images"].url("disk.png"), [(50.0, 50.0, True)], first_id="after")
    assert "errors" not in requests.post(served["url"] + "/open/predict", json=good, timeout=30).json()


def test_basic_auth_guards_every_endpoint_but_health(served, ls_request):
    base = served["url"] + "/locked"
    assert requests.get(base + "/health", timeout=5).status_code == 200
    assert requests.post(base + "/setup", json=ls_request("setup"), timeout=5).status_code == 401
    assert requests.get(base + "/versions", auth=("annotator", "wrong"), timeout=5).status_code == 401
    assert requests.post(base + "/webhook", json={}, timeout=5).status_code == 401
    ok = requests.post(base + "/setup", json=ls_request("setup"), auth=("annotator", "s3cret"), timeout=5)
    assert ok.status_code == 200 and ok.json()["model_version"] == "tiny-1"
    body = interactive(served["body"], served["images"].url("disk.png"), [(50.0, 50.0, True)], first_id="auth")
    reply = requests.post(base + "/predict", json=body, auth=("annotator", "s3cret"), timeout=60)
    assert "errors" not in reply.json()
    assert "s3cret" not in requests.post(base + "/predict", json=body, timeout=5).text


def test_answered_clicks_and_webhook_annotations_reach_the_database(served, ls_request):
    from sqlalchemy import create_engine, text

    body = interactive(served["body"], served["images"].url("disk.png"), [(47.0, 50.0, True), (60.0, 50.0, True)],
                       first_id="recorded")
    for n in (1, 2):
        b = copy.deepcopy(body)
        b["params"]["context"]["result"] = body["params"]["context"]["result"][:n]
        assert "errors" not in requests.post(served["url"] + "/open/predict", json=b, timeout=60).json()
    hook = requests.post(served["url"] + "/open/webhook", json=ls_request("webhook_annotation_created"), timeout=5)
    assert hook.status_code == 200 and hook.json()["status"] in ("applied", "ignored")
    engine = create_engine(served["db_url"])
    deadline = time.time() + 20
    while True:
        with engine.connect() as c:
            clicks = c.execute(text("select count(*) from clicks")).scalar()
            masks = c.execute(text("select count(*) from predicted_masks")).scalar()
            annotations = c.execute(text("select count(*) from annotations")).scalar()
        if (clicks >= 2 and masks >= 2) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert clicks >= 2 and masks >= 2 and annotations >= 1


def test_a_size_label_studio_reports_differently_and_a_smart_box_are_honoured(served):
    from ray import serve

    from workers.model import Click
    from workers.serving import SegmentRequest

    # Label Studio thinks the image is twice its real size: the answer comes at Label Studio's size.
    body = interactive(served["body"], served["images"].url("disk.png"), [(46.9, 50.0, True)], first_id="big",
                       size=(2 * W, 2 * H))
    answer = requests.post(served["url"] + "/open/predict", json=body, timeout=60).json()
    assert decode_brush(answer["results"][0]["result"][0]).shape == (2 * H, 2 * W)
    # ... and on the replica the next click builds on the last one, in the image's own pixels.
    handle = serve.get_deployment_handle("ClickModel", "open").options(multiplexed_model_id="img-scaled")
    rgb, _ = disk_scene(h=H, w=W)
    one = SegmentRequest("img-scaled", "o", [Click(300, 240, True)], size=(2 * W, 2 * H))
    assert handle.segment.remote(one, rgb).result().mask().shape == (H, W)
    two = SegmentRequest("img-scaled", "o", one.clicks + [Click(20, 20, False)], size=(2 * W, 2 * H))
    assert handle.segment.remote(two).result().incremental
    # A smart rectangle alone: the mask stays inside it.
    box_body = interactive(served["body"], served["images"].url("disk.png"), [(46.9, 50.0, True)], first_id="box")
    region = box_body["params"]["context"]["result"][0]
    region.update(type="rectanglelabels", from_name="rect")
    region["value"] = {"x": 25.0, "y": 25.0, "width": 50.0, "height": 50.0, "rotation": 0,
                       "rectanglelabels": ["Cat"]}
    answer = requests.post(served["url"] + "/open/predict", json=box_body, timeout=60).json()
    assert "errors" not in answer, answer
    mask = decode_brush(answer["results"][0]["result"][0])
    outside = np.ones_like(mask, bool)
    outside[60:180, 80:240] = False
    assert not mask[outside].any()
