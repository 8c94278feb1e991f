"""End to end with a real Label Studio 1.23.2 and the real backend: the bundled base model served on a real local Ray
Serve (one model replica), images uploaded to Label Studio and fetched by the backend through Label Studio's API,
clicks recorded into a real SQLite database.

An annotator is simulated as the NoC protocol does (workers/model/clicker.py): each click goes where the current
mask is most wrong against the ground truth (positive clicks first, a negative one when the protocol asks for it),
and is sent through Label Studio's interactive-annotating API with the whole click history, exactly as the labeling
UI does. The brush RLE that comes back is decoded and scored. The expectations are read from the model itself: the
same predictor, loaded in this process and fed the same clicks (with its previous answer fed back), must give the
same IoU curve; so the test follows the bundled model when it is replaced by a better one.

The masks the backend answered, submitted as the annotation, come back bit for bit from `clickmask sync` and
`clickmask export` (COCO, read with pycocotools), and from the backend's own database, fed by Label Studio's webhook.

Also checked through Label Studio: the "Start training" button reaches /webhook and queues a fine-tuning job, and
a backend protected by Basic auth works when Label Studio has its credentials and is refused without them.

One Label Studio per run and one Ray Serve per run (the session fixtures of conftest.py);
this module deploys one application at a time (one model replica: one CPU), so it fits beside the other Ray tests.
"""
from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from sqlalchemy import select

from ls_support import POLYGON_CONFIG, STANDARD_CONFIG, eval_images, smart_keypoint
from support import DATASETS, wait_for
from workers.model import Click
from workers.model.clicks import scaled_into
from workers.model.clicker import Clicker
from workers.model.datasets import read_ignore, read_image, read_mask
from workers.model.evaluator import evaluate_object, iou

APP, PREFIX = "e2e", "/e2e"
GRABCUT = DATASETS / "eval" / "grabcut33"
IMAGES = 3
MIN_CLICKS, MAX_CLICKS = 3, 10  # per object: at least 3 clicks, then on until a negative click was made
IOU_TOLERANCE = 0.02  # served vs offline IoU after each click (one torch thread in the replica, default here)
AUTH = ("annotator", "e2e-s3cret")


def base_checkpoint() -> Path:
    from workers.model.predictor import BASE_CHECKPOINT

    return Path(BASE_CHECKPOINT)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def backend(serve_http, label_studio, tmp_path_factory):
    """deploy(basic_auth) (re)deploys the one application of this module with the bundled base model; the images
    are fetched through the run's Label Studio with its personal access token."""
    from alembic import command
    from ray import serve

    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.serving.app import ServeConfig, build_app

    root = tmp_path_factory.mktemp("e2e")
    db_url = f"sqlite:///{root / 'clickmask.db'}"
    command.upgrade(alembic_config(db_url), "head")
    images = ImageSettings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.pat)
    state = {"url": serve_http + PREFIX, "db_url": db_url, "checkpoint": digest(base_checkpoint()), "images": images}

    def deploy(basic_auth: tuple[str, str] | None = None) -> str:
        if state.get("auth", "none") == basic_auth:
            return state["url"]
        config = ServeConfig(checkpoint="base", model_version="base", images=images, database_url=db_url,
                             basic_auth=basic_auth)
        serve.run(build_app(config), name=APP, route_prefix=PREFIX)
        state["auth"] = basic_auth
        return state["url"]

    engine = make_engine(db_url)
    state["deploy"], state["factory"] = deploy, make_session_factory(engine)
    yield state
    serve.delete(APP)
    engine.dispose()


@pytest.fixture(scope="module")
def offline():
    """The bundled model in this process, as `clickmask evaluate` runs it."""
    from workers.model.predictor import load_predictor

    return load_predictor("base")


