"""The GrabCut baseline on synthetic images, and `clickmask evaluate` end to end on a tiny dataset."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from orchestrator.cli import main
from orchestrator.commands.evaluate import parse_spec
from workers.model.clicks import Click
from workers.model.evaluator import evaluate_object
from workers.model.grabcut import GrabCutPredictor, keep_clicked_parts
from workers.model.predictor_base import Prediction


def disk_scene(h=120, w=160, centre=(90, 60), radius=30, seed=0):
    """A noisy red disk on a noisy blue-green textured background; returns (RGB image, object mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disk = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    stripes = ((xx // 6 + yy // 9) % 2)[:, :, None] * np.array([0, 60, 40])
    img = np.array([20, 110, 150]) + stripes + rng.normal(0, 12, (h, w, 3))
    img[disk] = np.array([210, 40, 30]) + rng.normal(0, 12, (disk.sum(), 3))
    return np.clip(img, 0, 255).astype(np.uint8), disk


def test_grabcut_segments_a_disk_in_a_few_clicks():
    img, gt = disk_scene()
    p = GrabCutPredictor()
    p.set_image(img)
    ious, clicks, _, _ = evaluate_object(p, gt, None, max_clicks=3)
    assert clicks[0] == (90.0, 60.0, True)  # the deepest point: the disk's centre
    assert max(ious) >= 0.9


def test_grabcut_first_box_grows_for_a_large_object():
    # The first box is 150 px wide around the click; the disk is 190 px wide and spills over its sides.
    img, gt = disk_scene(h=220, w=300, centre=(150, 110), radius=95)
    p = GrabCutPredictor(box_fraction=0.25)
    p.set_image(img)
    pred = p.predict([Click(150.0, 110.0, True)])
    assert 2 * 0.25 * 300 < 2 * 95
    assert (pred.mask & gt).sum() / (pred.mask | gt).sum() >= 0.9


def test_grabcut_keeps_hard_seeds_and_only_clicked_parts():
    img, gt = disk_scene()
    p = GrabCutPredictor()
    p.set_image(img)
    pred = p.predict([Click(90.0, 60.0, True), Click(100.0, 60.0, False)])
    assert pred.mask[60, 90] and not pred.mask[60, 100]
    assert pred.prob.shape == gt.shape and pred.prob.dtype == np.float32
    # Repeatable: GrabCut's random initialisation is seeded.
    again = p.predict([Click(90.0, 60.0, True), Click(100.0, 60.0, False)])
    assert np.array_equal(pred.mask, again.mask)


def test_keep_clicked_parts_drops_unclicked_components():
    fg = np.zeros((30, 30), bool)
    fg[2:8, 2:8] = True
    fg[20:28, 20:28] = True
    kept = keep_clicked_parts(fg, [Click(4.0, 4.0, True), Click(22.0, 22.0, False)])
    assert kept[4, 4] and not kept[22, 22]
    # A click at the last column (x = w - 0.4 rounds to w) stays inside the image.
    fg[:, 29] = True
    assert keep_clicked_parts(fg, [Click(29.6, 10.0, True)])[0, 29]


def test_parse_spec():
    assert parse_spec("grabcut") == ("grabcut", {})
    assert parse_spec("base:flip") == ("base", {"flip": True})
    assert parse_spec("base:nozoom:flip") == ("base", {"flip": True, "zoom_in": False})
    assert parse_spec("base:onescale") == ("base", {"first_click_coarse_side": 0})
    assert parse_spec("runs/a:b.pt:nozoom") == ("runs/a:b.pt", {"zoom_in": False})


def test_evaluate_command_end_to_end(tmp_path, capsys):
    data = tmp_path / "toy" / "set"
    for d in ("images", "masks"):
        (data / d).mkdir(parents=True)
    for i, (c, r) in enumerate([((40, 32), 14), ((30, 30), 18)]):
        img, gt = disk_scene(h=64, w=80, centre=c, radius=r, seed=i)
        cv2.imwrite(str(data / "images" / f"im{i}.png"), img[:, :, ::-1])
        cv2.imwrite(str(data / "masks" / f"im{i}.png"), gt.astype(np.uint8) * 255)
    out = tmp_path / "out"
    code = main(["evaluate", "--model", "grabcut", "--data", str(data), "--max-clicks", "3", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    table = capsys.readouterr().out
    assert "NoC@90" in table and "mIoU@5" in table and "first-click s" in table and "cpu s/click" in table
    assert any(line.startswith("grabcut") for line in table.splitlines())

    doc = json.loads((out / "toy_set.json").read_text())
    (res,) = doc["results"]
    assert res["method"] == "grabcut" and len(res["objects"]) == 2
    assert len(res["miou_curve"]) == 3 and res["summary"]["mIoU@1"] > 0.5
    assert (out / "toy_set.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_refuses_flip_for_grabcut(tmp_path):
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "grabcut:flip", "--data", str(tmp_path), "--out", str(tmp_path / "o")])


def test_a_drawn_box_seeds_grabcut_and_bounds_its_answer():
    from model_support import disk_scene
    from workers.model import Click
    from workers.model.evaluator import iou
    from workers.model.grabcut import GrabCutPredictor

    rgb, mask = disk_scene(h=120, w=160, cx=80, cy=60, r=30)
    p = GrabCutPredictor()
    p.set_image(rgb)
    pred = p.predict([Click(80, 60, True)], box=(45, 25, 116, 96))
    assert iou(mask, pred.mask) > 0.85
    assert not pred.mask[:, :45].any() and not pred.mask[:, 116:].any()


def test_a_corrective_click_relabels_the_area_it_stands_for():
    # The previous mask holds only the left half of the disk; the positive click sits deep in the missing half.
    img, gt = disk_scene()
    half = gt.copy()
    half[:, 90:] = False
    click = [Click(70.0, 60.0, True), Click(105.0, 60.0, True)]
    labels = GrabCutPredictor()._correct(half, click)
    # Its disk reaches 0.8 of the 15 px to the previous mask: well past the 5 px hard seed, and not into it.
    assert labels[60, 105 + 10] == cv2.GC_PR_FGD and labels[60, 105 - 10] == cv2.GC_PR_FGD
    assert labels[60, 105 + 14] == cv2.GC_PR_BGD
    assert GrabCutPredictor(correction_reach=0)._correct(half, click)[60, 115] == cv2.GC_PR_BGD
    p = GrabCutPredictor()
    p.set_image(img)
    pred = p.predict(click, prev=Prediction(half.astype(np.float32), half))
    assert (pred.mask & gt).sum() / (pred.mask | gt).sum() >= 0.9
