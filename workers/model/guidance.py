"""The guidance maps the network sees beside the RGB image, built the same way in training and at inference.

Four channels, all H x W float32 in the network's input frame: positive click disks, negative click disks, the
previous probability map, and a colour cue: for each pixel, how much more its colour looks like the object's than
like the background's, from colour histograms of the clicked disks, the previous mask and the frame's border. The
cue hands the network the data term that GrabCut builds from colour models, at the cost of two histograms.
"""
from __future__ import annotations

import numpy as np

from .clicks import Click, encode_clicks

LEVELS = 16  # colour quantisation per channel: 16**3 histogram bins
CUE_RADIUS = 8  # radius in frame pixels of the disks around clicks whose colours seed the histograms
BORDER = 4  # width in pixels of the frame border counted as background


def colour_bins(rgb: np.ndarray) -> np.ndarray:
    """H x W int32 bin index of each pixel's quantised colour."""
    q = (rgb >> 4).astype(np.int32) if LEVELS == 16 else (rgb.astype(np.int32) * LEVELS // 256)
    return (q[..., 0] * LEVELS + q[..., 1]) * LEVELS + q[..., 2]


def _smoothed_hist(bins: np.ndarray, weights: np.ndarray) -> np.ndarray:
    h = np.bincount(bins.ravel(), weights=weights.ravel(), minlength=LEVELS**3).reshape(LEVELS, LEVELS, LEVELS)
    for axis in range(3):  # a [1, 2, 1] blur along each colour axis, so near colours share evidence
        h = 2 * h + np.roll(h, 1, axis) + np.roll(h, -1, axis)
    return h.ravel() / max(h.sum(), 1e-6)


def colour_cue(bins: np.ndarray, clicks: list[Click], prev_prob: np.ndarray | None) -> np.ndarray:
    """H x W float32 in [0, 1]: P(object | colour) from object and background histograms; 0.5 = no evidence."""
    h, w = bins.shape
    disks = encode_clicks(clicks, h, w, radius=CUE_RADIUS)
    fg = disks[0]
    bg = disks[1].copy()
    bg[:BORDER, :] = bg[-BORDER:, :] = 1.0
    bg[:, :BORDER] = bg[:, -BORDER:] = 1.0
    if prev_prob is not None:
        inside = prev_prob > 0.5
        # The previous mask is evidence too, weaker than a click: one click disk weighs as much as the whole mask.
        n_in = max(int(inside.sum()), 1)
        fg = fg + inside * (fg.sum() + 1.0) / n_in
        bg = bg + (~inside) * (bg.sum() + 1.0) / max(inside.size - n_in, 1)
    bg = bg * (fg < 0.5)
    p_fg = _smoothed_hist(bins, fg)
    p_bg = _smoothed_hist(bins, bg)
    cue = p_fg / (p_fg + p_bg + 1e-9)
    cue[(p_fg + p_bg) < 1e-9] = 0.5
    return cue[bins].astype(np.float32)


def guidance_maps(
    rgb: np.ndarray, clicks: list[Click], prev_prob: np.ndarray | None, bins: np.ndarray | None = None
) -> np.ndarray:
    """4 x H x W float32: positive disks, negative disks, previous probability (zeros if none), colour cue.
    `rgb` is the H x W x 3 uint8 frame the network sees; clicks are in that frame's pixels."""
    h, w = rgb.shape[:2]
    out = np.empty((4, h, w), np.float32)
    out[:2] = encode_clicks(clicks, h, w)
    out[2] = 0.0 if prev_prob is None else prev_prob
    out[3] = colour_cue(colour_bins(rgb) if bins is None else bins, clicks, prev_prob)
    return out
