"""Reading folders in the shared dataset layout: `images/<stem>.<jpg|png|webp>` and `masks/<stem>[_<anything>].png`.

A mask belongs to the image whose stem equals its own stem or is followed in it by `_`. Masks are 0/255, one object
each. An optional `gt_raw/<mask name>` holds the same mask with a 128 band of pixels that scoring ignores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # WebP: training bundles (bundle.py)


@dataclass
class ImageEntry:
    """One image and the paths of its object masks (sorted by name)."""

    image_path: Path
    mask_paths: list[Path] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return self.image_path.stem


def scan(root: str | Path) -> list[ImageEntry]:
    """List the images of a dataset folder with their masks, sorted by stem. Raises FileNotFoundError if the
    folder has no `images/` subfolder."""
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{root} is not a dataset folder: it has no images/ subfolder")
    entries = {p.stem: ImageEntry(p) for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if mask_dir.is_dir():
        for m in sorted(mask_dir.glob("*.png")):
            stem = m.stem
            owner = stem if stem in entries else None
            # Longest image stem that the mask name starts with, followed by "_".
            if owner is None:
                cut = stem.rfind("_")
                while cut > 0 and owner is None:
                    if stem[:cut] in entries:
                        owner = stem[:cut]
                    cut = stem.rfind("_", 0, cut)
            if owner is not None:
                entries[owner].mask_paths.append(m)
    return [entries[k] for k in sorted(entries)]


def read_image(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """H x W bool."""
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise OSError(f"cannot decode mask {path}")
    return m > 127


def read_ignore(mask_path: str | Path) -> np.ndarray | None:
    """H x W bool of pixels to leave out of scoring (the 128 band of `gt_raw/`), or None if there is no raw mask."""
    raw = Path(mask_path).parent.parent / "gt_raw" / Path(mask_path).name
    if not raw.exists():
        return None
    m = cv2.imread(str(raw), cv2.IMREAD_GRAYSCALE)
    return (m > 0) & (m < 255)
