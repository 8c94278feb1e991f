"""Masks as polygons, for Label Studio's PolygonLabels: tracing a mask, simplifying, and drawing polygons back.

Coordinates are image pixels, x the column and y the row, with pixel (row i, column j) covering [j, j+1] x [i, i+1];
a polygon is an N x 2 float array of (x, y) vertices, closed implicitly. Label Studio holds the same vertices in
percent of the image's natural size.

Drawing (what a polygon means as a mask): a pixel belongs to a polygon when its centre lies inside it by the
non-zero winding rule, the rule of the HTML canvas Label Studio fills polygons on. `draw` is that rule and nothing
else; every mask made from a polygon (answers checked before they are sent, submitted annotations stored) comes
from it.

Tracing (`trace`): each 8-connected part of the mask becomes one polygon running along its pixels' outer edges, so
drawn back it gives the part again; the polygons are then simplified (Douglas-Peucker) with the largest tolerance
that keeps their drawn IoU with the mask at `min_iou` or above, and a region over `max_vertices` is simplified
further until it fits (the cap wins over the IoU). A Label Studio polygon has no holes, so a hole is cut in from the
outline through a zero-width slit and traversed the other way round, which keeps it empty under the non-zero rule.
Specks and pinholes are noise to an annotator: the smallest parts are left out and the smallest holes filled, as
many as fit together in `noise_share` of the mask's area (and in half of what the IoU floor allows), so a hole or
part that matters is kept.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from integrations.env import EnvReader, SettingsError
from integrations.masks import MaskError
from workers.model.evaluator import iou

MAX_CROSSINGS = 20_000_000  # edge/row crossings one drawing may take (a polygon's edges times the rows they span)
# Douglas-Peucker tolerances tried: none, then 0.25 to 16 pixels.
TOLERANCES = np.concatenate([[0.0], 0.25 * 2 ** (np.arange(13) / 2)])


@dataclass(frozen=True)
class PolygonOptions:
    min_iou: float = 0.98  # the drawn polygons keep at least this IoU with the mask (unless the cap forbids)
    max_vertices: int = 5000  # per region: a guard against masks of noise, well above what a DAVIS object needs
    noise_share: float = 0.005  # the smallest parts and holes, together at most this share of the mask, are dropped

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PolygonOptions:
        read = EnvReader(env)
        options = cls(min_iou=read.number("CLICKMASK_POLYGON_MIN_IOU", cls.min_iou, float, 0.5),
                      max_vertices=read.number("CLICKMASK_POLYGON_MAX_VERTICES", cls.max_vertices, int, 3),
                      noise_share=read.number("CLICKMASK_POLYGON_NOISE_SHARE", cls.noise_share, float, 0.0))
        for name, value in (("MIN_IOU", options.min_iou), ("NOISE_SHARE", options.noise_share)):
            if value > 1:
                raise SettingsError(f"CLICKMASK_POLYGON_{name} must be at most 1")
        return options


def to_percent(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels to Label Studio's percent of the image, N x 2."""
    return np.asarray(polygon, np.float64).reshape(-1, 2) * (100.0 / width, 100.0 / height)


def from_percent(points, width: int, height: int) -> np.ndarray:
    """Label Studio's vertices (percent of the image) in pixels, N x 2: x% / 100 * width, the arithmetic of Label
    Studio's own COCO export. Every polygon read from Label Studio goes through here, so the same points always
    draw the same mask."""
    return np.asarray(points, np.float64).reshape(-1, 2) / 100 * (width, height)


