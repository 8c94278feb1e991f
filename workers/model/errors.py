"""Errors raised for input the model cannot work with.

Every check on untrusted input (click positions, image arrays) raises one of these, so callers can turn them into
a clear answer instead of a stack trace from deep inside torch or OpenCV.
"""


class InvalidInputError(ValueError):
    """The image or the clicks given to a predictor are not usable; the message says why."""


class InvalidImageError(InvalidInputError):
    """The image array has an unsupported shape, type or size."""


class InvalidClicksError(InvalidInputError):
    """The click list is empty or a click lies outside the image."""
