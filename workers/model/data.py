"""Training samples: dataset folders loaded into memory once, then endless augmented crops around objects.

A sample is one object in a square `size` x `size` frame: the RGB crop (uint8), its target mask, the union of the
image's other objects (a source of negative clicks), and the initial clicks. Two kinds of frame, as the predictor
sees them: a zoom-in frame around the object (its box enlarged 1.3-2.2x) and a wide frame of most of the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .clicks import Click
from .datasets import read_image, read_mask, scan
from .sampler import initial_clicks


@dataclass
class ObjectMask:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in image pixels
    mask: np.ndarray  # bool, the box's rows and columns

    def area(self) -> int:
        return int(self.mask.sum())

    def paste(self, shape: tuple[int, int]) -> np.ndarray:
        full = np.zeros(shape, bool)
        x0, y0, x1, y1 = self.box
        full[y0:y1, x0:x1] = self.mask
        return full


@dataclass
class LoadedImage:
    rgb: np.ndarray
    objects: list[ObjectMask]


@dataclass
class Sample:
    rgb: np.ndarray  # size x size x 3 uint8
    target: np.ndarray  # size x size bool
    others: np.ndarray  # size x size bool
    clicks: list[Click]


def _object(mask: np.ndarray) -> ObjectMask:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return ObjectMask((int(x0), int(y0), int(x1), int(y1)), mask[y0:y1, x0:x1].copy())


def load_folder(root: str | Path, min_area: int = 400, holdout_every: int = 0, progress: bool = True
                ) -> list[LoadedImage]:
    """The images of a dataset folder with their masks of at least `min_area` pixels. With `holdout_every` N, every
    Nth image in name order (the first included) is left out: the images that `evaluator.evaluate(every=N)` takes,
    so a run can be validated on images it never trained on."""
    entries = scan(root)
    if holdout_every:
        entries = [e for i, e in enumerate(entries) if i % holdout_every != 0]
    out = []
    for entry in tqdm(entries, desc=f"loading {Path(root).name}", disable=not progress, leave=False):
        objects = [_object(m) for m in map(read_mask, entry.mask_paths) if m.sum() >= min_area]
        if objects:
            out.append(LoadedImage(read_image(entry.image_path), objects))
    return out


class SampleGenerator:
    """Endless random samples from several loaded folders, each drawn with its own weight. Samples for a first
    click may be drawn with weights of their own (`first_click_weights`): a first click on its own should mean the
    whole object, which folders of object parts (scene regions, garments) teach against."""

    def __init__(self, folders: list[list[LoadedImage]], weights: list[float] | None = None, size: int = 256,
                 zoom_prob: float = 0.65, merge_prob: float = 0.15, first_click_weights: list[float] | None = None):
        if not folders or not all(folders):
            raise ValueError("every training folder needs at least one image with a mask")
        self.folders = folders
        self.weights = sampling_weights(weights, len(folders))
        self.first_click_weights = sampling_weights(first_click_weights or weights, len(folders))
        self.size = size
        self.zoom_prob = zoom_prob
        self.merge_prob = merge_prob

    def sample(self, rng: np.random.Generator, first_click: bool = False) -> Sample:
        weights = self.first_click_weights if first_click else self.weights
        while True:
            folder = self.folders[rng.choice(len(self.folders), p=weights)]
            item = folder[rng.integers(len(folder))]
            s = self._try(rng, item)
            if s is not None:
                return s

    def _try(self, rng: np.random.Generator, item: LoadedImage) -> Sample | None:
        h, w = item.rgb.shape[:2]
        k = rng.integers(len(item.objects))
        obj = item.objects[k]
        target = obj.paste((h, w))
        if rng.random() < self.merge_prob and len(item.objects) > 1:
            j = rng.integers(len(item.objects))
            if j != k and _boxes_touch(obj.box, item.objects[j].box):
                target |= item.objects[j].paste((h, w))
        others = np.zeros((h, w), bool)
        for j, o in enumerate(item.objects):
            if j != k:
                x0, y0, x1, y1 = o.box
                others[y0:y1, x0:x1] |= o.mask
        others &= ~target

        matrix = self.frame(rng, target, (h, w))
        size = self.size
        rgb = cv2.warpAffine(item.rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        warp = lambda m: cv2.warpAffine(m.astype(np.uint8) * 255, matrix, (size, size), flags=cv2.INTER_LINEAR) > 127
        t = warp(target)
        if t.sum() < 60:
            return None
        rgb = _colour_jitter(rng, rgb)
        o = warp(others)
        return Sample(rgb, t, o, initial_clicks(rng, t, o))

    def frame(self, rng: np.random.Generator, target: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """2 x 3 affine matrix from image pixels to the sample frame (scale, shift, optional mirror). A generator
        that frames objects another way (framing.InferenceFrames) overrides this."""
        ys, xs = np.nonzero(target)
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        if rng.random() < self.zoom_prob:
            side = max(bx1 - bx0, by1 - by0, 16) * rng.uniform(1.3, 2.2)
            cx += rng.uniform(-0.12, 0.12) * side
            cy += rng.uniform(-0.12, 0.12) * side
        else:
            side = max(shape) * rng.uniform(0.6, 1.1)
            cx += rng.uniform(-0.25, 0.25) * side
            cy += rng.uniform(-0.25, 0.25) * side
        scale = self.size / side
        flip = rng.random() < 0.5
        sx = -scale if flip else scale
        # frame x = sx * (x - cx) + size / 2, frame y = scale * (y - cy) + size / 2
        return np.array([[sx, 0, self.size / 2 - sx * cx], [0, scale, self.size / 2 - scale * cy]], np.float64)


def sampling_weights(weights: list[float] | None, n: int) -> np.ndarray:
    """The sampling weights of `n` folders, summing to 1 (equal when None); ValueError unless they are n numbers,
    none negative, not all zero."""
    w = np.asarray(weights or [1.0] * n, float)
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"expected {n} non-negative sampling weights, not all zero; got {weights}")
    return w / w.sum()


def _boxes_touch(a, b, margin: int = 2) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def _colour_jitter(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    img = rgb.astype(np.float32)
    if rng.random() < 0.05:
        img[:] = img.mean(axis=2, keepdims=True)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * rng.uniform(0.6, 1.4)  # saturation
    img = (img - img.mean()) * rng.uniform(0.7, 1.3) + img.mean()  # contrast
    img = img + rng.uniform(-25, 25) + rng.uniform(-8, 8, size=3)  # brightness, colour cast
    return np.clip(img, 0, 255).astype(np.uint8)
