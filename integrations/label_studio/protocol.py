"""Requests from Label Studio into plain dataclasses, and the answers it expects back.

Conventions: region coordinates arrive in percent of the image (0-100); everything here hands out image pixels at
the size Label Studio reports (original_width x original_height), x the column and y the row, as workers.model's
Click. Bodies are untrusted: every field read is checked and any problem raises ProtocolError with a message that is
safe to show. Only what is needed is read: the task's previous predictions, drafts and annotations (full brush RLE)
are never walked.

Objects: in an interactive request, the smart regions of one label form one object (Label Studio sends all smart
regions of the same type and label on the image, so each request carries the object's whole click history). Each
object gets a `key` for per-object state that stays the same as clicks are added (it is built from the object's
first region id, which the annotator's browser generates) and differs between projects, tasks, users and labels.
"""
from __future__ import annotations

import hashlib
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from integrations.masks import mask_to_brush
from integrations.polygons import PolygonOptions, from_percent, mask_to_polygons, to_percent
from workers.model.clicks import Click, scaled_into

from .errors import ProtocolError
from .labeling_config import KEYPOINTS, RECTANGLES, Answer, LabelingConfig, parse_label_config

MAX_BODY_BYTES = 64 * 1024 * 1024  # interactive bodies carry every earlier prediction's RLE: generous, bounded
MAX_TASKS = 10_000
MAX_REGIONS = 1_000  # smart regions in one interactive context
MAX_SIDE = 100_000  # sanity bound on original_width/height; the real pixel cap is the image fetcher's
MAX_URI_CHARS = 8_192
MAX_ID_CHARS = 256
EDGE_SLACK = 1e-3  # percent: Label Studio's own float arithmetic can land a hair outside 0-100


@dataclass(frozen=True)
class Task:
    id: int
    image_uri: str  # unresolved, as in task.data: "/data/upload/...", "s3://...", "http(s)://..."


@dataclass(frozen=True)
class SmartObject:
    """The object to segment: clicks in request order, an optional box, sizes in pixels at width x height."""

    key: str  # per-object state key (hex digest), see the module docstring
    label: str  # the smart region's label
    answer: Answer  # where the answer goes: brush or polygon, control and label
    width: int  # original_width, original_height: the image's natural size as Label Studio knows it
    height: int
    clicks: tuple[Click, ...]  # from smart keypoints; may be empty when a box is given
    box: tuple[float, float, float, float] | None  # (x0, y0, x1, y1) from the newest smart rectangle
    region_ids: tuple[str, ...]  # ids of the smart regions, in request order

    def prompt_clicks(self) -> tuple[Click, ...]:
        """The click history for a predictor: a box counts as a positive click at its centre, placed first (the
        box was drawn before any keypoint refining it), then the keypoints in request order."""
        if self.box is None:
            return self.clicks
        x0, y0, x1, y1 = self.box
        centre = Click(min((x0 + x1) / 2, self.width - 1), min((y0 + y1) / 2, self.height - 1), True)
        return (centre, *self.clicks)


@dataclass(frozen=True)
class PredictRequest:
    project: str  # as sent: "<id>.<created unix time>"
    config: LabelingConfig
    tasks: tuple[Task, ...]
    interactive: bool  # params.context was given (then there is exactly one task)
    objects: tuple[SmartObject, ...]  # interactive only, in order of each object's first region


@dataclass(frozen=True)
class SetupRequest:
    project: str
    config: LabelingConfig


# ---------------------------------------------------------------------------------------------------- parsing


