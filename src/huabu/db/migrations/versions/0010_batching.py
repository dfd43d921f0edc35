"""tasks.batch_key, batch_size and batch_work: which queued generation tasks can share one
denoising loop (equal keys; NULL: the task runs alone), and how many tasks and how much work its
last run shared the loop with (the ETA divides a batch's time between them by work)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("batch_key", sa.String(64), nullable=True))
    op.add_column(
        "tasks", sa.Column("batch_size", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column("tasks", sa.Column("batch_work", sa.Float(), nullable=True))
    op.create_index(
        "ix_tasks_queued_batch_key",
        "tasks",
        ["batch_key"],
        postgresql_where=sa.text("state = 'queued' AND batch_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_queued_batch_key", table_name="tasks")
    op.drop_column("tasks", "batch_work")
    op.drop_column("tasks", "batch_size")
    op.drop_column("tasks", "batch_key")
