"""The NoC evaluation protocol of interactive segmentation (as in RITM and its successors), the same for every
predictor.

For each object (one mask file) of a dataset folder: up to `max_clicks` clicks placed by clicker.Clicker, each
followed by `predictor.predict(clicks, prev)` with the previous Prediction fed back; the mask (prob > 0.49) is scored
by IoU against the ground truth with ignored pixels (gt_raw's 128 band) left out.

Every object gets a curve of exactly `max_clicks` IoUs, so that mean IoU after k clicks is over all objects. If the
prediction has no error left (outside ignored and already clicked pixels) the annotator stops: no further click
is placed and the last IoU is repeated, which is the IoU of the mask the annotator keeps.

Timing: wall-clock seconds of each `predict` call, and the process CPU seconds of it (steadier when other work shares
the machine; equal to wall time for a one-thread predictor on an idle core). The first click of the first object of
an image also carries that image's `set_image` time, since an annotator waits for both.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .clicker import Clicker
from .datasets import read_ignore, read_image, read_mask, scan
from .predictor_base import Predictor

MAX_CLICKS = 20


def iou(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two H x W bool masks, leaving out `ignore` pixels; 1.0 when both are empty."""
    if ignore is not None:
        gt, pred = gt & ~ignore, pred & ~ignore
    union = np.count_nonzero(gt | pred)
    return 1.0 if union == 0 else np.count_nonzero(gt & pred) / union


@dataclass
class ObjectResult:
    """One object: IoU after clicks 1..max_clicks, the clicks made as (x, y, positive), and the wall-clock and CPU
    seconds of each."""

    image: str
    mask: str
    ious: list[float]
    clicks: list[tuple[float, float, bool]]
    seconds: list[float]
    cpu_seconds: list[float] = field(default_factory=list)


def noc(curve: list[float] | np.ndarray, threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """Number of clicks of the first IoU >= threshold in `curve` (click 1 first); max_clicks if never reached."""
    hits = np.flatnonzero(np.asarray(curve) >= threshold)
    return int(hits[0]) + 1 if hits.size else max_clicks


@dataclass
class EvalResult:
    """All objects of one method on one dataset, with the summary metrics of the protocol."""

    method: str
    data: str
    max_clicks: int = MAX_CLICKS
    objects: list[ObjectResult] = field(default_factory=list)
    set_image_seconds: list[float] = field(default_factory=list)

    def curves(self) -> np.ndarray:
        """N x max_clicks IoUs."""
        return np.array([o.ious for o in self.objects], dtype=np.float64).reshape(-1, self.max_clicks)

    def noc(self, threshold: float) -> float:
        """Mean number of clicks to reach `threshold` (max_clicks counted for objects that never do)."""
        return float(np.mean([noc(o.ious, threshold, self.max_clicks) for o in self.objects]))

    def nof(self, threshold: float) -> int:
        """Number of objects that never reach `threshold` within max_clicks."""
        return int(sum(max(o.ious) < threshold for o in self.objects))

    def miou(self) -> list[float]:
        """Mean IoU after 1..max_clicks clicks (index k-1 for k clicks)."""
        return self.curves().mean(axis=0).tolist()

    def summary(self) -> dict:
        secs = [s for o in self.objects for s in o.seconds]
        cpu = [s for o in self.objects for s in o.cpu_seconds]
        first = [o.seconds[0] for o in self.objects if o.seconds]
        miou = self.miou()
        return {
            "method": self.method,
            "objects": len(self.objects),
            "NoC@85": self.noc(0.85),
            "NoC@90": self.noc(0.90),
            "NoF@85": self.nof(0.85),
            "NoF@90": self.nof(0.90),
            "mIoU@1": miou[0],
            "mIoU@3": miou[2] if len(miou) > 2 else float("nan"),
            "mIoU@5": miou[4] if len(miou) > 4 else float("nan"),
            "s/click": float(np.mean(secs)) if secs else float("nan"),
            "s/click median": float(np.median(secs)) if secs else float("nan"),
            "first-click s": float(np.mean(first)) if first else float("nan"),
            "cpu s/click": float(np.mean(cpu)) if cpu else float("nan"),
            "set_image s": float(np.mean(self.set_image_seconds)) if self.set_image_seconds else float("nan"),
        }

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "data": self.data,
            "max_clicks": self.max_clicks,
            "summary": self.summary(),
            "miou_curve": self.miou(),
            "set_image_seconds": self.set_image_seconds,
            "objects": [asdict(o) for o in self.objects],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def evaluate_object(
    predictor: Predictor, gt: np.ndarray, ignore: np.ndarray | None, max_clicks: int = MAX_CLICKS
) -> tuple[list[float], list[tuple[float, float, bool]], list[float], list[float]]:
    """Run the protocol on one object of the image already given to `predictor.set_image`.

    Returns (ious, clicks, seconds, cpu_seconds): ious has exactly max_clicks entries; the others one per click made.
    """
    clicker = Clicker(gt, ignore)
    prev = None
    ious: list[float] = []
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    for _ in range(max_clicks):
        if clicker.click(None if prev is None else prev.mask) is None:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        prev = predictor.predict(list(clicker.clicks), prev)
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(time.process_time() - c0)
        ious.append(iou(gt, prev.mask, ignore))
    # No error left: the annotator stops and keeps the last mask (an empty gt cannot happen in the datasets).
    ious += [ious[-1] if ious else 1.0] * (max_clicks - len(ious))
    clicks = [(c.x, c.y, c.positive) for c in clicker.clicks]
    return ious, clicks, seconds, cpu_seconds


def evaluate(
    predictor: Predictor,
    data_dir: str | Path,
    method: str | None = None,
    max_clicks: int = MAX_CLICKS,
    every: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate `predictor` on every object of a dataset folder (layout of datasets.scan).

    `every`: take every Nth image (sorted by name), for subsets; `limit`: at most this many images after that.
    Every mask of an image is one object; set_image is called once per image.
    """
    entries = [e for e in scan(data_dir)[:: max(1, every)] if e.mask_paths]
    if limit is not None:
        entries = entries[:limit]
    result = EvalResult(method=method or getattr(predictor, "name", "predictor"), data=str(data_dir),
                        max_clicks=max_clicks)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(e.mask_paths) for e in entries), desc=result.method, unit="obj")
    for entry in entries:
        image = read_image(entry.image_path)
        t0, c0 = time.perf_counter(), time.process_time()
        predictor.set_image(image)
        set_s, set_cpu = time.perf_counter() - t0, time.process_time() - c0
        result.set_image_seconds.append(set_s)
        for i, mask_path in enumerate(entry.mask_paths):
            gt = read_mask(mask_path)
            ious, clicks, seconds, cpu = evaluate_object(predictor, gt, read_ignore(mask_path), max_clicks)
            if i == 0 and seconds:
                seconds[0] += set_s
                cpu[0] += set_cpu
            result.objects.append(ObjectResult(entry.image_path.name, mask_path.name, ious, clicks, seconds, cpu))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(last_iou=f"{ious[-1]:.3f}")
    if bar is not None:
        bar.close()
    return result
