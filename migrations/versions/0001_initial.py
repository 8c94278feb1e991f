"""Initial schema: projects, images, sessions, clicks, predicted masks, annotations, model versions, training jobs.

Revision ID: 0001
Revises:
Created: 2026-11-25

Indexes serve the reads that matter: fine-tuning and export take a project's annotations by update time
(annotations project_id, updated_at); effort figures take a session's clicks in order (clicks session_id, seq);
deduplicating images uses project_id, content_hash (and project_id, uri is unique).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def when(name: str, nullable: bool = False) -> sa.Column:
    # Plain DateTime here, not the models' UTCDateTime: a migration must not change when the models do.
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def fk(column: str, target: str, table: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ls_project_id", sa.BigInteger(), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("label_config", sa.Text(), nullable=False),
        when("created_at"),
        when("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("ls_project_id", name=op.f("uq_projects_ls_project_id")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("ls_task_id", sa.BigInteger(), nullable=True),
        when("created_at"),
        fk("project_id", "projects", "images", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("project_id", "uri", name=op.f("uq_images_project_id_uri")),
    )
    op.create_index(op.f("ix_images_project_id_content_hash"), "images", ["project_id", "content_hash"])

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("checkpoint_uri", sa.String(length=2048), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        when("created_at"),
        when("promoted_at", nullable=True),
        fk("parent_id", "model_versions", "model_versions", "SET NULL"),
        fk("project_id", "projects", "model_versions", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", name=op.f("uq_model_versions_name")),
    )
    op.create_index(op.f("ix_model_versions_project_id_status"), "model_versions", ["project_id", "status"])

    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ls_annotation_id", sa.BigInteger(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("ls_task_id", sa.BigInteger(), nullable=True),
        sa.Column("completed_by", sa.BigInteger(), nullable=True),
        sa.Column("was_cancelled", sa.Boolean(), nullable=False),
        sa.Column("lead_time", sa.Float(), nullable=True),
        when("updated_at", nullable=True),
        when("deleted_at", nullable=True),
        when("recorded_at"),
        fk("image_id", "images", "annotations", "CASCADE"),
        fk("project_id", "projects", "annotations", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotations")),
        sa.UniqueConstraint("ls_annotation_id", name=op.f("uq_annotations_ls_annotation_id")),
    )
    op.create_index(op.f("ix_annotations_image_id"), "annotations", ["image_id"])
    op.create_index(op.f("ix_annotations_project_id_updated_at"), "annotations", ["project_id", "updated_at"])

    op.create_table(
        "interaction_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("annotator", sa.String(length=255), nullable=True),
        sa.Column("label", sa.String(length=255), nullable=True),
        when("started_at"),
        fk("image_id", "images", "interaction_sessions", "CASCADE"),
        fk("project_id", "projects", "interaction_sessions", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interaction_sessions")),
        sa.UniqueConstraint("key", name=op.f("uq_interaction_sessions_key")),
    )
    op.create_index(op.f("ix_interaction_sessions_image_id"), "interaction_sessions", ["image_id"])
    op.create_index(
        op.f("ix_interaction_sessions_project_id_started_at"), "interaction_sessions", ["project_id", "started_at"]
    )

    op.create_table(
        "training_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("base_version_id", sa.Integer(), nullable=True),
        sa.Column("result_version_id", sa.Integer(), nullable=True),
        when("created_at"),
        when("started_at", nullable=True),
        when("finished_at", nullable=True),
        sa.Column("train_count", sa.Integer(), nullable=True),
        sa.Column("val_count", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        fk("base_version_id", "model_versions", "training_jobs", "SET NULL"),
        fk("project_id", "projects", "training_jobs", "CASCADE"),
        fk("result_version_id", "model_versions", "training_jobs", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
    )
    op.create_index(op.f("ix_training_jobs_project_id_state"), "training_jobs", ["project_id", "state"])

    op.create_table(
        "annotation_masks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("region_id", sa.String(length=64), nullable=False),
        sa.Column("from_name", sa.String(length=255), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("rle_counts", sa.Text(), nullable=False),
        sa.Column("area", sa.BigInteger(), nullable=False),
        fk("annotation_id", "annotations", "annotation_masks", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_masks")),
    )
    op.create_index(op.f("ix_annotation_masks_annotation_id"), "annotation_masks", ["annotation_id"])

    op.create_table(
        "clicks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("positive", sa.Boolean(), nullable=False),
        when("clicked_at"),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        fk("model_version_id", "model_versions", "clicks", "SET NULL"),
        fk("session_id", "interaction_sessions", "clicks", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clicks")),
    )
    op.create_index(op.f("ix_clicks_session_id_seq"), "clicks", ["session_id", "seq"])

    op.create_table(
        "predicted_masks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("click_id", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("rle_counts", sa.Text(), nullable=False),
        sa.Column("area", sa.BigInteger(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        fk("click_id", "clicks", "predicted_masks", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predicted_masks")),
        sa.UniqueConstraint("click_id", name=op.f("uq_predicted_masks_click_id")),
    )


def downgrade() -> None:
    # Children first; dropping a table drops its indexes with it on both databases.
    for table in (
        "predicted_masks",
        "clicks",
        "annotation_masks",
        "training_jobs",
        "interaction_sessions",
        "annotations",
        "model_versions",
        "images",
        "projects",
    ):
        op.drop_table(table)
