"""Mask encodings: COCO RLE round trips and the checks on Label Studio brush RLE."""
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from integrations.masks import MaskError, brush_to_mask, decode, encode, mask_to_brush


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32, np.int64])
def test_coco_rle_round_trip_for_any_mask_type(dtype):
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    values = mask.astype(dtype) * (255 if dtype == np.uint8 else 1)
    rle = encode(values)
    assert (rle.height, rle.width, rle.area) == (37, 53, mask.sum())
    assert np.array_equal(decode(rle), mask)
    assert rle.as_coco()["size"] == [37, 53]


def test_only_2d_masks_are_encoded():
    with pytest.raises(MaskError):
        encode(np.zeros((2, 3, 4), bool))


def test_brush_rle_round_trip_with_holes():
    mask = np.zeros((90, 120), np.uint8)
    mask[10:80, 20:100] = 255
    mask[30:50, 40:60] = 0  # a hole, which polygon exports lose
    decoded = brush_to_mask(mask2rle(mask), 120, 90)
    assert np.array_equal(decoded, mask > 0)
    assert np.array_equal(decode(encode(decoded)), mask > 0)


def test_brush_encoder_matches_the_sdk_on_object_masks():
    """Whole objects, thin parts, a full and an empty image, a run longer than the format's longest (65,536)."""
    from support import DATASETS
    from workers.model.datasets import read_mask

    masks = [read_mask(p) for p in sorted((DATASETS / "eval" / "davis345" / "masks").iterdir())[::40]]
    full, empty = np.ones((400, 300), bool), np.zeros((7, 5), bool)
    assert len(masks) >= 8
    for mask in masks + [full, empty, np.eye(9, dtype=bool)]:
        assert mask_to_brush(mask) == mask2rle(mask.astype(np.uint8) * 255)
        assert np.array_equal(brush_to_mask(mask_to_brush(mask), mask.shape[1], mask.shape[0]), mask)
    with pytest.raises(MaskError):
        mask_to_brush(np.zeros((0, 4), bool))


@pytest.mark.parametrize(
    "rle, width, height, message",
    [
        ("mask", 4, 4, "list of byte values"),
        ([0] * 3, 4, 4, "list of byte values"),
        ([0, 0, 0, 64, 1, 2, 999], 4, 4, "0 to 255"),
        ([0, 0, 0, 65, 0, 0, 0], 4, 4, "RLE covers 16 pixels but the image is 4x4"),
        ([0, 0, 0, 64, 0, 0], 4, 4, "cannot be decoded"),
        ([0, 0, 0, 64, 0, 0], 0, 4, "positive integer"),
        ([0, 0, 0, 64, 0, 0], 4.0, 4, "positive integer"),
        ([0, 0, 0, 64, 0, 0], 100_000, 100_000, "larger than"),
    ],
)
def test_bad_brush_rle_is_refused_before_decoding(rle, width, height, message):
    with pytest.raises(MaskError, match=message):
        brush_to_mask(rle, width, height)
