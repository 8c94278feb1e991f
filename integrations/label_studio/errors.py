"""Errors for what Label Studio (or anyone posing as it) sends: each message is safe to show to the annotator."""


class ProtocolError(ValueError):
    """A request body, label config or region is not usable; the message says which field and why."""


class LabelConfigError(ProtocolError):
    """The project's label config lacks what click segmentation needs, or cannot be parsed safely."""
