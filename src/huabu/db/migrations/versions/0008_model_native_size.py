"""models.native_size: the square side a checkpoint was trained at (1024 for SDXL), so an API
server that holds no model still knows a model's default output size

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("native_size", sa.Integer()))


def downgrade() -> None:
    op.drop_column("models", "native_size")
