"""The durable record of labeling work: what fine-tuning, export and the effort figures read.

Masks are COCO RLE (pycocotools' compressed `counts` string plus height and width). Images stay where they are;
only their URI, size and content hash are kept. Every schema change here needs an Alembic migration
(tests/test_store_migrations.py fails on drift).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from integrations.label_studio.webhooks import NAME_LENGTH, URI_LENGTH

from .types import UTCDateTime, utcnow

# Fixed constraint names, so migrations can refer to them and SQLite and PostgreSQL agree.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Project(Base):
    """One Label Studio project."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    ls_project_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    title: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    label_config: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Image(Base):
    """An image as Label Studio names it (the task's URI); width and height are its natural size."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("project_id", "uri"),
        Index(None, "project_id", "content_hash"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(String(URI_LENGTH))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    ls_task_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """A checkpoint that served or may serve; `parent` is the version it was fine-tuned from."""

    __tablename__ = "model_versions"
    __table_args__ = (Index(None, "project_id", "status"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    checkpoint_uri: Mapped[str | None] = mapped_column(String(URI_LENGTH))
    metrics: Mapped[dict[str, Any] | None]
    # candidate | promoted | rejected | retired | unknown (named by serving before the registry knew it)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]


class InteractionSession(Base):
    """The clicks on one object of one image: `key` is chosen by the server so it can be written asynchronously."""

    __tablename__ = "interaction_sessions"
    __table_args__ = (Index(None, "project_id", "started_at"), Index(None, "image_id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    annotator: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    label: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class Click(Base):
    """One click in image pixels; `seq` is its 1-based order in the session; the version is the one that answered."""

    __tablename__ = "clicks"
    __table_args__ = (Index(None, "session_id", "seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("interaction_sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)
    clicked_at: Mapped[datetime]
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    mask: Mapped[PredictedMask | None] = relationship(back_populates="click")


class PredictedMask(Base):
    """The mask answered for a click, with the model's score and the time the answer took."""

    __tablename__ = "predicted_masks"
    id: Mapped[int] = mapped_column(primary_key=True)
    click_id: Mapped[int] = mapped_column(ForeignKey("clicks.id", ondelete="CASCADE"), unique=True)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    rle_counts: Mapped[str] = mapped_column(Text)
    area: Mapped[int] = mapped_column(BigInteger)
    score: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    click: Mapped[Click] = relationship(back_populates="mask")


class Annotation(Base):
    """A Label Studio annotation. `updated_at` is Label Studio's, used to ignore out-of-order updates; a deleted
    annotation keeps its row (masks removed, `deleted_at` set) so a late update cannot bring it back."""

    __tablename__ = "annotations"
    __table_args__ = (Index(None, "project_id", "updated_at"), Index(None, "image_id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    ls_annotation_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    ls_task_id: Mapped[int | None] = mapped_column(BigInteger)
    completed_by: Mapped[int | None] = mapped_column(BigInteger)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    lead_time: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    masks: Mapped[list[AnnotationMask]] = relationship(
        back_populates="annotation", cascade="all, delete-orphan", passive_deletes=True, order_by="AnnotationMask.id"
    )


class AnnotationMask(Base):
    """One brush or polygon region of an annotation: one object, one label. A polygon region is stored as the
    mask it draws, and keeps its vertices for export."""

    __tablename__ = "annotation_masks"
    __table_args__ = (Index(None, "annotation_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"))
    region_id: Mapped[str] = mapped_column(String(64), default="")
    from_name: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    label: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    rle_counts: Mapped[str] = mapped_column(Text)
    area: Mapped[int] = mapped_column(BigInteger)
    polygon: Mapped[list[float] | None] = mapped_column(JSON)  # [x1, y1, x2, y2, ...] in pixels; None for a brush
    annotation: Mapped[Annotation] = relationship(back_populates="masks")


class TrainingJob(Base):
    """A fine-tuning run: from `base_version` to `result_version` (set when it produced one)."""

    __tablename__ = "training_jobs"
    # At most one queued and one running job per project, enforced by the database (migration 0002).
    __table_args__ = (
        Index(None, "project_id", "state"),
        *(Index(f"uq_training_jobs_one_{state}", "project_id", unique=True,
                sqlite_where=text(f"state = '{state}'"), postgresql_where=text(f"state = '{state}'"))
          for state in ("queued", "running")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # queued | running | succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(16), default="queued")
    trigger: Mapped[str] = mapped_column(String(32), default="manual")
    base_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    result_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    train_count: Mapped[int | None] = mapped_column(Integer)
    val_count: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None]  # written by the runner while the job runs
    details: Mapped[dict[str, Any] | None]  # split, metrics of both versions, decision, phase timings
