"""SQL search API: dpr_pg.search, dpr_pg.hybrid_search and the filter compiler they share (sql/search.sql).

The functions pin search_path to pg_catalog, dpr_pg, the vector extension's schema and pg_temp, so
pgvector's operators resolve wherever the extension lives; they run SECURITY INVOKER.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dpr_pg.schema import resource_dir

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

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
    bind = op.get_bind()
    vector_schema = bind.execute(
        sa.text(
            "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'vector'"
        )
    ).scalar_one()
    body = (resource_dir("sql") / "search.sql").read_text(encoding="utf-8")
    # Raw driver call: the body holds % and $n that a parameter-aware layer would try to interpret.
    bind.connection.driver_connection.execute(body.replace("@VECTOR_SCHEMA@", vector_schema))


def downgrade() -> None:
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
    op.execute("DROP TYPE dpr_pg.hit")
