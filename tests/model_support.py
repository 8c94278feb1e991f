"""Small synthetic images and objects for the model tests: a coloured disk on a textured background."""
from __future__ import annotations

import numpy as np


def disk_scene(h: int = 96, w: int = 128, cx: int = 60, cy: int = 50, r: int = 22, seed: int = 0):
    """(rgb H x W x 3 uint8, mask H x W bool): a reddish disk on green-grey noise."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = (60, 140, 90)
    rgb = np.clip(rgb + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    rgb[mask] = np.clip(np.array([200, 60, 50]) + rng.normal(0, 12, (mask.sum(), 3)), 0, 255).astype(np.uint8)
    return rgb, mask
