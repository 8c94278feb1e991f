"""Property-based tests (hypothesis) of everything that parses untrusted input: Label Studio's request bodies
(/predict, /setup, webhooks), label configs, brush RLE from Label Studio and COCO RLE read back from the database.

The property is the same everywhere: any input gives a valid result or our own error type with a message (ProtocolError,
Rejected, MaskError), never another exception. Where an encoding has an inverse, the round trip is exact. Bodies are
drawn both from scratch and as recorded Label Studio bodies with one field replaced by arbitrary JSON, which reaches
the checks deep inside a body that random JSON alone never gets past."""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from label_studio_sdk.converter.brush import mask2rle

from integrations.coco import check_counts
from integrations.coco import decode as coco_decode
from integrations.label_studio import protocol
from integrations.label_studio.errors import ProtocolError
from integrations.label_studio.labeling_config import parse_label_config
from integrations.label_studio.webhooks import Rejected, parse_annotation, parse_deleted_ids, parse_project
from integrations.masks import MaskError, brush_to_mask, decode, decode_brush, encode, mask_to_brush

# Small and quick: no example database, hypothesis's caches outside the checkout, no per-example deadline (the
# machine may be busy).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "clickmask-hypothesis")
PROPERTY = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


def paths(node, prefix=()):
    """Every place in a JSON document where a value sits, as key/index tuples (the root is ())."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from paths(child, (*prefix, key))


def replaced(body, path: tuple, value, delete: bool):
    body = copy.deepcopy(body)
    if not path:
        return value
    *parents, last = path
    node = body
    for key in parents:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[last]
    else:
        node[last] = value
    return body


def mutated(recorded: dict):
    """The recorded body with one field (anywhere) replaced by arbitrary JSON or deleted, sent through JSON."""
    places = list(paths(recorded))
    return st.builds(lambda path, value, delete: replaced(recorded, path, value, delete),
                     st.sampled_from(places), json_values, st.booleans())


def through_json(body) -> bytes:
    """As a server receives it (Python's json writes NaN and Infinity, as a hostile client may)."""
    return json.dumps(body).encode()


# ----------------------------------------------------------------------------------------- request bodies


@PROPERTY
@given(raw=st.binary(max_size=300) | json_values.map(through_json))
def test_any_bytes_are_a_json_object_or_a_protocol_error(raw):
    try:
        body = protocol.load_json(raw)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert isinstance(body, dict)


@PROPERTY
@given(body=json_values)
def test_any_json_is_a_predict_or_setup_request_or_a_protocol_error(body):
    for parse in (protocol.parse_predict, protocol.parse_setup):
        try:
            parse(protocol.load_json(through_json(body)))
        except ProtocolError as exc:
            assert str(exc)


RECORDED_PREDICT = ["predict_interactive_pos_neg_keypoints", "predict_interactive_rectangle", "predict_batch_2_tasks"]


@pytest.mark.parametrize("name", RECORDED_PREDICT)
def test_recorded_predict_bodies_with_any_field_replaced(ls_request, name):
    recorded = ls_request(name)
    # The task's earlier predictions (full RLE) are never read: leave them out of the places to mutate.
    for task in recorded["tasks"]:
        for key in ("predictions", "annotations", "drafts"):
            task.pop(key, None)

    @PROPERTY
    @given(body=mutated(recorded))
    def check(body):
        try:
            parsed = protocol.parse_predict(protocol.load_json(through_json(body)))
        except ProtocolError as exc:
            assert str(exc)
            return
        for obj in parsed.objects:  # whatever got through is usable: clicks inside the image, a box inside too
            assert 1 <= obj.width <= protocol.MAX_SIDE and 1 <= obj.height <= protocol.MAX_SIDE
            for click in obj.prompt_clicks():
                assert 0 <= click.x <= obj.width - 1 and 0 <= click.y <= obj.height - 1
            if obj.box is not None:
                x0, y0, x1, y1 = obj.box
                assert 0 <= x0 < x1 <= obj.width and 0 <= y0 < y1 <= obj.height
            assert any(c.positive for c in obj.prompt_clicks())

    check()


def test_recorded_setup_body_with_any_field_replaced(ls_request):
    @PROPERTY
    @given(body=mutated(ls_request("setup")))
    def check(body):
        try:
            protocol.parse_setup(protocol.load_json(through_json(body)))
        except ProtocolError as exc:
            assert str(exc)

    check()


@PROPERTY
@given(points=st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.booleans()), min_size=1, max_size=8),
       width=st.integers(1, protocol.MAX_SIDE), height=st.integers(1, protocol.MAX_SIDE))
