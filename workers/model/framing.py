"""Framing for a domain of objects: the predictor's zoom-in floor and first-click box chosen from the size of its
objects, and training frames laid out the way the predictor then frames an object (fine-tuning trains on them)."""
from __future__ import annotations

import numpy as np

from .data import LoadedImage, SampleGenerator


def framing_for(images: list[LoadedImage], own_floor: int, floors: tuple[int, ...]) -> dict:
    """The predictor's framing for a domain, from the size of its objects (the longer side of each one's box):
    the largest zoom-in floor (the parent's own or one of `floors`) that the median object spans at least a quarter
    of, else the smallest; and a first-click box of twice that floor when the median object is under an eighth of
    its image's longer side (0: the first click sees the whole image). Returns the settings with the medians."""
    sides, image_sides = np.array([(max(o.box[2] - o.box[0], o.box[3] - o.box[1]), max(im.rgb.shape[:2]))
                                   for im in images for o in im.objects], float).T
    median, fraction = float(np.median(sides)), float(np.median(sides / image_sides))
    fitting = [f for f in {own_floor, *floors} if 4 * median >= f]
    floor = max(fitting) if fitting else min(own_floor, *floors)
    return {"zoom_min_side": int(floor), "first_click_side": int(2 * floor) if fraction < 1 / 8 else 0,
            "median_object_px": median, "median_object_fraction": fraction}


class InferenceFrames(SampleGenerator):
    """Training frames laid out as the predictor frames an object: mostly a zoom-in crop (the object's box
    enlarged, at least `min_side` px), else what the first click sees: the whole image, or with `first_side` a box
    of that side around a point inside the object."""

    def __init__(self, folders, size: int = 256, min_side: int = 200, first_side: int = 0, zoom_prob: float = 0.7):
        super().__init__(folders, size=size, zoom_prob=zoom_prob)
        self.min_side, self.first_side = min_side, first_side

    def frame(self, rng: np.random.Generator, target: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        ys, xs = np.nonzero(target)
        bw, bh = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
        cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        if rng.random() < self.zoom_prob:
            side = max(max(bw, bh) * rng.uniform(1.2, 1.8), self.min_side * rng.uniform(0.8, 1.2))
            cx, cy = cx + rng.uniform(-0.2, 0.2) * side, cy + rng.uniform(-0.2, 0.2) * side
        elif self.first_side:
            side = min(max(shape), self.first_side * rng.uniform(0.9, 1.1))
            cx, cy = cx + rng.uniform(-0.2, 0.2) * bw, cy + rng.uniform(-0.2, 0.2) * bh
        else:
            side = max(shape) * rng.uniform(0.9, 1.1)
            cx = shape[1] / 2 + rng.uniform(-0.05, 0.05) * side
            cy = shape[0] / 2 + rng.uniform(-0.05, 0.05) * side
        scale = self.size / side
        sx = -scale if rng.random() < 0.5 else scale  # mirrored half the time
        return np.array([[sx, 0, self.size / 2 - sx * cx], [0, scale, self.size / 2 - scale * cy]], np.float64)
