"""The Label Studio harness, checked against a real Label Studio 1.23.2: a stand-in backend on loopback (a plain
http.server that records what arrives and answers with the protocol module) is connected with interactive
preannotations on, and an interactive-annotating call is sent through Label Studio's API as the labeling UI does.
The real clickmask backend replaces the stand-in in the serving tests; this file proves the harness and the protocol.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from integrations.label_studio import protocol
from integrations.label_studio.errors import ProtocolError
from integrations.label_studio.labeling_config import parse_label_config
from ls_support import smart_keypoint

VERSION = "stand-in-1"


def disk_mask(obj: protocol.SmartObject, radius: int = 15) -> np.ndarray:
    """What the stand-in 'predicts': a disk around the object's first click, at the image's natural size."""
    yy, xx = np.mgrid[: obj.height, : obj.width]
    return (xx - obj.clicks[0].x) ** 2 + (yy - obj.clicks[0].y) ** 2 <= radius**2


class StandIn(BaseHTTPRequestHandler):
    received: list  # (method, path, headers, body) per request, set on the subclass
    plain_errors = False  # answer bad interactive requests with {"errors": [...]} instead of the interactive shape

    def log_message(self, *args):  # keep the test output clean
        pass

    def _answer(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.received.append(("GET", self.path, dict(self.headers), None))
        if self.path == "/health":
            return self._answer(protocol.health_response())
        if self.path == "/versions":
            return self._answer(protocol.versions_response([VERSION]))
        self._answer({"errors": ["not found"]}, 404)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = protocol.load_json(raw)
        except ProtocolError as exc:
            return self._answer(protocol.error_response(str(exc)), 400)
        self.received.append(("POST", self.path, dict(self.headers), body))
        if self.path == "/setup":
            protocol.parse_setup(body)
            return self._answer(protocol.setup_response(VERSION))
        if self.path == "/predict":
            try:
                request = protocol.parse_predict(body)
            except ProtocolError as exc:
                if self.plain_errors:
                    return self._answer(protocol.error_response(str(exc)))
                return self._answer(protocol.interactive_error_response(VERSION, str(exc)))
            results = [protocol.brush_result(disk_mask(o), o.answer, 0.9) for o in request.objects]
            return self._answer(protocol.predict_response([protocol.prediction(results, 0.9, VERSION)]))
        self._answer({})


@pytest.fixture
def stand_in(request):
    received: list = []
    handler = type("Handler", (StandIn,), {"received": received, "plain_errors": getattr(request, "param", False)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def image_size(label_studio, task: dict) -> tuple[int, int]:
    from integrations.images import ImageFetcher, ImageSettings

    fetcher = ImageFetcher(ImageSettings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.pat))
    image = fetcher.fetch(task["data"]["image"])
    return image.shape[1], image.shape[0]


def keys(obj) -> object:
    """The key structure of a JSON body (dicts by key, lists by their first item), values dropped."""
    if isinstance(obj, dict):
        return {k: keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [keys(obj[0])] if obj else []
    return None


def test_interactive_click_reaches_backend_and_mask_comes_back(label_studio, ls_project, stand_in, ls_request):
    url, received = stand_in
    project_id, tasks = ls_project
    task = tasks[0]
    backend_id = label_studio.connect_backend(project_id, url, basic_auth=("ls", "s3cret"))
    paths = [(method, path) for method, path, _, _ in received]
    assert ("GET", "/health") in paths and ("POST", "/setup") in paths
    expected_auth = "Basic " + base64.b64encode(b"ls:s3cret").decode()
    assert all(headers.get("Authorization") == expected_auth for _, _, headers, _ in received)
    received.clear()

    width, height = image_size(label_studio, task)
    click = smart_keypoint(30.0, 40.0, width, height, region_id="e2eClick01")
    answer = label_studio.interactive_annotating(backend_id, task["id"], [click])

    predicts = [body for method, path, _, body in received if path == "/predict"]
    assert len(predicts) == 1
    body = predicts[0]
    assert body["params"]["context"]["result"] == [click]  # the click arrived as the UI placed it
    request = protocol.parse_predict(body)
    assert request.interactive and request.tasks[0].id == task["id"]
    (obj,) = request.objects
    assert (obj.clicks[0].x, obj.clicks[0].y) == pytest.approx((0.3 * width, 0.4 * height))

    # The answer passed through Label Studio unchanged: results[0] comes back as "data".
    assert "errors" not in answer
    (region,) = answer["data"]["result"]
    assert answer["data"]["model_version"] == VERSION
    assert (region["from_name"], region["to_name"], region["value"]["brushlabels"]) == ("tag", "image", ["Object"])
    decoded = decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
    np.testing.assert_array_equal(decoded > 0, disk_mask(obj))

    # What arrived has the shape of the recorded body (keys at every level; predictions are absent here).
    recorded = ls_request("predict_interactive_positive_keypoint")
    assert keys(body).keys() == keys(recorded).keys()
    assert keys(body["params"]) == keys(recorded["params"])
    live_task, recorded_task = body["tasks"][0], recorded["tasks"][0]
    assert set(live_task) == set(recorded_task)
    assert live_task["predictions"] == [] and live_task["data"]["image"].startswith("/data/upload/")


def test_webhook_reaches_backend_with_basic_auth(label_studio, ls_project, stand_in):
    url, received = stand_in
    project_id, tasks = ls_project
    label_studio.connect_backend(project_id, url, basic_auth=("ls", "s3cret"))
    label_studio.set_webhook_auth(project_id, url, ("ls", "s3cret"))
    config = parse_label_config(label_studio.api("GET", f"/api/projects/{project_id}")["label_config"])
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    region = protocol.brush_result(mask, config.answer_for("Object"))
    annotation_id = label_studio.create_annotation(tasks[0]["id"], [region])

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [(h, b) for m, p, h, b in received if p == "/webhook" and b.get("action") == "ANNOTATION_CREATED"]
        if events:
            break
        time.sleep(0.2)
    assert events, f"no ANNOTATION_CREATED reached the backend: {[p for _, p, _, _ in received]}"
    headers, body = events[0]
    assert headers.get("Authorization") == "Basic " + base64.b64encode(b"ls:s3cret").decode()
    assert body["annotation"]["id"] == annotation_id and body["task"]["id"] == tasks[0]["id"]
    assert body["annotation"]["result"][0]["value"]["rle"] == region["value"]["rle"]


def test_backend_error_text_passes_through_in_the_interactive_shape(label_studio, ls_project, stand_in):
    url, received = stand_in
    project_id, tasks = ls_project
    backend_id = label_studio.connect_backend(project_id, url)
    bad = smart_keypoint(30.0, 40.0, 100, 100, label="NoSuchLabel")
    answer = label_studio.interactive_annotating(backend_id, tasks[0]["id"], [bad])
    assert any(path == "/predict" for _, path, _, _ in received)
    assert answer["data"]["result"] == []
    assert answer["data"]["errors"] == ["params.context.result[0]: unknown label 'NoSuchLabel' for control 'kp'"]


@pytest.mark.parametrize("stand_in", [True], indirect=True)
def test_plain_errors_are_replaced_by_label_studio(label_studio, ls_project, stand_in):
    """Pins the measured behaviour that interactive_error_response works around: Label Studio 1.23.2 drops the
    backend's own text when the answer has no "results"."""
    url, _ = stand_in
    project_id, tasks = ls_project
    backend_id = label_studio.connect_backend(project_id, url)
    bad = smart_keypoint(30.0, 40.0, 100, 100, label="NoSuchLabel")
    answer = label_studio.interactive_annotating(backend_id, tasks[0]["id"], [bad])
    assert "data" not in answer
    (message,) = answer["errors"]
    assert message.startswith("Incorrect response from ML service") and "NoSuchLabel" not in message
