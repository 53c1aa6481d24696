"""The embedding column's type, changed offline: ``vector(dim)`` ⇄ ``halfvec(dim)``, and the space it takes.

A halfvec column stores 2 bytes a dimension instead of 4: for 768 dimensions a row's vector
shrinks from 3,080 to 1,544 bytes, and its HNSW index by as much. A new database gets one from
``dpr-pg init --storage halfvec``. An existing database's column changes with
``dpr-pg storage set halfvec --rewrite-column`` (:func:`rewrite_column`): there is no way to
change a column's type without rewriting every row, so it is done in one transaction under an
ACCESS EXCLUSIVE lock on ``dpr_pg.passages``: drop the HNSW index, ``ALTER COLUMN ... TYPE``
(one rewrite of the table, which also gives the space back), build the index of the new type,
record the setting. Searches and writes wait for it; a failure (or Ctrl-C) rolls all of it back.
Widening halfvec to vector is exact (every half value is a float4), but it gives back no
precision that was lost.

:func:`set_storage` (``dpr-pg storage set``) is the one entry point for both changes: a new index
type online (:func:`dpr_pg.db.index.build_index`), or with ``rewrite_column`` the column offline.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg import _progress
from dpr_pg.db.revision import require_schema
from dpr_pg.db.storage import (
    COLUMN_TYPES,
    Storage,
    check_dim,
    check_storage,
    index_method,
    read_storage,
    write_storage,
)
from dpr_pg.errors import ConfigError, IndexBuildError
from dpr_pg.db.filtered import refuse_storage_change
from dpr_pg.db.index import (
    HNSW_INDEX,
    INDEX_LOCK_WAIT,
    HnswParameters,
    _autocommit,
    _index_lock,
    _reason,
    _set_memory,
    build_index,
    hnsw_parameters,
)
from dpr_pg.search.api import forget_database_facts
from dpr_pg.validation import HALF_MAX

_SIZES = sa.text("""
SELECT c.reltuples, pg_table_size(c.oid), pg_relation_size(c.oid),
       coalesce(pg_relation_size(to_regclass('dpr_pg.passages_embedding_hnsw')), 0), a.atttypmod
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'embedding'
WHERE c.oid = 'dpr_pg.passages'::regclass
""")


@dataclass(frozen=True)
class ColumnRewrite:
    """What :func:`rewrite_column` did: the storage before and after, the rows and the seconds it took."""

    previous: Storage
    storage: Storage
    rows: int
    seconds: float


@dataclass(frozen=True)
class StorageSizes:
    """Bytes on disk: the table (heap and TOAST), the vectors in it (rows × the column's bytes per row,
    an estimate from the planner's row count), and the HNSW index."""

    rows: int
    table_bytes: int
    vector_bytes: int
    index_bytes: int

    def as_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "table_bytes": self.table_bytes, "vector_bytes": self.vector_bytes,
                "index_bytes": self.index_bytes}


def vector_row_bytes(column: str, dim: int) -> int:
    """The bytes a stored vector takes in a row: pgvector's 8-byte header and 4 or 2 bytes a dimension.

    >>> vector_row_bytes("vector", 768), vector_row_bytes("halfvec", 768)
    (3080, 1544)
    """
    return 8 + (2 if column == "halfvec" else 4) * int(dim)


def storage_sizes(engine: Engine) -> StorageSizes:
    """The table's, the vectors' and the HNSW index's sizes on disk (see :class:`StorageSizes`).

    >>> storage_sizes(engine).index_bytes  # doctest: +SKIP
    171286528
    """
    with engine.connect() as conn:
        rows, table, _heap, index, dim = conn.execute(_SIZES).one()
        column = read_storage(conn).column
    rows = max(int(rows), 0)
    return StorageSizes(rows, int(table), rows * vector_row_bytes(column, dim), int(index))


