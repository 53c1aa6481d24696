"""HNSW index on passages.embedding with vector_ip_ops (DPR scores by inner product).

Built CONCURRENTLY so that writers are not blocked. A build that was killed leaves an INVALID
index behind; this step drops it and builds again, so re-running the upgrade repairs it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

from dpr_pg.schema import DROP_INVALID_HNSW, HNSW_DEFINITION, HNSW_INDEX

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(DROP_INVALID_HNSW)
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {HNSW_INDEX} {HNSW_DEFINITION}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS dpr_pg.{HNSW_INDEX}")
