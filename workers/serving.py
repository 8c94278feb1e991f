"""The model replica: a Ray Serve deployment hosting one click predictor.

Each replica holds one copy of the weights, pinned to one torch thread (one CPU) or one GPU, a small cache of
decoded images and, per object being segmented, the clicks and prediction of the last request. That state is a
cache, never the only copy: the answer to a click history is the chain of predictions over it (each click's
prediction fed to the next), so any replica answers any request the same, whether it has seen the object or not.
A request that adds one click to the cached clicks costs one prediction; anything else (a new object, an edited
click history, a replica that never saw the object) replays the chain, one prediction per click (at most
REPLAY_CLICKS: a longer history on a miss is chained over its last REPLAY_CLICKS clicks, as a bound on the work
one request can ask for).

Requests for the same image go to the same replica: the image key is passed as Ray Serve's multiplexed model id,
so the router prefers the replica that already holds the image and its objects (the per-image state plays the role
of a multiplexed "model", loaded lazily and dropped least-recently-used).

Several model versions per replica: each Label Studio project has its own line of fine-tuned versions, and every
request names the version its project serves (the ingress reads it from the registry) with its checkpoint's key
in the object store. A replica keeps a few predictors by version (least recently used dropped, the base always
kept). A version it lacks is loaded in a background thread while the project's requests go on being answered by
the version that last answered them, so a promotion or rollback never makes a request slow or fail; every answer
says which version gave it. Only a project's very first request on a replica waits for its version to load, and
it waits off the prediction thread: other projects' clicks are answered meanwhile.

The base version is swapped in place: `reconfigure` (Ray Serve calls it with the deployment's user_config) builds
the new predictor off to the side and replaces the reference; requests in flight finish on the old one.
"""
from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from workers.model import Click, Prediction
from workers.model.clicks import scaled_into
from workers.model.image import as_rgb8

log = logging.getLogger(__name__)

IMAGES_PER_REPLICA = 16
OBJECTS_PER_IMAGE = 64
VERSIONS_PER_REPLICA = 4  # fine-tuned predictors kept besides the base (a small net is a few MB)
REPLAY_CLICKS = 64  # annotators rarely go past 20 clicks on an object; Label Studio may send up to 1,000
FIRST_LOAD_TIMEOUT_S = 60.0
RETRY_FAILED_LOAD_S = 30.0  # a version that failed to load is not tried again sooner (no load per request)


@dataclass
class SegmentRequest:
    """One object on one image. `clicks` in image pixels, first to last; `object_key` identifies the object and
    the annotator working on it, so two annotators never share state."""

    image_key: str
    object_key: str
    clicks: list[Click]
    model_version: str | None = None  # what the project serves (None: the base)
    checkpoint_key: str | None = None  # that version's checkpoint in the object store (None: the base)
    project: int | None = None
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1): a smart rectangle bounding the object
    size: tuple[int, int] | None = None  # (width, height) the clicks and box are measured in; None: the image's own


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
    replica: str = ""  # the Serve replica that answered (for the ingress's per-replica metrics)

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.mask_bits, count=self.height * self.width).reshape(self.height, self.width) > 0


@dataclass
class _ObjectState:
    clicks: list[Click]  # as requested (in the request's frame), to compare with the next request
    prediction: Prediction
    version: str
    box: tuple | None = None


def in_image(request: SegmentRequest, width: int, height: int) -> tuple[list[Click], tuple | None]:
    """The request's clicks and box in the pixels of the image the replica holds: Label Studio measures them in
    the image's size as it knows it, which need not be the decoded size."""
    if request.size is None or tuple(request.size) == (width, height):
        return list(request.clicks), request.box
    sx, sy = width / request.size[0], height / request.size[1]
    clicks = scaled_into(list(request.clicks), sx, sy, width, height)
    box = None if request.box is None else (request.box[0] * sx, request.box[1] * sy,
                                             request.box[2] * sx, request.box[3] * sy)
    return clicks, box


@dataclass
class _ImageState:
    rgb: np.ndarray | None = None
    objects: OrderedDict = field(default_factory=OrderedDict)


def replay(predictor, clicks: list[Click], box) -> Prediction:
    """The chain of predictions over a click history: what a replica that saw every click would hold."""
    start = max(0, len(clicks) - REPLAY_CLICKS)
    prediction = None
    for k in range(start + 1, len(clicks) + 1):
        prediction = predictor.predict(clicks[:k], prediction, box=box)
    return prediction


