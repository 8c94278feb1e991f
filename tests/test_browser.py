"""In a real browser (headless Chromium from the system, driven by Playwright): Label Studio 1.23.2's own labeling
UI with the backend connected (the bundled base model on a real local Ray Serve, behind Basic auth), and the
backend's dashboard after a short labeling run.

Screenshots of every step are kept ($CLICKMASK_TEST_ARTIFACTS, else pytest's tmp dir; the path is printed). The
UI is waited on by its selectors and by what the screen shows, never by fixed sleeps.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from browser_support import artifacts_dir, changed, decode_png, launch
from ls_support import POLYGON_CONFIG, STANDARD_CONFIG, eval_images, smart_keypoint
from support import DATASETS
from workers.model.clicker import Clicker
from workers.model.datasets import read_ignore, read_mask

APP, PREFIX = "browser", "/browser"
AUTH = ("annotator", "browser-s3cret")
GRABCUT = DATASETS / "eval" / "grabcut33"
UI_TIMEOUT_MS = 180_000  # a busy 2-core machine runs Label Studio's UI, its server, Ray and the model at once
MARKER_PX = 14  # the keypoint marker drawn at a click, left out of the pixel comparisons


@pytest.fixture(scope="module")
def stack(serve_http, label_studio, tmp_path_factory):
    """The bundled model served behind Basic auth, recording into SQLite; a Label Studio project with two images,
    the backend connected (interactive) and its webhook authorised."""
    from alembic import command
    from ray import serve

    from integrations.images import ImageSettings
    from migrations import alembic_config
    from orchestrator.db import make_engine, make_session_factory
    from orchestrator.serving.app import ServeConfig, build_app

    root = tmp_path_factory.mktemp("browser")
    db_url = f"sqlite:///{root / 'clickmask.db'}"
    command.upgrade(alembic_config(db_url), "head")
    images = ImageSettings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.pat)
    config = ServeConfig(checkpoint="base", model_version="base", images=images, database_url=db_url,
                         store_url=str(root / "store"), basic_auth=AUTH, cpus_per_replica=0)
    serve.run(build_app(config), name=APP, route_prefix=PREFIX)
    url = serve_http + PREFIX
    engine = make_engine(db_url)
    yield {"url": url, "db_url": db_url, "root": root, "images": images, "factory": make_session_factory(engine)}
    serve.delete(APP)
    engine.dispose()


def new_project(label_studio, stack, title: str, count: int,
                config: str = STANDARD_CONFIG) -> tuple[int, int, list[dict]]:
    """(project id, backend id, tasks) of a fresh project with `count` eval images and the backend connected."""
    project = label_studio.create_project(config, title=title)
    for path in eval_images(count):  # one file per import: the multi-file form keeps only one
        tasks = label_studio.upload_images(project, [path])
    backend = label_studio.connect_backend(project, stack["url"], basic_auth=AUTH)
    label_studio.set_webhook_auth(project, stack["url"], AUTH)
    return project, backend, tasks


def ground_truth(task: dict) -> tuple[np.ndarray, np.ndarray]:
    """The eval set's mask and ignore band of a task's image (Label Studio stores uploads as <8 hex>-<name>)."""
    name = task["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[1]
    path = GRABCUT / "masks" / f"{Path(name).stem}.png"
    return read_mask(path), read_ignore(path)


def brush(answer: dict, shape: tuple[int, int]) -> np.ndarray:
    """The one brush region of an interactive-annotating answer, decoded (H x W bool)."""
    assert "errors" not in answer and "errors" not in answer.get("data", {}), answer
    (region,) = answer["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"]
    return decode_rle(region["value"]["rle"]).reshape(*shape, 4)[:, :, 3] > 0


# ------------------------------------------------------------------------------------------------ the labeling UI


class Screen:
    """Where the task's image is on the screen, to click image pixels and to compare screenshots by image mask."""

    def __init__(self, page, shape: tuple[int, int]):
        self.page, (self.h, self.w) = page, shape
        self.stage = page.locator(".konvajs-content")
        self.stage_box = self.stage.bounding_box()
        self.image_box = page.locator('img[alt="image"]').bounding_box()  # the displayed image, zoom included

    def to_stage(self, x: float, y: float) -> dict:
        b, s = self.image_box, self.stage_box
        return {"x": b["x"] + (x + .5) * b["width"] / self.w - s["x"], "y": b["y"] + (y + .5) * b["height"] / self.h
                - s["y"]}

    def click(self, x: float, y: float, alt: bool = False) -> None:
        self.stage.click(position=self.to_stage(x, y), modifiers=["Alt"] if alt else [])

    def project(self, mask: np.ndarray, shot_shape: tuple, clicks: list[tuple[float, float]]) -> tuple:
        """(screen pixels showing mask pixels, screen pixels showing other image pixels): both eroded away from the
        mask's edge, kept inside the visible stage and away from the click markers."""
        hh, ww = shot_shape[:2]
        ys, xs = np.mgrid[0:hh, 0:ww].astype(float) + .5
        b, s = self.image_box, self.stage_box
        ix = np.floor((xs - b["x"]) * self.w / b["width"]).astype(int)
        iy = np.floor((ys - b["y"]) * self.h / b["height"]).astype(int)
        shown = ((ix >= 0) & (ix < self.w) & (iy >= 0) & (iy < self.h) & (xs >= s["x"] + 2)
                 & (xs < s["x"] + s["width"] - 2) & (ys >= s["y"] + 2) & (ys < s["y"] + s["height"] - 2))
        on = np.zeros((hh, ww), bool)
        on[shown] = mask[iy[shown], ix[shown]]
        kernel = np.ones((7, 7), np.uint8)
        inside = cv2.erode(on.astype(np.uint8), kernel) > 0
        outside = cv2.erode((shown & ~on).astype(np.uint8), kernel) > 0
        for x, y in clicks:
            p = self.to_stage(x, y)
            near = (xs - (p["x"] + s["x"])) ** 2 + (ys - (p["y"] + s["y"])) ** 2 <= MARKER_PX ** 2
            inside &= ~near
            outside &= ~near
        return inside, outside


