"""The interface every click predictor follows, learned or classical, so one evaluator and one server run them all.

Conventions: images are H x W x 3 uint8 RGB (see image.as_rgb8 for what else is accepted); clicks are in image
pixels (see clicks.Click); probability maps and masks are H x W at the image's full size.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .clicks import Click, check_clicks
from .errors import InvalidClicksError
from .image import as_rgb8

THRESHOLD = 0.49


@dataclass
class Prediction:
    """A predictor's answer for one object: `prob` H x W float32 in [0, 1]; `mask` H x W bool (prob > THRESHOLD)."""

    prob: np.ndarray
    mask: np.ndarray


class Predictor(ABC):
    """Two calls: `set_image` once per image, then `predict` for each click of each object.

    The previous answer for the same object is handed back through `prev` so a predictor can build on it (the
    learned model takes the previous mask as input; GrabCut starts from it). The predictor keeps no per-object
    state of its own: several objects of one image can be worked on in any order.
    """

    name: str = "predictor"

    def __init__(self) -> None:
        self.image: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Validate and keep the image; subclasses precompute what all clicks on it share."""
        self.image = as_rgb8(image)

    def predict(self, clicks: list[Click], prev: Prediction | None = None, box: Box | None = None) -> Prediction:
        """Predict the object that the clicks (in order, first to last) point at. `box` (x0, y0, x1, y1) in image
        pixels, if given, bounds the object: nothing outside it is predicted."""
        if self.image is None:
            raise RuntimeError("call set_image before predict")
        h, w = self.image.shape[:2]
        check_clicks(clicks, h, w)
        if prev is not None and prev.prob.shape != (h, w):
            raise ValueError(f"previous prediction is {prev.prob.shape[::-1]}, the image is {w}x{h}")
        if box is not None:
            box = check_box(box, h, w)
        prob = self._predict_prob(clicks, None if prev is None else prev.prob, box)
        if box is not None:
            x0, y0, x1, y1 = box
            outside = np.ones((h, w), bool)
            outside[y0:y1, x0:x1] = False
            prob[outside] = 0.0
        return Prediction(prob=prob, mask=prob > THRESHOLD)

    @abstractmethod
    def _predict_prob(self, clicks: list[Click], prev_prob: np.ndarray | None, box: Box | None) -> np.ndarray:
        """H x W float32 probabilities for validated clicks (and box, in whole pixels inside the image)."""


Box = tuple[int, int, int, int]


def check_box(box, height: int, width: int) -> Box:
    """The box as whole pixels (x0, y0, x1, y1), exclusive ends, clipped to the image; InvalidClicksError if it
    is not four finite numbers or holds no pixel of the image."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InvalidClicksError(f"a box is four numbers (x0, y0, x1, y1), not {box!r}") from None
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InvalidClicksError("the box has a non-finite coordinate")
    clipped = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
               min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1))))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise InvalidClicksError(f"the box {box} holds no pixel of the {width}x{height} image")
    return clipped
