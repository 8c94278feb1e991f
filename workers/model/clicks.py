"""Clicks and their encoding as network input.

Coordinates: a click is at pixel (x, y) of the image, x the column and y the row, both in image pixels (floats
allowed). Maps are H x W float32 arrays, 1 inside a disk of `radius` pixels around each click, else 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidClicksError

DISK_RADIUS = 5


@dataclass(frozen=True)
class Click:
    """One click: position in image pixels and sign (True = include the pixel, False = exclude it)."""

    x: float
    y: float
    positive: bool



def scaled_into(clicks: list[Click], sx: float, sy: float, width: int, height: int) -> list[Click]:
    """Clicks measured at another size (percent of the image, or another resolution of it) in the pixels of a
    width x height image: x * sx, y * sy, where a click on the far edge stays on the last pixel. (The network's
    frames map pixel centres instead: transforms.Frame.)"""
    return [Click(min(c.x * sx, width - 1), min(c.y * sy, height - 1), c.positive) for c in clicks]


def check_clicks(clicks: list[Click], height: int, width: int) -> None:
    """Raise InvalidClicksError unless there is at least one click and every click lies inside the image."""
    if not clicks:
        raise InvalidClicksError("at least one click is needed")
    for i, c in enumerate(clicks):
        if not (np.isfinite(c.x) and np.isfinite(c.y)):
            raise InvalidClicksError(f"click {i} has a non-finite position ({c.x}, {c.y})")
        if not (0 <= c.x < width and 0 <= c.y < height):
            raise InvalidClicksError(
                f"click {i} at ({c.x:.1f}, {c.y:.1f}) lies outside the {width}x{height} image"
            )
    if not any(c.positive for c in clicks):
        raise InvalidClicksError("at least one positive click is needed")


def _disk_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dx * dx + dy * dy <= radius * radius
    return dy[keep], dx[keep]


def encode_clicks(clicks: list[Click], height: int, width: int, radius: float = DISK_RADIUS) -> np.ndarray:
    """Positive and negative disk maps, shape (2, H, W) float32: channel 0 positive, channel 1 negative."""
    maps = np.zeros((2, height, width), np.float32)
    dy, dx = _disk_offsets(radius)
    for c in clicks:
        ys = dy + int(round(c.y))
        xs = dx + int(round(c.x))
        ok = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        maps[0 if c.positive else 1, ys[ok], xs[ok]] = 1.0
    return maps