def choose_smart_keypoint(page) -> None:
    """The KeyPointLabels label (the second label group of the config), then the smart keypoint among the smart
    tools ("Auto-Detect"), whose buttons show while the pointer is over their group."""
    label = page.locator(".lsf-labels").nth(1).locator(".lsf-label")
    label.click()
    page.locator(".lsf-labels").nth(1).locator(".lsf-label_selected").wait_for()
    page.locator(".lsf-toolbar__group > button.lsf-tool_smart").hover()
    page.locator('.lsf-toolbar__smart button[aria-label="key-point-tool"]').click()


def open_task(page, label_studio, project: int, task: dict) -> None:
    """Log in as the annotator and open the task in the labeling UI."""
    page.goto(f"{label_studio.url}/user/login/")
    page.fill("input[name=email]", label_studio.username)
    page.fill("input[name=password]", label_studio.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url)  # Label Studio's home page
    page.goto(f"{label_studio.url}/projects/{project}/data?task={task['id']}")
    page.locator('img[alt="image"]').wait_for(state="attached")
    page.locator(".konvajs-content").wait_for()


def auto_annotation_with_smart_keypoint(page) -> None:
    toggle = page.get_by_test_id("bottombar-auto-annotation-toggle")
    page.locator("label", has=toggle).click()
    assert toggle.is_checked()
    choose_smart_keypoint(page)


