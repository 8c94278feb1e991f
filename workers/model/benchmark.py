"""Per-click latency of a predictor, as an annotator meets it: set the image, then click on objects as the NoC
protocol's simulated annotator does, timing each `predict` (network, refinement, threshold, full-size mask)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .clicker import Clicker
from .datasets import read_image, read_mask, scan
from .predictor_base import Predictor


def percentiles(seconds: list[float]) -> dict:
    a = np.asarray(seconds) * 1000.0
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def click_latency(predictor: Predictor, data_dir: str | Path, every: int = 5, clicks_per_object: int = 5,
                  repeats: int = 1, progress: bool = True) -> dict:
    """Time every predict call on every `every`-th image of a dataset folder. Returns percentiles over all
    clicks, over first clicks (each image's first click after set_image) and of set_image itself."""
    entries = [e for e in scan(data_dir)[::every] if e.mask_paths]
    all_s, first_s, later_s, set_s = [], [], [], []
    from tqdm import tqdm

    for entry in tqdm(entries * repeats, desc="latency", unit="image", disable=not progress):
        image = read_image(entry.image_path)
        t0 = time.perf_counter()
        predictor.set_image(image)
        set_s.append(time.perf_counter() - t0)
        for k, mask_path in enumerate(entry.mask_paths):
            clicker, prev = Clicker(read_mask(mask_path)), None
            for i in range(clicks_per_object):
                if clicker.click(None if prev is None else prev.mask) is None:
                    break
                t0 = time.perf_counter()
                prev = predictor.predict(list(clicker.clicks), prev)
                dt = time.perf_counter() - t0
                all_s.append(dt)
                (first_s if i == 0 and k == 0 else later_s).append(dt)
    return {"all": percentiles(all_s), "first_click": percentiles(first_s), "later_clicks": percentiles(later_s),
            "set_image": percentiles(set_s), "images": len(entries), "repeats": repeats}
