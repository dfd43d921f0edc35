"""tasks.fair_rank: each task's place in the fair order between users (round-robin, then first
come first served within a user), given at submit and kept when a task is queued again

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tasks", sa.Column("fair_rank", sa.BigInteger(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("tasks", "fair_rank")
