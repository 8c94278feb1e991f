"""`clickmask sync` and `clickmask export` end to end with a real Label Studio 1.23.2 (tests/ls_support.py), on
SQLite and PostgreSQL: brush masks are submitted as annotations through Label Studio's API, in the form the backend
answers them (protocol.brush_result), pulled with the SDK, exported, and compared bit for bit."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from sqlalchemy import select

from integrations.label_studio.labeling_config import parse_label_config
from integrations.label_studio.protocol import brush_result
from ls_support import eval_images
from orchestrator.cli import main
from orchestrator.db import Annotation, AnnotationMask, Image, make_engine, make_session_factory

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Object" background="#FF0000"/><Label value="Part" background="#00FF00"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Object" smart="true" background="#000000"/>
  </KeyPointLabels>
</View>"""


def disk(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def drawn_masks(shape) -> dict[str, np.ndarray]:
    h, w = shape
    border = np.zeros(shape, bool)
    border[0, :] = border[:, -1] = border[-1, : w // 4] = True
    corner, last = np.zeros(shape, bool), np.zeros(shape, bool)
    corner[0, 0] = last[-1, -1] = True
    return {
        "ring": disk(shape, h // 2, w // 2, 60) & ~disk(shape, h // 2, w // 2, 25),
        "two_parts": disk(shape, 40, 50, 20) | disk(shape, h - 50, w - 60, 30),
        "border": border,
        "corner_pixel": corner,
        "last_pixel": last,
        "blob": disk(shape, h // 3, w // 3, 45),
        "replacement": disk(shape, h // 2, w // 3, 33),
    }


@pytest.fixture
def studio(label_studio, migrated_url, monkeypatch, capsys):
    """The Label Studio of the run, with the CLI pointed at it and at a fresh migrated database."""
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.pat)
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", migrated_url)

    def cli(*argv):
        code = main([*argv, "--no-progress"])
        out, err = capsys.readouterr()
        return code, out, err

    return label_studio, cli, migrated_url


@pytest.fixture
def project(studio):
    """A project with two eval images as tasks; returns (project id, [(task id, image shape)])."""
    label_studio = studio[0]
    project_id = label_studio.create_project(CONFIG, title="clickmask sync e2e")
    paths = eval_images(2)
    for path in paths:  # one file per import: Label Studio keeps one file per form field name
        label_studio.upload_images(project_id, [path])
    tasks = sorted(label_studio.tasks(project_id), key=lambda t: t["id"])
    assert len(tasks) == 2
    shapes = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2] for path in paths]
    return project_id, [(task["id"], shape) for task, shape in zip(tasks, shapes)]


def submit(label_studio, task_id: int, masks: list[tuple[str, np.ndarray]], **fields) -> tuple[int, list[str]]:
    """An annotator's submit: the brush regions the backend answered, posted as the task's annotation."""
    config = parse_label_config(CONFIG)
    results = [brush_result(mask, config.answer_for(label)) for label, mask in masks]
    answer = label_studio.api("POST", f"/api/tasks/{task_id}/annotations",
                              json={"result": results, "lead_time": 4.2, **fields})
    return answer["id"], [r["id"] for r in results]


def export(cli, tmp_path, project_id, *options) -> COCO:
    out = tmp_path / "coco.json"
    code, stdout, stderr = cli("export", "--project", str(project_id), "--out", str(out), *options)
    assert code == 0, stderr
    return COCO(str(out))


def exported_masks(coco: COCO) -> dict[tuple[int, str], tuple[str, np.ndarray]]:
    return {
        (ann["label_studio_annotation_id"], ann["label_studio_region_id"]):
            (coco.cats[ann["category_id"]]["name"], coco.annToMask(ann).astype(bool))
        for ann in coco.loadAnns(coco.getAnnIds())
    }


def assert_same(coco: COCO, expected: dict):
    got = exported_masks(coco)
    assert sorted(got) == sorted(expected)
    for key, (label, mask) in expected.items():
        assert got[key][0] == label and np.array_equal(got[key][1], mask), key


def database_state(url: str):
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            annotations = session.execute(select(
                Annotation.id, Annotation.ls_annotation_id, Annotation.updated_at, Annotation.deleted_at,
                Annotation.recorded_at, Annotation.was_cancelled).order_by(Annotation.id)).all()
            masks = session.execute(select(AnnotationMask.id, AnnotationMask.annotation_id, AnnotationMask.region_id,
                                           AnnotationMask.label, AnnotationMask.rle_counts)
                                    .order_by(AnnotationMask.id)).all()
            images = session.execute(select(Image.id, Image.uri, Image.width, Image.height)).all()
        return annotations, masks, images
    finally:
        engine.dispose()


def test_submitted_masks_come_back_bit_for_bit_and_a_second_sync_changes_nothing(studio, project, tmp_path):
    label_studio, cli, url = studio
    project_id, ((task_a, shape_a), (task_b, shape_b)) = project
    a, b = drawn_masks(shape_a), drawn_masks(shape_b)
    expected = {}
    first = [("Object", a["ring"]), ("Part", a["two_parts"]), ("Object", a["border"])]
    second = [("Part", a["corner_pixel"]), ("Object", a["last_pixel"])]
    third = [("Object", b["blob"])]
    for task, masks in ((task_a, first), (task_a, second), (task_b, third)):
        ls_id, regions = submit(label_studio, task, masks)
        expected.update({(ls_id, region): mask for region, mask in zip(regions, masks)})
    skipped_id, _ = submit(label_studio, task_b, [("Part", b["blob"])], was_cancelled=True)

    code, stdout, stderr = cli("sync", "--project", str(project_id), "--page-size", "1")  # one task per page
    assert code == 0, stderr
    assert "2 task(s), 4 annotation(s): 4 stored or updated, 0 unchanged, 0 not stored" in stdout

    coco = export(cli, tmp_path, project_id)
    assert_same(coco, expected)  # the cancelled annotation is stored but not exported
    assert [c["name"] for c in coco.dataset["categories"]] == ["Object", "Part"]
    sizes = {(i["label_studio_task_id"], i["height"], i["width"]) for i in coco.dataset["images"]}
    assert sizes == {(task_a, *shape_a), (task_b, *shape_b)}
    assert {i["file_name"].split("-", 1)[1] for i in coco.dataset["images"]} == {p.name for p in eval_images(2)}

    before = database_state(url)
    assert any(row.ls_annotation_id == skipped_id and row.was_cancelled for row in before[0])
    code, stdout, _ = cli("sync", "--project", str(project_id))
    assert code == 0 and "0 stored or updated, 4 unchanged" in stdout and "marked deleted: 0" in stdout
    assert database_state(url) == before


def test_updates_deletions_and_broken_annotations(studio, project, tmp_path):
    label_studio, cli, url = studio
    project_id, ((task_a, shape_a), (task_b, shape_b)) = project
    a, b = drawn_masks(shape_a), drawn_masks(shape_b)
    kept, kept_regions = submit(label_studio, task_a, [("Object", a["ring"])])
    edited, _ = submit(label_studio, task_a, [("Object", a["blob"])])
    removed, _ = submit(label_studio, task_b, [("Part", b["two_parts"])])
    code, _, stderr = cli("sync", "--project", str(project_id))
    assert code == 0, stderr

    # Edited in Label Studio (as the annotator's update does: new regions replace the old ones).
    config = parse_label_config(CONFIG)
    replacement = brush_result(a["replacement"], config.answer_for("Part"))
    label_studio.api("PATCH", f"/api/annotations/{edited}", json={"result": [replacement]})
    label_studio.api("DELETE", f"/api/annotations/{removed}", expect=(204,))
    # A brush region that does not fit its image: refused, the rest still stored.
    broken = brush_result(b["blob"], config.answer_for("Object"))
    broken["original_width"] += 1
    broken_id = label_studio.api("POST", f"/api/tasks/{task_b}/annotations", json={"result": [broken]})["id"]

    code, stdout, stderr = cli("sync", "--project", str(project_id), "--keep-missing")
    assert code == 1  # something was not stored: a script must notice
    assert "3 annotation(s): 1 stored or updated, 1 unchanged, 1 not stored" in stdout
    assert f"annotation {broken_id} of task {task_b} not stored" in stderr and "RLE covers" in stderr
    assert "left as they are" in stdout
    assert removed in {ls_id for ls_id, _ in exported_masks(export(cli, tmp_path, project_id))}

    code, stdout, _ = cli("sync", "--project", str(project_id))
    assert "marked deleted: 1" in stdout
    coco = export(cli, tmp_path, project_id)
    assert_same(coco, {(kept, kept_regions[0]): ("Object", a["ring"]),
                       (edited, replacement["id"]): ("Part", a["replacement"])})
    assert {i["label_studio_task_id"] for i in coco.dataset["images"]} == {task_a}
    deleted = {row.ls_annotation_id for row in database_state(url)[0] if row.deleted_at is not None}
    assert deleted == {removed}


def test_a_project_without_annotations_exports_its_categories(studio, tmp_path):
    label_studio, cli, _ = studio
    project_id = label_studio.create_project(CONFIG, title="no annotations yet")
    code, stdout, stderr = cli("sync", "--project", str(project_id))
    assert code == 0 and "0 task(s), 0 annotation(s)" in stdout, stderr
    coco = export(cli, tmp_path, project_id)
    assert [c["name"] for c in coco.dataset["categories"]] == ["Object", "Part"] and not coco.dataset["annotations"]


def test_label_studio_problems_are_clear_errors(studio, monkeypatch):
    label_studio, cli, _ = studio
    code, _, stderr = cli("sync", "--project", "987654")
    assert code == 1 and "reading project 987654: Label Studio answered HTTP 404 (no such project)" in stderr

    bad_key = "not-a-token-" + "x" * 20
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", bad_key)
    code, _, stderr = cli("sync", "--project", "1")
    assert code == 1 and "HTTP 401 (check LABEL_STUDIO_API_KEY" in stderr and bad_key not in stderr

    from support import free_port

    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    code, _, stderr = cli("sync", "--project", "1")
    assert code == 1 and "Label Studio cannot be reached (ConnectError)" in stderr

    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    code, _, stderr = cli("sync", "--project", "1")
    assert code == 2 and "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in stderr
