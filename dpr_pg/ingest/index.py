"""The HNSW index: build it with chosen parameters, or drop it for a bulk load and build it once after.

Keeping an HNSW index up to date costs milliseconds per inserted 768-d row, so a bulk load into
an indexed table runs at a few hundred rows/s; building the index once afterwards is far
faster, as pgvector's README recommends (``defer_index``). While the index is gone, searches
still work (exact scans). A run killed in between leaves no index: re-running the ingest with
``defer_index`` builds it, and :func:`ensure_hnsw` does it on its own.

:func:`build_index` (``dpr-pg index``) rebuilds it with other ``m`` / ``ef_construction``, the
knobs of recall on large corpora, without stopping searches or writes: the new index is built
CONCURRENTLY under another name and swapped in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import ConfigError
from dpr_pg.schema import DROP_INVALID_HNSW, HNSW_EF_CONSTRUCTION, HNSW_INDEX, HNSW_M

_LOCK = "SELECT pg_advisory_lock(hashtextextended('dpr_pg.hnsw', 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('dpr_pg.hnsw', 0))"
_NEW_INDEX = f"{HNSW_INDEX}_new"
# pgvector keeps the graph in maintenance_work_mem while it builds; a build that outgrows it slows
# sharply. Per row: the vector, 2m neighbour slots of the bottom layer and the element's overhead.
_ROW_OVERHEAD = 96
_MAX_AUTO_MEMORY = 16 * 2**30


@dataclass(frozen=True)
class HnswParameters:
    """``m`` (links per node) and ``ef_construction`` (candidate list while building).

    Larger values make a better graph (higher recall at the same ``ef_search``) and a slower
    build; pgvector requires ``ef_construction >= 2 * m``.

    Example:
        >>> HnswParameters(m=24, ef_construction=128).sql()
        'm = 24, ef_construction = 128'
    """

    m: int = HNSW_M
    ef_construction: int = HNSW_EF_CONSTRUCTION

    def __post_init__(self) -> None:
        for name, value, low, high in (("m", self.m, 2, 100), ("ef_construction", self.ef_construction, 4, 1000)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"expected {name} to be an integer from {low} to {high} (pgvector's range), "
                                  f"not {value!r}")
        if self.ef_construction < 2 * self.m:
            raise ConfigError(f"expected ef_construction >= 2 * m (pgvector requires it): with m = {self.m}, "
                              f"ef_construction must be at least {2 * self.m}, not {self.ef_construction}")

    def sql(self) -> str:
        """The WITH (...) options; both values are validated integers, never caller text."""
        return f"m = {int(self.m)}, ef_construction = {int(self.ef_construction)}"


@dataclass(frozen=True)
class IndexBuild:
    """What :func:`build_index` did: the parameters, the rows indexed and the seconds it took."""

    parameters: HnswParameters
    rows: int
    seconds: float
    maintenance_work_mem: str


def _definition(name: str, parameters: HnswParameters, *, concurrently: bool = False) -> str:
    how = "CONCURRENTLY" if concurrently else "IF NOT EXISTS"
    return (f"CREATE INDEX {how} {name} ON dpr_pg.passages USING hnsw (embedding vector_ip_ops) "
            f"WITH ({parameters.sql()})")


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


def hnsw_parameters(engine: Engine) -> HnswParameters | None:
    """The parameters of the current HNSW index (pgvector's defaults where unset), or None without one.

    Example:
        >>> hnsw_parameters(engine)  # doctest: +SKIP
        HnswParameters(m=16, ef_construction=64)
    """
    with engine.connect() as conn:
        options = conn.execute(sa.text(
            "SELECT coalesce(c.reloptions, '{}') FROM pg_class c WHERE c.oid = to_regclass(:name)"),
            {"name": f"dpr_pg.{HNSW_INDEX}"}).scalar()
    if options is None:
        return None
    values = dict(option.split("=", 1) for option in options)
    return HnswParameters(m=int(values.get("m", HNSW_M)),
                          ef_construction=int(values.get("ef_construction", HNSW_EF_CONSTRUCTION)))


def drop_hnsw(engine: Engine) -> HnswParameters | None:
    """Drop the HNSW index (if present) before a bulk load; returns its parameters, for :func:`ensure_hnsw`.

    Example:
        >>> drop_hnsw(engine)  # doctest: +SKIP
        HnswParameters(m=16, ef_construction=64)
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(_LOCK))
        try:
            parameters = hnsw_parameters(engine)
            conn.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{HNSW_INDEX}"))
        finally:
            conn.execute(sa.text(_UNLOCK))
    return parameters


