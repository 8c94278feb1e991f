"""The NoC protocol: click placement on hand-made masks, and the evaluator's arithmetic with a scripted predictor."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from workers.model.clicker import Clicker, next_click, padded_distance
from workers.model.clicks import Click
from workers.model.evaluator import evaluate, evaluate_object, iou, noc
from workers.model.predictor_base import Predictor


def square(h, w, y0, x0, side):
    m = np.zeros((h, w), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


# --- the clicker -------------------------------------------------------------------------------------------------

def test_first_click_is_the_deepest_interior_point():
    gt = square(40, 50, 10, 5, 11) | square(40, 50, 30, 30, 5)  # an 11x11 square centred at (x=10, y=15), a 5x5
    assert next_click(gt, np.zeros_like(gt)) == Click(10.0, 15.0, True)


def test_image_border_counts_as_boundary():
    # An 11x11 square in the top-left corner: without the one-pixel padding the corner pixel (0, 0) would be
    # farthest from any background pixel; with it the centre (5, 5) is the deepest point.
    gt = square(40, 40, 0, 0, 11)
    assert next_click(gt, np.zeros_like(gt)) == Click(5.0, 5.0, True)
    assert padded_distance(gt)[0, 0] == pytest.approx(1.0)


def test_missed_part_gives_positive_click_at_its_centre():
    big, part = square(60, 60, 5, 5, 21), square(60, 60, 40, 40, 9)
    c = next_click(big | part, pred=big)
    assert c == Click(44.0, 44.0, True)


def test_over_coverage_gives_negative_click_at_its_centre():
    gt, extra = square(60, 60, 5, 5, 21), square(60, 60, 40, 40, 9)
    c = next_click(gt, pred=gt | extra)
    assert c == Click(44.0, 44.0, False)


def test_larger_error_wins():
    # Missed 9x9 part (depth 5) against an over-covered 13x13 square (depth 7): the negative one is deeper.
    gt = square(80, 80, 5, 5, 21) | square(80, 80, 40, 5, 9)
    pred = square(80, 80, 5, 5, 21) | square(80, 80, 50, 50, 13)
    assert next_click(gt, pred) == Click(56.0, 56.0, False)
    # And the other way round when the missed part is the deeper one.
    gt = square(80, 80, 5, 5, 21) | square(80, 80, 40, 5, 13)
    pred = square(80, 80, 5, 5, 21) | square(80, 80, 50, 50, 9)
    assert next_click(gt, pred) == Click(11.0, 46.0, True)


def test_tie_gives_negative_click():
    # A missed 9x9 square and an over-covered 9x9 square: equal depth, so the click is negative.
    gt = square(60, 60, 5, 5, 21) | square(60, 60, 40, 5, 9)
    pred = square(60, 60, 5, 5, 21) | square(60, 60, 40, 40, 9)
    assert next_click(gt, pred) == Click(44.0, 44.0, False)


def test_clicked_pixels_are_not_clicked_again():
    gt = square(40, 40, 10, 10, 11)  # centre (15, 15)
    empty = np.zeros_like(gt)
    first = next_click(gt, empty)
    assert first == Click(15.0, 15.0, True)
    # Same error again (the prediction did not change): the centre is excluded, the next deepest pixel in
    # row-major order is its upper-left neighbour (depth 5, like the whole ring around the centre).
    assert next_click(gt, empty, clicked=[first]) == Click(14.0, 14.0, True)
    # A click of either sign excludes its pixel.
    assert next_click(gt, empty, clicked=[Click(15.0, 15.0, False)]) == Click(14.0, 14.0, True)


def test_clicker_keeps_its_clicks_and_stops_when_nothing_is_wrong():
    gt = square(40, 40, 10, 10, 11)
    clicker = Clicker(gt)
    assert clicker.click(None) == Click(15.0, 15.0, True)
    assert clicker.click(None) == Click(14.0, 14.0, True)
    assert len(clicker.clicks) == 2
    assert clicker.click(gt) is None
    assert len(clicker.clicks) == 2


def test_ignored_pixels_are_neither_clicked_nor_scored():
    gt = square(60, 60, 20, 20, 15)
    ring = cv2.dilate(gt.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~gt
    pred = gt | ring
    assert next_click(gt, pred) is not None and not next_click(gt, pred).positive
    assert next_click(gt, pred, ignore=ring) is None
    assert iou(gt, pred) < 0.6
    assert iou(gt, pred, ignore=ring) == 1.0


# --- the evaluator -------------------------------------------------------------------------------------------------

def test_noc_counts_the_first_click_reaching_the_threshold():
    assert noc([0.5, 0.86, 0.91], 0.85) == 2
    assert noc([0.5, 0.86, 0.91], 0.90) == 3
    assert noc([0.5, 0.6], 0.9, max_clicks=20) == 20


class ScriptedPredictor(Predictor):
    """Answers, for the object whose first click is at a known point, the first k pixels (row-major) of its ground
    truth, k chosen so that the IoU after click n is script[n-1]. Checks that the previous answer is fed back."""

    name = "scripted"

    def __init__(self, objects):
        super().__init__()
        self.objects = objects  # {(x, y) of the first click: (gt, [iou after click 1, 2, ...])}
        self.set_image_calls = 0
        self.last = None

    def set_image(self, image):
        super().set_image(image)
        self.set_image_calls += 1

    def predict(self, clicks, prev=None):
        if len(clicks) == 1:
            assert prev is None
        else:
            assert prev is self.last, "the previous prediction must be fed back"
        self.last = super().predict(clicks, prev)
        return self.last

    def _predict_prob(self, clicks, prev_prob, box=None):
        gt, script = self.objects[(clicks[0].x, clicks[0].y)]
        ys, xs = np.nonzero(gt)
        k = int(round(script[len(clicks) - 1] * len(ys)))
        prob = np.zeros(gt.shape, np.float32)
        prob[ys[:k], xs[:k]] = 1.0
        return prob


def write_dataset(root, images):
    """images: {stem: [(mask name, mask, raw-or-None)]}; writes images/, masks/ and gt_raw/ (when given)."""
    for d in ("images", "masks", "gt_raw"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, masks in images.items():
        h, w = masks[0][1].shape
        cv2.imwrite(str(root / "images" / f"{stem}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for name, m, raw in masks:
            cv2.imwrite(str(root / "masks" / f"{name}.png"), m.astype(np.uint8) * 255)
            if raw is not None:
                cv2.imwrite(str(root / "gt_raw" / f"{name}.png"), raw)


def test_evaluator_arithmetic(tmp_path):
    # Three objects, 10x10 squares (100 px), on two images; IoU scripts for 5 clicks.
    a, b, c = square(40, 40, 2, 2, 10), square(40, 40, 25, 25, 10), square(40, 40, 15, 15, 10)
    scripts = {
        "a": [0.50, 0.80, 0.86, 0.90, 0.95],  # NoC@85 = 3, NoC@90 = 4
        "b": [0.88, 0.88, 0.92, 0.92, 0.92],  # NoC@85 = 1, NoC@90 = 3
        "c": [0.30, 0.40, 0.50, 0.60, 0.70],  # never: 5 and 5, a failure at both
    }
    write_dataset(tmp_path, {"img1": [("img1_a", a, None), ("img1_b", b, None)], "img2": [("img2", c, None)]})
    objects = {}
    for key, gt in (("a", a), ("b", b), ("c", c)):
        first = next_click(gt, np.zeros_like(gt))
        objects[(first.x, first.y)] = (gt, scripts[key])
    pred = ScriptedPredictor(objects)
    res = evaluate(pred, tmp_path, max_clicks=5, progress=False)

    assert pred.set_image_calls == 2  # once per image, not per object
    assert [o.mask for o in res.objects] == ["img1_a.png", "img1_b.png", "img2.png"]
    assert res.objects[0].ious == pytest.approx(scripts["a"])
    assert res.noc(0.85) == pytest.approx((3 + 1 + 5) / 3)
    assert res.noc(0.90) == pytest.approx((4 + 3 + 5) / 3)
    assert res.nof(0.85) == 1 and res.nof(0.90) == 1
    expected = np.mean([scripts["a"], scripts["b"], scripts["c"]], axis=0)
    assert res.miou() == pytest.approx(expected.tolist())
    s = res.summary()
    assert s["mIoU@1"] == pytest.approx(expected[0]) and s["mIoU@5"] == pytest.approx(expected[4])
    assert all(len(o.seconds) == len(o.cpu_seconds) == len(o.clicks) == 5 for o in res.objects)
    assert s["s/click"] > 0 and s["cpu s/click"] >= 0

    doc = json.loads(res.to_json())
    assert doc["summary"]["NoC@90"] == pytest.approx(4.0)
    assert doc["objects"][1]["ious"] == pytest.approx(scripts["b"])
    assert len(doc["miou_curve"]) == 5

    # every / limit select images, not objects.
    images = lambda **only: [o.image for o in evaluate(pred, tmp_path, max_clicks=2, progress=False, **only).objects]
    assert images(every=2) == ["img1.png"] * 2
    assert images(limit=1) == ["img1.png"] * 2


class BandPredictor(Predictor):
    """Always answers the ground truth grown by 4 pixels."""

    def __init__(self, gt):
        super().__init__()
        self.grown = cv2.dilate(gt.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(np.float32)

    def _predict_prob(self, clicks, prev_prob, box=None):
        return self.grown


def test_ignore_band_from_gt_raw_is_left_out(tmp_path):
    gt = square(60, 60, 20, 20, 15)
    band = cv2.dilate(gt.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~gt
    raw = np.where(gt, 255, np.where(band, 128, 0)).astype(np.uint8)
    write_dataset(tmp_path / "with", {"x": [("x", gt, raw)]})
    write_dataset(tmp_path / "without", {"x": [("x", gt, None)]})

    res = evaluate(BandPredictor(gt), tmp_path / "with", max_clicks=4, progress=False)
    assert res.objects[0].ious == [1.0] * 4
    assert len(res.objects[0].clicks) == 1  # nothing left to correct after the first answer
    assert res.noc(0.9) == 1 and res.nof(0.9) == 0

    res = evaluate(BandPredictor(gt), tmp_path / "without", max_clicks=4, progress=False)
    assert res.objects[0].ious[0] == pytest.approx(gt.sum() / (gt | band).sum())
    assert not res.objects[0].clicks[1][2]  # the second click removes over-coverage: negative
    assert res.nof(0.9) == 1


def test_evaluate_object_curve_always_has_max_clicks_entries():
    gt = square(30, 30, 5, 5, 10)

    class Perfect(Predictor):
        def _predict_prob(self, clicks, prev_prob, box=None):
            return gt.astype(np.float32)

    p = Perfect()
    p.set_image(np.zeros((30, 30, 3), np.uint8))
    ious, clicks, seconds, cpu = evaluate_object(p, gt, None, max_clicks=20)
    assert ious == [1.0] * 20 and len(clicks) == 1 and len(seconds) == 1 and len(cpu) == 1
