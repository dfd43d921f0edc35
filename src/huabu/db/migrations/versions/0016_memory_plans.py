"""Memory plans: how each worker's loaded flow models fit its device (HUABU_QUANTIZE and
HUABU_OFFLOAD, as chosen per model)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "workers", sa.Column("memory_plans", JSONB(), server_default="{}", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("workers", "memory_plans")
