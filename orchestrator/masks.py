"""Mask encodings: COCO RLE (how masks are stored) and Label Studio's brush RLE (how they arrive)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask

MAX_PIXELS = 50_000_000  # the same cap as the model's images


class MaskError(ValueError):
    """A mask that cannot be used: the message says why."""


@dataclass(frozen=True)
class CocoRle:
    counts: str  # pycocotools' compressed counts, ASCII
    height: int
    width: int
    area: int

    def as_coco(self) -> dict:
        return {"size": [self.height, self.width], "counts": self.counts}


def encode(mask: np.ndarray) -> CocoRle:
    """H x W mask (bool or 0/non-zero) to COCO RLE."""
    if mask.ndim != 2:
        raise MaskError(f"a mask must be H x W, not {mask.shape}")
    # Runs are counted between differing values, so anything but 0/1 must be normalized first; a bool mask is
    # already 0/1 bytes and only needs the column-major copy (this runs on the request path: keep it to one pass).
    binary = mask.view(np.uint8) if mask.dtype == np.bool_ else (mask != 0).view(np.uint8)
    rle = coco_mask.encode(np.asfortranarray(binary))
    return CocoRle(rle["counts"].decode("ascii"), mask.shape[0], mask.shape[1], int(coco_mask.area(rle)))


def decode(rle: CocoRle) -> np.ndarray:
    """COCO RLE back to an H x W bool mask."""
    return coco_mask.decode({"size": [rle.height, rle.width], "counts": rle.counts.encode("ascii")}).astype(bool)


def brush_to_mask(rle, width: int, height: int) -> np.ndarray:
    """Label Studio brush RLE (a list of byte values covering the RGBA image) to an H x W bool mask.

    The RLE is untrusted: its header says how many values it decodes to, and the SDK's decoder allocates that many
    before looking further, so the header is checked against the image size first.
    """
    from label_studio_sdk.converter.brush import decode_rle

    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MaskError(f"original_{name} must be a positive integer, not {value!r}")
    if width * height > MAX_PIXELS:
        raise MaskError(f"image of {width}x{height} is larger than {MAX_PIXELS} pixels")
    if not isinstance(rle, list) or len(rle) < 6:
        raise MaskError("rle must be a list of byte values")
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise MaskError("rle must hold integers from 0 to 255") from None
    expected = width * height * 4
    declared = int.from_bytes(data[:4], "big")
    if declared != expected:
        raise MaskError(f"RLE covers {declared // 4} pixels but the image is {width}x{height} ({width * height})")
    try:
        values = decode_rle(data)
    # ValueError, IndexError: it ran past the end of a truncated or corrupt stream; OverflowError: it holds a value
    # wider than the byte it fills.
    except (ValueError, IndexError, OverflowError) as exc:
        raise MaskError(f"RLE cannot be decoded: {exc.__class__.__name__}") from None
    # Alpha is the brush's opacity: a pixel belongs to the mask when it is more than half opaque.
    return values.reshape(height, width, 4)[:, :, 3] > 127
