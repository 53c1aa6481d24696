"""How the HNSW index stores passages' vectors: ``vector``, ``halfvec`` or ``bit`` with re-ranking.

The column ``dpr_pg.passages.embedding`` is vector(dim) in every case, so exact search, scores and
ingest are unchanged; the storage decides what the index ``passages_embedding_hnsw`` compares:

- ``vector``: the column itself (vector_ip_ops), 4 bytes a dimension;
- ``halfvec``: an expression index on ``embedding::halfvec(dim)`` (halfvec_ip_ops), 2 bytes a
  dimension; the k hits it finds are scored and ordered by the full inner product;
- ``bit``: an expression index on ``binary_quantize(embedding)::bit(dim)`` (bit_hamming_ops), one
  bit a dimension; it finds ``k * rerank_multiple`` candidates by Hamming distance, and the full
  inner product re-ranks them.

The choice lives in ``dpr_pg.settings`` (migration 0015). :func:`set_storage` (``dpr-pg storage
set``) switches it without stopping searches or writes: the new index is built CONCURRENTLY beside
the old one, then swapped in with the setting in one short transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import BIT, HALFVEC, VECTOR
from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import ConfigError, SchemaError

STORAGES = ("vector", "halfvec", "bit")
DEFAULT_STORAGE = "vector"
# pgvector's limits on the dimensions an HNSW index of each type takes.
INDEX_MAX_DIMS = {"vector": 2000, "halfvec": 4000, "bit": 64000}
DEFAULT_RERANK_MULTIPLE = 4
MAX_RERANK_MULTIPLE = 100

_READ = sa.text("SELECT name, value FROM dpr_pg.settings WHERE name IN ('storage', 'rerank_multiple')")


@dataclass(frozen=True)
class Storage:
    """The index's storage type and, for ``bit``, the candidates per hit that are re-ranked.

    >>> Storage("bit", rerank_multiple=8).candidates(10)
    80
    """

    kind: str = DEFAULT_STORAGE
    rerank_multiple: int = DEFAULT_RERANK_MULTIPLE

    def __post_init__(self) -> None:
        check_storage(self.kind)
        check_rerank_multiple(self.rerank_multiple)

    def candidates(self, k: int) -> int:
        """How many rows the index scan returns for k hits: k, or k * rerank_multiple for ``bit``."""
        return k * self.rerank_multiple if self.kind == "bit" else k


def check_storage(kind: Any) -> str:
    """``kind`` if it is a storage type; else a ConfigError that lists them.

    >>> check_storage("halfvec")
    'halfvec'
    """
    if kind not in STORAGES:
        raise ConfigError(f"expected the storage to be one of {', '.join(STORAGES)}, not {kind!r}")
    return kind


def check_rerank_multiple(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RERANK_MULTIPLE:
        raise ConfigError(f"expected the re-rank multiple to be an integer from 1 to {MAX_RERANK_MULTIPLE}, "
                          f"not {value!r}")
    return value


def check_dim(kind: str, dim: int) -> None:
    """Refuse a storage whose HNSW index cannot take ``dim`` dimensions, naming pgvector's limit."""
    limit = INDEX_MAX_DIMS[check_storage(kind)]
    if dim > limit:
        raise ConfigError(f"pgvector's HNSW index on {kind} takes at most {limit} dimensions, and this database "
                          f"stores vector({dim}); keep the current storage, or use an encoder of at most {limit} "
                          "dimensions")


def index_method(kind: str, dim: int) -> str:
    """The ``USING hnsw (...)`` part of the index for ``kind``; ``dim`` is a validated integer, never text.

    >>> index_method("halfvec", 768)
    'USING hnsw ((embedding::halfvec(768)) halfvec_ip_ops)'
    """
    dim = int(dim)
    if check_storage(kind) == "halfvec":
        return f"USING hnsw ((embedding::halfvec({dim})) halfvec_ip_ops)"
    if kind == "bit":
        return f"USING hnsw ((binary_quantize(embedding)::bit({dim})) bit_hamming_ops)"
    return "USING hnsw (embedding vector_ip_ops)"


