"""Collections as partitions: ``dpr_pg.passages`` list-partitioned by collection.

A partitioned ``dpr_pg.passages`` stores each collection in a table of its own
(``dpr_pg.passages_c_<md5 prefix>``) with its own HNSW index, GIN indexes and btree keys, so a
collection's rows lie together on disk and ``collection = 'wiki'`` prunes every other partition:
a search within one collection walks that collection's graph and reads only its pages.

- ``dpr-pg init --partition-by-collection`` makes a new database partitioned;
  :func:`partition_passages` (``dpr-pg storage partition``) converts an existing one.
- The first write into a collection makes its partition (:func:`ensure_partition`, through every
  face: ingest, the HTTP service, the Python API). Rows a role without that right writes land in
  ``dpr_pg.passages_default`` and move into the partition when it is made.
- :func:`drop_collection` (``dpr-pg collections drop``) detaches and drops the partition.
- The primary key is (id, collection) and the unique key (collection, external_id): a unique
  constraint of a partitioned table must hold the partition key. ``id`` stays unique all the same:
  one identity sequence numbers every partition.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from dpr_pg.db.models import HNSW_INDEX
from dpr_pg.errors import PrivilegeError, SchemaError

log = logging.getLogger(__name__)

DEFAULT_PARTITION = "passages_default"
_IS_PARTITIONED = sa.text(
    "SELECT c.relkind = 'p' FROM pg_catalog.pg_class c WHERE c.oid = to_regclass('dpr_pg.passages')")
# Each partition of dpr_pg.passages with its collection (NULL: the default partition) and row estimate.
_PARTITIONS = sa.text(
    """
    SELECT c.relname, (SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), '^FOR VALUES IN \\((.*)\\)$'))[1])
               AS bound,
           greatest(c.reltuples, 0)::bigint AS estimated_rows
    FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'dpr_pg.passages'::regclass
    ORDER BY c.relname
    """)
# Partitions with no index attached to the HNSW index (searches there scan exactly).
_WITHOUT_HNSW = sa.text(
    """
    SELECT c.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'dpr_pg.passages'::regclass
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits ii JOIN pg_catalog.pg_index x ON x.indexrelid = ii.inhrelid
                      WHERE ii.inhparent = to_regclass(:index) AND x.indrelid = c.oid)
    ORDER BY c.relname
    """)

def partition_name(collection: str) -> str:
    """The table that holds ``collection``'s passages (the same as SQL's ``dpr_pg.partition_name``).

    >>> partition_name("wiki")
    'passages_c_d54b7ba27571a2f0'
    """
    return "passages_c_" + hashlib.md5(collection.encode("utf-8")).hexdigest()[:16]


def is_partitioned(bind: Engine | Connection) -> bool:
    """Whether ``dpr_pg.passages`` is partitioned by collection.

    >>> is_partitioned(engine)  # doctest: +SKIP
    False
    """
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return is_partitioned(conn)
    return bool(bind.execute(_IS_PARTITIONED).scalar())


def is_partitioned_table(conn: psycopg.Connection) -> bool:
    """:func:`is_partitioned` on a psycopg connection (the ingest writer's)."""
    row = conn.execute(str(_IS_PARTITIONED)).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Partition:
    """One partition: its table, its collection (None: the default partition), its row estimate."""

    table: str
    collection: str | None
    estimated_rows: int


def list_partitions(bind: Engine | Connection) -> list[Partition]:
    """The partitions of ``dpr_pg.passages`` (empty when it is not partitioned).

    >>> [p.collection for p in list_partitions(engine)]  # doctest: +SKIP
    [None, 'wiki']
    """
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return list_partitions(conn)
    if not is_partitioned(bind):
        return []
    found = []
    for table, bound, rows in bind.execute(_PARTITIONS):
        found.append(Partition(table, None if bound is None else _literal(bound), int(rows)))
    return found


def _literal(bound: str) -> str | None:
    """The string of one quoted SQL literal as the catalog prints a list bound (``'it''s'``); else None.

    >>> _literal("'it''s'"), _literal("'a', 'b'")
    ("it's", None)
    """
    inner = bound[1:-1]
    if len(bound) < 2 or bound[0] != "'" or bound[-1] != "'" or "'" in inner.replace("''", ""):
        return None
    return inner.replace("''", "'")


def ensure_partition(conn: psycopg.Connection, collection: str) -> bool:
    """Make ``collection``'s partition before its first write; True when one was made.

    ``conn`` is a psycopg connection in autocommit (the writer's). Does nothing on an unpartitioned
    table. A role that may not make it (no EXECUTE on ``dpr_pg.create_collection_partition``)
    writes into the default partition instead, with a warning: the rows are kept all the same.
    """
    if not is_partitioned_table(conn):
        return False
    try:
        made = conn.execute("SELECT dpr_pg.ensure_collection_partition(%s)", (collection,)).fetchone()
    except psycopg.errors.InsufficientPrivilege as e:
        if "may not write collection" in str(e):
            raise PrivilegeError(f"{e.diag.message_primary}; ask the owner of the dpr_pg tables to run: dpr-pg grant "
                                 f"ROLE --collections {collection} --write") from e
        log.warning("collection %r has no partition yet, and this role may not make one (%s): its passages go to "
                    "dpr_pg.%s until the owner runs dpr-pg grant ROLE --write (or ingests into it)", collection,
                    e.diag.message_primary, DEFAULT_PARTITION)
        return False
    except psycopg.errors.UndefinedFunction as e:
        raise SchemaError("dpr_pg.passages is partitioned but this database lacks dpr_pg.ensure_collection_partition; "
                          "run dpr-pg init") from e
    return bool(made and made[0])


def partition_warnings(conn: Connection) -> list[str]:
    """What ``dpr-pg doctor`` says of the partitions: ones without an HNSW index, rows in the default one."""
    if not is_partitioned(conn):
        return []
    warnings = []
    if conn.execute(sa.text("SELECT to_regclass(:i) IS NOT NULL"), {"i": f"dpr_pg.{HNSW_INDEX}"}).scalar():
        for (table,) in conn.execute(_WITHOUT_HNSW, {"index": f"dpr_pg.{HNSW_INDEX}"}):
            warnings.append(f"partition dpr_pg.{table} has no HNSW index: searches of its collection scan it "
                            "exactly; run dpr-pg index to build it")
    if conn.execute(sa.text("SELECT to_regclass('dpr_pg.passages_default') IS NOT NULL")).scalar():
        stray = conn.execute(sa.text(
            "SELECT collection, count(*) FROM dpr_pg.passages_default GROUP BY 1 ORDER BY 1 LIMIT 5")).all()
        if stray:
            names = ", ".join(f"{c!r} ({n})" for c, n in stray)
            warnings.append(f"the default partition holds passages of collections without a partition: {names}; "
                            "their next ingest by the owner of the dpr_pg tables (or one granted --write) moves them "
                            "into a partition of their own")
    return warnings


__all__ = ["DEFAULT_PARTITION", "Partition", "ensure_partition", "is_partitioned", "is_partitioned_table",
           "list_partitions", "partition_name", "partition_warnings"]