def load_json(raw: bytes | str, limit: int = MAX_BODY_BYTES) -> dict:
    """A request body as a JSON object; ProtocolError for oversize, non-JSON, too-deep or non-object bodies."""
    if len(raw) > limit:
        raise ProtocolError(f"request body larger than {limit} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; nesting bombs hit recursion
        raise ProtocolError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    return body


class _PredictTask(msgspec.Struct):
    id: Any = None
    data: Any = None


class _PredictBody(msgspec.Struct):
    """The fields of a /predict body that parse_predict reads; msgspec skips every other one without building it."""

    project: Any = None
    label_config: Any = None
    tasks: list[_PredictTask] | None = None
    params: Any = None
    user: Any = None


_PREDICT_BODY = msgspec.json.Decoder(_PredictBody)


_RLE_KEY = b'"rle":'
_RLE_CHARS = b"0123456789, \t\n\r"


def _without_brush_rle(raw: bytes) -> bytes:
    """The body with every brush RLE emptied: each array of unsigned ints that follows a "rle" key becomes [].
    Nothing parse_predict reads changes: an array of digits, commas and spaces only cannot hold a string or a
    nested value, and the quote that ends "rle" cannot be inside a string (there it would be escaped)."""
    parts, start, at = [], 0, 0
    while (found := raw.find(_RLE_KEY, at)) >= 0:
        opening = found + len(_RLE_KEY)
        while raw[opening:opening + 1] in (b" ", b"\t", b"\n", b"\r"):
            opening += 1
        at = opening
        if raw[opening:opening + 1] != b"[":
            continue
        closing = raw.find(b"]", opening)
        if closing < 0 or raw[opening + 1:closing].translate(None, _RLE_CHARS):
            continue
        parts.append(raw[start:opening + 1])
        start = at = closing
    return b"".join(parts) + raw[start:] if parts else raw


def load_predict_json(raw: bytes, limit: int = MAX_BODY_BYTES) -> dict:
    """A /predict body with only what parse_predict reads. Label Studio sends each task's drafts, predictions and
    annotations too, brush RLE included, and they grow with every region on the image: with 100 davis345 masks
    (2.6 MB) building them all as Python objects took 42 ms of the ingress's CPU per click at the median, skipping
    them by schema 5 ms, and emptying their brush RLE first (a byte scan; the RLE is most of the body) then skipping
    the rest a third of that (tests/bench_predict_body.py). The contents of those RLE arrays are neither read nor
    checked. A body the schema does not fit (not JSON, not an object, a task that is no object, nesting too deep) is
    read in full by load_json, so its error reads the same as ever."""
    if len(raw) > limit:
        raise ProtocolError(f"request body larger than {limit} bytes")
    try:
        body = _PREDICT_BODY.decode(_without_brush_rle(raw))
    except (msgspec.MsgspecError, RecursionError):
        return load_json(raw, limit)
    tasks = None if body.tasks is None else [{"id": t.id, "data": t.data} for t in body.tasks]
    return {"project": body.project, "label_config": body.label_config, "tasks": tasks, "params": body.params,
            "user": body.user}


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a JSON object",
               bool: "a boolean"}


def _get(obj, key: str, kind, where: str, optional: bool = False):
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    value = obj.get(key)
    if value is None and optional:
        return None
    if kind is int and isinstance(value, bool):  # bool is an int subclass in Python, not in JSON
        value = None
    if not isinstance(value, kind):
        names = _KIND_NAMES[kind] if isinstance(kind, type) else "a number"
        raise ProtocolError(f"{where}.{key} is missing or not {names}")
    return value


def _number(obj: dict, key: str, where: str) -> float:
    value = _get(obj, key, (int, float), where)
    if isinstance(value, bool) or not math.isfinite(value):
        raise ProtocolError(f"{where}.{key} must be a finite number")
    return float(value)


def _percent(obj: dict, key: str, where: str) -> float:
    value = _number(obj, key, where)
    if not -EDGE_SLACK <= value <= 100 + EDGE_SLACK:
        raise ProtocolError(f"{where}.{key} = {value} lies outside 0-100 %")
    return min(max(value, 0.0), 100.0)


def _project(body: dict) -> str:
    project = body.get("project")
    if isinstance(project, int) and not isinstance(project, bool):
        project = str(project)
    if not isinstance(project, str) or not project or len(project) > MAX_ID_CHARS:
        raise ProtocolError("body.project is missing or not a project id")
    return project


def parse_setup(body: dict) -> SetupRequest:
    """POST /setup: {"project": "<id>.<ts>", "schema": label config XML, ...}."""
    return SetupRequest(_project(body), parse_label_config(_get(body, "schema", str, "body")))


def _task(task: dict, config: LabelingConfig, where: str) -> Task:
    task_id = _get(task, "id", int, where)
    uri = _get(_get(task, "data", dict, where), config.image_key, str, f"{where}.data")
    if not uri.strip() or len(uri) > MAX_URI_CHARS:
        raise ProtocolError(f"{where}.data.{config.image_key} must be an image URL of at most {MAX_URI_CHARS} chars")
    return Task(task_id, uri.strip())


