"""Fine-tuning jobs: a heartbeat, a details record, and at most one queued and one running job per project.

Revision ID: 0002
Revises: 0001
Created: 2026-11-25

`heartbeat_at` lets a scheduler tell a job whose runner died (no beat for a while) from one still running elsewhere.
`details` keeps what a job decided and why: the split (image ids), the metrics of both versions, phase timings.
The two partial unique indexes make the database itself refuse a second queued or a second running job of a
project, so two schedulers (a server and `clickmask finetune`) can never run one project twice; SQLite and
PostgreSQL both have partial indexes.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("details", sa.JSON(), nullable=True))
    for state in ("queued", "running"):
        op.create_index(
            op.f(f"uq_training_jobs_one_{state}"), "training_jobs", ["project_id"], unique=True,
            sqlite_where=sa.text(f"state = '{state}'"), postgresql_where=sa.text(f"state = '{state}'"),
        )


def downgrade() -> None:
    for state in ("queued", "running"):
        op.drop_index(op.f(f"uq_training_jobs_one_{state}"), table_name="training_jobs")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("details")
        batch.drop_column("heartbeat_at")
