"""The click model in plain PyTorch: no Ray, database or HTTP imports live here."""
from .clicks import Click
from .errors import InvalidClicksError, InvalidImageError, InvalidInputError
from .predictor_base import Prediction, Predictor, THRESHOLD

__all__ = [
    "Click",
    "InvalidClicksError",
    "InvalidImageError",
    "InvalidInputError",
    "Prediction",
    "Predictor",
    "THRESHOLD",
]