def parse_predict(body: dict) -> PredictRequest:
    """POST /predict, batch (params.context null) or interactive (params.context.result = smart regions)."""
    project = _project(body)
    config = parse_label_config(_get(body, "label_config", str, "body"))
    tasks_json = _get(body, "tasks", list, "body")
    if not tasks_json:
        raise ProtocolError("body.tasks is empty")
    if len(tasks_json) > MAX_TASKS:
        raise ProtocolError(f"body.tasks has more than {MAX_TASKS} tasks")
    tasks = tuple(_task(t, config, f"tasks[{i}]") for i, t in enumerate(tasks_json))
    params = _get(body, "params", dict, "body", optional=True) or {}
    context = _get(params, "context", dict, "params", optional=True)
    if context is None:
        return PredictRequest(project, config, tasks, False, ())
    if len(tasks) != 1:
        raise ProtocolError("an interactive request must carry exactly one task")
    regions = _get(context, "result", list, "params.context")
    if not regions:
        raise ProtocolError("params.context.result has no smart region")
    if len(regions) > MAX_REGIONS:
        raise ProtocolError(f"params.context.result has more than {MAX_REGIONS} regions")
    user = _user(body, params)
    objects = _objects(regions, config, f"{project}\x00{tasks[0].id}\x00{user}")
    return PredictRequest(project, config, tasks, True, objects)


def _user(body: dict, params: dict) -> str:
    """The requesting user when the body names one (Label Studio 1.23.2 does not; region ids keep users apart)."""
    for source in (params, body):
        user = source.get("user")
        if isinstance(user, dict):
            user = user.get("id")
        if isinstance(user, (int, str)) and not isinstance(user, bool) and len(str(user)) <= MAX_ID_CHARS:
            return str(user)
    return ""


@dataclass
class _Region:
    id: str
    type: str
    label: str
    width: int
    height: int
    value: dict
    positive: bool


def _region(region: dict, config: LabelingConfig, where: str) -> _Region:
    region_type = _get(region, "type", str, where)
    if region_type not in (KEYPOINTS, RECTANGLES):
        raise ProtocolError(f"{where}.type {region_type!r} is not a smart keypoint or rectangle")
    control = config.smart_control(_get(region, "from_name", str, where), region_type)
    to_name = _get(region, "to_name", str, where)
    if to_name != config.image_name:
        raise ProtocolError(f"{where}.to_name {to_name!r} is not the image {config.image_name!r}")
    region_id = _get(region, "id", str, where)
    if not region_id or len(region_id) > MAX_ID_CHARS:
        raise ProtocolError(f"{where}.id must be a non-empty string of at most {MAX_ID_CHARS} characters")
    size = []
    for key in ("original_width", "original_height"):
        side = _get(region, key, int, where)
        if not 1 <= side <= MAX_SIDE:
            raise ProtocolError(f"{where}.{key} = {side} is not between 1 and {MAX_SIDE}")
        size.append(side)
    if _get(region, "image_rotation", (int, float), where, optional=True) not in (None, 0):
        raise ProtocolError(f"{where}: rotated images are not supported (image_rotation must be 0)")
    value = _get(region, "value", dict, where)
    labels = _get(value, region_type, list, f"{where}.value")
    if len(labels) != 1 or not isinstance(labels[0], str):
        raise ProtocolError(f"{where}.value.{region_type} must hold exactly one label")
    if labels[0] not in control.labels:
        raise ProtocolError(f"{where}: unknown label {labels[0]!r} for control {control.name!r}")
    positive = _get(region, "is_positive", bool, where, optional=True)
    return _Region(region_id, region_type, labels[0], size[0], size[1], value, positive is not False)


def _objects(regions: list, config: LabelingConfig, scope: str) -> tuple[SmartObject, ...]:
    grouped: dict[str, list[_Region]] = {}
    for i, raw in enumerate(regions):
        region = _region(raw, config, f"params.context.result[{i}]")
        grouped.setdefault(region.label, []).append(region)
    return tuple(_object(label, group, config, scope) for label, group in grouped.items())


