"""Database models, engine and sessions."""
from .engine import make_engine, make_session_factory, normalize_url
from .models import (
    Annotation,
    AnnotationMask,
    Base,
    Click,
    Image,
    InteractionSession,
    ModelVersion,
    PredictedMask,
    Project,
    TrainingJob,
)
from .types import UTCDateTime, utcnow

__all__ = [
    "Annotation",
    "AnnotationMask",
    "Base",
    "Click",
    "Image",
    "InteractionSession",
    "ModelVersion",
    "PredictedMask",
    "Project",
    "TrainingJob",
    "UTCDateTime",
    "make_engine",
    "make_session_factory",
    "normalize_url",
    "utcnow",
]
