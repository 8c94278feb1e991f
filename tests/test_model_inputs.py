"""Click encoding, image validation, the zoom-in frame and the colour cue."""
import numpy as np
import pytest

from model_support import disk_scene
from workers.model import Click, InvalidClicksError, InvalidImageError
from workers.model.clicks import check_clicks, encode_clicks
from workers.model.guidance import colour_bins, colour_cue, guidance_maps
from workers.model.image import MAX_PIXELS, as_rgb8
from workers.model.transforms import Frame, zoom_in_box


def test_disks_have_radius_five_and_go_to_the_channel_of_their_sign():
    maps = encode_clicks([Click(20, 10, True), Click(3, 30, False)], 40, 50)
    assert maps.shape == (2, 40, 50) and maps.dtype == np.float32
    ys, xs = np.nonzero(maps[0])
    assert maps[0].sum() == 81  # lattice points with dx^2 + dy^2 <= 25
    assert xs.min() == 15 and xs.max() == 25 and ys.min() == 5 and ys.max() == 15
    assert maps[1, 30, 0] == 1 and maps[1, 30, 8] == 1 and maps[1, 30, 9] == 0  # cut at the border, not wrapped
    assert maps[0, 30, 3] == 0 and maps[1, 10, 20] == 0


@pytest.mark.parametrize("clicks, message", [
    ([], "at least one click"),
    ([Click(50, 5, True)], "outside"),
    ([Click(-1, 5, True)], "outside"),
    ([Click(float("nan"), 5, True)], "non-finite"),
    ([Click(5, 5, False)], "positive"),
])
def test_bad_clicks_are_refused_with_a_reason(clicks, message):
    with pytest.raises(InvalidClicksError, match=message):
        check_clicks(clicks, 40, 50)


def test_images_of_other_layouts_are_converted():
    grey = np.full((10, 12), 7, np.uint8)
    assert as_rgb8(grey).shape == (10, 12, 3)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 9
    assert as_rgb8(rgba)[0, 0].tolist() == [9, 0, 0]
    deep = np.full((10, 12, 3), 4000, np.uint16)
    deep[0, 0] = 0
    out = as_rgb8(deep)
    assert out.dtype == np.uint8 and out[1, 1, 0] == 255 and out[0, 0, 0] == 0


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 40, 3), np.uint8), "at least"),
    (np.zeros((10, 10, 2), np.uint8), "shape"),
    (np.zeros((10, 10, 3), np.int64), "type"),
    ("not an array", "numpy"),
])
def test_unusable_images_are_refused_with_a_reason(image, message):
    with pytest.raises(InvalidImageError, match=message):
        as_rgb8(image)


def test_images_over_the_pixel_cap_are_refused():
    side = int(np.sqrt(MAX_PIXELS)) + 2
    with pytest.raises(InvalidImageError, match="limit"):
        as_rgb8(np.zeros((side, side), np.uint8))


def test_frame_maps_clicks_and_arrays_there_and_back():
    frame = Frame.around((100, 50, 300, 150), long_side=320)
    assert (frame.width, frame.height) == (320, 160)
    (c,) = frame.clicks_in([Click(200, 100, True)])
    assert abs(c.x - 160) < 1 and abs(c.y - 80) < 1
    yy, xx = np.mgrid[:400, :500].astype(np.float32)
    smooth = (xx + yy) / 900
    back = frame.paste(frame.crop(smooth), np.zeros_like(smooth))
    assert np.abs(back[55:145, 105:295] - smooth[55:145, 105:295]).max() < 0.01
    assert back[:50].max() == 0 and back[:, 300:].max() == 0


def test_zoom_in_box_holds_mask_and_clicks_enlarged_and_stays_in_the_image():
    mask = np.zeros((480, 854), bool)
    mask[200:300, 400:600] = True
    x0, y0, x1, y1 = zoom_in_box([Click(410, 250, True), Click(700, 50, False)], mask, (480, 854))
    assert x0 <= 400 and x1 >= 600 and y0 <= 200 and y1 >= 300
    assert abs((x1 - x0) - 280) <= 2 and abs((y1 - y0) - 200) <= 2  # 1.4 x 200 wide; at least 200 high
    x0, y0, x1, y1 = zoom_in_box([Click(5, 5, True)], None, (480, 854))
    assert (x0, y0) == (0, 0) and (x1, y1) == (200, 200)


def test_colour_cue_separates_object_colour_from_background_colour():
    rgb, mask = disk_scene()
    cue = colour_cue(colour_bins(rgb), [Click(60, 50, True)], None)
    assert cue[mask].mean() > 0.8 and cue[~mask].mean() < 0.2
    maps = guidance_maps(rgb, [Click(60, 50, True)], mask.astype(np.float32))
    assert maps.shape == (4, 96, 128) and np.array_equal(maps[2] > 0.5, mask)
