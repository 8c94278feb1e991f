"""Masks as polygons: the drawing rule, exact tracing, simplification to the IoU floor, holes, specks, the vertex
cap, and the settings."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.env import SettingsError
from integrations.masks import MaskError
from integrations.polygons import MAX_CROSSINGS, PolygonOptions, draw, mask_to_polygons, trace
from workers.model.evaluator import iou


def blobs(seed: int, shape=(48, 64), sigma=2.5) -> np.ndarray:
    """Random smooth shapes with parts, holes and diagonal contacts."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random(shape), (0, 0), sigma) > 0.5


def keyholed(part) -> np.ndarray:
    """A traced part as one polygon, its holes spliced in unsimplified (what mask_to_polygons does at tolerance 0)."""
    from integrations.polygons import _keyholes, _area

    holes = [h[::-1] if np.sign(_area(h)) == np.sign(_area(part.outline)) else h for h in part.holes]
    return _keyholes(part.outline, holes) if holes else part.outline


def test_a_pixel_belongs_to_a_polygon_when_its_centre_lies_inside():
    square = np.array([[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]])  # pixel edges: exactly pixels 1-2
    drawn = draw([square], 5, 5)
    assert drawn.sum() == 4 and drawn[1:3, 1:3].all()
    nudged = draw([square + 0.4], 5, 5)  # centres at 1.5 and 2.5 are still inside [1.4, 3.4]
    assert (nudged == drawn).all()
    assert draw([square + 0.6], 5, 5)[2:4, 2:4].all() and draw([square + 0.6], 5, 5).sum() == 4
    assert draw([np.array([[0.0, 0.0], [0.4, 0.0], [0.4, 5.0]])], 5, 5).sum() == 0  # no centre inside


def test_non_zero_winding_keeps_a_hole_traversed_the_other_way_and_fills_one_traversed_the_same_way():
    outer = np.array([[0.0, 0.0], [6.0, 0.0], [6.0, 6.0], [0.0, 6.0]])
    inner = np.array([[2.0, 2.0], [4.0, 2.0], [4.0, 4.0], [2.0, 4.0]])
    # Spliced in through a slit from (0, 0) to (2, 2) and back.
    opposite = np.concatenate([outer[:1], inner[::-1], inner[-1:], outer])
    same = np.concatenate([outer[:1], inner, inner[:1], outer])
    assert draw([opposite], 6, 6).sum() == 36 - 4 and not draw([opposite], 6, 6)[2:4, 2:4].any()
    assert draw([same], 6, 6).all()


def test_drawing_outside_the_image_is_clipped_and_a_too_complex_polygon_is_refused():
    big = np.array([[-10.0, -10.0], [20.0, -10.0], [20.0, 20.0], [-10.0, 20.0]])
    assert draw([big], 4, 3).all()
    zigzag = np.array([[x % 2 * 1000.0, 0.0 if x % 4 < 2 else 1000.0] for x in range(4 * 12_000)])
    with pytest.raises(MaskError, match="too complex"):
        draw([zigzag], 1000, 1000)
    assert MAX_CROSSINGS < 4 * 12_000 * 1000


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([1.0, 1.5, 2.5]))
def test_traced_parts_draw_back_to_the_mask_exactly(seed, sigma):
    mask = blobs(seed, sigma=sigma)
    parts = trace(mask)
    assert (draw([keyholed(p) for p in parts], mask.shape[1], mask.shape[0]) == mask).all()
    corners = sum(len(p.outline) + sum(len(h) for h in p.holes) for p in parts)
    assert abs(sum(p.area for p in parts) - mask.sum()) <= corners / 8


def test_one_pixel_parts_diagonal_contacts_and_one_pixel_holes_are_exact():
    mask = np.zeros((9, 9), bool)
    mask[1, 1] = True  # a lone pixel
    mask[3, 4] = mask[4, 5] = True  # touching only at a corner: one 8-connected part
    mask[6:9, 0:3] = True
    mask[7, 1] = False  # a one-pixel hole
    parts = trace(mask)
    assert len(parts) == 3 and sorted(len(p.holes) for p in parts) == [0, 0, 1]
    assert (draw([keyholed(p) for p in parts], 9, 9) == mask).all()


