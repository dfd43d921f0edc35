"""datasets and trained models (LoRA training, spec 001); users' options (A1111 dialect)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _now(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def _owner() -> sa.Column:
    return sa.Column(
        "owner_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("options", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _owner(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("images", JSONB(), nullable=False),
        _now("created_at"),
        _now("updated_at"),
    )
    op.create_index("ix_datasets_owner_id", "datasets", ["owner_id"])
    op.create_table(
        "trained_models",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _owner(),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column(
            "task_id",
            sa.Uuid(),
            sa.ForeignKey("tasks.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("trigger_word", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("main_body", sa.String(32), nullable=False),
        sa.Column("nsfw", sa.Boolean(), nullable=False),
        _now("created_at"),
        sa.UniqueConstraint("owner_id", "name"),
    )


def downgrade() -> None:
    for table in ("trained_models", "datasets"):
        op.drop_table(table)
    op.drop_column("users", "options")