def test_keypoints_in_percent_become_pixels_inside_the_image(ls_request_once, points, width, height):
    body = ls_request_once
    template = body["params"]["context"]["result"][0]
    regions = []
    for i, (x, y, positive) in enumerate(points):
        region = copy.deepcopy(template)
        region.update(id=f"k{i}", is_positive=positive or i == 0, original_width=width, original_height=height)
        region["value"].update(x=x, y=y)
        regions.append(region)
    body["params"]["context"]["result"] = regions
    (obj,) = protocol.parse_predict(body).objects
    assert len(obj.clicks) == len(points)
    for i, (click, (x, y, positive)) in enumerate(zip(obj.clicks, points)):
        assert click.positive == (positive or i == 0)
        assert click.x == pytest.approx(min(x * width / 100, width - 1))
        assert click.y == pytest.approx(min(y * height / 100, height - 1))
        assert 0 <= click.x <= width - 1 and 0 <= click.y <= height - 1
    # The object's key is the same with only its first click: it names the object, not the click history.
    body["params"]["context"]["result"] = regions[:1]
    assert protocol.parse_predict(body).objects[0].key == obj.key


@pytest.fixture
def ls_request_once(ls_request):
    return ls_request("predict_interactive_pos_neg_keypoints")


@PROPERTY
@given(xml=st.text(max_size=200) | st.builds(
    lambda tags, attrs: "".join(f"<{t} {a}>" for t, a in zip(tags, attrs)) + "".join(f"</{t}>" for t in tags[::-1]),
    st.lists(st.sampled_from(["View", "Image", "BrushLabels", "KeyPointLabels", "RectangleLabels", "Label", "x"]),
             max_size=6),
    st.lists(st.sampled_from(['name="image"', 'value="$image"', 'toName="image"', 'smart="true"', 'value="A"',
                              'name="kp"', 'value="image"', "", 'name=""'], ), max_size=6)))
def test_any_label_config_parses_or_is_a_protocol_error(xml):
    try:
        config = parse_label_config(xml)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert config.answers and config.labels and config.smart


@pytest.mark.parametrize("depth, message", [(28_000, "more than 5000 elements"), (4_900, "no <BrushLabels>")])
def test_deeply_nested_label_configs_are_protocol_errors(depth, message):
    xml = "<View>" + "<a>" * depth + "</a>" * depth + "</View>"  # under the 200,000 character cap
    with pytest.raises(ProtocolError, match=message):
        parse_label_config(xml)


# -------------------------------------------------------------------------------------------------- webhooks


def parse_event(body) -> None:
    """What handle_event checks before anything touches the database, in its order."""
    if not isinstance(body, dict):
        return
    if body.get("action") in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        parse_project(body)
        parsed = parse_annotation(body)
        for mask in parsed.masks:
            assert (mask.rle.width, mask.rle.height) == parsed.size
            assert 0 <= mask.rle.area <= mask.rle.width * mask.rle.height
    elif body.get("action") == "ANNOTATIONS_DELETED":
        parse_project(body)
        assert all(isinstance(i, int) and i >= 0 for i in parse_deleted_ids(body))


@pytest.mark.parametrize("name", ["webhook_annotation_created", "webhook_annotation_updated",
                                  "webhook_annotations_deleted"])
def test_recorded_webhooks_with_any_field_replaced(ls_request, name):
    @PROPERTY
    @given(body=mutated(ls_request(name)))
    def check(body):
        try:
            parse_event(json.loads(through_json(body)))
        except Rejected as exc:
            assert str(exc)

    check()


# ---------------------------------------------------------------------------------------------------- brush RLE


def masks(max_side: int = 24):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side), st.integers(0, 2**32 - 1),
                     st.floats(0, 1)).map(lambda a: np.random.default_rng(a[2]).random((a[0], a[1])) < a[3])


@PROPERTY
@given(mask=masks())
def test_brush_rle_round_trip(mask):
    height, width = mask.shape
    decoded = brush_to_mask(mask2rle(mask.astype(np.uint8) * 255), width, height)
    assert decoded.dtype == bool and np.array_equal(decoded, mask)
    assert np.array_equal(decode(encode(decoded)), mask)  # and on into the stored COCO RLE


@PROPERTY
@given(mask=masks(), long_runs=st.booleans())
def test_brush_encoder_writes_the_sdks_bytes(mask, long_runs):
    if long_runs:  # runs of more than 65,536 RGBA values, written as several
        mask = np.kron(mask, np.ones((12, 120), bool))
    assert mask_to_brush(mask) == mask2rle(mask.astype(np.uint8) * 255)