def rewrite_column(engine: Engine, chosen: Storage, *, m: int, ef_construction: int,
                   maintenance_work_mem: str | None = None, wait: float = 3600.0,
                   progress: bool | None = False) -> ColumnRewrite:
    """Change ``dpr_pg.passages.embedding`` to ``chosen.column`` and index it with ``chosen.kind``: offline.

    One transaction holds ACCESS EXCLUSIVE on the table: searches and writes wait until it ends.
    ``wait`` bounds how long it waits for that lock and for another index change. ``progress``
    prints the steps and a bar of the index build on stderr. A value beyond halfvec's range
    (±65,504) refuses the rewrite, naming it, and changes nothing.

    >>> rewrite_column(engine, Storage("halfvec", column="halfvec"), m=16, ef_construction=64).rows  # doctest: +SKIP
    100000
    """
    parameters = HnswParameters(m=m, ef_construction=ef_construction)
    with engine.connect() as conn:
        dim = require_schema(conn)
        previous = read_storage(conn)
    check_dim(chosen.kind, dim)
    if chosen.column == previous.column:
        raise ConfigError(f"the column already stores {chosen.column}({dim}); nothing to rewrite")
    if _progress.shown(progress):
        print(f"Rewriting dpr_pg.passages.embedding from {previous.column}({dim}) to {chosen.column}({dim}): "
              "searches and writes wait until it ends (an ACCESS EXCLUSIVE lock); Ctrl-C rolls it back.",
              file=sys.stderr)
    started = time.perf_counter()
    try:
        with _autocommit(engine) as holder, _index_lock(holder, wait=wait):
            memory = _set_memory(holder, maintenance_work_mem, parameters)
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT set_config('lock_timeout', :t, true), "
                                     "set_config('maintenance_work_mem', :m, true)"),
                             {"t": f"{max(int(wait * 1000), 1)}ms", "m": memory})
                with _progress.step("waiting for the table's exclusive lock", progress):
                    conn.execute(sa.text("LOCK TABLE dpr_pg.passages IN ACCESS EXCLUSIVE MODE"))
                rows = int(conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar_one())
                conn.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{HNSW_INDEX}"))
                conn.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{HNSW_INDEX}_new"))
                # dim is an integer from the catalog and the type one of two names: no caller text.
                target = f"{chosen.column}({int(dim)})"
                with _progress.step(f"rewriting {rows} rows as {target}", progress):
                    conn.execute(sa.text(
                        f"ALTER TABLE dpr_pg.passages ALTER COLUMN embedding TYPE {target} USING embedding::{target}, "
                        "ALTER COLUMN embedding SET STORAGE PLAIN"))
                with _progress.index_build(engine, progress, description=f"HNSW index ({chosen.kind})"):
                    conn.execute(sa.text(
                        f"CREATE INDEX {HNSW_INDEX} ON dpr_pg.passages "
                        f"{index_method(chosen.kind, dim, chosen.column)} WITH ({parameters.sql()})"))
                write_storage(conn, chosen)
    except sa.exc.DataError as e:  # a value beyond halfvec's range: pgvector names it
        raise ConfigError(f"the column was not rewritten: {_reason(e)} (halfvec holds at most ±{HALF_MAX:g}); nothing "
                          "was changed: keep the vector column, or re-ingest those passages with smaller values") from e
    except sa.exc.OperationalError as e:
        raise IndexBuildError(f"the column was not rewritten: {_reason(e)}; nothing was changed (the transaction "
                              "rolled back): re-run when the table is free, or with a longer --wait") from e
    return ColumnRewrite(previous, chosen, rows, time.perf_counter() - started)


_rewrite_column = rewrite_column  # set_storage's parameter of that name hides the function


@dataclass(frozen=True)
class StorageChange:
    """What :func:`set_storage` did: the storage before and after, the index build it ran (rows 0:
    none) and whether it rewrote the column."""

    previous: Storage
    storage: Storage
    rows: int = 0
    seconds: float = 0.0
    column_rewritten: bool = False

    @property
    def rebuilt(self) -> bool:
        return self.previous.kind != self.storage.kind or self.column_rewritten


