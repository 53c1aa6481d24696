"""Bulk loads: drop the HNSW index before a large ingest and build it once after (``defer_index``).

Keeping an HNSW index up to date costs milliseconds per inserted 768-d row, so a bulk load into
an indexed table runs at a few hundred rows/s; building the index once afterwards is far
faster, as pgvector's README recommends. While the index is gone, searches still work (exact
scans). A run killed in between leaves no index: re-running the ingest with ``defer_index``
builds it, and :func:`ensure_hnsw` does it on its own.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.schema import DROP_INVALID_HNSW, HNSW_DEFINITION, HNSW_INDEX

_LOCK = "SELECT pg_advisory_lock(hashtextextended('dpr_pg.hnsw', 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('dpr_pg.hnsw', 0))"
_CREATE = f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} {HNSW_DEFINITION}"


def hnsw_exists(engine: Engine) -> bool:
    """Whether the valid HNSW index on passages.embedding exists.

    Example:
        >>> hnsw_exists(engine)  # doctest: +SKIP
        True
    """
    with engine.connect() as conn:
        return bool(conn.execute(sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.oid = to_regclass(:name)"), {"name": f"dpr_pg.{HNSW_INDEX}"}).scalar())


def drop_hnsw(engine: Engine) -> None:
    """Drop the HNSW index (if present) before a bulk load.

    Example:
        >>> drop_hnsw(engine)  # doctest: +SKIP
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(_LOCK))
        try:
            conn.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{HNSW_INDEX}"))
        finally:
            conn.execute(sa.text(_UNLOCK))


def ensure_hnsw(engine: Engine, *, maintenance_work_mem: str = "1GB") -> bool:
    """Build the HNSW index if it is missing (or INVALID); returns True when it built one.

    Example:
        >>> ensure_hnsw(engine)  # doctest: +SKIP
        True
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(_LOCK))
        try:
            if hnsw_exists(engine):
                return False
            conn.execute(sa.text(DROP_INVALID_HNSW))
            conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :m, false)"), {"m": maintenance_work_mem})
            conn.execute(sa.text(_CREATE))
            return True
        finally:
            conn.execute(sa.text(_UNLOCK))