def _object(label: str, group: list[_Region], config: LabelingConfig, scope: str) -> SmartObject:
    width, height = group[0].width, group[0].height
    if any((r.width, r.height) != (width, height) for r in group):
        raise ProtocolError(f"the smart regions labelled {label!r} disagree on the image size")
    percent, box = [], None
    for r in group:
        where = f"smart region {r.id!r}"
        x, y = _percent(r.value, "x", where), _percent(r.value, "y", where)
        if r.type == KEYPOINTS:
            percent.append(Click(x, y, r.positive))
            continue
        w, h = _percent(r.value, "width", where), _percent(r.value, "height", where)
        if w <= 0 or h <= 0 or x + w > 100 + EDGE_SLACK or y + h > 100 + EDGE_SLACK:
            raise ProtocolError(f"{where}: the rectangle is empty or reaches outside the image")
        if _get(r.value, "rotation", (int, float), where, optional=True) not in (None, 0):
            raise ProtocolError(f"{where}: rotated rectangles are not supported")
        # The newest rectangle wins: an annotator who redraws the box means the new one.
        box = (x * width / 100, y * height / 100, min(x + w, 100) * width / 100, min(y + h, 100) * height / 100)
    clicks = scaled_into(percent, width / 100, height / 100, width, height)
    if box is None and not any(c.positive for c in clicks):
        raise ProtocolError(f"the object labelled {label!r} needs a positive click (or a box) first")
    key_source = "\x00".join((scope, label, group[0].id))
    key = hashlib.sha256(key_source.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return SmartObject(key, label, config.answer_for(label), width, height, tuple(clicks), box,
                       tuple(r.id for r in group))


# --------------------------------------------------------------------------------------------------- answers


def brush_result(mask: np.ndarray, answer: Answer, score: float | None = None) -> dict:
    """One brush region for Label Studio. mask: H x W (the image's natural size), bool or 0/non-zero."""
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty H x W array, got shape {mask.shape}")
    height, width = mask.shape
    value = {"format": "rle", "rle": mask_to_brush(mask), "brushlabels": [answer.label]}
    return _answer_region(answer, width, height, value, score)


def polygon_results(mask: np.ndarray, answer: Answer, options: PolygonOptions | None = None,
                    score: float | None = None) -> tuple[list[dict], list[np.ndarray]]:
    """Polygon regions for Label Studio, one per part of the mask (see integrations.polygons), and their polygons in
    pixels as read back from the regions' percentages (what the annotator is shown, to the last bit).
    mask: H x W at the image's natural size."""
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty H x W array, got shape {mask.shape}")
    height, width = mask.shape
    regions = [_answer_region(answer, width, height, {"points": to_percent(polygon, width, height).tolist(),
                                                      "closed": True, "polygonlabels": [answer.label]}, score)
               for polygon in mask_to_polygons(mask, options or PolygonOptions())]
    return regions, [from_percent(r["value"]["points"], width, height) for r in regions]


def _answer_region(answer: Answer, width: int, height: int, value: dict, score: float | None) -> dict:
    result = {
        "id": secrets.token_hex(5),
        "type": answer.region_type,
        "from_name": answer.from_name,
        "to_name": answer.to_name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
    }
    if score is not None:
        result["score"] = float(score)
    return result


def prediction(results: list[dict], score: float, model_version: str) -> dict:
    """One task's entry of `results`: its regions, an overall score and the model version of /setup."""
    return {"result": results, "score": float(score), "model_version": model_version}


def dump_json(answer: dict) -> bytes:
    """An answer as JSON bytes (msgspec: a brush RLE of thousands of ints in a tenth of json.dumps's time)."""
    return msgspec.json.encode(answer)


def predict_response(predictions: list[dict]) -> dict:
    """The /predict answer: one prediction per task, in the order of body.tasks."""
    return {"results": predictions}


def error_response(*messages: str) -> dict:
    """The plain error shape, {"errors": [...]}, for non-interactive endpoints and 4xx answers."""
    return {"errors": [str(m) for m in messages]}


def interactive_error_response(model_version: str, *messages: str) -> dict:
    """An error for an interactive /predict, sent with HTTP 200. Measured on Label Studio 1.23.2: it replaces a
    top-level {"errors": [...]} with its own "Incorrect response from ML service" and a 4xx with "400 Client Error:
    Bad Request for url: ...", so the backend's text is lost; only results[0] passes through unchanged (as "data"),
    so the messages ride there too, with no region (the labeling UI then shows no suggestion)."""
    errors = [str(m) for m in messages]
    return {"results": [{"result": [], "score": 0.0, "model_version": model_version, "errors": errors}],
            "errors": errors}


def setup_response(model_version: str) -> dict:
    return {"model_version": model_version}


def health_response(model_class: str = "clickmask") -> dict:
    return {"status": "UP", "model_class": model_class}


def versions_response(versions: list[str]) -> dict:
    return {"versions": list(versions)}
