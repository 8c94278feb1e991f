"""Training data packed small enough to travel with a training run to a GPU machine lent for minutes.

    summary = pack_bundle([".../train/bsds500", ".../train/duts_tr"], "runs/bundle.zip", max_side=320)

The zip holds each folder in the shared layout (`<folder>/images/<stem>.webp`, `<folder>/masks/<mask name>`): images
shrunk to `max_side` on their longer side and re-encoded as WebP (a quarter smaller than JPEG at the same quality
here), masks shrunk alike and stored as 1-bit PNG. The three training folders come to about 50 MiB at the defaults,
which leaves room beside the repository under a 64 MiB transfer. Every
image keeps its name, held-out ones included, so `load_folder(holdout_every=N)` leaves out the same images of the
unpacked bundle as of the original folder. Unpack with `python3 -m zipfile -e bundle.zip DIR`.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .datasets import read_image, read_mask, scan

MAX_BYTES = 64 * 2**20


@dataclass
class BundleSummary:
    folders: dict[str, int]  # folder name -> images
    masks: int
    bytes: int


def _shrunk(array: np.ndarray, max_side: int) -> np.ndarray:
    h, w = array.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return array
    return cv2.resize(array, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _encoded(ext: str, image: np.ndarray, params: list[int]) -> bytes:
    ok, data = cv2.imencode(ext, image, params)
    if not ok:
        raise OSError(f"could not encode {ext}")
    return data.tobytes()


def pack_bundle(folders: list[str | Path], out: str | Path, max_side: int = 256, quality: int = 70,
                max_bytes: int = MAX_BYTES, progress: bool = True) -> BundleSummary:
    """Write the bundle; raises ValueError (and leaves no file) if it comes out larger than `max_bytes`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    counts, masks = {}, 0
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as bundle:  # JPEG and PNG are compressed already
        for folder in map(Path, folders):
            entries = scan(folder)
            for entry in tqdm(entries, desc=f"packing {folder.name}", disable=not progress, leave=False):
                rgb = _shrunk(read_image(entry.image_path), max_side)
                bundle.writestr(f"{folder.name}/images/{entry.stem}.webp", _encoded(
                    ".webp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality]))
                for path in entry.mask_paths:
                    mask = _shrunk(read_mask(path).astype(np.uint8) * 255, max_side) > 127
                    bundle.writestr(f"{folder.name}/masks/{path.name}", _encoded(
                        ".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1]))
                masks += len(entry.mask_paths)
            counts[folder.name] = len(entries)
    size = tmp.stat().st_size
    if size > max_bytes:
        tmp.unlink()
        raise ValueError(f"the bundle came to {size / 2**20:.1f} MiB, over {max_bytes / 2**20:.0f} MiB: give a "
                         f"smaller --max-side or --quality")
    tmp.replace(out)
    return BundleSummary(counts, masks, size)
