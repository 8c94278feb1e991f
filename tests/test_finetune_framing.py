"""How a fine-tuning job frames a domain's objects: the framing it picks for the predictor (zoom-in floor and
first-click box) and the training frames laid out to match. Pure logic: no Ray, no database."""
from __future__ import annotations

import numpy as np
import pytest

import workers.finetune as ft
from workers.finetune import FinetuneSpec, InferenceFrames, choose_framing
from workers.model.data import LoadedImage, _object


def small_objects_image(count: int = 3) -> LoadedImage:
    rgb = np.zeros((240, 320, 3), np.uint8)
    objects = []
    for i in range(count):
        mask = np.zeros((240, 320), bool)
        mask[100:112, 40 + 80 * i:52 + 80 * i] = True
        objects.append(_object(mask))
    return LoadedImage(rgb, objects)


@pytest.fixture
def scored(monkeypatch):
    """choose_framing with the parent's NoC@85 for each framing given by a table instead of measured."""
    tried = []

    def run(table: dict[tuple[int, int], float], own=(200, 0), floors=(128, 64), sides=(128,)):
        monkeypatch.setattr(ft, "load_predictor", lambda path, **config: (config["zoom_min_side"],
                                                                          config["first_click_side"]))
        monkeypatch.setattr(ft, "validate", lambda predictor, images, clicks, name: (
            tried.append(predictor) or {"NoC@85": table[predictor]}))
        spec = FinetuneSpec(parent="base", out_key="x", store_url="x", train=[], val=[], zoom_floors=floors,
                            first_click_sides=sides, choose_objects=2)
        figures: dict = {}
        current = {"zoom_min_side": own[0], "first_click_side": own[1]}
        return choose_framing("parent.pt", [small_objects_image()], current, spec, figures), figures, tried

    return run


def test_the_framing_with_the_fewest_clicks_is_chosen_among_every_combination(scored):
    table = {(200, 0): 9.0, (200, 128): 7.5, (128, 0): 8.0, (128, 128): 6.0, (64, 0): 8.5, (64, 128): 6.5}
    chosen, figures, tried = scored(table)
    assert chosen == {"zoom_min_side": 128, "first_click_side": 128}
    assert sorted(tried) == sorted(table)  # each combination measured once
    assert tried[0] == (200, 0)  # the parent's own first
    assert figures == {f"{f}/{s}": v for (f, s), v in table.items()}


def test_ties_keep_the_parents_own_framing(scored):
    table = {k: 7.0 for k in [(200, 0), (200, 128), (128, 0), (128, 128), (64, 0), (64, 128)]}
    chosen, _, _ = scored(table)
    assert chosen == {"zoom_min_side": 200, "first_click_side": 0}


def test_a_parent_already_framed_for_the_domain_is_a_candidate_as_it_is(scored):
    table = {(128, 128): 5.0, (128, 0): 6.0, (64, 0): 6.0, (64, 128): 5.0}
    chosen, _, tried = scored(table, own=(128, 128))
    assert chosen == {"zoom_min_side": 128, "first_click_side": 128}
    assert len(tried) == 4


def frames_of(generator: InferenceFrames, n: int = 200) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    image = small_objects_image(1)
    target = image.objects[0].paste(image.rgb.shape[:2])
    return [generator._frame(rng, target, image.rgb.shape[:2]) for _ in range(n)]


def test_first_click_frames_show_the_object_in_a_box_of_the_chosen_side():
    sides = [256 / m[1, 1] for m in frames_of(InferenceFrames([[small_objects_image()]], size=256, first_side=96,
                                                             zoom_prob=0.0))]
    assert 96 * 0.9 - 1e-6 <= min(sides) and max(sides) <= 96 * 1.1 + 1e-6
    # The object (centre 46, 106) is inside every frame.
    for m in frames_of(InferenceFrames([[small_objects_image()]], size=256, first_side=96, zoom_prob=0.0)):
        x, y = m @ np.array([46.0, 106.0, 1.0])
        assert 0 <= x < 256 and 0 <= y < 256


def test_without_a_first_click_box_first_click_frames_are_the_whole_image():
    sides = [256 / m[1, 1] for m in frames_of(InferenceFrames([[small_objects_image()]], size=256, zoom_prob=0.0))]
    assert min(sides) >= 320 * 0.9 - 1e-6