def upload_name(task: dict) -> str:
    """Label Studio stores an upload as <8 hex>-<original name>."""
    return task["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[1]


def brush_mask(answer: dict, width: int, height: int) -> np.ndarray:
    """The one brush region of an interactive answer as Label Studio passed it on, decoded to H x W bool."""
    assert "errors" not in answer and "errors" not in answer.get("data", {}), answer
    (region,) = answer["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
    assert (region["original_width"], region["original_height"]) == (width, height)
    return decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def polygon_mask(answer: dict, width: int, height: int) -> np.ndarray:
    """The polygon regions of an interactive answer, drawn as Label Studio fills them, H x W bool."""
    from integrations.polygons import draw, from_percent

    assert "errors" not in answer and "errors" not in answer.get("data", {}), answer
    regions = answer["data"]["result"]
    assert regions and all(r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == ["Object"]
                           and (r["original_width"], r["original_height"]) == (width, height) for r in regions)
    return draw([from_percent(r["value"]["points"], width, height) for r in regions], width, height)


def annotate(label_studio, backend_id: int, task: dict, gt: np.ndarray, ignore,
             answers: list[dict] | None = None, decode=brush_mask,
             masks: list[np.ndarray] | None = None) -> tuple[list[Click], list[float]]:
    """One object, clicked as the NoC protocol does, every click through Label Studio with the whole history.
    With `answers`, the smart keypoints and the answer regions of the last answer are left there (what the labeling
    UI holds when the annotator submits); with `masks`, the answered masks (as `decode` reads them)."""
    height, width = gt.shape
    clicker = Clicker(gt, ignore)
    regions: list[dict] = []
    ious: list[float] = []
    mask = None
    answer = None
    while len(clicker.clicks) < MAX_CLICKS:
        if len(clicker.clicks) >= MIN_CLICKS and not all(c.positive for c in clicker.clicks):
            break
        click = clicker.click(mask)
        if click is None:  # nothing left to correct
            break
        # The UI places a keypoint in percent of the image; the backend turns it back into pixels.
        regions.append(smart_keypoint(click.x * 100 / width, click.y * 100 / height, width, height,
                                      positive=click.positive, region_id=f"t{task['id']}k{len(regions)}"))
        answer = label_studio.interactive_annotating(backend_id, task["id"], regions)
        mask = decode(answer, width, height)
        ious.append(iou(gt, mask, ignore))
        if masks is not None:
            masks.append(mask)
    if answers is not None and answer is not None:
        answers[:] = [*regions, *answer["data"]["result"]]
    return list(clicker.clicks), ious


def offline_ious(predictor, path: Path, clicks: list[Click], gt: np.ndarray, ignore) -> list[float]:
    predictor.set_image(read_image(path))
    prev, ious = None, []
    for k in range(1, len(clicks) + 1):
        prev = predictor.predict(clicks[:k], prev)
        ious.append(iou(gt, prev.mask, ignore))
    return ious


def test_clicks_through_label_studio_improve_the_mask_and_match_the_model_offline(label_studio, backend, offline):
    from orchestrator.db.models import Click as ClickRow
    from orchestrator.db.models import ModelVersion

    url = backend["deploy"](None)
    project_id = label_studio.create_project(STANDARD_CONFIG, title="e2e clicks")
    paths = {p.name: p for p in eval_images(IMAGES)}
    for path in paths.values():  # one file per import: the harness's multi-file form keeps only one
        tasks = label_studio.upload_images(project_id, [path])
    assert len(tasks) == IMAGES
    backend_id = label_studio.connect_backend(project_id, url)

    curves: dict[str, tuple[list[float], list[float]]] = {}
    made: dict[str, list[Click]] = {}
    own: dict[str, float] = {}
    sent = []
    for task in tasks:
        path = paths[upload_name(task)]
        mask_path = GRABCUT / "masks" / f"{path.stem}.png"
        gt, ignore = read_mask(mask_path), read_ignore(mask_path)
        clicks, served = annotate(label_studio, backend_id, task, gt, ignore)
        assert len(served) == len(clicks) >= 1
        assert clicks[0].positive
        sent += clicks
        made[path.name] = clicks
        curves[path.name] = (served, offline_ious(offline, path, clicks, gt, ignore))
        # The model's own figure: the NoC evaluator run offline on this object for as many clicks.
        own[path.name] = evaluate_object(offline, gt, ignore, max_clicks=len(clicks))[0][-1]

    report = {name: ([round(v, 3) for v in s], [round(v, 3) for v in o]) for name, (s, o) in curves.items()}
    signs = {name: "".join("+" if c.positive else "-" for c in clicks) for name, clicks in made.items()}
    print(f"IoU per click through Label Studio vs offline: {report}; clicks: {signs}; evaluator: {own}")
    assert any(not c.positive for c in sent), f"the protocol never asked for a negative click: {report}"
    for name, (served, expected) in curves.items():
        assert served[-1] > served[0], f"{name}: IoU did not improve with clicks (served, offline): {report}"
        assert np.allclose(served, expected, atol=IOU_TOLERANCE), f"{name}: served != offline: {report}"
        assert served[-1] >= own[name] - IOU_TOLERANCE, f"{name}: {served[-1]:.3f} < evaluator's {own[name]:.3f}"
    assert digest(base_checkpoint()) == backend["checkpoint"], "the bundled model changed during the test"

    # Every click was answered by the base model and recorded (off the request path: allow a moment).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with backend["factory"]() as session:
            rows = session.execute(select(ClickRow.positive, ModelVersion.name)
                                   .join(ModelVersion, ClickRow.model_version_id == ModelVersion.id)).all()
        if len(rows) >= len(sent):
            break
        time.sleep(0.2)
    assert sorted(positive for positive, _ in rows) == sorted(c.positive for c in sent)
    assert {name for _, name in rows} == {"base"}


def queued_jobs(backend, ls_project_id: int) -> list[tuple[str, str]]:
    """(state, trigger) of the fine-tuning jobs of a Label Studio project in the backend's database."""
    from orchestrator.db.models import Project, TrainingJob

    with backend["factory"]() as session:
        return [tuple(row) for row in session.execute(
            select(TrainingJob.state, TrainingJob.trigger).join(Project, TrainingJob.project_id == Project.id)
            .where(Project.ls_project_id == ls_project_id))]


def test_start_training_button_reaches_the_webhook_and_queues_a_job(label_studio, backend):
    url = backend["deploy"](None)
    project_id = label_studio.create_project(STANDARD_CONFIG, title="e2e training")
    backend_id = label_studio.connect_backend(project_id, url)
    assert queued_jobs(backend, project_id) == []
    # The button: Label Studio posts START_TRAINING to <backend>/webhook and waits for the answer (no scheduler
    # runs here, so the job stays queued). Label Studio's own record of the state cannot show it: reading the
    # backend record runs /health and /setup again, which resets the state to Connected.
    label_studio.api("POST", f"/api/ml/{backend_id}/train")
    assert queued_jobs(backend, project_id) == [("queued", "webhook")]
    label_studio.api("POST", f"/api/ml/{backend_id}/train")  # pressed again: joins the queued job
    assert queued_jobs(backend, project_id) == [("queued", "webhook")]
    assert not label_studio.api("GET", f"/api/ml/{backend_id}").get("error_message")


def test_basic_auth_backend_works_with_credentials_and_is_refused_without(label_studio, backend):
    url = backend["deploy"](AUTH)
    # Straight at the backend: only /health is open.
    assert requests.get(url + "/health", timeout=10).status_code == 200
    setup = requests.post(url + "/setup", json={"project": "1.1", "schema": STANDARD_CONFIG}, timeout=10)
    assert setup.status_code == 401

    project_id = label_studio.create_project(STANDARD_CONFIG, title="e2e basic auth")
    (path,) = eval_images(1)
    (task,) = label_studio.upload_images(project_id, [path])
    gt = read_mask(GRABCUT / "masks" / f"{path.stem}.png")
    height, width = gt.shape
    click = Clicker(gt).click(None)
    region = smart_keypoint(click.x * 100 / width, click.y * 100 / height, width, height, region_id="auth0")

    # With the credentials on the backend record: connected, and a click comes back as a mask.
    locked_id = label_studio.connect_backend(project_id, url, title="locked", basic_auth=AUTH)
    mask = brush_mask(label_studio.interactive_annotating(locked_id, task["id"], [region]), width, height)
    assert iou(gt, mask) > 0
    # "Start training" sends the credentials too.
    label_studio.api("POST", f"/api/ml/{locked_id}/train")
    assert queued_jobs(backend, project_id) == [("queued", "webhook")]

    # The same backend without credentials: Label Studio's /setup check gets 401 and it refuses to add it.
    other = label_studio.create_project(STANDARD_CONFIG, title="e2e no credentials")
    response = label_studio.session.post(f"{label_studio.url}/api/ml", headers=label_studio._bearer(), timeout=60,
                                         json={"url": url, "project": other, "title": "bare", "is_interactive": True})
    assert response.status_code == 400, response.text[:300]
    assert "401" in response.text or "authentication" in response.text.lower(), response.text[:300]
    assert label_studio.api("GET", f"/api/ml?project={other}") == []
    token = base64.b64encode(f"{AUTH[0]}:wrong".encode()).decode()
    refused = requests.post(url + "/predict", json={}, headers={"Authorization": f"Basic {token}"}, timeout=10)
    assert refused.status_code == 401


class Cli:
    """`clickmask` as a user runs it, in this process: (exit code, stdout, stderr) of one command."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        from orchestrator.cli import main

        code = main([*argv, "--no-progress"])
        out, err = self.capsys.readouterr()
        return code, out, err


def synced_into_a_new_database(label_studio, project_id: int, tmp_path: Path, monkeypatch, cli: Cli) -> str:
    """`clickmask sync` of the project's two annotated tasks into a new SQLite database, with Label Studio's URL and
    key in the environment as a user sets them; the database's URL (left set as CLICKMASK_DATABASE_URL)."""
    from alembic import command

    from migrations import alembic_config

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.pat)
    url = f"sqlite:///{tmp_path / 'synced.db'}"
    command.upgrade(alembic_config(url), "head")
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", url)
    code, stdout, stderr = cli("sync", "--project", str(project_id))
    assert code == 0 and "2 task(s), 2 annotation(s): 2 stored or updated" in stdout, stderr
    return url


def test_annotated_submitted_synced_and_exported_masks_are_the_served_masks_bit_for_bit(
        label_studio, backend, tmp_path, monkeypatch, capsys):
    """Issue 6's round trip: click through Label Studio, submit what the UI then holds (the smart keypoints and
    the backend's brush region), `clickmask sync` into a fresh database and `clickmask export`: every exported mask
    is the served one, bit for bit. The webhook Label Studio sent to the backend on submit stored the same masks
    in the backend's own database, so its export must say the same."""
    import cv2
    from pycocotools.coco import COCO

    from orchestrator.db.models import Annotation

    url = backend["deploy"](None)
    project_id = label_studio.create_project(STANDARD_CONFIG, title="e2e export")
    paths = {p.name: p for p in eval_images(2)}
    for path in paths.values():
        tasks = label_studio.upload_images(project_id, [path])
    backend_id = label_studio.connect_backend(project_id, url)

    served: dict[int, np.ndarray] = {}  # Label Studio annotation id -> the brush mask the backend answered
    sizes: dict[int, tuple[int, int]] = {}  # task id -> (height, width) of the image file
    for task in tasks:
        path = paths[upload_name(task)]
        mask_path = GRABCUT / "masks" / f"{path.stem}.png"
        result: list[dict] = []
        annotate(label_studio, backend_id, task, read_mask(mask_path), read_ignore(mask_path), answers=result)
        (brush,) = [r for r in result if r["type"] == "brushlabels"]
        height, width = sizes[task["id"]] = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
        annotation_id = label_studio.create_annotation(task["id"], result)
        served[annotation_id] = brush_mask({"data": {"result": [brush]}}, width, height)
        assert served[annotation_id].any()

    cli = Cli(capsys)

    def exported(database_url: str) -> COCO:
        monkeypatch.setenv("CLICKMASK_DATABASE_URL", database_url)
        out = tmp_path / "coco.json"
        code, stdout, stderr = cli("export", "--project", str(project_id), "--format", "coco", "--out", str(out))
        assert code == 0 and "2 image(s), 2 annotation(s)" in stdout and "skipped 0 mask(s)" in stdout, stderr
        coco = COCO(str(out))
        assert [c["name"] for c in coco.dataset["categories"]] == ["Object"]
        assert {(i["label_studio_task_id"], i["height"], i["width"]) for i in coco.dataset["images"]} == {
            (task_id, *shape) for task_id, shape in sizes.items()}
        masks = {a["label_studio_annotation_id"]: coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds())}
        assert sorted(masks) == sorted(served)
        for annotation_id, mask in masks.items():
            assert mask.dtype == np.uint8 and np.array_equal(mask.astype(bool), served[annotation_id]), annotation_id
        for ann in coco.dataset["annotations"]:
            assert ann["iscrowd"] == 0 and ann["area"] == int(served[ann["label_studio_annotation_id"]].sum())
        return coco

    exported(synced_into_a_new_database(label_studio, project_id, tmp_path, monkeypatch, cli))

    # The backend's database, fed by the webhook of each submit (delivered by Label Studio; allow a moment).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with backend["factory"]() as session:
            stored = set(session.scalars(select(Annotation.ls_annotation_id)
                                         .where(Annotation.ls_annotation_id.in_(list(served)))))
        if stored == set(served):
            break
        time.sleep(0.2)
    assert stored == set(served), "the webhook did not store every submitted annotation"
    exported(backend["db_url"])


