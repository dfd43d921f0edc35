"""Priorities: users.priority and api_keys.priority (set by an admin; a key's, when set, is
its caller's instead of its user's) and tasks.priority (the level a task was queued at; higher
levels are handed out first, the fair order within a level)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="0")
    )
    op.add_column("api_keys", sa.Column("priority", sa.SmallInteger(), nullable=True))
    op.add_column(
        "tasks", sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("tasks", "priority")
    op.drop_column("api_keys", "priority")
    op.drop_column("users", "priority")