@contextmanager
def labeling_ui(label_studio, project: int, task: dict, tmp_path_factory, shots: Path):
    """Chromium with the task open in Label Studio's labeling UI as the annotator, auto-annotation on and the smart
    keypoint tool chosen; the screen as it is when the test ends (however it ends) is kept in `shots` as last.png."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = launch(pw, tmp_path_factory.mktemp("chromium-profile"), viewport={"width": 1400, "height": 900})
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        try:
            open_task(page, label_studio, project, task)
            shoot(page, shots, "0-task-open")
            auto_annotation_with_smart_keypoint(page)
            yield page
        finally:
            shoot(page, shots, "last")
            context.close()


def shoot(page, folder: Path, name: str) -> np.ndarray:
    data = page.screenshot(path=str(folder / f"{name}.png"))
    return decode_png(data)


def wait_for_screen(page, folder: Path, name: str, ready, timeout_s: float = 90.0) -> np.ndarray:
    """Screenshots until `ready(shot)` holds (the canvas draws a region a few frames after the answer arrives)."""
    deadline = time.monotonic() + timeout_s
    while True:
        shot = shoot(page, folder, name)
        if ready(shot) or time.monotonic() > deadline:
            return shot
        page.wait_for_timeout(250)  # the next frame to look at, not a wait for the answer


def negative_click(gt: np.ndarray, ignore: np.ndarray | None, mask: np.ndarray) -> tuple[int, int]:
    """Outside the object: where the mask spills over it most deeply, else a background pixel just outside the
    mask (where a negative click still changes a prediction)."""
    background = ~gt if ignore is None else (~gt & ~ignore)
    spill = (mask & background).astype(np.uint8)
    if spill.sum() > 50:
        depth = cv2.distanceTransform(np.pad(spill, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(depth), depth.shape)
        return int(x), int(y)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    ys, xs = np.nonzero(ring & ~mask & background)
    i = len(ys) // 2
    return int(xs[i]), int(ys[i])


def test_label_studio_ui_click_shows_the_backends_brush_region_and_alt_click_changes_it(
        label_studio, stack, tmp_path_factory):
    project, _, tasks = new_project(label_studio, stack, "browser ui", 1)
    (task,) = tasks
    gt, ignore = ground_truth(task)
    shape = gt.shape
    shots = artifacts_dir(tmp_path_factory, "label-studio-ui")
    with labeling_ui(label_studio, project, task, tmp_path_factory, shots) as page:
        before = shoot(page, shots, "2-smart-keypoint-chosen")
        screen = Screen(page, shape)

        # Click on the object where the NoC protocol puts the first click; Label Studio asks the backend.
        first = Clicker(gt, ignore).click(None)
        with page.expect_response("**/interactive-annotating", timeout=UI_TIMEOUT_MS) as reply:
            screen.click(first.x, first.y)
        mask1 = brush(reply.value.json(), shape)
        inside, outside = screen.project(mask1, before.shape, [(first.x, first.y)])
        assert inside.sum() > 500, "the mask covers too little of the screen to check"
        page.get_by_text("1 suggestions").wait_for()
        after1 = wait_for_screen(page, shots, "3-click-brush-region",
                                 lambda shot: changed(before, shot)[inside].mean() > .5)
        on_mask, off_mask = changed(before, after1)[inside].mean(), changed(before, after1)[outside].mean()
        print(f"first click at {first.x},{first.y}: {mask1.sum()} mask pixels; screen changed on the mask "
              f"{on_mask:.2f}, elsewhere {off_mask:.2f}")
        assert on_mask > .5, f"the brush region is not visible where the mask is ({on_mask:.2f} changed)"
        assert off_mask < .1, f"the screen changed away from the mask too ({off_mask:.2f})"

        # Alt-click outside the object: a negative keypoint; the region is answered again and changes.
        nx, ny = negative_click(gt, ignore, mask1)
        choose_smart_keypoint(page)  # placing a keypoint unselects its label
        with page.expect_response("**/interactive-annotating", timeout=UI_TIMEOUT_MS) as reply:
            screen.click(nx, ny, alt=True)
        sent = reply.value.request.post_data_json["context"]["result"]
        assert [r.get("is_positive", True) for r in sent] == [True, False], sent
        mask2 = brush(reply.value.json(), shape)
        assert (mask1 != mask2).sum() > 0, "the negative click did not change the mask"
        lost, _ = screen.project(mask1 & ~mask2, before.shape, [(first.x, first.y), (nx, ny)])
        gained, _ = screen.project(mask2 & ~mask1, before.shape, [(first.x, first.y), (nx, ny)])
        moved = lost | gained
        assert moved.sum() > 50, f"the change is too small to see: {(mask1 != mask2).sum()} image pixels"
        after2 = wait_for_screen(page, shots, "4-alt-click-region-changed",
                                 lambda shot: changed(after1, shot)[moved].mean() > .5)
        redrawn = changed(after1, after2)[moved].mean()
        print(f"Alt-click at {nx},{ny}: {(mask1 != mask2).sum()} image pixels changed; screen changed there "
              f"{redrawn:.2f}")
        assert redrawn > .5, f"the region on screen did not follow the new mask ({redrawn:.2f} changed)"

        # Accept the suggestion and submit: Label Studio sends the annotation to the backend's webhook.
        page.get_by_test_id("bottombar-accept-suggestions-button").click()
        page.locator('button[aria-label="Submit current annotation"]').click()
        page.get_by_text("1 suggestions").wait_for(state="detached")
        stored = wait_for_annotations(stack, project, 1)
        shoot(page, shots, "5-submitted")
    assert len(stored) == 1 and (stored[0] == mask2).all(), "the submitted mask is not the backend's last answer"


def test_label_studio_ui_click_in_a_polygon_project_shows_an_editable_polygon(label_studio, stack,
                                                                              tmp_path_factory):
    """A PolygonLabels project: the smart click comes back as a polygon region, which the UI draws where the
    model's mask is, and which the annotator can select (its vertices become handles), accept and submit."""
    from integrations.polygons import draw, from_percent

    project, _, tasks = new_project(label_studio, stack, "browser polygons", 1, config=POLYGON_CONFIG)
    (task,) = tasks
    gt, ignore = ground_truth(task)
    shape = gt.shape
    shots = artifacts_dir(tmp_path_factory, "label-studio-polygon")
    with labeling_ui(label_studio, project, task, tmp_path_factory, shots) as page:
        before = shoot(page, shots, "1-smart-keypoint-chosen")
        screen = Screen(page, shape)
        first = Clicker(gt, ignore).click(None)
        with page.expect_response("**/interactive-annotating", timeout=UI_TIMEOUT_MS) as reply:
            screen.click(first.x, first.y)
        answer = reply.value.json()
        assert "errors" not in answer and "errors" not in answer.get("data", {}), answer
        regions = answer["data"]["result"]
        assert regions and {r["type"] for r in regions} == {"polygonlabels"}
        height, width = shape
        polygons = [from_percent(r["value"]["points"], width, height) for r in regions]
        mask = draw(polygons, width, height)
        inside, outside = screen.project(mask, before.shape, [(first.x, first.y)])
        assert inside.sum() > 500, "the mask covers too little of the screen to check"
        shown = wait_for_screen(page, shots, "2-click-polygon-region",
                                lambda shot: changed(before, shot)[inside].mean() > .5)
        on_mask, off_mask = changed(before, shown)[inside].mean(), changed(before, shown)[outside].mean()
        print(f"polygon answer: {len(regions)} region(s), {sum(len(p) for p in polygons)} vertices; screen "
              f"changed on the mask {on_mask:.2f}, elsewhere {off_mask:.2f}")
        assert on_mask > .5, f"the polygon is not drawn where the mask is ({on_mask:.2f} changed)"
        assert off_mask < .1, f"the screen changed away from the polygon too ({off_mask:.2f})"

        # Accept, then select the polygon: the editor shows its vertices as handles to drag.
        page.get_by_test_id("bottombar-accept-suggestions-button").click()
        page.locator(".lsf-outliner-item").first.click()
        handles = page.locator(".konvajs-content canvas")
        handles.first.wait_for()
        selected = wait_for_screen(page, shots, "3-polygon-selected-for-editing",
                                   lambda shot: changed(shown, shot).mean() > 0.0005)
        assert changed(shown, selected).sum() > 0, "selecting the polygon changed nothing on screen"
        page.locator('button[aria-label="Submit current annotation"]').click()
        stored = wait_for_annotations(stack, project, 1)
        shoot(page, shots, "4-submitted")
    assert len(stored) == 1 and (stored[0] == mask).all(), "the submitted polygon is not the backend's answer"
    # The dashboard counts the polygon answer as it counts a brush one: one object, one click, accepted as answered.
    from orchestrator.dashboard.figures import compute

    with stack["factory"]() as session:
        figures = compute(session, project)
    assert (figures.objects, figures.clicks) == (1, 1)
    assert (figures.acceptance.masks, figures.acceptance.accepted) == (1, 1), figures.acceptance


