"""Image validation: every predictor accepts the same arrays and refuses the same ones, with the same errors."""
from __future__ import annotations

import numpy as np

from .errors import InvalidImageError

MIN_SIDE = 8
MAX_PIXELS = 50_000_000


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """Return the image as a contiguous H x W x 3 uint8 RGB array.

    Accepts H x W (grey), H x W x 1, H x W x 3 (RGB) and H x W x 4 (RGBA, alpha dropped), in uint8, uint16 (scaled
    by its own range to 8 bits) or float in [0, 1]. Raises InvalidImageError for anything else, for images with a
    side under MIN_SIDE pixels and for images over MAX_PIXELS pixels.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"the image must be a numpy array, not {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidImageError(f"unsupported image shape {image.shape}: expected H x W, H x W x 3 or H x W x 4")
    image = image[:, :, :3]
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(f"the image is {w}x{h}: both sides must be at least {MIN_SIDE} pixels")
    if h * w > MAX_PIXELS:
        raise InvalidImageError(f"the image is {w}x{h}: over the limit of {MAX_PIXELS} pixels")
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        top = int(image.max())
        image = (image.astype(np.float32) * (255.0 / max(top, 1))).round().astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        if not np.isfinite(image).all():
            raise InvalidImageError("the image has non-finite values")
        image = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    else:
        raise InvalidImageError(f"unsupported image type {image.dtype}: expected uint8, uint16 or float")
    return np.ascontiguousarray(image)
