"""The learned predictor's contract: full-size outputs, zoom-in, the first click's two views, flip, and clear errors
for bad input.
A randomly initialised small network is enough here: these tests are about shapes and conventions, not quality."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from model_support import disk_scene
from workers.model import Click, InvalidClicksError, InvalidImageError
from workers.model.network import ClickSegNet, NetConfig
from workers.model.predictor import ClickSegPredictor, PredictorConfig, keep_clicked_components


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ClickSegNet(NetConfig(widths=(8, 16, 16, 24, 24), blocks=(1, 1, 1, 1), decoder_width=16))


@pytest.mark.parametrize("shape, dtype", [
    ((8, 8, 3), np.uint8), ((37, 53), np.uint8), ((60, 80, 4), np.uint8), ((60, 80, 1), np.uint8),
    ((60, 80, 3), np.uint16), ((3000, 4000, 3), np.uint8),
])
def test_every_accepted_image_gives_full_size_outputs(net, shape, dtype):
    image = np.random.default_rng(0).integers(0, 255, shape).astype(dtype)
    p = ClickSegPredictor(net)
    p.set_image(image)
    h, w = shape[:2]
    first = p.predict([Click(w // 2, h // 2, True)])
    second = p.predict([Click(w // 2, h // 2, True), Click(0, 0, False)], prev=first)
    for pred in (first, second):
        assert pred.prob.shape == (h, w) and pred.prob.dtype == np.float32 and pred.mask.shape == (h, w)
        assert np.array_equal(pred.mask, pred.prob > 0.49)
        assert 0.0 <= pred.prob.min() and pred.prob.max() <= 1.0


def test_zoom_in_looks_at_a_box_from_the_second_click(net):
    rgb, mask = disk_scene(h=480, w=854, cx=300, cy=200, r=40)
    p = ClickSegPredictor(net, PredictorConfig(long_side=320))
    p.set_image(rgb)
    clicks = [Click(300, 200, True)]
    frame = p.frame_for(clicks, None)
    assert (frame.x0, frame.y0, frame.x1, frame.y1) == (0, 0, 854, 480)
    frame = p.frame_for(clicks + [Click(320, 210, True)], mask.astype(np.float32))
    assert frame.x1 - frame.x0 == 200 and frame.y1 - frame.y0 == 200
    assert frame.x0 <= 260 and frame.x1 >= 340
    no_zoom = ClickSegPredictor(net, PredictorConfig(zoom_in=False))
    no_zoom.set_image(rgb)
    assert no_zoom.frame_for(clicks * 2, mask.astype(np.float32)).x1 == 854


def test_a_first_click_box_frames_small_objects_from_the_first_click(net):
    rgb, mask = disk_scene(h=480, w=854, cx=300, cy=200, r=10)
    p = ClickSegPredictor(net, PredictorConfig(long_side=320, first_click_side=128))
    p.set_image(rgb)
    frame = p.frame_for([Click(300, 200, True)], None)
    assert frame.x1 - frame.x0 == 128 and frame.y1 - frame.y0 == 128
    assert frame.x0 < 300 < frame.x1 and frame.y0 < 200 < frame.y1
    assert p.predict([Click(300, 200, True)]).prob.shape == (480, 854)
    # From the second click on, the zoom-in box takes over as usual.
    second = p.frame_for([Click(300, 200, True), Click(305, 200, True)], mask.astype(np.float32))
    assert second.x1 - second.x0 == 200
    # Without zoom-in there is no first-click box either: the network sees the whole image.
    whole = ClickSegPredictor(net, PredictorConfig(zoom_in=False, first_click_side=128))
    whole.set_image(rgb)
    assert whole.frame_for([Click(300, 200, True)], None).x1 == 854


def recording_views(p: ClickSegPredictor) -> list:
    """Make `p` record each view it runs the network on: (frame, the network's probabilities in it)."""
    views = []
    frame_prob = p._frame_prob

    def recorded(frame, *args):
        views.append((frame, frame_prob(frame, *args)))
        return views[-1][1]

    p._frame_prob = recorded
    return views


def test_a_first_click_is_also_seen_coarser_and_the_two_views_averaged(net):
    rgb, _ = disk_scene(h=480, w=854, cx=300, cy=200, r=40)
    config = PredictorConfig(long_side=320, first_click_coarse_side=192, first_click_coarse_min_area=0.0)
    p = ClickSegPredictor(net, config)
    p.set_image(rgb)
    views = recording_views(p)
    first = p.predict([Click(300, 200, True)])
    assert [(f.x1 - f.x0, max(f.width, f.height)) for f, _ in views] == [(854, 320), (854, 192)]
    pasted = [f.paste(prob, np.zeros((480, 854), np.float32)) for f, prob in views]
    assert np.allclose(first.prob, (pasted[0] + pasted[1]) / 2, atol=1e-6)
    # One view from the second click on, for an object box, and with the coarse view off.
    views.clear()
    p.predict([Click(300, 200, True), Click(320, 210, True)], prev=first)
    p.predict([Click(300, 200, True)], box=(250, 150, 350, 260))
    assert len(views) == 2
    one = ClickSegPredictor(net, replace(config, first_click_coarse_side=0))
    one.set_image(rgb)
    assert np.allclose(one.predict([Click(300, 200, True)]).prob, pasted[0], atol=1e-6)


def test_the_coarse_view_is_added_only_when_the_first_mask_is_not_small(net):
    rgb, _ = disk_scene(h=480, w=854, cx=300, cy=200, r=40)
    p = ClickSegPredictor(net, PredictorConfig(first_click_coarse_min_area=0.0))
    p.set_image(rgb)
    views = recording_views(p)
    p.predict([Click(300, 200, True)])
    area = (views[0][1] > 0.49).mean()
    for min_area, n_views in ((area, 2), (area + 1e-3, 1)):
        gated = ClickSegPredictor(net, PredictorConfig(first_click_coarse_min_area=min_area))
        gated.set_image(rgb)
        views = recording_views(gated)
        gated.predict([Click(300, 200, True)])
        assert len(views) == n_views, min_area


def test_flip_averaging_is_mirror_symmetric(net):
    rgb, _ = disk_scene()
    p = ClickSegPredictor(net, PredictorConfig(flip=True, keep_clicked_component=False))
    p.set_image(rgb)
    a = p.predict([Click(64, 48, True)]).prob
    p.set_image(rgb[:, ::-1])
    b = p.predict([Click(63, 48, True)]).prob
    assert np.abs(a - b[:, ::-1]).max() < 0.05


def test_stray_components_away_from_positive_clicks_are_dropped():
    prob = np.zeros((50, 50), np.float32)
    prob[5:15, 5:15] = 0.9
    prob[30:45, 30:45] = 0.8
    out = keep_clicked_components(prob, [Click(10, 10, True), Click(35, 35, False)])
    assert (out[5:15, 5:15] == 0.9).all() and (out[30:45, 30:45] < 0.49).all()


def test_bad_calls_raise_clear_errors(net):
    p = ClickSegPredictor(net)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict([Click(1, 1, True)])
    with pytest.raises(InvalidImageError):
        p.set_image(np.zeros((5, 5, 3), np.uint8))
    p.set_image(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(InvalidClicksError, match="outside"):
        p.predict([Click(30, 5, True)])
    with pytest.raises(InvalidClicksError):
        p.predict([])


def test_a_box_frames_the_object_from_the_first_click_and_bounds_the_mask(net):
    rgb, _ = disk_scene(h=480, w=854, cx=300, cy=200, r=40)
    p = ClickSegPredictor(net, PredictorConfig(long_side=320))
    p.set_image(rgb)
    box = (250, 150, 350, 260)
    frame = p.frame_for([Click(300, 200, True)], None, box)
    assert frame.x0 <= 250 and frame.x1 >= 350 and frame.y0 <= 150 and frame.y1 >= 260
    assert frame.x1 - frame.x0 < 854  # not the whole image
    pred = p.predict([Click(300, 200, True)], box=box)
    outside = np.ones(pred.prob.shape, bool)
    outside[150:260, 250:350] = False
    assert pred.prob[outside].max() == 0.0 and not pred.mask[outside].any()
    with pytest.raises(InvalidClicksError, match="box"):
        p.predict([Click(300, 200, True)], box=(900, 10, 950, 20))
    with pytest.raises(InvalidClicksError, match="four"):
        p.predict([Click(300, 200, True)], box=(1, 2, 3))
