"""The model replica: a Ray Serve deployment hosting one click predictor.

Each replica holds one copy of the weights, pinned to one torch thread (one CPU) or one GPU, a small cache of
decoded images and, per object being segmented, the clicks and prediction of the last request. A request that adds
one click to the cached clicks costs one prediction; anything else (a new object, an edited click history, a cache
miss) costs one prediction from the clicks alone, never a replay.

Requests for the same image go to the same replica: the image key is passed as Ray Serve's multiplexed model id,
so the router prefers the replica that already holds the image and its objects (the per-image state plays the role
of a multiplexed "model", loaded lazily and dropped least-recently-used).

Weights are swapped in place: `reconfigure` (Ray Serve calls it with the deployment's user_config) builds the new
predictor off to the side and replaces the reference; requests in flight finish on the old one.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from workers.model import Click, Prediction
from workers.model.image import as_rgb8

log = logging.getLogger(__name__)

IMAGES_PER_REPLICA = 16
OBJECTS_PER_IMAGE = 64


@dataclass
class SegmentRequest:
    """One object on one image. `clicks` in image pixels, first to last; `object_key` identifies the object and
    the annotator working on it, so two annotators never share state."""

    image_key: str
    object_key: str
    clicks: list[Click]


@dataclass
class SegmentResult:
    """`mask_bits`: np.packbits of the H x W bool mask (rows first), to keep the hop between processes small."""

    height: int
    width: int
    mask_bits: np.ndarray
    score: float
    model_version: str
    predict_ms: float
    incremental: bool  # True when the cached previous prediction was built on

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.mask_bits, count=self.height * self.width).reshape(self.height, self.width) > 0


@dataclass
class _ObjectState:
    clicks: list[Click]
    prediction: Prediction
    version: str


@dataclass
class _ImageState:
    rgb: np.ndarray | None = None
    objects: OrderedDict = field(default_factory=OrderedDict)


def mask_score(prob: np.ndarray, mask: np.ndarray) -> float:
    """Mean confidence inside the mask: how far the kept pixels are from the threshold."""
    return float(prob[mask].mean()) if mask.any() else 0.0


@serve.deployment(name="ClickModel", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class ClickModel:
    def __init__(self, checkpoint: str = "base", version: str = "base"):
        import torch

        torch.set_num_threads(1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._lock = threading.Lock()
        self._current_image: str | None = None
        self._load(checkpoint, version)

    def _load(self, checkpoint: str, version: str) -> None:
        from workers.model.predictor import load_predictor

        predictor = load_predictor(checkpoint)
        self._predictor, self._version = predictor, version
        self._current_image = None

    def reconfigure(self, config: dict) -> None:
        """user_config: {"checkpoint": path or "base", "version": name}."""
        checkpoint, version = config.get("checkpoint", "base"), config.get("version", "base")
        if version != getattr(self, "_version", None):
            t0 = time.perf_counter()
            with self._lock:
                self._load(checkpoint, version)
            log.info("serving model version %s (loaded in %.2f s)", version, time.perf_counter() - t0)

    def version(self) -> str:
        return self._version

    @serve.multiplexed(max_num_models_per_replica=IMAGES_PER_REPLICA)
    async def _image_state(self, image_key: str) -> _ImageState:
        return _ImageState()

    async def segment(self, request: SegmentRequest, image: np.ndarray | None = None) -> SegmentResult | None:
        """None when this replica does not hold the image and `image` was not given: send it again with it."""
        state = await self._image_state(serve.get_multiplexed_model_id() or request.image_key)
        if state.rgb is None:
            if image is None:
                return None
            state.rgb = as_rgb8(image)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._segment, state, request)

    def _segment(self, state: _ImageState, request: SegmentRequest) -> SegmentResult:
        with self._lock:
            predictor, version = self._predictor, self._version
            if self._current_image != request.image_key:
                predictor.set_image(state.rgb)
                self._current_image = request.image_key
            old = state.objects.get(request.object_key)
            prev, incremental = None, False
            if old is not None and old.version == version and old.clicks == request.clicks[:-1]:
                prev, incremental = old.prediction, True
            t0 = time.perf_counter()
            prediction = predictor.predict(request.clicks, prev)
            predict_ms = (time.perf_counter() - t0) * 1000
        state.objects[request.object_key] = _ObjectState(list(request.clicks), prediction, version)
        state.objects.move_to_end(request.object_key)
        while len(state.objects) > OBJECTS_PER_IMAGE:
            state.objects.popitem(last=False)
        h, w = prediction.mask.shape
        return SegmentResult(h, w, np.packbits(prediction.mask), mask_score(prediction.prob, prediction.mask),
                             version, predict_ms, incremental)
