"""Label Studio's webhook bodies, parsed: plain checks on untrusted JSON, no database access.

ANNOTATION_CREATED / ANNOTATION_UPDATED carry an annotation whose brush and polygon results become masks (COCO RLE;
a polygon drawn as Label Studio fills it, see integrations.polygons, and its vertices kept for export);
ANNOTATIONS_DELETED carries the ids of deleted annotations. Anything that cannot be used raises Rejected with the
reason; what is kept is cut to the lengths below, which the database's columns are sized by.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from integrations.masks import MAX_PIXELS, CocoRle, MaskError, brush_to_mask, encode
from integrations.polygons import draw, from_percent

CREATED, UPDATED, DELETED = "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"
# Sent to the same /webhook by Label Studio but handled elsewhere (training) or of no use here.
OTHER_ACTIONS = {"START_TRAINING", "TASKS_CREATED", "TASKS_DELETED", "PROJECT_UPDATED", "ANNOTATIONS_CREATED"}
MAX_DELETED_IDS = 10_000
MAX_POLYGON_POINTS = 20_000  # vertices of one polygon region
REGION_TYPES = ("brushlabels", "polygonlabels")
MAX_ID = 2**63 - 1  # Label Studio ids are stored as 64-bit integers: a larger one is refused, not sent to the database
URI_LENGTH = 2048  # image URIs; a longer one is refused
NAME_LENGTH = 255  # titles, control names and labels; longer ones are cut


class Rejected(ValueError):
    """The event cannot be used; the message says why."""


@dataclass
class ParsedMask:
    region_id: str
    from_name: str
    label: str | None
    rle: CocoRle
    polygon: list[float] | None = None  # a polygon region's vertices, [x1, y1, x2, y2, ...] in pixels


@dataclass
class ParsedAnnotation:
    ls_id: int
    updated_at: datetime
    task_id: int | None
    completed_by: int | None
    was_cancelled: bool
    lead_time: float | None
    image_uri: str | None
    size: tuple[int, int] | None  # (width, height) of the masks
    masks: list[ParsedMask] = field(default_factory=list)


def need_int(mapping: dict, key: str, where: str) -> int:
    value = mapping.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise Rejected(f"{where}.{key} is missing or not an integer from 0 to {MAX_ID}")
    return value


def fits(value: object) -> bool:
    """An optional id worth keeping: an integer the database can hold."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def need_dict(mapping: dict, key: str, where: str) -> dict:
    value = mapping.get(key)
    if not isinstance(value, dict):
        raise Rejected(f"{where}.{key} is missing or not an object")
    return value


@dataclass
class ParsedProject:
    ls_id: int
    title: str | None
    label_config: str | None
    parsed_config: dict


def parse_project(body: dict) -> ParsedProject:
    project = need_dict(body, "project", "body")
    title, config = project.get("title"), project.get("label_config")
    parsed = project.get("parsed_label_config")
    return ParsedProject(
        need_int(project, "id", "project"),
        title[:NAME_LENGTH] if isinstance(title, str) else None,
        config if isinstance(config, str) else None,
        parsed if isinstance(parsed, dict) else {},
    )


def parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise Rejected(f"{where} is missing or not a string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Rejected(f"{where} is not an ISO 8601 time: {value[:40]!r}") from None
    # Label Studio sends UTC with a Z; a time without a zone is taken as UTC too.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_annotation(body: dict) -> ParsedAnnotation:
    annotation = need_dict(body, "annotation", "body")
    results = annotation.get("result")
    if not isinstance(results, list):
        raise Rejected("annotation.result is missing or not a list")
    completed_by = annotation.get("completed_by")
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id")
    lead_time = annotation.get("lead_time")
    parsed = ParsedAnnotation(
        ls_id=need_int(annotation, "id", "annotation"),
        updated_at=parse_time(annotation.get("updated_at"), "annotation.updated_at"),
        task_id=annotation.get("task") if fits(annotation.get("task")) else None,
        completed_by=completed_by if fits(completed_by) else None,
        was_cancelled=annotation.get("was_cancelled") is True,
        lead_time=float(lead_time) if isinstance(lead_time, (int, float)) and not isinstance(lead_time, bool) else None,
        image_uri=None,
        size=None,
    )
    regions = [r for r in results if isinstance(r, dict) and str(r.get("type", "")).lower() in REGION_TYPES]
    for number, result in enumerate(regions, 1):
        region_type = str(result["type"]).lower()
        where = f"{region_type[:-6]} result {str(result.get('id', number))[:64]!r}"
        value = result.get("value")
        width, height = result.get("original_width"), result.get("original_height")
        try:
            if region_type == "polygonlabels":
                polygon = polygon_pixels(value, width, height)
                mask = draw([np.reshape(polygon, (-1, 2))], width, height)  # the same floats: the same mask
            else:
                polygon = None
                if not isinstance(value, dict) or value.get("format", "rle") != "rle":
                    raise MaskError("value is not a brush RLE")
                mask = brush_to_mask(value.get("rle"), width, height)
        except MaskError as exc:
            raise Rejected(f"{where}: {exc}") from None
        if parsed.size not in (None, (width, height)):
            raise Rejected(f"{where}: mask is {width}x{height} but another mask is {parsed.size[0]}x{parsed.size[1]}")
        parsed.size = (width, height)
        labels = value.get(region_type)
        label = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None
        from_name = result.get("from_name") if isinstance(result.get("from_name"), str) else ""
        parsed.masks.append(ParsedMask(str(result.get("id", ""))[:64], from_name[:NAME_LENGTH],
                                       label[:NAME_LENGTH] if label else None, encode(mask), polygon))
    task = body.get("task")
    if isinstance(task, dict):
        task_id = task.get("id")
        if parsed.task_id is None and fits(task_id):
            parsed.task_id = task_id
        parsed.image_uri = image_uri(task, regions, body)
    if parsed.masks and parsed.image_uri is None:
        raise Rejected("masks given but no image URI found in task.data")
    return parsed


def image_uri(task: dict, regions: list[dict], body: dict) -> str | None:
    """The task field holding the image: the one the regions' control's Image tag reads ($image -> data["image"])."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    parsed_config = body["project"].get("parsed_label_config")
    keys = []
    for region in regions:
        name = region.get("from_name")
        control = parsed_config.get(name) if isinstance(parsed_config, dict) and isinstance(name, str) else None
        inputs = control.get("inputs") if isinstance(control, dict) else None
        if isinstance(inputs, list):
            keys += [i.get("value") for i in inputs if isinstance(i, dict) and isinstance(i.get("value"), str)]
    if not keys:  # no parsed config: accept a task with a single string field
        strings = [k for k, v in data.items() if isinstance(v, str)]
        keys = strings if len(strings) == 1 else []
    uri = data.get(keys[0]) if keys else None
    if not isinstance(uri, str) or not uri:
        return None
    if len(uri.encode("utf-8")) > URI_LENGTH:
        raise Rejected(f"image URI longer than {URI_LENGTH} bytes")
    return uri


def polygon_pixels(value: object, width: object, height: object) -> list[float]:
    """A polygon region's vertices (percent of the image, as Label Studio keeps them) in pixels of the image's
    natural size, flat as COCO writes them: x = x% / 100 * width, as Label Studio's own COCO export has it."""
    for name, side in (("width", width), ("height", height)):
        if not isinstance(side, int) or isinstance(side, bool) or side < 1:
            raise MaskError(f"original_{name} must be a positive integer, not {side!r}")
    if width * height > MAX_PIXELS:
        raise MaskError(f"image of {width}x{height} is larger than {MAX_PIXELS} pixels")
    points = value.get("points") if isinstance(value, dict) else None
    if not isinstance(points, list) or not 3 <= len(points) <= MAX_POLYGON_POINTS:
        raise MaskError(f"value.points must be a list of 3 to {MAX_POLYGON_POINTS} [x, y] points")
    for point in points:
        if not (isinstance(point, list) and len(point) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and -1 <= v <= 101
                for v in point)):
            raise MaskError("value.points must hold [x, y] pairs of percentages of the image")
    return from_percent(points, width, height).ravel().tolist()


def parse_deleted_ids(body: dict) -> list[int]:
    items = body.get("annotations")
    if not isinstance(items, list) or not items:
        raise Rejected("body.annotations is missing or empty")
    if len(items) > MAX_DELETED_IDS:
        raise Rejected(f"more than {MAX_DELETED_IDS} annotations in one deletion")
    ids = []
    for item in items:
        if not isinstance(item, dict):
            raise Rejected("body.annotations holds something other than {id: ...} objects")
        ids.append(need_int(item, "id", "annotations[]"))
    return sorted(set(ids))