def wait_for_annotations(stack, project: int, count: int, timeout_s: float = 90.0) -> list[np.ndarray]:
    """The masks of a project's submitted annotations once `count` are stored (webhooks arrive after the UI)."""
    from sqlalchemy import select

    from orchestrator.db import Annotation, AnnotationMask, Project
    from integrations.masks import CocoRle, decode

    deadline = time.monotonic() + timeout_s
    while True:
        with stack["factory"]() as session:
            rows = session.execute(select(AnnotationMask).join(Annotation).join(Project)
                                   .where(Project.ls_project_id == project)).scalars().all()
            masks = [decode(CocoRle(m.rle_counts, m.height, m.width, m.area)) for m in rows]
        if len(masks) >= count or time.monotonic() > deadline:
            return masks
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------------ the dashboard


def label_by_api(label_studio, backend: int, task: dict, clicks: int) -> np.ndarray:
    """Clicks on one object through Label Studio's interactive-annotating API, as the UI sends them (NoC clicks
    from the ground truth); returns the last mask."""
    gt, ignore = ground_truth(task)
    height, width = gt.shape
    clicker, regions, mask = Clicker(gt, ignore), [], None
    for k in range(clicks):
        click = clicker.click(mask)
        if click is None:
            break
        regions.append(smart_keypoint(click.x * 100 / width, click.y * 100 / height, width, height,
                                      positive=click.positive, region_id=f"d{task['id']}k{k}"))
        mask = brush(label_studio.interactive_annotating(backend, task["id"], regions), (height, width))
    return mask


