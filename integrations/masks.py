"""Mask encodings: COCO RLE (how masks are stored) and Label Studio's brush RLE (how they arrive)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask

from workers.model.image import MAX_PIXELS  # a mask is capped as its image is


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

    The RLE is untrusted: its header says how many values it decodes to, and that is checked against the image size
    before anything is allocated; then decode_brush reads it within bounds.
    """
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
    values = decode_brush(data)
    # Alpha is the brush's opacity: a pixel belongs to the mask when it is more than half opaque.
    return values.reshape(height, width, 4)[:, :, 3] > 127


def decode_brush(data: bytes) -> np.ndarray:
    """The byte values of a brush RLE stream (the format of label_studio_sdk.converter.brush), or MaskError.

    The stream is a bit string: a 32-bit value count, a 5-bit word size and four 4-bit run-length sizes (each minus
    one), then blocks: a repeat bit, a 2-bit choice of run-length size, the run length minus one, and one word for a
    repeated run or one word per value otherwise. The SDK's decoder first turns every bit into a Python string
    (about 600 bytes of memory per input byte: a hostile 8 MiB stream took 5 GB) and trusts the words to fit a
    byte; this one holds one byte per bit and checks every run and word.
    """
    bits = (np.unpackbits(np.frombuffer(data, np.uint8)) + ord("0")).tobytes().decode("ascii")
    end, pos = len(bits), 0

    def read(count: int) -> int:
        nonlocal pos
        if pos + count > end:
            raise MaskError("RLE cannot be decoded: it ends early")
        pos += count
        return int(bits[pos - count:pos], 2)

    total, word = read(32), read(5) + 1
    if word > 8 and total:
        raise MaskError(f"RLE cannot be decoded: {word}-bit words do not fit a byte")
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(total, np.uint8)
    done = 0
    while done < total:
        repeat = read(1)
        stop = done + 1 + read(sizes[read(2)])
        if stop > total:
            raise MaskError("RLE cannot be decoded: a run goes past the image")
        if repeat:
            out[done:stop] = read(word)
        elif stop - done == 1:
            out[done] = read(word)
        else:
            count = stop - done
            if pos + count * word > end:
                raise MaskError("RLE cannot be decoded: it ends early")
            words = np.frombuffer(bits[pos:pos + count * word].encode("ascii"), np.uint8).reshape(count, word) - 48
            out[done:stop] = words @ (1 << np.arange(word - 1, -1, -1)).astype(np.uint8)
            pos += count * word
        done = stop
    return out


# Run lengths of the brush format, as the header lists them: (largest run, bits of its length field); a block's
# 2-bit size choice is the position here. Runs longer than the last are written as several.
_BRUSH_SIZES = ((8, 3), (16, 4), (256, 8), (1 << 16, 16))


def mask_to_brush(mask: np.ndarray) -> list[int]:
    """H x W mask (bool or 0/non-zero) to Label Studio brush RLE: every pixel RGBA, 255 in all four inside the mask,
    0 outside (0/1 would decode but render nearly invisible). The same bytes as label_studio_sdk's mask2rle, which
    builds the bit string one character at a time (about 4 ms for a 854x480 mask; this takes a tenth of that).

    A pixel's four channels hold the same value, so every run of the RGBA stream is a run of pixels times four (never
    a single value): the stream is all repeat blocks (1, the size choice, the run length minus one, the 8-bit value).
    """
    if mask.ndim != 2 or mask.size == 0:
        raise MaskError(f"a mask must be a non-empty H x W array, not {mask.shape}")
    flat = (mask != 0).ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], edges))
    lengths = 4 * np.diff(np.concatenate((starts, [flat.size])))
    values = np.where(flat[starts], 255, 0)
    # A run longer than the largest size is written as runs of that size, then the rest.
    longest, longest_bits = _BRUSH_SIZES[-1]
    pieces = -(-lengths // longest)
    values = np.repeat(values, pieces)
    ends = np.cumsum(pieces)
    lengths = np.repeat(lengths, pieces) - longest * (np.arange(ends[-1]) - np.repeat(ends - pieces, pieces))
    lengths = np.minimum(lengths, longest)
    field_bits = np.full(lengths.shape, longest_bits)
    choice = np.full(lengths.shape, len(_BRUSH_SIZES) - 1)
    for index in reversed(range(len(_BRUSH_SIZES) - 1)):  # the smallest size that holds the run
        fits = lengths <= _BRUSH_SIZES[index][0]
        field_bits[fits], choice[fits] = _BRUSH_SIZES[index][1], index
    widths = 3 + field_bits + 8
    codes = (((1 << 2 | choice) << field_bits | (lengths - 1)) << 8 | values).astype(np.uint64)
    header_widths = [32, 5] + [4] * len(_BRUSH_SIZES)
    header_codes = [flat.size * 4, 8 - 1] + [bits - 1 for _, bits in _BRUSH_SIZES]
    codes = np.concatenate((np.array(header_codes, np.uint64), codes))
    widths = np.concatenate((header_widths, widths)).astype(np.int64)
    # Every block's bits, most significant first, one byte per bit; then eight to a byte.
    firsts = np.cumsum(widths) - widths
    position = np.arange(int(widths.sum())) - np.repeat(firsts, widths)
    shift = (np.repeat(widths, widths) - 1 - position).astype(np.uint64)
    bits = ((np.repeat(codes, widths) >> shift) & np.uint64(1)).astype(np.uint8)
    # The SDK pads with 1 to 8 zero bits (a whole zero byte when the stream already ends on a byte): so does this.
    bits = np.concatenate((bits, np.zeros(8 - bits.size % 8, np.uint8)))
    return np.packbits(bits).tolist()