def read_storage(conn: Connection) -> Storage:
    """The storage this database's index uses (``vector`` before migration 0015).

    >>> read_storage(conn)  # doctest: +SKIP
    Storage(kind='halfvec', rerank_multiple=4)
    """
    exists = conn.execute(sa.text("SELECT to_regclass('dpr_pg.settings') IS NOT NULL")).scalar()
    if not exists:
        return Storage()
    values = {name: value for name, value in conn.execute(_READ)}
    return Storage(values.get("storage", DEFAULT_STORAGE),
                   int(values.get("rerank_multiple", DEFAULT_RERANK_MULTIPLE)))


def current_storage(engine: Engine) -> Storage:
    """The storage of the dpr_pg index in this database (see :func:`read_storage`).

    A database without dpr_pg's schema has no index to describe: that is a SchemaError.

    >>> current_storage(engine).kind  # doctest: +SKIP
    'vector'
    """
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('dpr_pg.passages') IS NULL")).scalar():
            raise SchemaError("this database has no dpr_pg schema yet; run dpr-pg init first")
        return read_storage(conn)


def write_storage(conn: Connection, chosen: Storage) -> None:
    """Record ``chosen`` in ``dpr_pg.settings``, in ``conn``'s transaction."""
    conn.execute(sa.text("UPDATE dpr_pg.settings SET value = :v WHERE name = 'storage'"), {"v": chosen.kind})
    conn.execute(sa.text("UPDATE dpr_pg.settings SET value = :v WHERE name = 'rerank_multiple'"),
                 {"v": str(chosen.rerank_multiple)})


def ann_distance(kind: str, dim: int, column: Any, query: Any) -> sa.ColumnElement[Any]:
    """The ORDER BY term the HNSW index of ``kind`` answers: it repeats the index's expression.

    ``column`` is the vector(dim) column, ``query`` the query vector (a bind parameter).
    """
    if check_storage(kind) == "halfvec":
        return sa.cast(column, HALFVEC(dim)).max_inner_product(sa.cast(query, HALFVEC(dim)))
    if kind == "bit":
        return sa.cast(sa.func.binary_quantize(column), BIT(dim)).hamming_distance(
            sa.cast(sa.func.binary_quantize(sa.cast(query, VECTOR(dim))), BIT(dim)))
    return column.max_inner_product(query)


@dataclass(frozen=True)
class StorageChange:
    """What :func:`set_storage` did: the storage before and after, and the index build it ran (None: none)."""

    previous: Storage
    storage: Storage
    rows: int = 0
    seconds: float = 0.0

    @property
    def rebuilt(self) -> bool:
        return self.previous.kind != self.storage.kind


def set_storage(engine: Engine, kind: str, *, rerank_multiple: int | None = None, m: int | None = None,
                ef_construction: int | None = None, maintenance_work_mem: str | None = None,
                wait: float | None = None, progress: bool | None = False) -> StorageChange:
    """Switch the index to ``kind``; searches and writes go on meanwhile.

    The new index is built CONCURRENTLY (with the current index's m and ef_construction unless
    given), then swapped in with the setting in one short transaction; until then searches use
    the old index. ``rerank_multiple`` (``bit``'s candidates per hit) alone changes no index.
    ``progress`` shows a bar of the build on stderr, as :func:`~dpr_pg.ingest.index.build_index` does.

    >>> set_storage(engine, "halfvec").storage  # doctest: +SKIP
    Storage(kind='halfvec', rerank_multiple=4)
    """
    from dpr_pg.ingest.index import INDEX_LOCK_WAIT, HnswParameters, build_index, hnsw_parameters
    from dpr_pg.db.schema import require_schema

    check_storage(kind)
    with engine.connect() as conn:
        dim = require_schema(conn)
        previous = read_storage(conn)
    check_dim(kind, dim)
    chosen = Storage(kind, previous.rerank_multiple if rerank_multiple is None else rerank_multiple)
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
    from dpr_pg.search.api import forget_database_facts

    forget_database_facts(engine)


__all__ = ["DEFAULT_STORAGE", "STORAGES", "Storage", "StorageChange", "current_storage", "read_storage",
           "set_storage"]
