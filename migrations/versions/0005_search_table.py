"""dpr_pg.search_table(tbl, query, k, filter): DPR search over an app table enabled for sync.

It reuses dpr_pg.compile_filter from 0004, so it comes after it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dpr_pg.schema import resource_dir

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text((resource_dir("sql") / "search_table.sql").read_text(encoding="utf-8")))


def downgrade() -> None:
    op.execute("DROP FUNCTION dpr_pg.search_table(regclass, vector, integer, jsonb)")
    op.execute("DROP TYPE dpr_pg.table_hit")
