"""tasks, their images, uploads, login sessions, and procrastinate's queue schema

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from procrastinate.schema import SchemaManager
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _timestamp(name: str, *, now: bool = False) -> sa.Column:
    if now:
        return sa.Column(
            name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        )
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _owner(column: str = "owner_id") -> sa.Column:
    return sa.Column(
        column, sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    # procrastinate's own tables and functions, at the version pinned in pyproject.toml. Run
    # through the driver directly: the schema is plain SQL, not a parameterised statement.
    op.get_bind().connection.driver_connection.execute(SchemaManager.get_schema())

    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _owner("user_id"),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _timestamp("created_at", now=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "uploads",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _owner(),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _timestamp("created_at", now=True),
    )
    op.create_index("ix_uploads_owner_id", "uploads", ["owner_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _owner(),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("request", JSONB(), nullable=False),
        sa.Column("result", JSONB(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("work", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        _timestamp("created_at", now=True),
        _timestamp("started_at"),
        _timestamp("finished_at"),
    )
    # A user's task list, newest first; and the live queue (position, ETA, limits).
    op.create_index("ix_tasks_owner_created", "tasks", ["owner_id", sa.text("created_at DESC")])
    op.create_index(
        "ix_tasks_live",
        "tasks",
        ["queue", "created_at"],
        postgresql_where=sa.text("state IN ('queued', 'running')"),
    )
    op.create_index(
        "ix_tasks_owner_live",
        "tasks",
        ["owner_id"],
        postgresql_where=sa.text("state IN ('queued', 'running')"),
    )
    op.create_index(
        "ix_tasks_speed",
        "tasks",
        ["model", sa.text("finished_at DESC")],
        postgresql_where=sa.text("state = 'succeeded'"),
    )
    op.create_table(
        "task_images",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "task_id", sa.Uuid(), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("preview_key", sa.String(300), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("infotext", sa.Text(), nullable=False),
        sa.UniqueConstraint("task_id", "index"),
    )


def downgrade() -> None:
    for table in ("task_images", "tasks", "uploads", "sessions"):
        op.drop_table(table)
