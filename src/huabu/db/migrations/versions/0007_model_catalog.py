"""models: the catalog of the fleet (what each model is, and where a published one lives in the
shared store); workers.models: what each worker holds on its own disk, workers.loads: how
many checkpoints it has loaded since it started; procrastinate jobs queued
per checkpoint (``generate/<model>``, ``train/<model>``) so a worker takes only what it can serve

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(300), primary_key=True),
        sa.Column("file_name", sa.String(300), nullable=False),
        sa.Column("layout", sa.String(16), nullable=False),
        sa.Column("architecture", sa.String(16)),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("owner_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE")),
        sa.Column("files", JSONB()),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.add_column("workers", sa.Column("models", JSONB(), server_default="[]", nullable=False))
    op.add_column("workers", sa.Column("loads", sa.Integer(), server_default="0", nullable=False))
    # Jobs queued before: into their checkpoint's queue, where workers now look for them.
    # (A name too long for a queue name is queued under its hash, as tasks.queue does.)
    op.execute(
        "UPDATE procrastinate_jobs j SET queue_name = CASE "
        "WHEN length(t.kind || '/' || t.model) <= 128 THEN t.kind || '/' || t.model "
        "ELSE t.kind || '/#' || left(encode(sha256(convert_to(t.model, 'UTF8')), 'hex'), 40) END "
        "FROM tasks t WHERE t.job_id = j.id AND j.status = 'todo'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE procrastinate_jobs j SET queue_name = t.kind "
        "FROM tasks t WHERE t.job_id = j.id AND j.status = 'todo'"
    )
    op.drop_column("workers", "loads")
    op.drop_column("workers", "models")
    op.drop_table("models")
