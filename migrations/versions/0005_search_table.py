"""dpr_pg.search_table(tbl, query, k, filter): DPR search over an app table enabled for sync.

It reuses dpr_pg.compile_filter from 0004, so it comes after it. The function is that of
sql/0005_search_table.sql, frozen as this revision first ran it; ``dpr-pg init`` replaces it with
today's sql/search_table.sql after the last migration.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

from dpr_pg._migrations.frozen import execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("sql") / "0005_search_table.sql"


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    op.execute("DROP FUNCTION dpr_pg.search_table(regclass, vector, integer, jsonb)")
    op.execute("DROP TYPE dpr_pg.table_hit")
