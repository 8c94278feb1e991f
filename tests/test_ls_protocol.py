"""Label config parsing, /predict and /setup parsing and the answers built for Label Studio, on the request bodies
a real Label Studio 1.23.2 sent (shared/label_studio/requests) and on every kind of bad input."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from integrations.label_studio import protocol
from integrations.label_studio.errors import LabelConfigError, ProtocolError
from integrations.label_studio.labeling_config import Answer, parse_label_config
from ls_support import STANDARD_CONFIG
from workers.model import Click

INTERACTIVE = [
    "predict_interactive_positive_keypoint",
    "predict_interactive_pos_neg_keypoints",
    "predict_interactive_rectangle",
]


def config_with(brush_labels: str, extra: str = "", image: str = '<Image name="img" value="$photo"/>') -> str:
    return f"""<View>{image}
      <BrushLabels name="brush" toName="img">{brush_labels}</BrushLabels>
      <KeyPointLabels name="kp" toName="img" smart="true"><Label value="Cat"/><Label value="Dog"/></KeyPointLabels>
      {extra}</View>"""


# ------------------------------------------------------------------------------------------------- label config


def test_standard_config():
    config = parse_label_config(STANDARD_CONFIG)
    assert (config.image_name, config.image_key) == ("image", "image")
    assert [(t, c.name, c.labels) for t, c in config.answers] == [("brushlabels", "tag", ("Object",))]
    assert config.smart_control("kp", "keypointlabels").labels == ("Object",)
    assert config.smart_control("rect", "rectanglelabels").to_name == "image"
    assert config.answer_for("Object") == Answer("brushlabels", "tag", "image", "Object")


def test_recorded_setup_config_maps_labels_by_name(ls_request):
    setup = protocol.parse_setup(ls_request("setup"))
    assert setup.project == "1.1795586130"
    config = setup.config
    assert config.labels == ("Cat", "Dog")
    assert config.answer_for("Dog").label == "Dog"
    with pytest.raises(LabelConfigError, match="'Horse' has no counterpart in the answer controls 'brush'"):
        config.answer_for("Horse")


def test_single_brush_label_takes_every_smart_label():
    config = parse_label_config(config_with('<Label value="Thing"/>'))
    assert (config.image_name, config.image_key) == ("img", "photo")
    assert config.answer_for("Cat").label == config.answer_for("Dog").label == "Thing"


def test_smart_control_must_exist_with_its_type():
    config = parse_label_config(STANDARD_CONFIG)
    with pytest.raises(LabelConfigError, match="no smart rectanglelabels control named 'kp'"):
        config.smart_control("kp", "rectanglelabels")
    with pytest.raises(LabelConfigError, match="'nope'"):
        config.smart_control("nope", "keypointlabels")


def test_non_smart_keypoints_are_not_smart_controls():
    plain = '<KeyPointLabels name="plain" toName="img"><Label value="x"/></KeyPointLabels>'
    xml = config_with('<Label value="Cat"/>', plain)
    assert set(parse_label_config(xml).smart) == {"kp"}


@pytest.mark.parametrize(
    "xml, message",
    [
        ("", "missing or empty"),
        ("<View><Image", "not well-formed"),
        ('<!DOCTYPE View [<!ENTITY a "aaaa">]><View>&a;</View>', "DOCTYPE"),
        ('<!DOCTYPE lol [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;">]><View>&l2;</View>', "DOCTYPE"),
        ('<!DOCTYPE x SYSTEM "file:///etc/passwd"><View/>', "DOCTYPE"),
        ("<View>" + "<Label value='x'/>" * 6000 + "</View>", "more than 5000 elements"),
        ("<View>" + " " * 200_001 + "</View>", "longer than"),
        ('<View><Image name="image" value="$image"/></View>', "no <BrushLabels>"),
        (config_with('<Label value="a"/>', '<BrushLabels name="b2" toName="img"><Label value="c"/></BrushLabels>'),
         "more than one <BrushLabels>"),
        (config_with(""), "has no <Label"),
        (config_with("<Label/>"), "'value'"),
        (config_with('<Label value="a"/>', image='<Image name="other" value="$photo"/>'), "which is no <Image>"),
        (config_with('<Label value="a"/>', image='<Image name="img" value="photo"/>'), "task variable"),
        ('<View><Image name="img" value="$x"/><BrushLabels name="b" toName="img"><Label value="a"/></BrushLabels>'
         "</View>", "no smart"),
        (config_with('<Label value="a"/>', '<RectangleLabels name="r" toName="elsewhere" smart="true">'
                                           '<Label value="a"/></RectangleLabels>'), "points to 'elsewhere'"),
    ],
)
def test_bad_label_configs(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_label_config_must_be_a_string():
    with pytest.raises(LabelConfigError):
        parse_label_config(["<View/>"])


# ------------------------------------------------------------------------------------------------ /predict bodies


def test_batch_body(ls_request):
    request = protocol.parse_predict(ls_request("predict_batch_2_tasks"))
    assert not request.interactive and request.objects == ()
    assert request.project == "1.1795586130"
    assert [(t.id, t.image_uri) for t in request.tasks] == [
        (1, "/data/upload/1/40bf78ac-img1.png"), (2, "/data/upload/1/24d941ba-img2.png")]


def test_positive_and_negative_keypoints(ls_request):
    request = protocol.parse_predict(ls_request("predict_interactive_pos_neg_keypoints"))
    assert request.interactive and [t.id for t in request.tasks] == [1]
    (obj,) = request.objects
    # 320 x 240 image: (50 %, 50 %) and (80 %, 20 %), the second an Alt-click; request order kept.
    assert obj.clicks == (Click(160.0, 120.0, True), Click(256.0, 48.0, False))
    assert (obj.label, obj.answer.label, obj.width, obj.height, obj.box) == ("Cat", "Cat", 320, 240, None)
    assert obj.region_ids == ("kP1aB2cD3e", "nEg9xY8wV7")


def test_rectangle(ls_request):
    (obj,) = protocol.parse_predict(ls_request("predict_interactive_rectangle")).objects
    assert obj.clicks == () and (obj.label, obj.answer.label) == ("Dog", "Dog")
    # 400 x 300 image, x 25 %, y 16.67 %, width 37.5 %, height 33.33 %
    assert obj.box == pytest.approx((100.0, 50.01, 250.0, 150.0))


def test_prompt_clicks_put_the_box_centre_first(ls_request):
    body = ls_request("predict_interactive_rectangle")
    keypoint = {"original_width": 400, "original_height": 300, "image_rotation": 0, "id": "kp2",
                "value": {"x": 10.0, "y": 10.0, "keypointlabels": ["Dog"]}, "is_positive": False,
                "from_name": "kp", "to_name": "image", "type": "keypointlabels"}
    body["params"]["context"]["result"].append(keypoint)
    (obj,) = protocol.parse_predict(body).objects
    assert obj.prompt_clicks() == (Click(175.0, pytest.approx(100.005), True), Click(40.0, 30.0, False))
    keypoints_only = protocol.parse_predict(ls_request("predict_interactive_pos_neg_keypoints")).objects[0]
    assert keypoints_only.prompt_clicks() == keypoints_only.clicks


def test_object_key_stays_as_clicks_are_added_and_separates_everything_else(ls_request):
    one = protocol.parse_predict(ls_request("predict_interactive_positive_keypoint")).objects[0]
    two = protocol.parse_predict(ls_request("predict_interactive_pos_neg_keypoints")).objects[0]
    assert one.key == two.key

    def key_after(edit) -> str:
        body = ls_request("predict_interactive_pos_neg_keypoints")
        edit(body)
        return protocol.parse_predict(body).objects[0].key

    def relabel(body):
        for region in body["params"]["context"]["result"]:
            region["value"]["keypointlabels"] = ["Dog"]

    others = {
        "another project": key_after(lambda b: b.update(project="2.1795586130")),
        "another task": key_after(lambda b: b["tasks"][0].update(id=7)),
        "another user": key_after(lambda b: b["params"].update(user={"id": 5})),
        "another label": key_after(relabel),
        "another object (first region)": key_after(lambda b: b["params"]["context"]["result"][0].update(id="zz")),
    }
    assert two.key not in others.values() and len(set(others.values())) == len(others)
    assert key_after(lambda b: b["params"].update(user=5)) == others["another user"]


def test_regions_of_two_labels_are_two_objects(ls_request):
    body = ls_request("predict_interactive_pos_neg_keypoints")
    dog = copy.deepcopy(body["params"]["context"]["result"][0])
    dog.update(id="dog1")
    dog["value"]["keypointlabels"] = ["Dog"]
    body["params"]["context"]["result"].insert(1, dog)
    cat, dog_obj = protocol.parse_predict(body).objects
    assert (cat.label, len(cat.clicks), dog_obj.label, len(dog_obj.clicks)) == ("Cat", 2, "Dog", 1)
    assert cat.key != dog_obj.key


def test_smart_label_mapped_to_the_only_brush_label(ls_request):
    body = ls_request("predict_interactive_pos_neg_keypoints")
    body["label_config"] = body["label_config"].replace('<Label value="Dog" background="#0000FF"/>\n  </Brush',
                                                        "</Brush").replace('"Cat" background="#FF0000"/>\n    </Brush',
                                                                           '"Cat" background="#FF0000"/></Brush')
    config = parse_label_config(body["label_config"])
    assert config.labels == ("Cat",)
    assert protocol.parse_predict(body).objects[0].answer.label == "Cat"


def test_clicks_on_the_far_edge_stay_inside_the_image(ls_request):
    body = ls_request("predict_interactive_positive_keypoint")
    body["params"]["context"]["result"][0]["value"].update(x=100.0, y=100.0)
    (obj,) = protocol.parse_predict(body).objects
    assert obj.clicks == (Click(319.0, 239.0, True),)


def test_previous_predictions_are_never_read(ls_request):
    body = ls_request("predict_interactive_pos_neg_keypoints")
    body["tasks"][0]["predictions"] = [{"result": "garbage", "rle": {"not": "a list"}}]
    body["tasks"][0]["drafts"] = 17
    assert protocol.parse_predict(body).objects[0].clicks[0] == Click(160.0, 120.0, True)


def edit(path: str, value, *, delete: bool = False):
    """A mutation of the pos/neg body: set (or delete) the field at a dotted path; digits index lists."""

    def apply(body):
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key = int(last) if last.isdigit() else last
        if delete:
            del node[key]
        else:
            node[key] = value

    return apply


REGION = "params.context.result.0"
BAD_BODIES = {
    "no project": (edit("project", None, delete=True), "body.project"),
    "no label config": (edit("label_config", None, delete=True), "body.label_config is missing"),
    "label config with DOCTYPE": (edit("label_config", '<!DOCTYPE a [<!ENTITY b "c">]><View/>'), "DOCTYPE"),
    "tasks not a list": (edit("tasks", {"id": 1}), "body.tasks is missing or not a list"),
    "no tasks": (edit("tasks", []), "body.tasks is empty"),
    "task not an object": (edit("tasks.0", "1"), r"tasks\[0\] must be a JSON object"),
    "task without id": (edit("tasks.0.id", None, delete=True), r"tasks\[0\].id"),
    "task id a bool": (edit("tasks.0.id", True), r"tasks\[0\].id is missing or not an integer"),
    "task without data": (edit("tasks.0.data", None, delete=True), r"tasks\[0\].data"),
    "task without the image variable": (edit("tasks.0.data", {"img": "x"}), r"tasks\[0\].data.image"),
    "image URL not a string": (edit("tasks.0.data.image", ["x"]), r"tasks\[0\].data.image"),
    "blank image URL": (edit("tasks.0.data.image", "  "), "must be an image URL"),
    "image URL too long": (edit("tasks.0.data.image", "http://a/" + "x" * 9000), "must be an image URL"),
    "params not an object": (edit("params", "x"), "body.params"),
    "context without result": (edit("params.context", {}), "params.context.result"),
    "context result empty": (edit("params.context.result", []), "no smart region"),
    "two tasks with a context": (lambda b: b["tasks"].append(copy.deepcopy(b["tasks"][0])), "exactly one task"),
    "region not an object": (edit(REGION, 3), r"result\[0\] must be a JSON object"),
    "unknown region type": (edit(f"{REGION}.type", "polygonlabels"), "not a smart keypoint or rectangle"),
    "unknown control": (edit(f"{REGION}.from_name", "other"), "no smart keypointlabels control named 'other'"),
    "wrong image": (edit(f"{REGION}.to_name", "img2"), "is not the image"),
    "no region id": (edit(f"{REGION}.id", None, delete=True), r"result\[0\].id"),
    "empty region id": (edit(f"{REGION}.id", ""), "non-empty string"),
    "no original width": (edit(f"{REGION}.original_width", None, delete=True), "original_width is missing"),
    "zero height": (edit(f"{REGION}.original_height", 0), "original_height = 0"),
    "absurd width": (edit(f"{REGION}.original_width", 10**9), "not between 1 and"),
    "fractional width": (edit(f"{REGION}.original_width", 320.5), "original_width is missing or not an integer"),
    "rotated image": (edit(f"{REGION}.image_rotation", 90), "rotated images"),
    "no value": (edit(f"{REGION}.value", None, delete=True), "value is missing"),
    "no labels": (edit(f"{REGION}.value.keypointlabels", None, delete=True), "keypointlabels is missing"),
    "two labels": (edit(f"{REGION}.value.keypointlabels", ["Cat", "Dog"]), "exactly one label"),
    "unknown label": (edit(f"{REGION}.value.keypointlabels", ["Horse"]), "unknown label 'Horse'"),
    "x missing": (edit(f"{REGION}.value.x", None, delete=True), "x is missing"),
    "x over 100 %": (edit(f"{REGION}.value.x", 100.5), "outside 0-100"),
    "y below 0 %": (edit(f"{REGION}.value.y", -1), "outside 0-100"),
    "x not a number": (edit(f"{REGION}.value.x", "50"), "x is missing or not a"),
    "x NaN": (edit(f"{REGION}.value.x", float("nan")), "finite"),
    "y infinite": (edit(f"{REGION}.value.y", float("inf")), "finite"),
    "x a bool": (edit(f"{REGION}.value.x", True), "finite"),
    "is_positive not a bool": (edit(f"{REGION}.is_positive", "no"), "is_positive"),
    "only negative clicks": (edit(f"{REGION}.is_positive", False), "needs a positive click"),
    "sizes disagree": (edit("params.context.result.1.original_width", 640), "disagree on the image size"),
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_bad_predict_bodies(ls_request, case):
    change, message = BAD_BODIES[case]
    body = ls_request("predict_interactive_pos_neg_keypoints")
    change(body)
    # Through JSON and back, as a server would receive it (NaN and Infinity are what Python's json accepts).
    body = protocol.load_json(json.dumps(body))
    with pytest.raises(ProtocolError, match=message):
        protocol.parse_predict(body)


RECT = "params.context.result.0.value"
BAD_RECTANGLES = {
    "zero width": (edit(f"{RECT}.width", 0), "empty or reaches outside"),
    "beyond the right edge": (edit(f"{RECT}.width", 80), "empty or reaches outside"),
    "beyond the bottom": (edit(f"{RECT}.height", 90), "empty or reaches outside"),
    "negative height": (edit(f"{RECT}.height", -5), "outside 0-100"),
    "rotated": (edit(f"{RECT}.rotation", 30), "rotated rectangles"),
    "unknown label": (edit(f"{RECT}.rectanglelabels", ["Horse"]), "unknown label"),
}


@pytest.mark.parametrize("case", BAD_RECTANGLES)
def test_bad_rectangles(ls_request, case):
    change, message = BAD_RECTANGLES[case]
    body = ls_request("predict_interactive_rectangle")
    change(body)
    with pytest.raises(ProtocolError, match=message):
        protocol.parse_predict(body)


def test_unmappable_label_is_a_protocol_error(ls_request):
    body = ls_request("predict_interactive_pos_neg_keypoints")
    # The brush control has two labels, neither of them "Cat": no mapping is possible.
    body["label_config"] = body["label_config"].replace('"Cat" background', '"Bird" background', 1)
    assert parse_label_config(body["label_config"]).labels == ("Bird", "Dog")
    with pytest.raises(ProtocolError, match="'Cat' has no counterpart in the answer controls"):
        protocol.parse_predict(body)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
        (b" " * 65, "larger than 64 bytes"),
    ],
)
@pytest.mark.parametrize("load", [protocol.load_json, protocol.load_predict_json])
def test_bad_json(raw, message, load):
    limit = 64 if message.startswith("larger") else protocol.MAX_BODY_BYTES
    with pytest.raises(ProtocolError, match=message):
        load(raw, limit=limit)


def with_earlier_answers(body: dict) -> dict:
    """The body as Label Studio sends it once the image holds answers: the task's predictions and draft carry
    them, brush RLE and all, with fields parse_predict never reads."""
    from label_studio_sdk.converter.brush import mask2rle

    rle = mask2rle(blob_mask().astype(np.uint8) * 255)
    regions = [{"id": f"r{i}", "type": "brushlabels", "value": {"format": "rle", "rle": rle, "brushlabels": ["Cat"]},
                "nested": [[[{"deep": [1, 2, {"x": None}]}]]]} for i in range(5)]
    task = body["tasks"][0]
    task.update(predictions=[{"result": regions, "score": 0.5}], drafts=[{"result": regions}],
                annotations=[{"result": regions, "completed_by": {"id": 3}}], meta={"anything": [1.5, "x"]})
    body["unknown_top_level"] = {"a": [1, 2, 3]}
    return body


@pytest.mark.parametrize("name", ["predict_interactive_positive_keypoint", "predict_interactive_pos_neg_keypoints",
                                  "predict_interactive_rectangle", "predict_batch_2_tasks"])
def test_reading_a_predict_body_by_schema_gives_what_reading_it_in_full_gives(ls_request, name):
    for body in (ls_request(name), with_earlier_answers(ls_request(name))):
        raw = json.dumps(body).encode()
        assert protocol.parse_predict(protocol.load_predict_json(raw)) == protocol.parse_predict(
            protocol.load_json(raw))
    user = ls_request("predict_interactive_positive_keypoint")
    user["user"] = {"id": 7}
    raw = json.dumps(user).encode()
    assert protocol.parse_predict(protocol.load_predict_json(raw)).objects[0].key == protocol.parse_predict(
        protocol.load_json(raw)).objects[0].key != protocol.parse_predict(user | {"user": None}).objects[0].key


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_brush_rle_is_emptied_before_parsing_and_nothing_read_changes(ls_request, separators):
    body = with_earlier_answers(ls_request("predict_interactive_positive_keypoint"))
    task = body["tasks"][0]
    # Text that looks like brush RLE but is not one: inside strings (the image URL, a label), after a key that
    # only ends in rle, and an array after "rle" holding a string with a bracket in it.
    task["data"]["image"] += '?q="rle": [1, 2]'
    task["meta"] = {'x"rle': [3, 4], "rle": ["]", 5], "also": {"rle": [6, 7]}}
    body["params"]["context"]["result"][0]["value"]["keypointlabels"] = ['"rle":[8]']
    raw = json.dumps(body, separators=separators).encode()
    emptied = protocol._without_brush_rle(raw)
    assert len(emptied) < len(raw) / 5  # the RLE is most of the body
    assert json.loads(emptied)["tasks"][0]["meta"] == {'x"rle': [], "rle": ["]", 5], "also": {"rle": []}}
    assert json.loads(emptied)["tasks"][0]["data"] == task["data"]
    with pytest.raises(ProtocolError, match="unknown label"):  # the label is read as sent
        protocol.parse_predict(protocol.load_predict_json(raw))
    body["params"]["context"]["result"][0]["value"]["keypointlabels"] = ["Cat"]
    raw = json.dumps(body, separators=separators).encode()
    assert protocol.parse_predict(protocol.load_predict_json(raw)) == protocol.parse_predict(json.loads(raw))
    assert protocol.parse_predict(protocol.load_predict_json(raw)).tasks[0].image_uri.endswith('"rle": [1, 2]')


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update(tasks="abc"), "body.tasks is missing or not a list"),
    (lambda b: b.update(tasks=[1]), r"tasks\[0\] must be a JSON object"),
    (lambda b: b.pop("tasks"), "body.tasks is missing or not a list"),
    (lambda b: b.update(project=["x"]), "body.project is missing"),
    (lambda b: b["tasks"][0].update(predictions=[[[[[[[[[[]]]]]]]]]] * 3), None),
])
def test_a_predict_body_the_schema_does_not_fit_gets_the_same_error_as_ever(ls_request, change, message):
    body = ls_request("predict_interactive_positive_keypoint")
    change(body)
    raw = json.dumps(body).encode()
    if message is None:  # it fits after all: the odd part is skipped
        assert protocol.parse_predict(protocol.load_predict_json(raw)) == protocol.parse_predict(body)
        return
    for load in (protocol.load_json, protocol.load_predict_json):
        with pytest.raises(ProtocolError, match=message):
            protocol.parse_predict(load(raw))


def test_setup_body_errors(ls_request):
    body = ls_request("setup")
    del body["schema"]
    with pytest.raises(ProtocolError, match="body.schema"):
        protocol.parse_setup(body)


# ---------------------------------------------------------------------------------------------------- answers


def blob_mask(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = (xx - 150) ** 2 / 80**2 + (yy - 110) ** 2 / 50**2 <= 1
    mask[rng.integers(0, h, 40), rng.integers(0, w, 40)] ^= True  # some isolated pixels and holes
    return mask


@pytest.mark.parametrize("form", ["bool", "0/1", "0/255"])
def test_brush_result_decodes_to_the_same_mask(ls_request, form):
    mask = blob_mask()
    given = {"bool": mask, "0/1": mask.astype(np.uint8), "0/255": mask.astype(np.uint8) * 255}[form]
    config = protocol.parse_predict(ls_request("predict_interactive_pos_neg_keypoints")).config
    region = protocol.brush_result(given, config.answer_for("Cat"), score=0.75)
    assert {k: region[k] for k in ("type", "from_name", "to_name", "original_width", "original_height")} == {
        "type": "brushlabels", "from_name": "brush", "to_name": "image", "original_width": 320,
        "original_height": 240}
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Cat"]
    assert region["score"] == 0.75 and region["image_rotation"] == 0
    decoded = decode_rle(region["value"]["rle"]).reshape(240, 320, 4)
    assert set(np.unique(decoded[:, :, 3])) == {0, 255}  # 0/255 whatever the input form, so it renders visibly
    np.testing.assert_array_equal(decoded[:, :, 3] > 0, mask)
    json.dumps(region)  # plain JSON types only


def test_brush_result_needs_a_2d_mask():
    config = parse_label_config(STANDARD_CONFIG)
    with pytest.raises(ValueError, match="H x W"):
        protocol.brush_result(np.zeros((4, 4, 3), bool), config.answer_for("Object"))


def test_response_shapes():
    config = parse_label_config(STANDARD_CONFIG)
    region = protocol.brush_result(np.ones((2, 3), bool), config.answer_for("Object"))
    answer = protocol.predict_response([protocol.prediction([region], 0.5, "v1"), protocol.prediction([], 0, "v1")])
    assert answer == {"results": [{"result": [region], "score": 0.5, "model_version": "v1"},
                                  {"result": [], "score": 0.0, "model_version": "v1"}]}
    assert protocol.error_response("bad click", ProtocolError("x")) == {"errors": ["bad click", "x"]}
    assert protocol.interactive_error_response("v1", "bad click") == {
        "results": [{"result": [], "score": 0.0, "model_version": "v1", "errors": ["bad click"]}],
        "errors": ["bad click"]}
    assert protocol.setup_response("v1") == {"model_version": "v1"}
    assert protocol.health_response()["status"] == "UP"
    assert protocol.versions_response(("v1", "v2")) == {"versions": ["v1", "v2"]}
    json.dumps(answer)


BOTH = """<View><Image name="image" value="$image"/>
  {first}
  {second}
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Cat"/><Label value="Dog"/></KeyPointLabels>
</View>"""
BRUSH = '<BrushLabels name="brush" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>'
POLYGON = '<PolygonLabels name="poly" toName="image"><Label value="Cat"/><Label value="Fish"/></PolygonLabels>'


def test_a_config_with_brush_and_polygon_controls_answers_with_the_first_that_has_the_label():
    brush_first = parse_label_config(BOTH.format(first=BRUSH, second=POLYGON))
    assert brush_first.answer_for("Cat") == Answer("brushlabels", "brush", "image", "Cat")
    assert brush_first.answer_for("Fish") == Answer("polygonlabels", "poly", "image", "Fish")
    assert brush_first.labels == ("Cat", "Dog", "Fish")
    polygon_first = parse_label_config(BOTH.format(first=POLYGON, second=BRUSH))
    assert polygon_first.answer_for("Cat") == Answer("polygonlabels", "poly", "image", "Cat")
    assert polygon_first.answer_for("Dog").region_type == "brushlabels"
    only_polygons = parse_label_config(BOTH.format(first=POLYGON, second=""))
    assert only_polygons.answer_for("Fish").region_type == "polygonlabels"
    with pytest.raises(LabelConfigError, match="more than one <PolygonLabels>"):
        parse_label_config(BOTH.format(first=POLYGON, second=POLYGON.replace('"poly"', '"poly2"')))
    with pytest.raises(LabelConfigError, match="not to the image"):
        parse_label_config(BOTH.format(first=POLYGON.replace('toName="image"', 'toName="other"'), second=BRUSH)
                           .replace("<View>", '<View><Image name="other" value="$other"/>'))


def test_polygon_results_are_regions_in_percent_that_draw_back_the_mask():
    from integrations.polygons import draw, from_percent

    mask = np.zeros((60, 90), bool)
    mask[10:40, 20:70] = True
    mask[45:55, 5:15] = True
    answer = Answer("polygonlabels", "poly", "image", "Fish")
    regions, polygons = protocol.polygon_results(mask, answer, score=0.5)
    assert len(regions) == 2 and [r["type"] for r in regions] == ["polygonlabels"] * 2
    for region, polygon in zip(regions, polygons):
        assert (region["from_name"], region["to_name"], region["score"]) == ("poly", "image", 0.5)
        assert (region["original_width"], region["original_height"]) == (90, 60)
        assert region["value"]["polygonlabels"] == ["Fish"] and region["value"]["closed"] is True
        points = np.array(region["value"]["points"])
        assert points.min() >= 0 and points.max() <= 100
        assert np.array_equal(polygon, from_percent(region["value"]["points"], 90, 60))
    assert (draw(polygons, 90, 60) == mask).all()  # rectangles need no simplification loss
