"""Any replica answers any click the same: a replica's per-object state is a cache, never the only copy. Two replica
instances (the deployment class as plain Python, no Ray: this is about the replica's own logic) run the bundled
model; one sees an object click by click, the other only the last request with the whole history."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model_support import disk_scene
from workers.model import Click
from workers.serving import ClickModel, SegmentRequest, _ImageState

CLICKS = [Click(150, 120, True), Click(230, 120, False), Click(110, 150, True), Click(150, 175, True)]


def fresh_replica():
    return ClickModel.func_or_class("base", "base"), _ImageState(rgb=disk_scene(h=240, w=320, cx=150, cy=120,
                                                                                    r=50)[0])


def ask(replica, clicks, key="obj", box=None):
    model, state = replica
    return asyncio.run(model._answer(state, SegmentRequest("img", key, list(clicks), box=box)))


@pytest.fixture(scope="module")
def seen():
    """A replica that answered every click of the object in turn: the last answer of each prefix."""
    replica = fresh_replica()
    answers = [ask(replica, CLICKS[:k]) for k in range(1, len(CLICKS) + 1)]
    assert [a.incremental for a in answers] == [False, True, True, True]
    return replica, answers


def test_a_replica_that_never_saw_the_object_gives_the_same_answer(seen):
    _, answers = seen
    for k in (2, len(CLICKS)):
        cold = ask(fresh_replica(), CLICKS[:k])
        assert not cold.incremental
        assert np.array_equal(cold.mask_bits, answers[k - 1].mask_bits)
        assert cold.score == answers[k - 1].score


def test_the_answer_depends_on_the_earlier_predictions_so_the_check_above_has_teeth(seen):
    # One prediction from the clicks alone (no previous mask) answers differently on this object: a replica that
    # skipped the chain on a cache miss would fail the test above.
    from workers.model.predictor import load_predictor

    predictor = load_predictor("base")
    predictor.set_image(disk_scene(h=240, w=320, cx=150, cy=120, r=50)[0])
    alone = predictor.predict(CLICKS, None).mask
    assert not np.array_equal(np.packbits(alone), seen[1][-1].mask_bits)


def test_an_edited_history_on_a_replica_that_saw_the_object_matches_a_fresh_replica(seen):
    replica, _ = seen
    edited = [CLICKS[0], CLICKS[2], CLICKS[3]]  # the negative click deleted in the editor
    assert np.array_equal(ask(replica, edited).mask_bits, ask(fresh_replica(), edited).mask_bits)


def test_a_smart_box_with_clicks_is_replayed_the_same(seen):
    box = (90.0, 60.0, 215.0, 185.0)
    warm = fresh_replica()
    for k in range(1, len(CLICKS) + 1):
        last = ask(warm, CLICKS[:k], key="boxed", box=box)
    assert np.array_equal(ask(fresh_replica(), CLICKS, key="boxed", box=box).mask_bits, last.mask_bits)
