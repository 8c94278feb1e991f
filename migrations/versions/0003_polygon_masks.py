"""Polygon regions: a submitted mask keeps the polygon it was drawn from.

Revision ID: 0003
Revises: 0002
Created: 2026-12-07

A PolygonLabels region is stored as every mask is (COCO RLE, drawn from the polygon), so fine-tuning and the
dashboard read it like a brush region; `polygon` keeps its vertices too ([x1, y1, x2, y2, ...] in pixels of the
image's natural size), so that an export writes the polygon the annotator drew, vertex for vertex. Null for brush
regions.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotation_masks") as batch:
        batch.add_column(sa.Column("polygon", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("annotation_masks") as batch:
        batch.drop_column("polygon")
