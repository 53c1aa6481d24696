"""How passages' vectors are stored: the column's type, and what the HNSW index compares.

The column ``dpr_pg.passages.embedding`` is ``vector(dim)`` (4 bytes a dimension) or
``halfvec(dim)`` (2 bytes a dimension: ``dpr-pg init --storage halfvec`` on a new database). The
index ``passages_embedding_hnsw`` compares:

- ``vector``: the vector column itself (vector_ip_ops);
- ``halfvec``: a halfvec column itself, or on a vector column an expression index on
  ``embedding::halfvec(dim)`` (halfvec_ip_ops); over a vector column, the k hits it finds are
  scored and ordered by the full inner product;
- ``bit``: an expression index on ``binary_quantize(embedding)::bit(dim)`` (bit_hamming_ops), one
  bit a dimension; it finds ``k * rerank_multiple`` candidates by Hamming distance, and the inner
  product with the column's values re-ranks them.

The index's type lives in ``dpr_pg.settings`` (migration 0015); the column's type is the one
PostgreSQL's catalog holds, so the two cannot disagree (:func:`read_storage` reads both).
:func:`dpr_pg.db.column.set_storage` (``dpr-pg storage set``) switches the index without stopping
searches or writes: the new index is built CONCURRENTLY beside the old one, then swapped in with
the setting in one short transaction. Changing the column's type rewrites every row under an exclusive lock
(``rewrite_column=True``, ``--rewrite-column``; see :mod:`dpr_pg.db.column`): searches and writes
wait until it ends.

On a halfvec column every inner product (index scan, exact scan, the scores returned) is computed
by pgvector from half-precision values: the query vector is cast once to halfvec, and the products
are summed in float4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import BIT, HALFVEC, VECTOR
from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import ConfigError, SchemaError

STORAGES = ("vector", "halfvec", "bit")
COLUMN_TYPES = ("vector", "halfvec")
DEFAULT_STORAGE = "vector"
# pgvector's limits on the dimensions an HNSW index of each type takes.
INDEX_MAX_DIMS = {"vector": 2000, "halfvec": 4000, "bit": 64000}
DEFAULT_RERANK_MULTIPLE = 4
MAX_RERANK_MULTIPLE = 100

_READ = sa.text("SELECT name, value FROM dpr_pg.settings WHERE name IN ('storage', 'rerank_multiple')")
# The column's type: the catalog is its record (see the module's docstring).
COLUMN_TYPE_SQL = ("SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                   "WHERE a.attrelid = to_regclass('dpr_pg.passages') AND a.attname = 'embedding'")
_COLUMN_TYPE = sa.text(COLUMN_TYPE_SQL)


@dataclass(frozen=True)
class Storage:
    """The index's storage type, for ``bit`` the candidates per hit that are re-ranked, and the
    column's type (``vector`` or ``halfvec``).

    >>> Storage("bit", rerank_multiple=8).candidates(10)
    80
    >>> Storage("halfvec", column="halfvec").bytes_per_dimension
    2
    """

    kind: str = DEFAULT_STORAGE
    rerank_multiple: int = DEFAULT_RERANK_MULTIPLE
    column: str = "vector"

    def __post_init__(self) -> None:
        check_storage(self.kind)
        check_rerank_multiple(self.rerank_multiple)
        check_column_type(self.column)
        if self.column == "halfvec" and self.kind == "vector":
            raise ConfigError("a vector index over a halfvec column would hold no more precision than the column: "
                              "index a halfvec column with halfvec (or bit), or rewrite the column to vector first")

    @property
    def bytes_per_dimension(self) -> int:
        """What the column stores per dimension: 4 (vector) or 2 (halfvec)."""
        return 2 if self.column == "halfvec" else 4

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


def check_column_type(column: Any) -> str:
    """``column`` if the embedding column may have that type; else a ConfigError that lists them."""
    if column not in COLUMN_TYPES:
        raise ConfigError(f"expected the column type to be one of {', '.join(COLUMN_TYPES)}, not {column!r}")
    return column


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


def index_method(kind: str, dim: int, column: str = "vector") -> str:
    """The ``USING hnsw (...)`` part of the index for ``kind`` over a ``column`` column; ``dim`` is a
    validated integer, never text.

    >>> index_method("halfvec", 768)
    'USING hnsw ((embedding::halfvec(768)) halfvec_ip_ops)'
    >>> index_method("halfvec", 768, "halfvec")
    'USING hnsw (embedding halfvec_ip_ops)'
    """
    dim = int(dim)
    if check_storage(kind) == "halfvec":
        if check_column_type(column) == "halfvec":
            return "USING hnsw (embedding halfvec_ip_ops)"
        return f"USING hnsw ((embedding::halfvec({dim})) halfvec_ip_ops)"
    if kind == "bit":
        return f"USING hnsw ((binary_quantize(embedding)::bit({dim})) bit_hamming_ops)"
    return "USING hnsw (embedding vector_ip_ops)"


def column_type(conn: Connection) -> str:
    """The type of ``dpr_pg.passages.embedding``: ``vector`` or ``halfvec`` (``vector`` without the table)."""
    return conn.execute(_COLUMN_TYPE).scalar() or "vector"


def read_storage(conn: Connection) -> Storage:
    """The storage this database's index uses (``vector`` before migration 0015), and the column's type.

    >>> read_storage(conn)  # doctest: +SKIP
    Storage(kind='halfvec', rerank_multiple=4, column='halfvec')
    """
    column = column_type(conn)
    exists = conn.execute(sa.text("SELECT to_regclass('dpr_pg.settings') IS NOT NULL")).scalar()
    if not exists:
        return Storage(column=column) if column == "vector" else Storage("halfvec", column=column)
    values = {name: value for name, value in conn.execute(_READ)}
    kind = values.get("storage", DEFAULT_STORAGE)
    if column == "halfvec" and kind == "vector":  # a column altered by hand: its index compares halfvec
        kind = "halfvec"
    return Storage(kind, int(values.get("rerank_multiple", DEFAULT_RERANK_MULTIPLE)), column)


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


__all__ = ["COLUMN_TYPES", "DEFAULT_STORAGE", "STORAGES", "Storage", "current_storage", "read_storage"]