def brush_result(mask: np.ndarray) -> list[dict]:
    height, width = mask.shape
    return [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": width,
             "original_height": height, "image_rotation": 0,
             "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)],
                       "brushlabels": ["Object"]}}]


def test_dashboard_in_the_browser_after_a_short_labeling_run(label_studio, stack, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    from orchestrator import jobs
    from orchestrator.dashboard.page import CHARTS
    from orchestrator.scheduler import RunnerConfig, Scheduler
    from orchestrator.settings import FinetuneSettings

    # Two images clicked through Label Studio: the first submitted as answered, the second after a brush edit.
    project, backend, tasks = new_project(label_studio, stack, "browser dashboard", 2)
    answered = [label_by_api(label_studio, backend, task, 3) for task in tasks]
    edited = answered[1].copy()
    edited[: edited.shape[0] // 8] = True  # a stroke across the top of the image
    for task, mask in zip(tasks, (answered[0], edited)):
        label_studio.create_annotation(task["id"], brush_result(mask))
    assert len(wait_for_annotations(stack, project, 2)) == 2
    # One small fine-tuning job on them (one image trains, the other validates), as the scheduler runs it.
    finetune = FinetuneSettings(samples=16, eval_objects=1, timeout_minutes=10, cpus=0, min_val_objects=0)
    scheduler = Scheduler(stack["factory"], RunnerConfig(store_url=str(stack["root"] / "store"),
                                                         images=stack["images"], finetune=finetune, heartbeat_s=1.0))
    job_id = jobs.enqueue(stack["factory"], project, "cli")
    assert jobs.claim(stack["factory"], job_id)
    scheduler.run(job_id)
    job = jobs.get(stack["factory"], job_id)
    assert job.state == "succeeded", job.error

    shots = artifacts_dir(tmp_path_factory, "dashboard")
    with sync_playwright() as pw:
        # No JavaScript at all: the page must not need it. Basic auth as Prometheus or a person would give it.
        context = launch(pw, tmp_path_factory.mktemp("chromium-profile"), java_script_enabled=False,
                         http_credentials={"username": AUTH[0], "password": AUTH[1]},
                         viewport={"width": 1200, "height": 900})
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        try:
            index = page.goto(f"{stack['url']}/dashboard")
            assert index.status == 200
            page.locator(f'a[href="?project={project}"]').click()
            page.wait_for_url(f"**/dashboard?project={project}")
            page.locator("h1").wait_for()
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
            for chart in CHARTS:
                figure = page.locator(f"#chart-{chart} img")
                figure.scroll_into_view_if_needed()
                box = figure.bounding_box()
                assert box and box["width"] > 200 and box["height"] > 80, f"{chart} not drawn: {box}"
                drawn = decode_png(figure.screenshot(path=str(shots / f"{chart}.png")))
                assert drawn.std() > 10, f"{chart} is blank on screen"
            text = page.locator("body").inner_text()
            assert "1 of 2 submitted masks (50%) were accepted as the model answered." in text
            assert f"p{project}-ft{job_id}" in text
        finally:
            context.close()
    print(f"dashboard of project {project}: {shots / 'dashboard.png'}")