def set_storage(engine: Engine, kind: str, *, rerank_multiple: int | None = None, m: int | None = None,
                ef_construction: int | None = None, maintenance_work_mem: str | None = None,
                wait: float | None = None, progress: bool | None = False,
                rewrite_column: bool = False) -> StorageChange:
    """Switch the index to ``kind``; searches and writes go on meanwhile.

    The new index is built CONCURRENTLY (with the current index's m and ef_construction unless
    given), then swapped in with the setting in one short transaction; until then searches use
    the old index. ``rerank_multiple`` (``bit``'s candidates per hit) alone changes no index.
    ``progress`` shows a bar of the build on stderr, as :func:`~dpr_pg.db.index.build_index` does.

    ``rewrite_column=True`` also changes the column to ``kind`` (``vector`` or ``halfvec``) when it
    has another type: offline, since every row is rewritten and the index rebuilt under an
    ACCESS EXCLUSIVE lock (see :func:`dpr_pg.db.column.rewrite_column`). Without it, a halfvec
    index over a vector column leaves the heap holding float4 vectors; and a vector index over a
    halfvec column is refused (it would be twice the size for no precision).

    >>> set_storage(engine, "halfvec").storage  # doctest: +SKIP
    Storage(kind='halfvec', rerank_multiple=4, column='vector')
    >>> set_storage(engine, "halfvec", rewrite_column=True).column_rewritten  # doctest: +SKIP
    True
    """
    check_storage(kind)
    with engine.connect() as conn:
        dim = require_schema(conn)
        previous = read_storage(conn)
    check_dim(kind, dim)
    multiple = previous.rerank_multiple if rerank_multiple is None else rerank_multiple
    if kind != previous.kind or (rewrite_column and kind != previous.column):
        with engine.connect() as conn:
            refuse_storage_change(conn, f"switching the storage to {kind}")
    if rewrite_column:
        if kind not in COLUMN_TYPES:
            raise ConfigError(f"expected --rewrite-column with one of {', '.join(COLUMN_TYPES)} (the column's new "
                              f"type), not {kind!r}; a bit index goes over either column without a rewrite")
        if kind != previous.column:
            current = hnsw_parameters(engine) or HnswParameters()
            done = _rewrite_column(engine, Storage(kind, multiple, kind), m=m or current.m,
                                   ef_construction=ef_construction or current.ef_construction,
                                   maintenance_work_mem=maintenance_work_mem,
                                   wait=INDEX_LOCK_WAIT if wait is None else wait, progress=progress)
            forget_storage(engine)
            return StorageChange(previous, done.storage, done.rows, done.seconds, column_rewritten=True)
    if previous.column == "halfvec" and kind == "vector":
        raise ConfigError(f"the column stores halfvec({dim}): a vector index over it would be twice the size for no "
                          "more precision; run dpr-pg storage set vector --rewrite-column to widen the column "
                          "to vector (offline: it rewrites every row), or keep halfvec")
    chosen = Storage(kind, multiple, previous.column)
    if chosen.kind == previous.kind:
        if chosen != previous:
            with engine.begin() as conn:
                write_storage(conn, chosen)
            forget_storage(engine)
        return StorageChange(previous, chosen)
    current = hnsw_parameters(engine) or HnswParameters()
    build = build_index(engine, m=m or current.m, ef_construction=ef_construction or current.ef_construction,
                        storage=chosen, maintenance_work_mem=maintenance_work_mem,
                        wait=INDEX_LOCK_WAIT if wait is None else wait, progress=progress)
    forget_storage(engine)
    return StorageChange(previous, chosen, build.rows, build.seconds)


def forget_storage(engine: Engine) -> None:
    """Make this process's searches read the storage again (they keep it a few seconds)."""
    forget_database_facts(engine)


__all__ = ["ColumnRewrite", "StorageChange", "StorageSizes", "rewrite_column", "set_storage", "storage_sizes",
           "vector_row_bytes"]
