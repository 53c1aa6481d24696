"""dpr_pg.search: unfiltered hnsw.ef_search 200 → 250, like the Python API (dpr_pg._planner).

At 200, one query in 100 of the 100k benchmark came back with recall@10 0 (the scan stayed in the
wrong cluster); 250 gave recall@10 0.992 with no query below 0.9, for about 0.3 ms. This runs
sql/0007_search.sql (CREATE OR REPLACE dpr_pg.search, frozen as this revision first ran it); the
signature and the result type are unchanged. Downgrade leaves the function as it is: it is a
tuning, and the revision before this one works with either value.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

from pathlib import Path

from dpr_pg._migrations.frozen import execute_script, vector_schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("sql") / "0007_search.sql"


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text(encoding="utf-8").replace("@VECTOR_SCHEMA@", vector_schema()))


def downgrade() -> None:
    pass
