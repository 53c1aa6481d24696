"""dpr_pg.search: filters matching at most 2% of the table (and at most 25,000 rows) go exact.

On the 1M-row benchmark a filter matching 1% of the rows (10,000) took the iterative HNSW scan and
came back with recall@10 0.947; an exact scan over those rows gives 1.000 in about 24 ms. Like
the Python planner. This runs sql/0008_search.sql (CREATE OR REPLACE dpr_pg.search, frozen as this
revision first ran it); the signature and the result type are unchanged. Downgrade leaves the
function as it is: it is a tuning, and the revision before this one works with either rule.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

from pathlib import Path

from dpr_pg._migrations.frozen import execute_script, vector_schema

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("sql") / "0008_search.sql"


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text(encoding="utf-8").replace("@VECTOR_SCHEMA@", vector_schema()))


def downgrade() -> None:
    pass