def _replica_name() -> str:
    """This replica's id in Ray Serve ("" outside Serve, e.g. in tests that build the class directly)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return ""


def rss_bytes() -> int:
    """This process's resident memory (Linux), for stats()."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def mask_score(prob: np.ndarray, mask: np.ndarray) -> float:
    """Mean confidence inside the mask: how far the kept pixels are from the threshold."""
    return float(prob[mask].mean()) if mask.any() else 0.0


@serve.deployment(name="ClickModel", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class ClickModel:
    def __init__(self, checkpoint: str = "base", version: str = "base", store_url: str | None = None,
                 s3_endpoint_url: str | None = None):
        import cv2
        import torch

        # One thread each, as the replica asks Ray for one CPU: OpenCV's own pool would take the other cores.
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        import ray

        # A replica placed with a GPU (orchestrator.placement) computes on it; Ray sets CUDA_VISIBLE_DEVICES to it.
        self._device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
        self._lock = threading.Lock()  # one prediction at a time
        self._models_lock = threading.Lock()  # the tables below
        self._store_url, self._s3_endpoint_url = store_url, s3_endpoint_url
        self._replica = _replica_name()
        self._predictors: OrderedDict = OrderedDict()  # version -> predictor, least recently used first
        self._loading: dict = {}  # version -> Future of its load
        self._failed: dict = {}  # version -> monotonic time of its last failed load
        self._project_version: dict = {}  # project -> the version that last answered it here
        self._current_image: dict = {}  # version -> image key its predictor holds
        self._states = weakref.WeakValueDictionary()  # image key -> state, while Serve keeps it (for stats())
        self._load(checkpoint, version)

    def _load(self, checkpoint: str, version: str) -> None:
        from workers.model.predictor import load_predictor

        predictor = load_predictor(checkpoint, device=self._device)
        with self._models_lock:
            self._predictors.pop(getattr(self, "_version", None), None)
            self._predictors[version] = predictor
            self._version = version

    def reconfigure(self, config: dict) -> None:
        """user_config: {"checkpoint": path or "base", "version": name}: the base version."""
        checkpoint, version = config.get("checkpoint", "base"), config.get("version", "base")
        if version != getattr(self, "_version", None):
            t0 = time.perf_counter()
            self._load(checkpoint, version)
            log.info("serving base version %s (loaded in %.2f s)", version, time.perf_counter() - t0)

    def version(self) -> str:
        return self._version

    def versions(self) -> list[str]:
        """The versions this replica holds, least recently used first."""
        with self._models_lock:
            return list(self._predictors)

    def stats(self) -> dict:
        """What this replica holds (to watch its memory stay within IMAGES_PER_REPLICA and OBJECTS_PER_IMAGE)."""
        import ray

        states = list(self._states.values())
        objects = [o for s in states for o in list(s.objects.values())]
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "rss_bytes": rss_bytes(),
                "images": len(states), "image_bytes": sum(s.rgb.nbytes for s in states if s.rgb is not None),
                "objects": len(objects), "max_objects_per_image": max((len(s.objects) for s in states), default=0),
                "object_bytes": sum(o.prediction.prob.nbytes + o.prediction.mask.nbytes for o in objects),
                "versions": len(self._predictors)}

    # ---------------------------------------------------------------------------------------- model versions

    def _pick(self, request: SegmentRequest) -> tuple[object, str]:
        """(predictor, version) for the request, without waiting: its version when held, else the project's last
        one while the wanted one loads, the base if a load failed lately; for a project new to this replica,
        (the load's future, version) to wait on."""
        wanted = request.model_version or self._version
        with self._models_lock:
            if wanted in self._predictors:
                self._predictors.move_to_end(wanted)
                return self._predictors[wanted], wanted
            if request.checkpoint_key is None:  # a base this replica does not have: answer with its own
                return self._predictors[self._version], self._version
            fallback = self._project_version.get(request.project)
            fallback = fallback if fallback in self._predictors else None
            future = self._loading.get(wanted)
            if future is None and time.monotonic() - self._failed.get(wanted, -1e9) < RETRY_FAILED_LOAD_S:
                version = fallback or self._version
                return self._predictors[version], version
            if future is None:
                future = self._loading[wanted] = self._loader.submit(self._load_version, wanted,
                                                                     request.checkpoint_key)
            if fallback is not None:
                return self._predictors[fallback], fallback
        return future, wanted

    async def _predictor_for(self, request: SegmentRequest):
        """(predictor, version) for the request. A project new to this replica waits here for its version to load,
        on the event loop, so the prediction thread goes on answering every other project meanwhile."""
        picked, version = self._pick(request)
        if not isinstance(picked, Future):
            return picked, version
        try:  # shielded: a request that stops waiting must not cancel the load that others wait for
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(picked)), FIRST_LOAD_TIMEOUT_S), version
        except Exception as exc:
            log.error("version %s could not be loaded (%s): answering with %s", version, exc, self._version)
            with self._models_lock:
                return self._predictors[self._version], self._version

    def _load_version(self, version: str, key: str):
        from integrations.objectstore import open_store
        from workers.model.predictor import load_predictor

        try:
            t0 = time.perf_counter()
            if not self._store_url:
                raise RuntimeError("no object store configured for this deployment")
            with tempfile.TemporaryDirectory(prefix="cm-ckpt-") as tmp:
                path = f"{tmp}/model.pt"
                open_store(self._store_url, self._s3_endpoint_url).get_file(key, path)
                predictor = load_predictor(path, device=self._device)
            with self._models_lock:
                self._predictors[version] = predictor
                extra = [v for v in self._predictors if v != self._version]
                for old in extra[:max(0, len(extra) - VERSIONS_PER_REPLICA)]:
                    del self._predictors[old]
                    self._current_image.pop(old, None)
            log.info("loaded version %s in %.2f s", version, time.perf_counter() - t0)
            return predictor
        except Exception:
            with self._models_lock:
                self._failed[version] = time.monotonic()
            raise
        finally:
            with self._models_lock:
                self._loading.pop(version, None)

    # ---------------------------------------------------------------------------------------------- requests

    @serve.multiplexed(max_num_models_per_replica=IMAGES_PER_REPLICA)
    async def _image_state(self, image_key: str) -> _ImageState:
        state = self._states[image_key] = _ImageState()
        return state

    async def hold(self, image: np.ndarray) -> None:
        """Keep an image for the clicks to come on it (sent when its task is opened, before the first click)."""
        state = await self._image_state(serve.get_multiplexed_model_id())
        if state.rgb is None:
            state.rgb = as_rgb8(image)

    async def segment(self, request: SegmentRequest, image: np.ndarray | None = None) -> SegmentResult | None:
        """None when this replica does not hold the image and `image` was not given: send it again with it."""
        state = await self._image_state(serve.get_multiplexed_model_id() or request.image_key)
        if state.rgb is None:
            if image is None:
                return None
            state.rgb = as_rgb8(image)
        return await self._answer(state, request)

    async def _answer(self, state: _ImageState, request: SegmentRequest) -> SegmentResult:
        predictor, version = await self._predictor_for(request)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._segment, state, request, predictor, version)

    def _segment(self, state: _ImageState, request: SegmentRequest, predictor, version: str) -> SegmentResult:
        """One prediction, on the replica's prediction thread."""
        with self._lock:
            if self._current_image.get(version) != request.image_key:
                predictor.set_image(state.rgb)
                self._current_image[version] = request.image_key
            old = state.objects.get(request.object_key)
            same_object = old is not None and old.version == version and old.box == request.box
            t0 = time.perf_counter()
            if same_object and old.clicks == request.clicks:  # the same request again: the same answer
                prediction, incremental = old.prediction, True
            else:
                incremental = same_object and old.clicks == request.clicks[:-1]
                clicks, box = in_image(request, state.rgb.shape[1], state.rgb.shape[0])
                if incremental:
                    prediction = predictor.predict(clicks, old.prediction, box=box)
                else:
                    prediction = replay(predictor, clicks, box)
            predict_ms = (time.perf_counter() - t0) * 1000
        if request.project is not None:
            self._project_version[request.project] = version
        state.objects[request.object_key] = _ObjectState(list(request.clicks), prediction, version, request.box)
        state.objects.move_to_end(request.object_key)
        while len(state.objects) > OBJECTS_PER_IMAGE:
            state.objects.popitem(last=False)
        h, w = prediction.mask.shape
        return SegmentResult(h, w, np.packbits(prediction.mask), mask_score(prediction.prob, prediction.mask),
                             version, predict_ms, incremental, self._replica)
