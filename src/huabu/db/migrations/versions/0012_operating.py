"""Operating huabu for other people: quotas (per user, optionally per API key), disabled
users, API keys' last use, the key and image count of each task (quotas count them),
idempotency keys of submits, and the audit log of admin actions

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("users", "api_keys"):
        op.add_column(table, sa.Column("images_per_day", sa.Integer(), nullable=True))
        op.add_column(table, sa.Column("requests_per_minute", sa.Integer(), nullable=True))
    op.add_column("users", sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True)))
    op.add_column("tasks", sa.Column("api_key_id", sa.Uuid(), nullable=True))
    op.add_column("tasks", sa.Column("images", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE tasks SET images = coalesce((request->>'n_images')::int, 1) WHERE kind = 'generate'"
    )
    op.create_index("tasks_owner_created", "tasks", ["owner_id", "created_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column(
            "owner_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column(
            "task_id", sa.Uuid(), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(400), nullable=False),
        sa.Column("details", JSONB(), nullable=False, server_default="{}"),
    )
    op.create_index("audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("idempotency_keys")
    op.drop_index("tasks_owner_created", "tasks")
    op.drop_column("tasks", "images")
    op.drop_column("tasks", "api_key_id")
    op.drop_column("api_keys", "last_used_at")
    op.drop_column("users", "disabled_at")
    for table in ("api_keys", "users"):
        op.drop_column(table, "requests_per_minute")
        op.drop_column(table, "images_per_day")
