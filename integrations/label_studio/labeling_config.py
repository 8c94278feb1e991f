"""The parts of a Label Studio label config that click segmentation needs.

The config XML comes with every request, so it is untrusted: it is parsed with defusedxml (no DOCTYPE, no entity,
no external reference) after a size check, and only tag names and a few attributes are read. Expected shape (the
labeling config that `clickmask serve` prints and the README shows):

    <Image name="image" value="$image"/>                       -> image_name "image", image_key "image"
    <BrushLabels name="tag" toName="image"><Label value=.../>  -> answers as brush masks (at most one such control)
    <PolygonLabels name="poly" toName="image"><Label .../>     -> answers as polygons (at most one such control)
    <KeyPointLabels name="kp" toName="image" smart="true">     -> smart clicks (any number of such controls)
    <RectangleLabels name="rect" toName="image" smart="true">  -> smart boxes (any number of such controls)

Which control answers a smart label (`answer_for`): the first answer control, in config order, that has a label of
the same name; failing that, the first answer control with a single label. So a config with both a BrushLabels and
a PolygonLabels control holding the same labels is answered by whichever comes first.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as safe_xml
from defusedxml import DefusedXmlException

from .errors import LabelConfigError

MAX_CONFIG_CHARS = 200_000
MAX_ELEMENTS = 5_000
KEYPOINTS = "keypointlabels"  # region "type" values, as Label Studio writes them
RECTANGLES = "rectanglelabels"
BRUSHES = "brushlabels"
POLYGONS = "polygonlabels"
_SMART_TAGS = {"KeyPointLabels": KEYPOINTS, "RectangleLabels": RECTANGLES}
_ANSWER_TAGS = {"BrushLabels": BRUSHES, "PolygonLabels": POLYGONS}


@dataclass(frozen=True)
class Control:
    """A labels control: its name, the object tag it points to (toName), the label values in config order."""

    name: str
    to_name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Answer:
    """Where an answer goes: its region type (BRUSHES or POLYGONS), control and label."""

    region_type: str
    from_name: str
    to_name: str
    label: str


@dataclass(frozen=True)
class LabelingConfig:
    image_name: str  # the Image tag's name: to_name of every result
    image_key: str  # the task.data key of the image URL ("$image" -> "image")
    answers: tuple[tuple[str, Control], ...]  # (region type, control) of the answer controls, in config order
    smart: Mapping[str, tuple[str, Control]]  # smart control name -> (region type, control); read-only

    @property
    def labels(self) -> tuple[str, ...]:
        """The answer controls' labels in config order, each once."""
        return tuple(dict.fromkeys(label for _, control in self.answers for label in control.labels))

    def smart_control(self, name: str, region_type: str) -> Control:
        """The smart control a context region names; LabelConfigError unless it exists with that type."""
        found = self.smart.get(name)
        if found is None or found[0] != region_type:
            raise LabelConfigError(f"no smart {region_type} control named {name!r} in the label config")
        return found[1]

    def answer_for(self, label: str) -> Answer:
        """Where the answer to a smart region's label goes (the rule is in the module docstring)."""
        matches = [(t, c, label) for t, c in self.answers if label in c.labels]
        matches += [(t, c, c.labels[0]) for t, c in self.answers if len(c.labels) == 1]
        if not matches:
            names = ", ".join(f"{c.name!r} ({', '.join(c.labels)})" for _, c in self.answers)
            raise LabelConfigError(f"label {label!r} has no counterpart in the answer controls {names}")
        region_type, control, answer_label = matches[0]
        return Answer(region_type, control.name, control.to_name, answer_label)


def _attr(element: Element, name: str) -> str:
    value = element.get(name)
    if not value or not value.strip():
        raise LabelConfigError(f"<{element.tag}> needs a non-empty {name!r} attribute")
    return value.strip()


def _control(element: Element) -> Control:
    labels = tuple(_attr(child, "value") for child in element if child.tag == "Label")
    if not labels:
        raise LabelConfigError(f"<{element.tag} name={element.get('name')!r}> has no <Label value=...>")
    return Control(_attr(element, "name"), _attr(element, "toName"), labels)


def parse_label_config(xml: str) -> LabelingConfig:
    """Parse a label config; LabelConfigError with a plain message for anything unusable."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the label config is missing or empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the label config is longer than {MAX_CONFIG_CHARS} characters")
    return _parse(xml)


@functools.lru_cache(maxsize=64)  # the same config arrives with every request; results are immutable
def _parse(xml: str) -> LabelingConfig:
    try:
        root = safe_xml.fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise LabelConfigError("the label config may not use DOCTYPE, entities or external references") from None
    except safe_xml.ParseError as exc:
        raise LabelConfigError(f"the label config is not well-formed XML ({exc})") from None
    elements = list(root.iter())
    if len(elements) > MAX_ELEMENTS:
        raise LabelConfigError(f"the label config has more than {MAX_ELEMENTS} elements")

    images = {_attr(e, "name"): _attr(e, "value") for e in elements if e.tag == "Image"}
    answers = tuple((_ANSWER_TAGS[e.tag], _control(e)) for e in elements if e.tag in _ANSWER_TAGS)
    smart = {}
    for e in elements:
        if e.tag in _SMART_TAGS and e.get("smart", "").strip().lower() == "true":
            control = _control(e)
            smart[control.name] = (_SMART_TAGS[e.tag], control)

    if not answers:
        raise LabelConfigError("the label config has no <BrushLabels> or <PolygonLabels> control to answer with")
    for tag, region_type in _ANSWER_TAGS.items():
        if sum(t == region_type for t, _ in answers) > 1:
            raise LabelConfigError(f"the label config has more than one <{tag}> control; at most one is supported")
    image = answers[0][1].to_name
    if image not in images:
        raise LabelConfigError(f"answer control {answers[0][1].name!r} points to {image!r}, which is no <Image>")
    if not smart:
        raise LabelConfigError('the label config has no smart <KeyPointLabels> or <RectangleLabels> (smart="true")')
    for _, control in (*answers, *smart.values()):
        if control.to_name != image:
            raise LabelConfigError(f"control {control.name!r} points to {control.to_name!r}, not to the image "
                                   f"{image!r} the answers go to")
    value = images[image]
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={image!r}> value must be a task variable like '$image'")
    return LabelingConfig(image_name=image, image_key=value[1:], answers=answers, smart=MappingProxyType(smart))
