"""The fine-tuning job's own logic, without Ray or a database: how it frames a domain's objects (the zoom-in floor and
first-click box it picks from their size, and training frames laid out to match) and how it keeps out of serving's
way (its priority)."""
from __future__ import annotations

import numpy as np
import pytest

from workers.model.framing import InferenceFrames, framing_for
from workers.model.data import LoadedImage, _object


def objects_of_side(side: int, image_hw=(240, 320), count: int = 5) -> LoadedImage:
    rgb = np.zeros(image_hw + (3,), np.uint8)
    objects = []
    for i in range(count):
        mask = np.zeros(image_hw, bool)
        mask[10:10 + side, 10 + i:10 + i + side] = True
        objects.append(_object(mask))
    return LoadedImage(rgb, objects)


@pytest.mark.parametrize("side, floor, first", [
    (23, 64, 128),  # nuclei-sized: the median object spans a quarter of a 64 px zoom-in, and a first-click box
    (36, 128, 256),  # a quarter of 128 px
    (60, 200, 0),  # large enough for the parent's own floor, and over an eighth of the image: the whole image
    (10, 64, 128),  # smaller than any floor allows: the smallest
])
def test_the_framing_follows_the_size_of_the_domains_objects(side, floor, first):
    framing = framing_for([objects_of_side(side)], 200, (200, 128, 64))
    assert (framing["zoom_min_side"], framing["first_click_side"]) == (floor, first)
    assert framing["median_object_px"] == side


def test_the_median_object_decides_and_the_parents_floor_is_one_of_the_choices():
    images = [objects_of_side(23, count=3), objects_of_side(150, count=2)]
    assert framing_for(images, 200, (200, 128, 64))["zoom_min_side"] == 64
    # A parent already framed for a domain (floor 96) keeps its floor when the objects still fit it.
    assert framing_for([objects_of_side(30)], 96, (200, 128, 64))["zoom_min_side"] == 96
    # The first click sees the whole image when the objects are a large part of it.
    assert framing_for([objects_of_side(30, image_hw=(100, 120))], 200, (200, 128, 64))["first_click_side"] == 0


def frames_of(first_side: int, n: int = 200) -> list[np.ndarray]:
    """Affine matrices of `n` first-click training frames (no zoom-in) of a 12 px object centred at (16, 16) in a
    320 x 240 image."""
    image = objects_of_side(12, count=1)
    generator = InferenceFrames([[image]], size=256, first_side=first_side, zoom_prob=0.0)
    rng = np.random.default_rng(0)
    target = image.objects[0].paste(image.rgb.shape[:2])
    return [generator.frame(rng, target, image.rgb.shape[:2]) for _ in range(n)]


def test_first_click_frames_show_the_object_in_a_box_of_the_chosen_side():
    frames = frames_of(first_side=96)
    sides = [256 / m[1, 1] for m in frames]
    assert 96 * 0.9 - 1e-6 <= min(sides) and max(sides) <= 96 * 1.1 + 1e-6
    for m in frames:  # the object is inside every frame
        x, y = m @ np.array([16.0, 16.0, 1.0])
        assert 0 <= x < 256 and 0 <= y < 256


def test_without_a_first_click_box_first_click_frames_are_the_whole_image():
    sides = [256 / m[1, 1] for m in frames_of(first_side=0)]
    assert min(sides) >= 320 * 0.9 - 1e-6


def test_the_job_lowers_only_its_own_priority():
    """The job's priority drop (nice 19, idle class) applies to the thread that computes, as the job runs in a
    Ray worker of its own; run here in a thread of the test process, it leaves the rest of the process alone."""
    import os
    import threading

    from workers.finetune import lower_priority

    seen = {}

    def job():
        lower_priority(19)
        seen["policy"] = os.sched_getscheduler(0)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, 0)

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert seen == {"policy": os.SCHED_IDLE, "nice": 19}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
