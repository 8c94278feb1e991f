"""The simulated annotator of the standard NoC protocol: where the next click goes, given the ground truth and the
current prediction.

Conventions: masks are H x W bool arrays at the image's size; a click is at pixel (x, y), x the column and y the
row, integers in image pixels (see clicks.Click).

Rule (the standard NoC protocol): take the false-negative and the false-positive regions of the prediction, leaving
out ignored pixels; take the Euclidean distance transform of each, computed on the region padded by one pixel of
background so that the image border counts as a boundary; zero it at pixels already clicked; the region with the
larger maximum gives the sign (a tie gives a negative click) and the click goes at that maximum (the first such
pixel in row-major order when several share it). With an empty prediction the first click therefore lands on the
deepest interior point of the object.
"""
from __future__ import annotations

import cv2
import numpy as np

from .clicks import Click


def padded_distance(region: np.ndarray) -> np.ndarray:
    """H x W float32: for each pixel of `region` (H x W bool) the Euclidean distance to the nearest pixel outside it,
    where everything beyond the image border counts as outside; 0 outside the region."""
    padded = np.pad(region.astype(np.uint8), 1, constant_values=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]


def next_click(
    gt: np.ndarray,
    pred: np.ndarray,
    ignore: np.ndarray | None = None,
    clicked: list[Click] | None = None,
) -> Click | None:
    """The next click for ground truth `gt` and prediction `pred` (both H x W bool), or None when no error is left
    outside the ignored and already clicked pixels (a perfect prediction: an annotator would stop)."""
    valid = np.ones_like(gt, dtype=bool) if ignore is None else ~ignore
    fn = padded_distance(gt & ~pred & valid)
    fp = padded_distance(~gt & pred & valid)
    for c in clicked or ():
        # A pixel clicked once is not clicked again, whatever its sign was.
        fn[int(c.y), int(c.x)] = 0.0
        fp[int(c.y), int(c.x)] = 0.0
    fn_max, fp_max = float(fn.max()), float(fp.max())
    if fn_max == 0.0 and fp_max == 0.0:
        return None
    positive = fn_max > fp_max
    dist = fn if positive else fp
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Click(float(x), float(y), positive)


class Clicker:
    """Keeps the clicks made so far on one object and places the next one with `next_click`."""

    def __init__(self, gt: np.ndarray, ignore: np.ndarray | None = None) -> None:
        self.gt = gt.astype(bool)
        self.ignore = None if ignore is None else ignore.astype(bool)
        self.clicks: list[Click] = []

    def click(self, pred: np.ndarray | None) -> Click | None:
        """Add and return the next click for prediction `pred` (None = nothing predicted yet), or None if no error
        is left."""
        if pred is None:
            pred = np.zeros_like(self.gt)
        c = next_click(self.gt, pred.astype(bool), self.ignore, self.clicks)
        if c is not None:
            self.clicks.append(c)
        return c
