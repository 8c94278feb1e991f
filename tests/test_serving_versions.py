"""A model replica's versions, without Ray: the replica class is plain Python under its deployment decorator, so its
version logic (background loads, answering with the project's previous version meanwhile, the base when a load
fails, a few versions kept) runs here directly on a real local object store and real small checkpoints."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from finetune_support import tiny_checkpoint
from integrations.objectstore import LocalStore
from model_support import disk_scene
from workers.model import Click
from workers.serving import VERSIONS_PER_REPLICA, ClickModel, SegmentRequest, _ImageState


@pytest.fixture
def replica(tmp_path):
    store = LocalStore(tmp_path / "store")
    for i in range(VERSIONS_PER_REPLICA + 2):
        store.put_file(f"checkpoints/v{i}.pt", tiny_checkpoint(tmp_path / f"v{i}.pt", seed=i))
    model = ClickModel.func_or_class(str(tiny_checkpoint(tmp_path / "base.pt")), "tiny-base", str(tmp_path / "store"))
    state = _ImageState(rgb=disk_scene()[0])
    return model, state


def request(version=None, key=None, project=1) -> SegmentRequest:
    return SegmentRequest("img", f"obj-{project}", [Click(60, 50, True)], version, key, project)


def ask(model, state, version=None, key=None, project=1):
    return asyncio.run(model._answer(state, request(version, key, project))).model_version


def test_a_new_version_loads_in_the_background_while_the_previous_one_answers(replica):
    model, state = replica
    assert ask(model, state) == "tiny-base"
    gate = threading.Event()
    load = model._load_version

    def slow_load(version, key):  # hold the load until the test has seen the fallback answers
        gate.wait(10)
        return load(version, key)

    model._load_version = slow_load
    answers = [ask(model, state, "v1", "checkpoints/v1.pt") for _ in range(3)]
    assert answers == ["tiny-base"] * 3  # no wait, no failure: the project's previous version answers
    gate.set()
    deadline = time.time() + 10
    while ask(model, state, "v1", "checkpoints/v1.pt") != "v1":
        assert time.time() < deadline
        time.sleep(0.05)
    assert ask(model, state) == "tiny-base"  # the rollback target is still held: instant


def test_a_project_new_to_the_replica_waits_for_its_version_once(replica):
    model, state = replica
    assert ask(model, state, "v2", "checkpoints/v2.pt", project=9) == "v2"


def test_a_version_loading_for_a_new_project_never_delays_another_projects_clicks(replica):
    """The new project waits for its version off the prediction thread: the replica's one prediction thread goes
    on answering the others while the checkpoint comes from a slow object store."""
    model, state = replica
    gate = threading.Event()
    load = model._load_version
    model._load_version = lambda version, key: gate.wait(30) and load(version, key)

    async def clicks_during_the_load():
        waiting = asyncio.create_task(model._answer(state, request("v2", "checkpoints/v2.pt", project=9)))
        await asyncio.sleep(0.3)  # project 9 is waiting for its version now
        others = [await asyncio.wait_for(model._answer(state, request(project=1)), 5) for _ in range(3)]
        still_waiting = not waiting.done()
        gate.set()
        return others, still_waiting, await waiting

    others, still_waiting, first = asyncio.run(clicks_during_the_load())
    assert [a.model_version for a in others] == ["tiny-base"] * 3 and still_waiting
    assert first.model_version == "v2"


def test_a_version_that_cannot_load_falls_back_and_is_not_retried_per_request(replica):
    model, state = replica
    calls = []
    load = model._load_version
    model._load_version = lambda v, k: calls.append(v) or load(v, k)
    assert ask(model, state, "gone", "checkpoints/missing.pt") == "tiny-base"
    assert ask(model, state, "gone", "checkpoints/missing.pt") == "tiny-base"
    assert calls == ["gone"]


def test_a_few_versions_are_kept_and_the_base_always(replica):
    model, state = replica
    for i in range(VERSIONS_PER_REPLICA + 2):
        assert ask(model, state, f"v{i}", f"checkpoints/v{i}.pt", project=100 + i) == f"v{i}"
    held = model.versions()
    assert "tiny-base" in held and len(held) == VERSIONS_PER_REPLICA + 1
    assert held[-VERSIONS_PER_REPLICA:] == [f"v{i}" for i in range(2, VERSIONS_PER_REPLICA + 2)]


def test_clicks_and_box_are_scaled_to_the_image_the_replica_holds():
    from workers.model import Click
    from workers.serving import SegmentRequest, in_image

    request = SegmentRequest("img", "obj", [Click(160, 120, True), Click(319, 239, False)], box=(10, 20, 110, 220),
                             size=(320, 240))
    clicks, box = in_image(request, 640, 480)
    assert clicks == [Click(320, 240, True), Click(638, 478, False)]
    assert box == (20, 40, 220, 440)
    assert in_image(request, 320, 240) == (request.clicks, request.box)
    assert in_image(SegmentRequest("img", "obj", request.clicks), 640, 480)[0] == request.clicks
