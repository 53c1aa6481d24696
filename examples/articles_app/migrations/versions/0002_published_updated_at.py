"""Articles get a published flag and an updated_at timestamp.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("articles", sa.Column("published", sa.Boolean, nullable=False, server_default=sa.true()))
    op.add_column("articles", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                                        server_default=sa.func.now()))


def downgrade() -> None:
    op.drop_column("articles", "updated_at")
    op.drop_column("articles", "published")
