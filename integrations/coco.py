"""Stored masks into COCO pieces: checked RLE, area, box, outer polygons, PNG bytes, image file names.

Stored RLE is treated as untrusted (a database can be edited or damaged): pycocotools' decoder writes runs without
checking them against the mask size, so a corrupt counts string could write past its buffer. `check_counts` parses
the string the way pycocotools does and accepts it only if the runs cover the mask exactly; only then is it handed
to pycocotools.
"""
from __future__ import annotations

import posixpath
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from integrations.polygons import trace
from integrations.masks import MAX_PIXELS, MaskError

MAX_COUNT_CHARS = 7  # 7 chars of 5 bits hold any 32-bit run length; longer means garbage


def check_counts(counts: str, height: int, width: int) -> np.ndarray:
    """The run lengths of a compressed COCO counts string, or MaskError if they do not cover height x width."""
    if height < 1 or width < 1 or height * width > MAX_PIXELS:
        raise MaskError(f"mask size {width}x{height} is not usable")
    try:
        raw = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except (UnicodeEncodeError, AttributeError):
        raise MaskError("RLE counts are not an ASCII string") from None
    if raw.size == 0 or raw.min() < 0 or raw.max() > 63:
        raise MaskError("RLE counts hold characters outside the COCO alphabet")
    more = (raw & 0x20) != 0
    if more[-1]:
        raise MaskError("RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > MAX_COUNT_CHARS:
        raise MaskError("RLE counts hold a number too long to be a run length")
    # Each char carries 5 bits, least significant first; the last char's 0x10 bit is the sign.
    shift = 5 * (np.arange(raw.size) - np.repeat(starts, lengths))
    values = np.add.reduceat((raw & 0x1F) << shift, starts)
    values -= np.where(raw[ends] & 0x10, np.int64(1) << (5 * lengths), 0)
    # From the fourth number on, each is stored as the difference to the number two places before it.
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    if runs.min() < 0:
        raise MaskError("RLE counts hold a negative run length")
    if int(runs.sum()) != height * width:
        raise MaskError(f"RLE runs cover {int(runs.sum())} pixels, the mask has {height * width}")
    return runs


def rle_dict(counts: str, height: int, width: int) -> dict:
    return {"size": [height, width], "counts": counts}


def area_and_bbox(runs: np.ndarray, counts: str, height: int, width: int) -> tuple[int, list[float]]:
    """Area from the runs (odd runs are ones), box from pycocotools ([x, y, w, h], a 1-pixel object is 1 x 1)."""
    area = int(runs[1::2].sum())
    rle = {"size": [height, width], "counts": counts.encode("ascii")}
    bbox = [float(v) for v in coco_mask.toBbox(rle)]
    return area, bbox


def decode(counts: str, height: int, width: int) -> np.ndarray:
    """H x W uint8 0/1 mask; only after check_counts accepted the string."""
    return coco_mask.decode({"size": [height, width], "counts": counts.encode("ascii")})


def outer_polygons(mask: np.ndarray) -> tuple[list[list[float]], int]:
    """COCO polygons along the outer pixel edges of each part (polygons.trace), and the number of holes they leave
    out: COCO polygons are a union with no way to cut a hole, so holes are filled; the count says how many."""
    parts = trace(mask)
    return [[float(v) for v in part.outline.ravel()] for part in parts], sum(len(part.holes) for part in parts)


def png_bytes(mask: np.ndarray) -> bytes:
    """The mask as an 8-bit grey PNG, 255 inside, 0 outside."""
    ok, data = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise MaskError("the mask could not be encoded as PNG")
    return data.tobytes()


def file_name(uri: str) -> str:
    """The image's file name as COCO tools expect it: the last path part of the URI (for Label Studio's
    /data/local-files/?d=dir/x.jpg, of the `d` parameter). Only written into the JSON, never used as a path here."""
    parts = urlsplit(uri)
    path = parts.path
    if path.rstrip("/").endswith("/local-files") and parse_qs(parts.query).get("d"):
        path = parse_qs(parts.query)["d"][0]
    name = posixpath.basename(unquote(path).rstrip("/"))
    return name or uri
