"""Metrics and retention: what workers add to their heartbeat (seconds spent loading
checkpoints, GPU memory), the counts of task rows that retention deleted (so counters never
go down), and when a user deleted a task (it reads as gone; the row goes two days later)

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "workers", sa.Column("load_seconds", sa.Float(), nullable=False, server_default="0")
    )
    op.add_column("workers", sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True))
    op.add_column("tasks", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("tasks_finished_at", "tasks", ["finished_at"])
    op.create_table(
        "metric_baselines",
        sa.Column("metric", sa.String(100), primary_key=True),
        sa.Column("labels", JSONB(), primary_key=True),
        sa.Column("value", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("metric_baselines")
    op.drop_index("tasks_finished_at", "tasks")
    op.drop_column("tasks", "deleted_at")
    op.drop_column("workers", "gpu_memory_bytes")
    op.drop_column("workers", "load_seconds")