def test_a_polygon_project_is_answered_with_polygons_and_its_annotations_sync_export_and_fine_tune(
        label_studio, backend, offline, tmp_path, monkeypatch, capsys):
    """A PolygonLabels project: every click comes back as polygon regions that, drawn as Label Studio fills them,
    match the model run offline on the same clicks; the submitted polygons come back from `clickmask sync` and
    `clickmask export` with Label Studio's own vertices; and a fine-tuning job runs on the synced project."""
    from pycocotools.coco import COCO

    from integrations.masks import encode
    from integrations.polygons import PolygonOptions
    from orchestrator.db import TrainingJob, make_engine, make_session_factory
    from orchestrator.db.models import PredictedMask
    from orchestrator.scheduler import RunnerConfig, Scheduler
    from orchestrator.settings import FinetuneSettings

    url = backend["deploy"](None)
    project_id = label_studio.create_project(POLYGON_CONFIG, title="e2e polygons")
    paths = {p.name: p for p in eval_images(2)}
    for path in paths.values():
        tasks = label_studio.upload_images(project_id, [path])
    backend_id = label_studio.connect_backend(project_id, url)

    def clicks_counted() -> float:  # /metrics: every answered click, by model version
        from prometheus_client.parser import text_string_to_metric_families

        reply = requests.get(url + "/metrics", timeout=30)
        return sum(s.value for f in text_string_to_metric_families(reply.text) for s in f.samples
                   if s.name == "clickmask_clicks_total")

    counted_before = clicks_counted()
    submitted: dict[int, tuple[int, int]] = {}  # annotation id -> (width, height)
    answered: set[str] = set()  # the RLE of every mask the polygons showed
    made = 0
    for task in tasks:
        path = paths[upload_name(task)]
        mask_path = GRABCUT / "masks" / f"{path.stem}.png"
        gt, ignore = read_mask(mask_path), read_ignore(mask_path)
        result: list[dict] = []
        served: list[np.ndarray] = []
        clicks, _ = annotate(label_studio, backend_id, task, gt, ignore, answers=result, decode=polygon_mask,
                             masks=served)
        made += len(clicks)
        # The model offline on exactly the clicks the backend received: the percentages sent, read back as the
        # backend reads them (a click's last bits can move a guidance disk's edge by a pixel).
        height, width = gt.shape
        sent = [Click(c.x * 100 / width, c.y * 100 / height, c.positive) for c in clicks]
        received = scaled_into(sent, width / 100, height / 100, width, height)
        offline.set_image(read_image(path))
        prev = None
        for k, drawn in enumerate(served, 1):
            prev = offline.predict(received[:k], prev)
            assert iou(prev.mask, drawn) >= PolygonOptions().min_iou, (path.name, k, iou(prev.mask, drawn))
            answered.add(encode(drawn).counts)
        submitted[label_studio.create_annotation(task["id"], result)] = (width, height)

    # Each click was recorded with the mask the annotator saw: the polygons drawn back.
    def recorded() -> set[str]:
        with backend["factory"]() as session:
            return set(session.scalars(select(PredictedMask.rle_counts)))

    wait_for(lambda: answered <= recorded(), "every polygon answer recorded", timeout=20)
    assert clicks_counted() - counted_before == made  # counted on /metrics as brush answers are

    cli = Cli(capsys)
    fresh = synced_into_a_new_database(label_studio, project_id, tmp_path, monkeypatch, cli)
    out = tmp_path / "coco.json"
    code, stdout, stderr = cli("export", "--project", str(project_id), "--format", "coco", "--out", str(out))
    assert code == 0 and "skipped 0 mask(s)" in stdout, stderr
    exported = {(a["label_studio_annotation_id"], a["label_studio_region_id"]): a
                for a in COCO(str(out)).dataset["annotations"]}
    expected = {}
    for annotation_id, (width, height) in submitted.items():  # the vertices as Label Studio holds them
        for region in label_studio.api("GET", f"/api/annotations/{annotation_id}")["result"]:
            if region["type"] == "polygonlabels":
                vertices = [v for x, y in region["value"]["points"] for v in (x / 100 * width, y / 100 * height)]
                expected[(annotation_id, region["id"])] = vertices
    assert expected and sorted(exported) == sorted(expected)
    for key, vertices in expected.items():
        assert exported[key]["segmentation"] == [vertices], key

    # Fine-tuning on the synced polygon project: the masks drawn from the polygons are its training data.
    engine = make_engine(fresh)
    factory = make_session_factory(engine)
    settings = FinetuneSettings(every_annotations=1, every_minutes=0, samples=16, eval_objects=2, timeout_minutes=5,
                                cpus=0, min_val_objects=0)
    runner = RunnerConfig(store_url=str(tmp_path / "store"), images=backend["images"], base_name="base",
                          base_checkpoint="base", finetune=settings, poll_s=0.2, heartbeat_s=0.5)
    (job_id,) = Scheduler(factory, runner).tick()
    with factory() as session:
        job = session.get(TrainingJob, job_id)
        assert job.state == "succeeded", job.error
        assert job.train_count + job.val_count == 2
    engine.dispose()
