"""dpr_pg.search: filters matching at most 2% of the table (and at most 25,000 rows) go exact.

On the 1M-row benchmark a filter matching 1% of the rows (10,000) took the iterative HNSW scan and
came back with recall@10 0.947; an exact scan over those rows gives 1.000 in about 24 ms. Like
the Python planner (dpr_pg._planner.EXACT_SELECTIVITY / EXACT_MAX_ROWS). This re-runs the
dpr_pg.search block of sql/search.sql with CREATE OR REPLACE; the signature and the result type
are unchanged. Downgrade leaves the function as it is: it is a tuning, and the revision before
this one works with either rule.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

from dpr_pg.schema import replace_search_function

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    replace_search_function()


def downgrade() -> None:
    pass