def ensure_hnsw(engine: Engine, parameters: HnswParameters | None = None, *,
                maintenance_work_mem: str | None = None) -> bool:
    """Build the HNSW index if it is missing (or INVALID); returns True when it built one.

    Example:
        >>> ensure_hnsw(engine)  # doctest: +SKIP
        True
    """
    parameters = parameters or HnswParameters()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(_LOCK))
        try:
            if hnsw_exists(engine):
                return False
            conn.execute(sa.text(DROP_INVALID_HNSW))
            _set_memory(conn, maintenance_work_mem, parameters)
            conn.execute(sa.text(_definition(HNSW_INDEX, parameters)))
            return True
        finally:
            conn.execute(sa.text(_UNLOCK))


def build_index(engine: Engine, *, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
                maintenance_work_mem: str | None = None) -> IndexBuild:
    """(Re)build the HNSW index with these parameters; searches and writes go on meanwhile.

    The new index is built with CREATE INDEX CONCURRENTLY under a temporary name, then swapped
    for the old one in a short transaction. ``maintenance_work_mem`` defaults to what the graph
    needs (estimated from the table, at most 16GB): a build that outgrows it slows sharply.
    A killed build leaves an INVALID temporary index, which the next call drops.

    Example:
        >>> build_index(engine, m=24, ef_construction=128).seconds  # doctest: +SKIP
        812.4
    """
    parameters = HnswParameters(m=m, ef_construction=ef_construction)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(_LOCK))
        try:
            conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS dpr_pg.{_NEW_INDEX}"))  # a killed build's
            memory = _set_memory(conn, maintenance_work_mem, parameters)
            started = time.perf_counter()
            conn.execute(sa.text(_definition(_NEW_INDEX, parameters, concurrently=True)))
            seconds = time.perf_counter() - started
            with engine.begin() as swap:  # one short transaction: searches never see the table without an index
                swap.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{HNSW_INDEX}"))
                swap.execute(sa.text(f"ALTER INDEX dpr_pg.{_NEW_INDEX} RENAME TO {HNSW_INDEX}"))
            rows = int(conn.execute(sa.text(
                "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'dpr_pg.passages'::regclass")).scalar())
        finally:
            conn.execute(sa.text(_UNLOCK))
    return IndexBuild(parameters, rows, seconds, memory)


def _set_memory(conn: Connection, memory: str | None, parameters: HnswParameters) -> str:
    """SET maintenance_work_mem for this session: ``memory``, or enough for the table's graph; returns it."""
    if memory is None:
        rows, dim, current = conn.execute(sa.text(
            "SELECT greatest(c.reltuples, 0), a.atttypmod, pg_size_bytes(current_setting('maintenance_work_mem')) "
            "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'embedding' "
            "WHERE c.oid = 'dpr_pg.passages'::regclass")).one()
        needed = min(int(rows * (4 * dim + 16 * parameters.m + _ROW_OVERHEAD) * 1.25), _MAX_AUTO_MEMORY)
        memory = f"{needed // 2**20}MB" if needed > current else None  # never lower the server's setting
    if memory is not None:
        try:
            conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :m, false)"), {"m": memory})
        except sa.exc.DBAPIError as e:
            raise ConfigError(f"expected a maintenance_work_mem size such as 512MB or 4GB, not {memory!r}") from e
    return str(conn.execute(sa.text("SHOW maintenance_work_mem")).scalar())
