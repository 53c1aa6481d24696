"""HNSW index on passages.embedding with vector_ip_ops (DPR scores by inner product).

Built CONCURRENTLY so that writers are not blocked. A build that was killed leaves an INVALID
index behind; this step drops it and builds again, so re-running the upgrade repairs it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# Runs in autocommit: an index left INVALID by a killed CREATE INDEX CONCURRENTLY is dropped.
DROP_INVALID_HNSW = """
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'dpr_pg' AND c.relname = 'passages_embedding_hnsw' AND NOT i.indisvalid
    ) THEN
        DROP INDEX dpr_pg.passages_embedding_hnsw;
    END IF;
END
$$
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(DROP_INVALID_HNSW)
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS passages_embedding_hnsw ON dpr_pg.passages "
            "USING hnsw (embedding vector_ip_ops) WITH (m = 16, ef_construction = 64)"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS dpr_pg.passages_embedding_hnsw")
