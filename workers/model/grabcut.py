"""The classical baseline: OpenCV's GrabCut (colour GMMs + graph cut) driven by clicks, behind the Predictor interface.

Per call (no state is kept between calls; the previous answer comes back as `prev_prob`):
- initial labelling: before any prediction, a box around the positive clicks (see `box_fraction`) is "probably
  object" and everything outside it is background; afterwards the previous mask is "probably object" and the rest
  "probably background", so GrabCut may grow or shrink it anywhere;
- hard seeds: a disk of `seed_radius` pixels around each click (object for positive, background for negative);
- GrabCut runs `iterations` rounds; of the result only the connected parts holding a positive click are kept.
The output is a hard 0/1 probability map (GrabCut gives labels, not probabilities).

Coordinates: clicks at (x, y) = (column, row) in image pixels; maps are H x W.
"""
from __future__ import annotations

import cv2
import numpy as np

from .clicks import Click
from .predictor_base import THRESHOLD, Predictor


class GrabCutPredictor(Predictor):
    name = "grabcut"

    def __init__(self, box_fraction: float = 0.3, seed_radius: int = 5, iterations: int = 5) -> None:
        """`box_fraction`: half the side of the first box, as a fraction of the image's longer side (a 0.3 box
        spans 60% of it, clipped to the image); `seed_radius`: radius in pixels of the hard seed disks."""
        super().__init__()
        self.box_fraction = box_fraction
        self.seed_radius = seed_radius
        self.iterations = iterations
        self._bgr: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> None:
        super().set_image(image)
        # GrabCut's colour models do not care about channel order, but keep OpenCV's own to avoid surprises.
        self._bgr = np.ascontiguousarray(self.image[:, :, ::-1])

    def _initial_labels(self, clicks: list[Click], prev_prob: np.ndarray | None) -> np.ndarray:
        h, w = self.image.shape[:2]
        if prev_prob is not None and (prev_prob > THRESHOLD).any():
            return np.where(prev_prob > THRESHOLD, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        labels = np.full((h, w), cv2.GC_BGD, np.uint8)
        half = self.box_fraction * max(h, w)
        xs = [c.x for c in clicks if c.positive]
        ys = [c.y for c in clicks if c.positive]
        x0, x1 = int(max(0, min(xs) - half)), int(min(w, max(xs) + half + 1))
        y0, y1 = int(max(0, min(ys) - half)), int(min(h, max(ys) + half + 1))
        labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
        return labels

    def _predict_prob(self, clicks: list[Click], prev_prob: np.ndarray | None) -> np.ndarray:
        h, w = self.image.shape[:2]
        labels = self._initial_labels(clicks, prev_prob)
        for c in clicks:
            cv2.circle(labels, _pixel(c, h, w), self.seed_radius,
                       int(cv2.GC_FGD if c.positive else cv2.GC_BGD), thickness=-1)
        # GrabCut needs samples of both classes to fit its two colour models; with none of one it would raise.
        fg_any = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).any()
        bg_any = np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).any()
        if fg_any and bg_any:
            bgd_model = np.zeros((1, 65), np.float64)
            fgd_model = np.zeros((1, 65), np.float64)
            cv2.grabCut(self._bgr, labels, None, bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK)
        fg = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
        return keep_clicked_parts(fg, clicks).astype(np.float32)


def _pixel(c: Click, h: int, w: int) -> tuple[int, int]:
    """(x, y) of the pixel holding click `c`, kept inside an h x w image (x = w - 0.4 would round to w)."""
    return min(int(round(c.x)), w - 1), min(int(round(c.y)), h - 1)


def keep_clicked_parts(fg: np.ndarray, clicks: list[Click]) -> np.ndarray:
    """H x W bool: the 8-connected parts of `fg` (H x W, nonzero = object) that hold a positive click."""
    h, w = fg.shape
    _, comp = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
    keep = {int(comp[y, x]) for x, y in (_pixel(c, h, w) for c in clicks if c.positive)}
    keep.discard(0)
    return np.isin(comp, list(keep))
