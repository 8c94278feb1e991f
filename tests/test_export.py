"""COCO export from the database, on SQLite and PostgreSQL: the file loads with pycocotools and gives back the
stored masks bit for bit; polygons, latest-only, PNGs; skips counted; unknown project refused."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, UTC

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from integrations.coco import check_counts, outer_polygons
from orchestrator.cli import main
from orchestrator.db import Annotation, AnnotationMask, Image, Project
from integrations.masks import MaskError, encode

H, W = 37, 53  # odd and not square, so a transposed or shifted mask cannot pass
LABELS = ("Cat", "Dog", "Bird")
CONFIG = f"""<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">{''.join(f'<Label value="{n}"/>' for n in LABELS)}</BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Cat" smart="true"/></KeyPointLabels>
</View>"""
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def disk(cy, cx, r, h=H, w=W):
    yy, xx = np.ogrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def shapes() -> dict[str, np.ndarray]:
    ring = disk(18, 26, 12) & ~disk(18, 26, 5)
    two_parts = disk(8, 8, 5) | disk(28, 44, 6)
    border = np.zeros((H, W), bool)
    border[0, :] = border[:, -1] = border[-1, :10] = True
    corner = np.zeros((H, W), bool)
    corner[0, 0] = True
    last = np.zeros((H, W), bool)
    last[-1, -1] = True
    middle = np.zeros((H, W), bool)
    middle[20, 31] = True
    noise = np.random.default_rng(6).random((H, W)) < 0.5
    return {"ring": ring, "two_parts": two_parts, "border": border, "corner_pixel": corner, "last_pixel": last,
            "middle_pixel": middle, "noise": noise, "full": np.ones((H, W), bool)}


def add_project(session, ls_id=7, config=CONFIG) -> Project:
    project = Project(ls_project_id=ls_id, title="export test", label_config=config)
    session.add(project)
    session.flush()
    return project


def add_image(session, project, uri, size=(W, H), task=None) -> Image:
    image = Image(project_id=project.id, uri=uri, width=size[0], height=size[1], ls_task_id=task)
    session.add(image)
    session.flush()
    return image


def add_annotation(session, project, image, ls_id, masks, updated=T0, **fields) -> Annotation:
    """masks: [(label, bool mask)], stored the way events.py stores them."""
    row = Annotation(ls_annotation_id=ls_id, project_id=project.id, image_id=image.id, ls_task_id=image.ls_task_id,
                     updated_at=updated, **fields)
    for number, (label, mask) in enumerate(masks):
        rle = encode(mask)
        row.masks.append(AnnotationMask(region_id=f"r{number}", from_name="tag", label=label, height=rle.height,
                                        width=rle.width, rle_counts=rle.counts, area=rle.area))
    session.add(row)
    session.flush()
    return row


@pytest.fixture
def cli(migrated_url, monkeypatch, capsys):
    monkeypatch.setenv("CLICKMASK_DATABASE_URL", migrated_url)

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def export(cli, tmp_path, *options, project=7):
    out = tmp_path / "coco.json"
    code, stdout, stderr = cli("export", "--project", str(project), "--format", "coco", "--out", str(out),
                               "--no-progress", *options)
    assert code == 0, stderr
    return out, stdout, stderr


def test_rle_export_gives_back_every_mask_bit_for_bit(session_factory, cli, tmp_path):
    drawn = shapes()
    with session_factory.begin() as session:
        project = add_project(session)
        first = add_image(session, project, "/data/upload/7/a1b2-street.jpg", task=11)
        second = add_image(session, project, "s3://bucket/dir/field.png", task=12)
        names = list(drawn)
        expected = {}
        for number, image in enumerate((first, second)):
            chosen = names[number::2]
            labels = [LABELS[i % 3] for i in range(len(chosen))]
            masks = [(label, drawn[name]) for label, name in zip(labels, chosen)]
            row = add_annotation(session, project, image, 100 + number, masks)
            for mask_row, name, label in zip(row.masks, chosen, labels):
                expected[mask_row.id] = (name, label, image.id)
    out, stdout, _ = export(cli, tmp_path)
    assert f"{len(expected)} annotation(s)" in stdout and "skipped 0 mask(s)" in stdout

    coco = COCO(str(out))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(1, "Cat"), (2, "Dog"), (3, "Bird")]
    images = {i["id"]: i for i in coco.dataset["images"]}
    assert {(i["file_name"], i["width"], i["height"], i["uri"], i["label_studio_task_id"]) for i in images.values()} \
        == {("a1b2-street.jpg", W, H, "/data/upload/7/a1b2-street.jpg", 11),
            ("field.png", W, H, "s3://bucket/dir/field.png", 12)}
    assert sorted(coco.getAnnIds()) == sorted(expected)
    for ann in coco.loadAnns(coco.getAnnIds()):
        name, label, image_id = expected[ann["id"]]
        mask = drawn[name]
        decoded = coco.annToMask(ann).astype(bool)
        assert decoded.shape == mask.shape and np.array_equal(decoded, mask), name
        assert ann["image_id"] == image_id and coco.cats[ann["category_id"]]["name"] == label
        assert ann["area"] == int(mask.sum()) and ann["iscrowd"] == 0
        rows, cols = np.nonzero(mask)
        box = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        assert ann["bbox"] == [float(v) for v in box], name


def test_deleted_and_cancelled_annotations_are_left_out(session_factory, cli, tmp_path):
    with session_factory.begin() as session:
        project = add_project(session)
        image = add_image(session, project, "/data/upload/7/x.png", task=1)
        add_annotation(session, project, image, 1, [("Cat", disk(10, 10, 4))])
        add_annotation(session, project, image, 2, [("Cat", disk(20, 20, 4))], was_cancelled=True)
        add_annotation(session, project, image, 3, [("Cat", disk(20, 30, 4))], deleted_at=T0)
        other = add_project(session, ls_id=8)
        add_annotation(session, other, add_image(session, other, "/data/upload/8/x.png"), 4, [("Cat", disk(5, 5, 2))])
    out, _, _ = export(cli, tmp_path)
    anns = json.loads(out.read_text())["annotations"]
    assert [a["label_studio_annotation_id"] for a in anns] == [1]


def test_latest_only_keeps_the_newest_annotation_of_each_task(session_factory, cli, tmp_path):
    with session_factory.begin() as session:
        project = add_project(session)
        a = add_image(session, project, "/data/upload/7/a.png", task=1)
        b = add_image(session, project, "/data/upload/7/b.png", task=2)
        add_annotation(session, project, a, 10, [("Cat", disk(10, 10, 3))], updated=T0 + timedelta(minutes=5))
        add_annotation(session, project, a, 11, [("Dog", disk(10, 10, 3)), ("Cat", disk(30, 40, 3))], updated=T0)
        # the newest of all is cancelled: it does not count as the latest submitted one
        add_annotation(session, project, a, 12, [("Bird", disk(5, 5, 2))], updated=T0 + timedelta(hours=1),
                       was_cancelled=True)
        add_annotation(session, project, b, 13, [("Bird", disk(20, 20, 3))], updated=T0)
    out, _, _ = export(cli, tmp_path, "--latest-only")
    anns = json.loads(out.read_text())["annotations"]
    assert sorted(a["label_studio_annotation_id"] for a in anns) == [10, 13]
    out, _, _ = export(cli, tmp_path)
    assert sorted(a["label_studio_annotation_id"] for a in json.loads(out.read_text())["annotations"]) \
        == [10, 11, 11, 13]


def test_polygons_round_trip_simple_shapes_and_fill_holes(session_factory, cli, tmp_path):
    square = np.zeros((H, W), bool)
    square[5:20, 10:30] = True
    drawn = {"square": square, "disk": disk(18, 26, 10), "two_parts": disk(8, 8, 5) | disk(28, 44, 6),
             "pixel": shapes()["corner_pixel"], "ring": shapes()["ring"]}
    with session_factory.begin() as session:
        project = add_project(session)
        image = add_image(session, project, "/data/upload/7/p.png", task=1)
        row = add_annotation(session, project, image, 1, [("Cat", m) for m in drawn.values()])
        ids = {mask.id: name for mask, name in zip(row.masks, drawn)}
    out, stdout, _ = export(cli, tmp_path, "--polygons")
    assert "1 hole(s) filled" in stdout
    coco = COCO(str(out))
    for ann in coco.loadAnns(coco.getAnnIds()):
        name = ids[ann["id"]]
        assert isinstance(ann["segmentation"], list) and all(len(p) >= 6 for p in ann["segmentation"])
        mask = drawn[name]
        filled = disk(18, 26, 12) if name == "ring" else mask  # the hole is what polygons lose
        decoded = coco.annToMask(ann).astype(bool)
        iou = (decoded & filled).sum() / (decoded | filled).sum()
        assert iou > 0.98, (name, iou)
        assert ann["area"] == int(mask.sum())  # area and box are still the mask's own
    assert len(next(a for a in coco.dataset["annotations"] if ids[a["id"]] == "two_parts")["segmentation"]) == 2


def test_outer_polygons_follow_pixel_edges():
    square = np.zeros((6, 8), bool)
    square[1:3, 2:5] = True
    assert outer_polygons(square) == ([[2.0, 1.0, 2.0, 3.0, 5.0, 3.0, 5.0, 1.0]], 0)


def test_png_dir_holds_every_mask(session_factory, cli, tmp_path):
    drawn = shapes()
    with session_factory.begin() as session:
        project = add_project(session)
        image = add_image(session, project, "/data/upload/7/p.png", task=1)
        row = add_annotation(session, project, image, 1, [("Bird", m) for m in drawn.values()])
        ids = {mask.id: name for mask, name in zip(row.masks, drawn)}
    out, _, _ = export(cli, tmp_path, "--png-dir", str(tmp_path / "png"))
    anns = json.loads(out.read_text())["annotations"]
    assert len(anns) == len(drawn)
    for ann in anns:
        png = cv2.imread(str(tmp_path / "png" / ann["mask_file"]), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (H, W)
        assert np.array_equal(png, drawn[ids[ann["id"]]].astype(np.uint8) * 255)


def corrupt(counts: str) -> list[tuple[str, str]]:
    """Damaged versions of a valid counts string, with what each does."""
    return [
        ("truncated", counts[: len(counts) // 2]),
        ("extra run", counts + "5"),
        ("bad character", counts[:3] + "~" + counts[4:]),
        ("not ascii", counts[:2] + "é" + counts[3:]),
        ("empty", ""),
        ("cut mid-number", counts + "k"),
    ]


def test_unknown_sizes_and_corrupt_rle_are_skipped_counted_and_the_rest_exported(session_factory, cli, tmp_path):
    good = disk(18, 26, 8)
    with session_factory.begin() as session:
        project = add_project(session)
        image = add_image(session, project, "/data/upload/7/good.png", task=1)
        kept = add_annotation(session, project, image, 1, [("Cat", good), ("Dog", good), ("Bird", good),
                                                           ("Cat", good), ("Cat", good), ("Cat", good),
                                                           ("Cat", good), ("Cat", good), ("Cat", good)])
        damaged = corrupt(kept.masks[0].rle_counts)
        for mask_row, (_, counts) in zip(kept.masks[1:], damaged):
            mask_row.rle_counts = counts
        kept.masks[7].area += 1  # runs still cover the mask: only the stored area tells
        kept.masks[8].label = "Horse"
        unsized = add_image(session, project, "/data/upload/7/unsized.png", size=(None, None), task=2)
        add_annotation(session, project, unsized, 2, [("Cat", good), ("Dog", good)])
        wrong = add_image(session, project, "/data/upload/7/other-size.png", size=(W + 1, H), task=3)
        add_annotation(session, project, wrong, 3, [("Cat", good)])
        add_annotation(session, project, image, 4, [("Dog", np.zeros((H, W), bool))])
    out, stdout, stderr = export(cli, tmp_path)
    coco = COCO(str(out))
    (ann,) = coco.loadAnns(coco.getAnnIds())
    assert np.array_equal(coco.annToMask(ann).astype(bool), good)
    assert {i["file_name"] for i in coco.dataset["images"]} == {"good.png", "other-size.png"}
    assert "skipped 1 image(s) whose size is unknown" in stdout
    assert ("skipped 12 mask(s) (7 corrupt RLE, 1 empty mask, 2 image size unknown, 1 label not in the config, "
            "1 size mismatch)") in stdout
    assert "unsized.png': size unknown" in stderr and "corrupt RLE" in stderr and "'Horse'" in stderr


def test_unknown_project_is_a_clear_error_and_writes_nothing(session_factory, cli, tmp_path):
    with session_factory.begin() as session:
        add_project(session, ls_id=3)
    out = tmp_path / "coco.json"
    code, _, stderr = cli("export", "--project", "99", "--format", "coco", "--out", str(out))
    assert code == 1
    assert "no project 99 in the database (known projects: 3)" in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".coco.json*"))


def test_unwritable_output_is_a_clear_error(session_factory, cli, tmp_path):
    with session_factory.begin() as session:
        add_project(session)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, stderr = cli("export", "--project", "7", "--out", str(blocker / "coco.json"), "--no-progress")
    assert code == 1 and stderr.startswith("error: cannot write") and "Traceback" not in stderr


def test_project_without_label_config_asks_for_a_sync(session_factory, cli, tmp_path):
    with session_factory.begin() as session:
        add_project(session, ls_id=5, config="")
    code, _, stderr = cli("export", "--project", "5", "--out", str(tmp_path / "c.json"))
    assert code == 1 and "clickmask sync --project 5" in stderr


def test_check_counts_agrees_with_pycocotools_and_refuses_damage():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        rle = encode(mask)
        runs = check_counts(rle.counts, h, w)
        assert runs.sum() == h * w and runs[1::2].sum() == mask.sum()
        decoded = coco_mask.decode({"size": [h, w], "counts": rle.counts.encode()})
        assert np.array_equal(decoded.astype(bool), mask)
        for _, damaged in corrupt(rle.counts):
            with pytest.raises(MaskError):
                check_counts(damaged, h, w)
        # Random single-character damage: either refused, or the runs still cover the mask exactly (then
        # pycocotools decodes it safely, merely to another mask).
        chars = list(rle.counts)
        chars[int(rng.integers(len(chars)))] = chr(int(rng.integers(48, 112)))
        try:
            runs = check_counts("".join(chars), h, w)
        except MaskError:
            continue
        assert runs.sum() == h * w and (runs >= 0).all()


def test_a_polygon_region_is_exported_as_its_own_vertices_and_a_brush_region_as_before(session_factory, cli,
                                                                                        tmp_path):
    from integrations.polygons import draw

    config = CONFIG.replace("</View>", '<PolygonLabels name="poly" toName="image"><Label value="Fish"/>'
                                       '</PolygonLabels></View>')
    vertices = [5.0, 4.0, 30.5, 6.25, 41.0, 30.0, 12.2, 33.9]  # pixels, as Label Studio's percentages give them
    polygon_mask = draw([np.reshape(vertices, (-1, 2))], W, H)
    brush_mask = disk(18, 26, 6)
    with session_factory.begin() as session:
        project = add_project(session, config=config)
        image = add_image(session, project, "/data/upload/7/p.png", task=1)
        row = add_annotation(session, project, image, 1, [("Dog", brush_mask)])
        rle = encode(polygon_mask)
        row.masks.append(AnnotationMask(region_id="p1", from_name="poly", label="Fish", height=H, width=W,
                                        rle_counts=rle.counts, area=rle.area, polygon=vertices))
        session.flush()
        polygon_id = row.masks[-1].id
    for options in ((), ("--polygons",)):
        out, _, _ = export(cli, tmp_path, *options)
        coco = COCO(str(out))
        assert [c["name"] for c in coco.dataset["categories"]] == ["Cat", "Dog", "Bird", "Fish"]
        anns = {a["id"]: a for a in coco.dataset["annotations"]}
        polygon = anns.pop(polygon_id)
        assert polygon["segmentation"] == [vertices], options
        assert coco.cats[polygon["category_id"]]["name"] == "Fish" and polygon["area"] == int(polygon_mask.sum())
        (brush,) = anns.values()
        assert isinstance(brush["segmentation"], list) == bool(options)  # RLE unless --polygons
        assert np.array_equal(coco.annToMask(brush).astype(bool), brush_mask)
