"""SQL search API: dpr_pg.search, dpr_pg.hybrid_search and the filter compiler they share.

The functions pin search_path to pg_catalog, dpr_pg, the vector extension's schema and pg_temp, so
pgvector's operators resolve wherever the extension lives; they run SECURITY INVOKER. They are
those of sql/0004_search.sql, frozen as this revision first ran them; ``dpr-pg init`` replaces
them with today's sql/search.sql after the last migration.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

from dpr_pg._migrations.frozen import execute_script, vector_schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("sql") / "0004_search.sql"
FUNCTIONS = (
    "dpr_pg.hybrid_search(vector, text, integer, jsonb, text, double precision, double precision, integer, integer)",
    "dpr_pg.search(vector, integer, jsonb, text)",
    "dpr_pg.compile_filter(jsonb)",
    "dpr_pg._filter_document(jsonb, jsonb[])",
    "dpr_pg._filter_field(text, jsonb, jsonb[])",
    "dpr_pg._filter_leaf(text, text, jsonb, jsonb[])",
    "dpr_pg._filter_error(text)",
)


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text(encoding="utf-8").replace("@VECTOR_SCHEMA@", vector_schema()))


def downgrade() -> None:
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
    op.execute("DROP TYPE dpr_pg.hit")