def draw(polygons: list[np.ndarray], width: int, height: int,
         box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The union of the polygons, drawn at width x height: H x W bool, pixel centres inside by non-zero winding.
    With `box` = (left, top, right, bottom), only that window of it (the same pixels as the full drawing: the
    arithmetic stays in image coordinates, since a pixel centre can lie exactly on an edge). MaskError when a polygon
    would take more than MAX_CROSSINGS edge/row crossings to draw."""
    left, top, right, bottom = box or (0, 0, width, height)
    mask = np.zeros((bottom - top, right - left), bool)
    for polygon in polygons:
        _fill(mask, np.asarray(polygon, np.float64).reshape(-1, 2), left, top)
    return mask


def _fill(mask: np.ndarray, polygon: np.ndarray, left: int, top: int) -> None:
    height, width = mask.shape
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # An edge crosses row i when its span [min y, max y) holds the row's centre i + 0.5 (half-open: a vertex on a
    # centre line is counted once).
    first = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), top, top + height).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), top, top + height).astype(np.int64)
    counts = stop - first
    total = int(counts.sum())
    if total == 0:
        return
    if total > MAX_CROSSINGS:
        raise MaskError(f"a polygon of {len(polygon)} vertices is too complex to draw ({total} edge crossings)")
    edge = np.repeat(np.arange(len(polygon)), counts)
    row = first[edge] + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    t = (row + 0.5 - y0[edge]) / (y1[edge] - y0[edge])
    x = x0[edge] + t * (x1[edge] - x0[edge])
    # The first pixel whose centre lies right of the crossing: from there on the crossing counts in the winding.
    column = (np.clip(np.floor(x + 0.5), left, left + width) - left).astype(np.int64)
    row -= top
    rows = slice(int(row.min()), int(row.max()) + 1)
    span = rows.stop - rows.start
    winding = np.bincount((row - rows.start) * (width + 1) + column, weights=np.where(y1 > y0, 1.0, -1.0)[edge],
                          minlength=span * (width + 1)).reshape(span, width + 1)
    mask[rows] |= np.cumsum(winding[:, :width], axis=1) != 0


# ------------------------------------------------------------------------------------------------------ tracing


@dataclass
class Part:
    """An 8-connected part of a mask: its outline and holes along pixel edges, and its area: the pixel count to
    within an eighth of a pixel for each concave corner (the traced outline cuts across them, clear of every pixel
    centre, so the drawn part is exact)."""

    outline: np.ndarray
    holes: list[np.ndarray]
    area: float


def mask_to_polygons(mask: np.ndarray, options: PolygonOptions = PolygonOptions()) -> list[np.ndarray]:
    """H x W mask -> one polygon per part worth keeping (see the module docstring), largest part first. The IoU floor
    is checked on the polygons as Label Studio reads them back, `from_percent(to_percent(polygon))` at the mask's
    size: the float arithmetic of the way there and back can move a vertex by a bit, and a pixel centre with it."""
    if mask.ndim != 2:
        raise MaskError(f"a mask must be H x W, not {mask.shape}")
    parts = trace(mask)
    if not parts:
        return []
    # Noise: the smallest parts and holes, as many as fit together in the budget.
    sizes = sorted([(p.area, i, None) for i, p in enumerate(parts)]
                   + [(abs(_area(h)), i, k) for i, p in enumerate(parts) for k, h in enumerate(p.holes)])
    # At most half of what the IoU floor allows goes to noise; simplification gets the rest.
    share = min(options.noise_share, (1.0 - options.min_iou) / 2)
    budget, dropped = share * sum(p.area for p in parts), set()
    for size, i, k in sizes:
        if size > budget:
            break
        budget -= size
        dropped.add((i, k))
    parts = [Part(p.outline, [h for k, h in enumerate(p.holes) if (i, k) not in dropped], p.area)
             for i, p in enumerate(parts) if (i, None) not in dropped]
    target = mask != 0
    height, width = mask.shape

    def simplified(tolerance: float) -> list[np.ndarray]:
        return [_simplify(part, tolerance) for part in parts]

    def read_back(polygons: list[np.ndarray]) -> list[np.ndarray]:  # what Label Studio draws: through percent
        return [from_percent(to_percent(p, width, height), width, height) for p in polygons]

    # The largest tolerance that keeps the IoU: a binary search over the ladder (the IoU falls as it grows).
    # TOLERANCES[low] passes and TOLERANCES[high] fails; 0 (no simplification) passes, as the noise is within the floor.
    low, high = 0, len(TOLERANCES)
    while high - low > 1:
        middle = (low + high) // 2
        if _drawn_iou(read_back(simplified(TOLERANCES[middle])), target) >= options.min_iou:
            low = middle
        else:
            high = middle
    tolerance = TOLERANCES[low]
    polygons = simplified(tolerance)
    for i, part in enumerate(parts):
        grown = max(tolerance, 0.25)
        while len(polygons[i]) > max(options.max_vertices, 3) and grown < max(target.shape):
            grown *= 1.5
            polygons[i] = _simplify(part, grown)
    return polygons


def _drawn_iou(polygons: list[np.ndarray], target: np.ndarray) -> float:
    """IoU of the drawn polygons with the mask, drawn only over the box that holds both (the cost follows the
    object, not the image)."""
    rows, cols = np.flatnonzero(target.any(axis=1)), np.flatnonzero(target.any(axis=0))
    vertices = np.concatenate(polygons)
    left = max(min(int(cols[0]), int(np.floor(vertices[:, 0].min()))), 0)
    top = max(min(int(rows[0]), int(np.floor(vertices[:, 1].min()))), 0)
    right = min(max(int(cols[-1]) + 1, int(np.ceil(vertices[:, 0].max()))), target.shape[1])
    bottom = min(max(int(rows[-1]) + 1, int(np.ceil(vertices[:, 1].max()))), target.shape[0])
    drawn = draw(polygons, target.shape[1], target.shape[0], box=(left, top, right, bottom))
    return iou(target[top:bottom, left:right], drawn)


def trace(mask: np.ndarray) -> list[Part]:
    """The 8-connected parts of a mask, largest first, their outlines and holes running along pixel edges: drawn
    back (`draw`, holes spliced in the other way round) they give the mask exactly.

    findContours traces the centres of boundary pixels, which would shave half a pixel off every side. It traces
    here a mask upsampled 2x and grown by one cell down and right, so that the traced cells lie on pixel corners
    (cell 2x is the corner x); only the mask's box is traced, so the cost follows the object, not the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    top, left = int(rows[0]), int(cols[0])
    box = (mask[top:rows[-1] + 1, left:cols[-1] + 1] != 0).astype(np.uint8)
    up = np.repeat(np.repeat(box, 2, axis=0), 2, axis=1)
    grown = np.zeros((up.shape[0] + 1, up.shape[1] + 1), np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            grown[dy:dy + up.shape[0], dx:dx + up.shape[1]] |= up
    contours, hierarchy = cv2.findContours(grown, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    corners = [c.reshape(-1, 2) / 2.0 + (left, top) for c in contours]
    parent = hierarchy[0][:, 3]
    parts = {i: Part(corners[i], [], 0.0) for i in range(len(contours)) if parent[i] < 0}
    for i in range(len(contours)):
        if parent[i] >= 0:
            parts[parent[i]].holes.append(corners[i])
    for part in parts.values():
        part.area = abs(_area(part.outline)) - sum(abs(_area(h)) for h in part.holes)
    return sorted(parts.values(), key=lambda p: p.area, reverse=True)


def _area(polygon: np.ndarray) -> float:
    """Signed area (shoelace), the sign telling the way round."""
    return float(cv2.contourArea(polygon.astype(np.float32).reshape(-1, 1, 2), oriented=True))


def _simplify(part: Part, tolerance: float) -> np.ndarray:
    outline = _douglas_peucker(part.outline, tolerance)
    holes = []
    for hole in part.holes:
        hole = _douglas_peucker(hole, tolerance)
        # The other way round than the outline: winding 0 inside the hole.
        holes.append(hole[::-1] if np.sign(_area(hole)) == np.sign(_area(outline)) else hole)
    return _keyholes(outline, holes) if holes else outline


def _douglas_peucker(polygon: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance <= 0:
        return polygon
    simple = cv2.approxPolyDP(polygon.astype(np.float32).reshape(-1, 1, 2), float(tolerance), True)
    simple = simple.reshape(-1, 2).astype(np.float64)
    return simple if len(simple) >= 3 else polygon


def _keyholes(outline: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """The outline with each hole spliced in: from an outline vertex along a slit to a near vertex of the hole,
    round the hole, and back. The slit is crossed once each way, so it adds nothing to the drawn mask; it is kept
    short (the outline vertex nearest the hole's first vertex, then the hole vertex nearest that) for the eye."""
    spliced: dict[int, list[np.ndarray]] = {}
    for hole in holes:
        i = int(np.argmin(((outline - hole[0]) ** 2).sum(axis=1)))
        j = int(np.argmin(((hole - outline[i]) ** 2).sum(axis=1)))
        around = np.roll(hole, -j, axis=0)
        spliced.setdefault(int(i), []).append(np.concatenate([around, around[:1], outline[i:i + 1]]))
    pieces, start = [], 0
    for i in sorted(spliced):
        pieces += [outline[start:i + 1], *spliced[i]]
        start = i + 1
    return np.concatenate([*pieces, outline[start:]])
