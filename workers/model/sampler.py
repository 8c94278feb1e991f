"""Simulated clicks for training: the initial clicks of a sample, and the corrective click that the iterative
training adds where the model's prediction is most wrong. Positions are in the sample's pixels."""
from __future__ import annotations

import cv2
import numpy as np

from .clicks import Click


def _pick(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    i = rng.integers(len(ys))
    return int(xs[i]), int(ys[i])


def _interior(target: np.ndarray) -> np.ndarray:
    """Distance of each object pixel to the nearest background pixel (image border counts as background)."""
    padded = np.pad(target.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]


def initial_clicks(
    rng: np.random.Generator, target: np.ndarray, others: np.ndarray, max_pos: int = 4, max_neg: int = 5
) -> list[Click]:
    """Clicks for a fresh sample: one positive first (at the deepest point half of the time, as the evaluator
    does), then a random number of further positives inside the object and negatives from a band around it, from
    other objects and from the background."""
    dist = _interior(target)
    if rng.random() < 0.5:
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        first = (int(x), int(y))
    else:
        core = dist >= max(1.0, 0.3 * dist.max())
        first = _pick(rng, core)
    clicks = [Click(first[0], first[1], True)]
    n_pos = int(rng.choice(max_pos, p=_decaying(max_pos)))
    core = dist >= max(1.0, 0.15 * dist.max())
    for _ in range(n_pos):
        p = _pick(rng, core)
        if p:
            clicks.append(Click(p[0], p[1], True))
    n_neg = int(rng.choice(max_neg + 1, p=_decaying(max_neg + 1)))
    if n_neg:
        size = int(np.sqrt(target.sum()))
        k = max(3, size // 4) | 1
        band = cv2.dilate(target.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool) & ~target
        outside = ~cv2.dilate(target.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        sources = [band & outside, others & outside, outside]
        for _ in range(n_neg):
            p = _pick(rng, sources[rng.choice(3, p=[0.5, 0.25, 0.25])])
            if p:
                clicks.append(Click(p[0], p[1], False))
    return clicks


def _decaying(n: int) -> np.ndarray:
    w = 0.5 ** np.arange(n)
    return w / w.sum()


def corrective_click(rng: np.random.Generator, pred: np.ndarray, target: np.ndarray) -> Click | None:
    """A click in the larger error region (false negatives -> positive click, false positives -> negative), near
    its deepest point but not always on it, so the model sees the varied clicks that people make."""
    fn = target & ~pred
    fp = pred & ~target
    d_fn = cv2.distanceTransform(np.pad(fn.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    d_fp = cv2.distanceTransform(np.pad(fp.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    m_fn, m_fp = d_fn.max(), d_fp.max()
    if max(m_fn, m_fp) < 1.0:
        return None
    positive = m_fn > m_fp
    d, m = (d_fn, m_fn) if positive else (d_fp, m_fp)
    p = _pick(rng, d >= m * rng.uniform(0.5, 1.0))
    return Click(p[0], p[1], positive)