@pytest.mark.parametrize("seed", range(12))
def test_simplified_polygons_keep_the_iou_floor_with_fewer_vertices(seed):
    mask = blobs(seed, shape=(120, 160), sigma=6)
    polygons = mask_to_polygons(mask)
    assert iou(mask, draw(polygons, 160, 120)) >= PolygonOptions().min_iou
    unsimplified = sum(len(keyholed(p)) for p in trace(mask))
    assert sum(len(p) for p in polygons) < unsimplified / 2
    stricter = mask_to_polygons(mask, PolygonOptions(min_iou=0.995))
    assert iou(mask, draw(stricter, 160, 120)) >= 0.995
    assert sum(len(p) for p in stricter) >= sum(len(p) for p in polygons)


def test_a_hole_that_matters_is_kept_a_pinhole_filled_and_a_speck_left_out():
    mask = np.zeros((100, 100), bool)
    mask[10:90, 10:90] = True
    mask[30:50, 30:50] = False  # 400 pixels: 6 % of the object, kept
    mask[70, 70] = False  # a pinhole
    mask[95, 2] = True  # a speck
    polygons = mask_to_polygons(mask)
    drawn = draw(polygons, 100, 100)
    assert len(polygons) == 1  # one region: the speck is no region of its own
    assert not drawn[31:49, 31:49].any() and drawn[70, 70] and not drawn[95, 2]
    assert iou(mask, drawn) >= 0.98
    everything = mask_to_polygons(mask, PolygonOptions(noise_share=0.0))
    assert len(everything) == 2 and not draw(everything, 100, 100)[70, 70]


def test_parts_come_largest_first_and_the_vertex_cap_wins_over_the_iou():
    mask = np.zeros((200, 200), bool)
    mask[5:25, 5:25] = True
    yy, xx = np.mgrid[:200, :200]
    star = np.hypot(yy - 120, xx - 120) < 50 + 12 * np.sin(16 * np.arctan2(yy - 120, xx - 120))
    mask |= star
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2 and draw(polygons[:1], 200, 200)[120, 120]
    capped = mask_to_polygons(mask, PolygonOptions(max_vertices=12))
    assert max(len(p) for p in capped) <= 12
    assert iou(mask, draw(capped, 200, 200)) < iou(mask, draw(polygons, 200, 200))


def test_an_empty_mask_has_no_polygon_and_a_wrong_shape_is_refused():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    with pytest.raises(MaskError):
        mask_to_polygons(np.zeros((5, 5, 3), bool))


def test_settings_come_from_the_environment_with_clear_errors():
    options = PolygonOptions.from_env({"CLICKMASK_POLYGON_MIN_IOU": "0.99", "CLICKMASK_POLYGON_MAX_VERTICES": "80"})
    assert (options.min_iou, options.max_vertices, options.noise_share) == (0.99, 80, PolygonOptions.noise_share)
    assert PolygonOptions.from_env({}) == PolygonOptions()
    for env, message in [({"CLICKMASK_POLYGON_MIN_IOU": "1.5"}, "at most 1"),
                         ({"CLICKMASK_POLYGON_MIN_IOU": "high"}, "must be a number"),
                         ({"CLICKMASK_POLYGON_MAX_VERTICES": "2"}, "at least 3"),
                         ({"CLICKMASK_POLYGON_NOISE_SHARE": "-0.1"}, "at least 0")]:
        with pytest.raises(SettingsError, match=message):
            PolygonOptions.from_env(env)


def test_the_iou_floor_holds_for_the_polygons_as_label_studio_reads_them_back_from_percent():
    from integrations.polygons import from_percent, to_percent

    for seed in range(6):
        mask = blobs(seed, shape=(97, 131), sigma=4)  # sides whose percentages are not exact in binary
        polygons = mask_to_polygons(mask)
        read_back = [from_percent(to_percent(p, 131, 97).tolist(), 131, 97) for p in polygons]
        assert iou(mask, draw(read_back, 131, 97)) >= PolygonOptions().min_iou


def test_a_window_of_a_drawing_is_the_same_pixels_as_the_whole_drawing():
    rng = np.random.default_rng(3)
    for _ in range(20):
        # Vertices on pixel corners: 45-degree edges run exactly through pixel centres, where the float arithmetic
        # decides; a window must decide exactly as the whole drawing does.
        polygon = rng.integers(0, 40, (12, 2)).astype(float)
        whole = draw([polygon], 40, 40)
        left, top = rng.integers(0, 20, 2)
        box = (int(left), int(top), int(left) + 17, int(top) + 13)
        assert np.array_equal(draw([polygon], 40, 40, box=box), whole[box[1]:box[3], box[0]:box[2]])
