"""The effort dashboard from the database (SQLite and PostgreSQL): clicks written by the real recorder, annotations
by the real webhook handler, versions and jobs as the scheduler records them; the page and `clickmask report`
drawn from them, and what they say when there is nothing to draw."""
from __future__ import annotations

import base64
import re
from datetime import timedelta

import cv2
import numpy as np
import pytest

from finetune_support import T0, annotation_body
from orchestrator.dashboard.figures import ACCEPT_IOU, compute, projects
from orchestrator.dashboard.page import CHARTS, render_index, render_project
from integrations.masks import encode

PROJECT = 7
H, W = 48, 64


def disk(cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# Objects: (image, version answering, [latency ms per click], last mask). Image "d" gets a mask nobody clicked.
OBJECTS = [
    ("a", "base", [30.0, 12.0, 14.0], disk(20, 20, 8)),
    ("b", "p7-ft1", [25.0], disk(40, 24, 10)),
    ("c", "p7-ft1", [11.0, 9.0, 10.0, 12.0, 8.0], disk(30, 30, 12)),
]


@pytest.fixture
def recorded(session_factory, ls_request):
    """Three objects clicked (the third an hour later), four submitted masks (one as answered, one brushed over,
    one on an image never clicked, one cancelled), two fine-tuned versions (one without metrics), two jobs."""
    from orchestrator.db import ModelVersion, Project, TrainingJob
    from orchestrator.events import handle_event
    from orchestrator.recorder import ClickRecord, Recorder

    with Recorder(session_factory) as recorder:
        for i, (image, version, latencies, mask) in enumerate(OBJECTS):
            start = T0 + timedelta(hours=1 if image == "c" else 0, minutes=i)
            for seq, ms in enumerate(latencies, 1):
                recorder.record(ClickRecord(
                    project=PROJECT, image_uri=f"s3://b/{image}.png", image_width=W, image_height=H,
                    session_key=f"obj-{image}", seq=seq, x=10.0, y=10.0, positive=seq != 2,
                    clicked_at=start + timedelta(seconds=seq), mask=encode(mask), latency_ms=ms,
                    model_version=version))
    template = ls_request("webhook_annotation_created")
    brushed = OBJECTS[1][3].copy()
    brushed[:, :8] = True  # a stroke over the left edge: far more than 1% of the object
    submitted = [("a", OBJECTS[0][3], False), ("b", brushed, False), ("d", disk(10, 10, 5), False),
                 ("c", OBJECTS[2][3], True)]
    for ann_id, (image, mask, cancelled) in enumerate(submitted, 1):
        body = annotation_body(template, ann_id, PROJECT, ann_id, f"s3://b/{image}.png", [mask], cancelled=cancelled)
        assert handle_event(session_factory, body).status == "applied"

    with session_factory.begin() as session:
        project = session.query(Project).filter_by(ls_project_id=PROJECT).one()
        base = session.query(ModelVersion).filter_by(name="base").one()
        ft1 = session.query(ModelVersion).filter_by(name="p7-ft1").one()  # named by the recorder first
        ft1.project_id, ft1.parent_id, ft1.status, ft1.promoted_at = project.id, base.id, "promoted", T0
        ft1.metrics = {"validation": {"NoC@85": 4.25, "NoC@90": 6.5, "mIoU@5": 0.91},
                       "parent_validation": {"NoC@85": 5.5, "NoC@90": 8.0, "mIoU@5": 0.88}, "decision": "better"}
        ft2 = ModelVersion(name="p7-ft2", project_id=project.id, parent_id=ft1.id, status="rejected", metrics=None)
        session.add(ft2)
        session.flush()
        session.add_all([
            TrainingJob(project_id=project.id, state="succeeded", trigger="annotations", created_at=T0,
                        started_at=T0, finished_at=T0 + timedelta(minutes=4), result_version_id=ft1.id,
                        details={"decision": {"promoted": True, "reason": "better: NoC@85 5.50 -> 4.25"}}),
            TrainingJob(project_id=project.id, state="failed", trigger="webhook", created_at=T0 + timedelta(hours=1),
                        started_at=T0 + timedelta(hours=1), finished_at=T0 + timedelta(hours=1, minutes=1),
                        error="ValueError: need annotated images for both training and validation\nmore"),
        ])
    return session_factory


def test_figures_follow_the_recorded_clicks_masks_versions_and_jobs(recorded):
    with recorded() as session:
        f = compute(session, PROJECT)
    assert f.found and f.objects == 3 and f.clicks == sum(len(o[2]) for o in OBJECTS)
    assert f.bucket == "hour"
    # Clicks per object: the first hour has objects a and b, the next hour c.
    (t1, first), (t2, second) = f.clicks_over_time
    assert t2 - t1 == timedelta(hours=1)
    assert (first.n, first.low, first.high) == (2, np.median([3, 1]), np.percentile([3, 1], 90))
    assert (second.n, second.low) == (1, 5)
    by_version = dict(f.clicks_by_version)
    assert list(by_version) == ["base", "p7-ft1"]
    assert by_version["p7-ft1"].high == pytest.approx(np.percentile([1, 5], 90))
    # Latency over every answered click, p50 and p95.
    every = [ms for o in OBJECTS for ms in o[2]]
    assert f.latency_all.n == len(every)
    assert f.latency_all.low == pytest.approx(np.percentile(every, 50))
    assert f.latency_all.high == pytest.approx(np.percentile(every, 95))
    assert dict(f.latency_by_version)["base"].n == 3
    # One mask as answered, one brushed over, one drawn where nobody clicked; the cancelled one is not counted.
    assert (f.acceptance.masks, f.acceptance.accepted, f.acceptance.edited, f.acceptance.drawn) == (3, 1, 1, 1)
    ft1, ft2 = f.versions
    assert ft1.validation["NoC@85"] == 4.25 and ft1.parent_validation["NoC@85"] == 5.5 and ft1.parent == "base"
    assert ft2.validation is None and ft2.status == "rejected"
    assert [(j.outcome, j.result_version) for j in f.jobs] == [("promoted", "p7-ft1"), ("failed", None)]
    assert f.jobs[1].note == "ValueError: need annotated images for both training and validation"


def test_acceptance_threshold_separates_a_one_pixel_change_from_a_brush_stroke(session_factory, ls_request):
    """A mask that differs from the answer by less than the threshold still counts as accepted."""
    from orchestrator.events import handle_event
    from orchestrator.recorder import ClickRecord, Recorder

    answer = disk(32, 24, 15)
    nearly = answer.copy()
    nearly[24, 47] = False  # one pixel of about 700
    assert (nearly & answer).sum() / (nearly | answer).sum() >= ACCEPT_IOU
    with Recorder(session_factory) as recorder:
        recorder.record(ClickRecord(project=PROJECT, image_uri="s3://b/n.png", image_width=W, image_height=H,
                                    session_key="n", seq=1, x=32, y=24, positive=True, clicked_at=T0,
                                    mask=encode(answer), latency_ms=5.0, model_version="base"))
    body = annotation_body(ls_request("webhook_annotation_created"), 1, PROJECT, 1, "s3://b/n.png", [nearly])
    assert handle_event(session_factory, body).status == "applied"
    with session_factory() as session:
        assert compute(session, PROJECT).acceptance.accepted == 1


def charts_in(html: str) -> dict[str, np.ndarray]:
    """Every inline chart of a page, decoded."""
    found = {}
    for chart, data in re.findall(r'<figure id="chart-([a-z-]+)"><img src="data:image/png;base64,([^"]+)"', html):
        found[chart] = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    return found


def test_page_draws_every_chart_inline_without_script(recorded):
    with recorded() as session:
        page = render_project(compute(session, PROJECT))
    charts = charts_in(page.html)
    assert set(charts) == set(CHARTS) == set(page.images)
    for chart, image in charts.items():
        assert image is not None and image.shape[0] > 50 and image.std() > 10, chart  # a drawing, not a blank
    text = re.sub(r"data:image/png;base64,[^\"]+", "", page.html)  # base64 may spell anything
    assert "<script" not in text.lower() and "http" not in text  # nothing to run, nothing to fetch
    assert "p7-ft2: no validation metrics recorded." in page.html
    assert "IoU with a mask the model answered" in page.html and f"at least {ACCEPT_IOU:g}" in page.html
    assert "1 of 3 submitted masks (33%)" in page.html


def test_page_of_a_project_with_nothing_recorded_says_so(session_factory):
    from orchestrator.db import Project

    with session_factory.begin() as session:
        session.add(Project(ls_project_id=8, title="<b>new</b>"))
    with session_factory() as session:
        empty = render_project(compute(session, 8))
        unknown = render_project(compute(session, 99))
        index = render_index(projects(session))
    assert empty.images == {} and charts_in(empty.html) == {}
    assert empty.html.count('class="missing"') == len(CHARTS)
    assert "No clicks recorded yet" in empty.html and "No fine-tuning job yet" in empty.html
    assert "&lt;b&gt;new&lt;/b&gt;" in empty.html and "<b>new</b>" not in empty.html
    assert "The database has no project 99" in unknown.html
    assert 'href="?project=8"' in index


def test_report_command_writes_the_page_and_its_images(recorded, migrated_url, tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.setenv("CLICKMASK_DATABASE_URL", migrated_url)
    out = tmp_path / "report"
    assert main(["report", "--project", str(PROJECT), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert set(charts_in(html)) == set(CHARTS)
    for chart in CHARTS:
        assert cv2.imread(str(out / f"{chart}.png")) is not None
    assert f"wrote {out / 'index.html'} with {len(CHARTS)} chart(s)" in capsys.readouterr().out
    assert main(["report", "--project", "99", "--out", str(tmp_path / "none")]) == 0
    assert "has nothing recorded yet" in capsys.readouterr().out
    assert "The database has no project 99" in (tmp_path / "none" / "index.html").read_text()
