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

    def __init__(
        self,
        box_fraction: float = 0.25,
        box_growth: float = 1.5,
        box_steps: int = 4,
        touch_fraction: float = 0.05,
        seed_radius: int = 5,
        iterations: int = 5,
        correction_reach: float = 0.8,
    ) -> None:
        """`box_fraction`: half the side of the first box around the first click, as a fraction of the image's
        longer side (0.25 spans half of it, clipped to the image); `box_growth`, `box_steps`, `touch_fraction`: the
        box grows by that factor, at most `box_steps - 1` times, while the segment covers more than that fraction
        of one of its inner sides (see _from_box); `seed_radius`: radius in pixels of the hard seed disks;
        `correction_reach`: a click that contradicts the previous mask relabels a disk around it as "probably" its
        side, of this fraction of its distance to the previous mask's other side (see _correct)."""
        super().__init__()
        self.box_fraction = box_fraction
        self.box_growth = box_growth
        self.box_steps = box_steps
        self.touch_fraction = touch_fraction
        self.seed_radius = seed_radius
        self.iterations = iterations
        self.correction_reach = correction_reach
        self._bgr: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> None:
        super().set_image(image)
        # GrabCut's colour models do not care about channel order, but keep OpenCV's own to avoid surprises.
        self._bgr = np.ascontiguousarray(self.image[:, :, ::-1])

    def _grabcut(self, labels: np.ndarray, clicks: list[Click]) -> np.ndarray:
        """Seed `labels` (H x W uint8 of cv2.GC_* values) with the click disks, run GrabCut, and return the H x W
        bool object mask restricted to the parts holding a positive click."""
        h, w = labels.shape
        for c in clicks:
            cv2.circle(labels, _pixel(c, h, w), self.seed_radius,
                       int(cv2.GC_FGD if c.positive else cv2.GC_BGD), thickness=-1)
        # GrabCut needs samples of both classes to fit its two colour models; with none of one it would raise.
        if np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).any() and np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
            # Its k-means initialisation draws from OpenCV's global generator: seed it so answers are repeatable.
            cv2.setRNGSeed(0)
            bgd_model = np.zeros((1, 65), np.float64)
            fgd_model = np.zeros((1, 65), np.float64)
            cv2.grabCut(self._bgr, labels, None, bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK)
        return keep_clicked_parts(np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)), clicks)

    def _from_box(self, clicks: list[Click]) -> np.ndarray:
        """First answer, from a box around the positive clicks that grows while the segment touches its sides.

        A click says where the object is, not how big it is. Start with a box of `box_fraction` of the image's
        longer side (inside it "probably object", outside it background); while the segment reaches an inner
        side of the box (one that is not the image border) the object is larger than the box: enlarge the box by
        `box_growth` and run again from the segment found so far ("probably object" in the segment, "probably
        background" in the rest of the new box), at most `box_steps` boxes in all.
        """
        h, w = self.image.shape[:2]
        xs = [c.x for c in clicks if c.positive]
        ys = [c.y for c in clicks if c.positive]
        half = self.box_fraction * max(h, w)
        mask = None
        for _ in range(self.box_steps):
            x0, x1 = int(max(0, min(xs) - half)), int(min(w, max(xs) + half + 1))
            y0, y1 = int(max(0, min(ys) - half)), int(min(h, max(ys) + half + 1))
            labels = np.full((h, w), cv2.GC_BGD, np.uint8)
            labels[y0:y1, x0:x1] = cv2.GC_PR_FGD if mask is None else cv2.GC_PR_BGD
            if mask is not None:
                labels[mask] = cv2.GC_PR_FGD
            mask = self._grabcut(labels, clicks)
            inner_sides = [mask[y0, x0:x1] if y0 > 0 else None, mask[y1 - 1, x0:x1] if y1 < h else None,
                           mask[y0:y1, x0] if x0 > 0 else None, mask[y0:y1, x1 - 1] if x1 < w else None]
            if not any(side is not None and side.mean() > self.touch_fraction for side in inner_sides):
                break
            half *= self.box_growth
        return mask

    def _predict_prob(self, clicks: list[Click], prev_prob: np.ndarray | None, box=None) -> np.ndarray:
        if box is not None and (prev_prob is None or not (prev_prob > THRESHOLD).any()):
            # A drawn box is what GrabCut was made for: inside "probably object", outside background.
            x0, y0, x1, y1 = box
            labels = np.full(self.image.shape[:2], cv2.GC_BGD, np.uint8)
            labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
            return self._grabcut(labels, clicks).astype(np.float32)
        if prev_prob is None or not (prev_prob > THRESHOLD).any():
            return self._from_box(clicks).astype(np.float32)
        return self._grabcut(self._correct(prev_prob > THRESHOLD, clicks), clicks).astype(np.float32)

    def _correct(self, prev: np.ndarray, clicks: list[Click]) -> np.ndarray:
        """Initial labels from the previous mask, with the area around each contradicting click flipped.

        Without this a corrective click changes little: GrabCut fits its colour models to the previous mask, so
        only the hard seed disk moves. The evaluator (and an annotator) clicks well inside an error region; its
        distance to the previous mask's other side says how far the region reaches, so a disk of that distance
        times `correction_reach` becomes "probably" the click's side and the colour models learn from it."""
        labels = np.where(prev, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        h, w = prev.shape
        to_fg = cv2.distanceTransform((~prev).astype(np.uint8), cv2.DIST_L2, 5)  # outside: distance to the mask
        to_bg = cv2.distanceTransform(prev.astype(np.uint8), cv2.DIST_L2, 5)  # inside: distance to the outside
        for c in clicks:
            x, y = _pixel(c, h, w)
            if c.positive == bool(prev[y, x]):
                continue
            reach = (to_fg if c.positive else to_bg)[y, x] * self.correction_reach
            cv2.circle(labels, (x, y), max(self.seed_radius, int(reach)),
                       int(cv2.GC_PR_FGD if c.positive else cv2.GC_PR_BGD), thickness=-1)
        return labels


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
