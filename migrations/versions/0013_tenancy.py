"""Filter size limits checked in linear time, and hybrid_search's checks (sql/search.sql, CREATE OR REPLACE).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

from dpr_pg.schema import execute_script, resource_dir, vector_schema

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SQL_FILES = ("search.sql",)


def upgrade() -> None:
    for name in SQL_FILES:
        body = (resource_dir("sql") / name).read_text(encoding="utf-8")
        execute_script(body.replace("@VECTOR_SCHEMA@", vector_schema()))


def downgrade() -> None:
    pass
