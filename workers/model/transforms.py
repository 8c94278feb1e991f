"""Where the network looks: the frame (a box of the image, resized) and the mapping in and out of it.

`Frame` maps image pixels to the network's input and back. `zoom_in_box` is RITM's zoom-in: from the second click
on, the network sees only a box around the object (the previous mask and the positive clicks, enlarged), so the
cost per click stays the same whatever the image size, and small objects are seen at a useful scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .clicks import Click


@dataclass(frozen=True)
class Frame:
    """Box (x0, y0, x1, y1) of the image, in pixels, exclusive ends, resized to width x height for the network."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: int
    height: int

    @classmethod
    def around(cls, box: tuple[int, int, int, int], long_side: int, multiple: int = 32) -> Frame:
        """The box resized so its longer side is `long_side`, both sides rounded to a multiple of `multiple`."""
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        scale = long_side / max(bw, bh)
        rnd = lambda v: max(multiple, int(round(v * scale / multiple)) * multiple)
        return cls(x0, y0, x1, y1, rnd(bw), rnd(bh))

    @property
    def sx(self) -> float:
        return self.width / (self.x1 - self.x0)

    @property
    def sy(self) -> float:
        return self.height / (self.y1 - self.y0)

    def clicks_in(self, clicks: list[Click]) -> list[Click]:
        # Pixel centres: image pixel x covers [x, x + 1), so its centre maps to (x + 0.5) * s - 0.5 in the frame.
        return [Click((c.x - self.x0 + 0.5) * self.sx - 0.5, (c.y - self.y0 + 0.5) * self.sy - 0.5, c.positive)
                for c in clicks]

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The frame's view of an image-sized array (H x W or H x W x C)."""
        box = image[self.y0 : self.y1, self.x0 : self.x1]
        interp = cv2.INTER_AREA if box.shape[1] > 2 * self.width else cv2.INTER_LINEAR
        return cv2.resize(box, (self.width, self.height), interpolation=interp)

    def paste(self, frame_map: np.ndarray, canvas: np.ndarray) -> np.ndarray:
        """Write a frame-sized map back into the box of an image-sized canvas (changed in place and returned)."""
        canvas[self.y0 : self.y1, self.x0 : self.x1] = cv2.resize(
            frame_map, (self.x1 - self.x0, self.y1 - self.y0), interpolation=cv2.INTER_LINEAR
        )
        return canvas


def zoom_in_box(
    clicks: list[Click], prev_mask: np.ndarray | None, shape: tuple[int, int], expand: float = 1.4,
    min_side: int = 200,
) -> tuple[int, int, int, int]:
    """Box around the previous mask and the positive clicks, enlarged `expand` times and to at least `min_side`
    pixels a side (less only where the image is smaller), kept inside the image."""
    h, w = shape
    xs = [c.x for c in clicks if c.positive]
    ys = [c.y for c in clicks if c.positive]
    if prev_mask is not None and prev_mask.any():
        rows = np.flatnonzero(prev_mask.any(axis=1))
        cols = np.flatnonzero(prev_mask.any(axis=0))
        xs += [cols[0], cols[-1] + 1]
        ys += [rows[0], rows[-1] + 1]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    bw = min(w, max((max(xs) - min(xs)) * expand, min_side))
    bh = min(h, max((max(ys) - min(ys)) * expand, min_side))
    x0 = int(round(min(max(cx - bw / 2, 0), w - bw)))
    y0 = int(round(min(max(cy - bh / 2, 0), h - bh)))
    return x0, y0, min(w, x0 + int(round(bw))), min(h, y0 + int(round(bh)))
