"""The fine-tuning job, as it runs inside Ray: fine-tune a parent checkpoint on a snapshot of annotations, evaluate
parent and candidate on the validation images with the NoC protocol, and put the candidate in the object store.

Small objects (nuclei are about 19 px across) are where a domain differs most from the base data: the predictor's
first click sees the whole image and its zoom-in crop is at least `zoom_min_side` px, both of which leave such an
object a few network pixels wide, while the base model was trained on zoom-in frames that show an object at 1.3 to
2.2 times its size. So the job frames the domain by the size of its training objects (`model/framing.py`): the largest
zoom-in floor that the median object still spans a quarter of, and for objects under an eighth of their image a
first click that sees a box of twice that floor around it instead of the whole image. It trains on frames laid out
as the predictor will then frame them (InferenceFrames) and stores the framing in the candidate's predictor
settings. The gate compares what serves (the parent with its own settings) with what would serve (the candidate
with its own), so a framing that does not pay off is never promoted. (Choosing the framing by the parent's NoC
instead kept the parent's zoom-in floor: a model not yet trained at a new scale does worse there until it learns it.)

It knows nothing of the database or of promotion: the scheduler (orchestrator.scheduler) hands it a FinetuneSpec
(images by URI with their masks as COCO RLE, already split) and decides from the metrics it returns.

It runs as a plain Ray task asking for one CPU, with one torch and one OpenCV thread and the lowest CPU priority
(nice 19 and Linux's idle scheduling class), so the serving replicas beside it keep their latency; max_calls=1 gives
the task a fresh worker process that exits after it (the niceness and the memory go with it).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from integrations.images import ImageFetcher, ImageSettings
from integrations.objectstore import open_store
from workers.model.checkpoint import BASE_CHECKPOINT, load_checkpoint
from workers.model.data import LoadedImage, _object
from workers.model.evaluator import EvalResult, ObjectResult, evaluate_object
from workers.model.framing import InferenceFrames, framing_for
from workers.model.predictor import PredictorConfig, load_predictor
from workers.model.train import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass
class AnnotatedImage:
    uri: str
    masks: list[dict]  # COCO RLE: {"size": [h, w], "counts": str}


@dataclass
class FinetuneSpec:
    parent: str  # "base" (bundled), a checkpoint path every worker can read, or "store:<key>"
    out_key: str  # where the candidate goes in the object store
    store_url: str
    train: list[AnnotatedImage]
    val: list[AnnotatedImage]
    images: ImageSettings = field(default_factory=ImageSettings)
    s3_endpoint_url: str | None = None
    samples: int = 2000
    lr: float = 5e-4
    batch_size: int = 8
    size: int = 256
    min_area: int = 30  # pixels; nuclei are small (median about 280 px)
    eval_objects: int = 60  # validation objects at most (spread over the images), per version
    eval_clicks: int = 20
    zoom_floors: tuple[int, ...] = (200, 128, 64)  # zoom-in floors a domain may get, besides the parent's own
    seed: int = 0
    nice: int = 19


def finetune(spec: FinetuneSpec) -> dict:
    """Returns {"parent": summary, "candidate": summary, "train": train state, "seconds": {...}, "objects": {...}}."""
    if spec.nice:
        lower_priority(spec.nice)
    import cv2
    import torch

    # One thread each: OpenCV's own pool (warps, resizes, distance transforms) would otherwise spread the job
    # over every core and take CPU from the serving replicas beside it.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    fetcher = ImageFetcher(spec.images)
    train_images = [_loaded(fetcher, item, spec.min_area) for item in spec.train]
    train_images = [im for im in train_images if im.objects]
    val_images = [_loaded(fetcher, item, spec.min_area) for item in spec.val]
    if not train_images:
        raise ValueError(f"no training object of at least {spec.min_area} pixels in the snapshot")
    seconds["load"] = time.perf_counter() - t0
    store = open_store(spec.store_url, spec.s3_endpoint_url)
    with tempfile.TemporaryDirectory(prefix="cm-ft-") as tmp:
        parent = _parent_path(spec.parent, store, Path(tmp))
        payload = load_checkpoint(parent)
        predictor = {**PredictorConfig().to_dict(), **(payload.get("predictor") or {})}
        framing = framing_for(train_images, predictor["zoom_min_side"], spec.zoom_floors)
        predictor.update(zoom_min_side=framing["zoom_min_side"], first_click_side=framing["first_click_side"])
        cfg = TrainConfig(samples=spec.samples, batch_size=spec.batch_size, size=spec.size, lr=spec.lr,
                          warmup_samples=min(200, spec.samples // 10), data_workers=0, threads=1, seed=spec.seed,
                          checkpoint_every_s=1e9, net=payload["net"], predictor=predictor)
        out = Path(tmp) / "candidate.pt"
        t0 = time.perf_counter()
        frames = InferenceFrames([train_images], size=spec.size, min_side=predictor["zoom_min_side"],
                                 first_side=predictor["first_click_side"])
        state = train(frames, out, cfg, init=parent, progress=False)
        seconds["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        chosen = _spread(val_images, spec.eval_objects)
        old = validate(load_predictor(parent), chosen, spec.eval_clicks, "parent")
        new = validate(load_predictor(out), chosen, spec.eval_clicks, "candidate")
        seconds["evaluate"] = time.perf_counter() - t0
        _strip_optimizer(out)
        store.put_file(spec.out_key, out)
    return {"parent": old, "candidate": new, "train": state, "seconds": seconds, "framing": framing,
            "objects": {"train": sum(len(im.objects) for im in train_images),
                        "val": sum(len(objs) for _, objs in chosen)}}


def lower_priority(nice: int) -> None:
    """Nice the calling thread (the job computes on it alone) and, on Linux, put it in the idle scheduling class,
    which runs it only on CPU time that nothing else wants. Nice 19 alone still takes about 30 % of a core from a Ray
    worker at Ray's default niceness of 15 (scheduler weights 15 against 36); the idle class about 8 % (3 against
    36). Any process may lower its own priority: no privilege is needed."""
    os.nice(nice)
    if hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:  # a kernel without SCHED_IDLE: nice alone
            log.info("the fine-tuning job stays in the normal scheduling class: %s", exc)


def validate(predictor, images: list[tuple[np.ndarray, list[np.ndarray]]], max_clicks: int, name: str) -> dict:
    """The NoC protocol over (rgb, [gt masks]) pairs: the evaluator's summary (NoC@85, NoC@90, mIoU@k...)."""
    result = EvalResult(method=name, data="validation", max_clicks=max_clicks)
    for i, (rgb, masks) in enumerate(images):
        predictor.set_image(rgb)
        for j, gt in enumerate(masks):
            ious, clicks, secs, *more = evaluate_object(predictor, gt, None, max_clicks)
            result.objects.append(ObjectResult(str(i), str(j), ious, clicks, secs, *more))
    # NaN (a figure with nothing to average) is not JSON: PostgreSQL would refuse the metrics.
    return {k: None if isinstance(v, float) and v != v else v for k, v in result.summary().items()}


