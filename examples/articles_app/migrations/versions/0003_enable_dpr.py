"""Adopt dpr_pg: DPR search on articles (title + body), kept in sync by the database.

Needs dpr_pg's own schema first: `dpr-pg init` (or dpr_pg.init(engine)).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op

import dpr_pg.alembic_ops  # noqa: F401  (registers op.enable_dpr / op.disable_dpr)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.enable_dpr("articles", text_columns=["body"], title_column="title", dim=768)


def downgrade() -> None:
    op.disable_dpr("articles")