def header(width: int, height: int) -> list[int]:
    return list((width * height * 4).to_bytes(4, "big"))


@PROPERTY
@given(width=st.integers(-3, 40), height=st.integers(-3, 40),
       rle=st.lists(st.integers(-5, 300), max_size=60) | json_values,
       fits=st.booleans())
def test_any_brush_rle_is_a_mask_of_the_image_or_a_mask_error(width, height, rle, fits):
    if fits and isinstance(rle, list) and width > 0 and height > 0:
        rle = header(width, height) + rle  # a header that matches, so decoding goes on into the body
    try:
        mask = brush_to_mask(rle, width, height)
    except MaskError as exc:
        assert str(exc)
        return
    assert mask.shape == (height, width) and mask.dtype == bool


@PROPERTY
@given(width=st.integers(1, 30), height=st.integers(1, 30), body=st.binary(min_size=1, max_size=80))
def test_brush_rle_with_a_true_header_and_any_body(width, height, body):
    """Word sizes up to 32 bits and runs past the end: the decoder writes values that do not fit a byte and
    runs beyond the image, which must end as a MaskError."""
    try:
        mask = brush_to_mask(header(width, height) + list(body), width, height)
    except MaskError as exc:
        assert str(exc)
        return
    assert mask.shape == (height, width)


@PROPERTY
@given(values=st.lists(st.integers(0, 255), min_size=1, max_size=400), repeats=st.integers(1, 6))
def test_any_byte_values_encoded_by_the_sdk_decode_exactly(values, repeats):
    """Label Studio's own brush canvas is RGBA in the label's colour, not only 0/255: any byte values round-trip."""
    from label_studio_sdk.converter.brush import encode_rle

    raw = np.repeat(np.array(values, np.uint8), repeats)
    assert np.array_equal(decode_brush(bytes(encode_rle(raw))), raw)


@PROPERTY
@given(width=st.integers(1, 12), height=st.integers(1, 12), body=st.binary(min_size=1, max_size=80))
def test_what_decodes_here_decodes_the_same_with_the_sdk(width, height, body):
    from label_studio_sdk.converter.brush import decode_rle

    data = bytes(header(width, height)) + body
    try:
        ours = decode_brush(data)
    except MaskError:
        return
    assert np.array_equal(ours, decode_rle(data))


def test_a_hostile_stream_is_decoded_in_little_memory():
    """A stream of zeros after a true header decodes as tiny blocks until it runs out. The SDK's decoder holds a
    Python string per bit: about 31 MB for these 64 KiB (5 GB for 8 MiB); this one a byte per bit."""
    import tracemalloc

    rle = header(300, 300) + [0] * (1 << 16)
    tracemalloc.start()
    try:
        with pytest.raises(MaskError, match="ends early"):
            brush_to_mask(rle, 300, 300)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000  # measured here: about 1.1 MB


def test_brush_rle_whose_values_do_not_fit_a_byte_is_a_mask_error():
    # 16 values, words of 32 bits, one run of all 16 with the value 2**32 - 1.
    bits = format(16, "032b") + "11111" + "0000" * 4 + "1" + "00" + "1111" + "1" * 32
    bits += "0" * (-len(bits) % 8)
    rle = [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]
    with pytest.raises(MaskError, match="cannot be decoded"):
        brush_to_mask(rle, 2, 2)


# ------------------------------------------------------------------------------------------ COCO RLE from the DB


@PROPERTY
@given(mask=masks(40))
def test_coco_rle_round_trip_through_the_check(mask):
    rle = encode(mask)
    runs = check_counts(rle.counts, rle.height, rle.width)
    assert int(runs.sum()) == mask.size and int(runs[1::2].sum()) == rle.area == int(mask.sum())
    assert np.array_equal(decode(rle), mask)


@PROPERTY
@given(counts=st.text(max_size=40) | st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=111),
                                             max_size=40),
       height=st.integers(-2, 30), width=st.integers(-2, 30))
def test_any_stored_counts_are_checked_runs_or_a_mask_error(counts, height, width):
    try:
        runs = check_counts(counts, height, width)
    except MaskError as exc:
        assert str(exc)
        return
    # Accepted: pycocotools decodes it to exactly the runs the check saw.
    assert (runs >= 0).all() and int(runs.sum()) == height * width
    decoded = coco_decode(counts, height, width)
    assert decoded.shape == (height, width) and int(decoded.sum()) == int(runs[1::2].sum())