def split_by_image(uris: list[str], val_percent: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by image: an image is for validation when a hash of its URI falls in
    the first `val_percent` of 100 buckets. The same image always lands on the same side, so later jobs (with more
    data) never train on an earlier job's validation images. At least one image on each side when there are two."""
    import hashlib

    def bucket(uri: str) -> int:
        return int(hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) % 100

    ordered = sorted(set(uris), key=lambda u: (bucket(u), u))
    val = [u for u in ordered if bucket(u) < val_percent]
    train_ = [u for u in ordered if bucket(u) >= val_percent]
    if len(ordered) >= 2 and not val:
        val, train_ = ordered[:1], ordered[1:]
    elif len(ordered) >= 2 and not train_:
        val, train_ = ordered[:-1], ordered[-1:]
    return train_, val


def _loaded(fetcher: ImageFetcher, item: AnnotatedImage, min_area: int) -> LoadedImage:
    from integrations.coco import check_counts, decode
    from integrations.masks import MaskError

    rgb = np.ascontiguousarray(fetcher.fetch(item.uri))
    objects = []
    for rle in item.masks:
        # Stored RLE is checked before pycocotools sees it: its decoder trusts the runs, and corrupt ones have
        # crashed the process (heap corruption) or decoded to garbage. A corrupt mask is left out, not the job.
        height, width = rle["size"]
        try:
            check_counts(rle["counts"], height, width)
        except MaskError as exc:
            log.warning("a stored mask of %s is left out: %s", item.uri, exc)
            continue
        mask = decode(rle["counts"], height, width).astype(bool)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"a mask of {item.uri} is {mask.shape[::-1]}, the image {rgb.shape[1::-1]}")
        if mask.sum() >= min_area:
            objects.append(_object(mask))
    return LoadedImage(rgb, objects)


def _spread(images: list[LoadedImage], limit: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """At most `limit` objects, taken round-robin over the images so that every image counts."""
    queues = [list(im.objects) for im in images]
    chosen: list[list[np.ndarray]] = [[] for _ in images]
    taken = 0
    while taken < limit and any(queues):
        for i, q in enumerate(queues):
            if q and taken < limit:
                chosen[i].append(q.pop(0).paste(images[i].rgb.shape[:2]))
                taken += 1
    return [(im.rgb, masks) for im, masks in zip(images, chosen) if masks]


def _parent_path(parent: str, store, tmp: Path) -> Path:
    if parent == "base":
        return BASE_CHECKPOINT
    if parent.startswith("store:"):
        path = tmp / "parent.pt"
        store.get_file(parent[len("store:"):], path)
        return path
    return Path(parent)


def _strip_optimizer(path: Path) -> None:
    """Serving never needs the optimizer state: leave it out of the stored candidate (about half its size)."""
    import torch

    payload = load_checkpoint(path)
    payload.pop("optimizer", None)
    tmp = path.with_suffix(".strip")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def remote_finetune():
    """The Ray task (imported lazily: the model package and tests need no Ray)."""
    import ray

    return ray.remote(num_cpus=1, max_calls=1, max_retries=0)(finetune)

