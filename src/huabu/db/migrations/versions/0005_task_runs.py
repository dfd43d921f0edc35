"""task_runs: which worker (host, device) ran each run of a task, when, and how it ended;
tasks.runs: a counter of runs that never goes down (the fence of a run's writes; ``attempts``
is what a task is charged, and a clean hand-back un-counts it)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("runs", sa.Integer(), server_default="0", nullable=False))
    op.execute("UPDATE tasks SET runs = attempts")
    op.create_table(
        "task_runs",
        sa.Column(
            "task_id", sa.Uuid(), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("outcome", sa.String(32)),
        sa.PrimaryKeyConstraint("task_id", "run"),
    )


def downgrade() -> None:
    op.drop_table("task_runs")
    op.drop_column("tasks", "runs")
