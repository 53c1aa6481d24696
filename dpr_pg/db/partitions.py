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
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import ConfigError, DatabaseError, PrivilegeError, SchemaError

log = logging.getLogger(__name__)

DEFAULT_PARTITION = "passages_default"
_NEW = "passages_partitioned"
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

Progress = Callable[[str], None]


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


@dataclass(frozen=True)
class DroppedCollection:
    """What :func:`drop_collection` did: the passages removed, and whether a partition went with them."""

    collection: str
    passages: int
    partition_dropped: bool


def drop_collection(engine: Engine, collection: str) -> DroppedCollection:
    """Remove ``collection`` and its passages: on a partitioned table its partition is detached and dropped.

    Dropping a partition takes a short exclusive lock on dpr_pg.passages (searches wait for it);
    on an unpartitioned table the rows are deleted. Tenancy grants that name the collection stay.

    >>> drop_collection(engine, "old_news").passages  # doctest: +SKIP
    1200
    """
    from dpr_pg.db.schema import require_schema  # lazy: schema imports the index module, which imports this one
    from dpr_pg.ingest.loader import LOCK_SQL  # lazy: the loader imports this module

    if not isinstance(collection, str) or not collection:
        raise ConfigError(f"expected a collection name, not {collection!r}")
    with engine.connect() as conn:
        require_schema(conn)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(LOCK_SQL, (collection,))
            table = partition_name(collection)
            owned = is_partitioned(conn) and conn.execute(
                sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"dpr_pg.{table}"}).scalar()
            removed = conn.execute(sa.text("DELETE FROM dpr_pg.passages WHERE collection = :c"),
                                   {"c": collection}).rowcount if not owned else 0
            if owned:
                identifier = conn.connection.driver_connection  # psycopg, to quote the table name
                removed = int(conn.execute(sa.text(
                    sql.SQL("SELECT count(*) FROM dpr_pg.{}").format(sql.Identifier(table)).as_string(identifier)
                )).scalar_one())
                conn.execute(sa.text(sql.SQL("ALTER TABLE dpr_pg.passages DETACH PARTITION dpr_pg.{}").format(
                    sql.Identifier(table)).as_string(identifier)))
                conn.execute(sa.text(sql.SQL("DROP TABLE dpr_pg.{}").format(sql.Identifier(table)).as_string(
                    identifier)))
                if conn.execute(sa.text("SELECT to_regclass('dpr_pg.passages_default') IS NOT NULL")).scalar():
                    removed += conn.execute(sa.text("DELETE FROM dpr_pg.passages_default WHERE collection = :c"),
                                            {"c": collection}).rowcount
    except sa.exc.DBAPIError as e:
        if isinstance(e.orig, psycopg.errors.InsufficientPrivilege):
            raise PrivilegeError(f"{e.orig.diag.message_primary}: only the owner of the dpr_pg tables (the role that "
                                 "ran dpr-pg init) can drop a collection's partition; connect as that role") from e
        raise DatabaseError(f"collection {collection!r} was not dropped: {_first_line(e)}; nothing was changed") from e
    _forget(engine)
    return DroppedCollection(collection, int(removed), bool(owned))


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _forget(engine: Engine) -> None:
    from dpr_pg.search.api import forget_database_facts  # lazy: the search API imports this module

    forget_database_facts(engine)


@dataclass(frozen=True)
class Conversion:
    """What :func:`partition_passages` did: rows before and after (equal), partitions made, seconds."""

    rows: int
    partitions: int
    seconds: float
    converted: bool = True


def partition_passages(engine: Engine, *, progress: Progress | None = None,
                       maintenance_work_mem: str | None = None) -> Conversion:
    """Convert an unpartitioned ``dpr_pg.passages`` into one partitioned by collection; no row is lost.

    One transaction: ``dpr_pg.passages`` is locked in SHARE mode (searches go on, writes wait),
    a partitioned copy is built with one partition per collection and a default partition, rows
    are copied with their ids, the indexes (HNSW with the same storage and parameters, GIN,
    btree), constraints, row-level security policies and grants are made again, the row counts
    are compared, and the tables are swapped under a brief exclusive lock. Anything that fails
    rolls it all back. Writes wait for the whole conversion (about the time of an HNSW build of
    the table); run it when writes can pause. ``progress`` receives a line per step.

    >>> partition_passages(engine).rows  # doctest: +SKIP
    100000
    """
    from dpr_pg.db.schema import require_schema  # lazy: schema imports the index module, which imports this one

    say = progress or (lambda line: log.info("%s", line))
    started = time.perf_counter()
    with engine.connect() as conn:
        require_schema(conn)
        if is_partitioned(conn):
            return Conversion(0, len(list_partitions(conn)), 0.0, converted=False)
    try:
        with engine.begin() as conn:
            result = _convert(conn, say, maintenance_work_mem)
    except sa.exc.DBAPIError as e:
        if isinstance(e.orig, psycopg.errors.InsufficientPrivilege):
            raise PrivilegeError(f"{e.orig.diag.message_primary}: only the owner of the dpr_pg tables can "
                                 "partition them; connect as the role that ran dpr-pg init") from e
        raise DatabaseError(f"dpr_pg.passages was not partitioned: {_first_line(e)}; nothing was changed") from e
    _forget(engine)
    return Conversion(result[0], result[1], time.perf_counter() - started)


def _convert(conn: Connection, say: Progress, maintenance_work_mem: str | None) -> tuple[int, int]:
    quoting = conn.connection.driver_connection

    def run(statement: sql.Composable | str) -> None:
        # Straight to the driver, in this transaction: no parameters, so no placeholder is parsed.
        quoting.execute(statement if isinstance(statement, sql.Composable) else statement.encode())

    conn.execute(sa.text("SET LOCAL row_security = off"))  # a role under row-level security fails, never copies less
    if maintenance_work_mem is not None:
        conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :m, true)"), {"m": maintenance_work_mem})
    say("locking dpr_pg.passages (SHARE: searches go on, writes wait)")
    conn.execute(sa.text("LOCK TABLE dpr_pg.passages IN SHARE MODE"))
    counts = conn.execute(sa.text(
        "SELECT collection, count(*) FROM dpr_pg.passages GROUP BY collection ORDER BY collection")).all()
    rows = sum(int(n) for _, n in counts)
    run(f"CREATE TABLE dpr_pg.{_NEW} (LIKE dpr_pg.passages INCLUDING DEFAULTS INCLUDING GENERATED "
        "INCLUDING IDENTITY INCLUDING STORAGE INCLUDING CONSTRAINTS INCLUDING COMMENTS) PARTITION BY LIST (collection)")
    run(sql.SQL("CREATE TABLE dpr_pg.{} PARTITION OF dpr_pg.{} DEFAULT").format(
        sql.Identifier(DEFAULT_PARTITION), sql.Identifier(_NEW)))
    run(sql.SQL("ALTER TABLE dpr_pg.{} SET (toast_tuple_target = 8160)").format(sql.Identifier(DEFAULT_PARTITION)))
    columns = [name for (name,) in conn.execute(sa.text(
        "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = 'dpr_pg.passages'::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum"))]
    column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    for done, (collection, count) in enumerate(counts, 1):
        table = partition_name(collection)
        run(sql.SQL("CREATE TABLE dpr_pg.{} PARTITION OF dpr_pg.{} FOR VALUES IN ({})").format(
            sql.Identifier(table), sql.Identifier(_NEW), sql.Literal(collection)))
        run(sql.SQL("ALTER TABLE dpr_pg.{} SET (toast_tuple_target = 8160)").format(sql.Identifier(table)))
        # Straight into the partition, in key order: the collection's rows lie together and in order.
        run(sql.SQL("INSERT INTO dpr_pg.{} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM dpr_pg.passages "
                    "WHERE collection = {} ORDER BY external_id").format(
            sql.Identifier(table), column_list, column_list, sql.Literal(collection)))
        say(f"copied collection {collection!r}: {count} passages ({done}/{len(counts)})")
    # The identity goes on from where the old table's stopped.
    conn.execute(sa.text(
        "SELECT setval(pg_get_serial_sequence(:new, 'id'), s.last_value, s.is_called) "
        "FROM pg_sequences q, LATERAL (SELECT q.last_value IS NOT NULL AS is_called, "
        "coalesce(q.last_value, q.start_value) AS last_value) s "
        "WHERE format('%I.%I', q.schemaname, q.sequencename)::regclass = "
        "pg_get_serial_sequence('dpr_pg.passages', 'id')::regclass"), {"new": f"dpr_pg.{_NEW}"})
    renames = _copy_constraints(conn, run)
    say("building the indexes (HNSW per partition)")
    index_started = time.perf_counter()
    renames += _copy_indexes(conn, run)
    say(f"indexes built in {time.perf_counter() - index_started:.1f} s")
    _copy_security(conn, run)
    copied = int(conn.execute(sa.text(f"SELECT count(*) FROM dpr_pg.{_NEW}")).scalar_one())
    if copied != rows:
        raise DatabaseError(f"the partitioned copy holds {copied} passages, not {rows}; nothing was changed")
    say("swapping the tables (a brief exclusive lock)")
    conn.execute(sa.text("LOCK TABLE dpr_pg.passages IN ACCESS EXCLUSIVE MODE"))
    old_sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence('dpr_pg.passages', 'id')")).scalar_one()
    run("DROP TABLE dpr_pg.passages")
    run(f"ALTER TABLE dpr_pg.{_NEW} RENAME TO passages")
    sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence('dpr_pg.passages', 'id')")).scalar_one()
    run(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(sql.SQL(sequence), sql.Identifier(old_sequence.split(".")[-1])))
    for kind, temporary, final in renames:
        if kind == "constraint":
            run(sql.SQL("ALTER TABLE dpr_pg.passages RENAME CONSTRAINT {} TO {}").format(
                sql.Identifier(temporary), sql.Identifier(final)))
        else:
            run(sql.SQL("ALTER INDEX dpr_pg.{} RENAME TO {}").format(sql.Identifier(temporary), sql.Identifier(final)))
    _name_leaf_hnsw(conn, run)
    say(f"analyzing: {rows} passages in {len(counts)} partitions")
    run("ANALYZE dpr_pg.passages")
    return rows, len(counts)


def _temporary(name: str) -> str:
    return (name[:57] + "_part")[:63]


def _copy_constraints(conn: Connection, run: Callable[[sql.Composable | str], None]) -> list[tuple[str, str, str]]:
    """Primary, unique and foreign keys on the copy; a key without ``collection`` gets it appended."""
    renames = []
    found = conn.execute(sa.text(
        "SELECT c.conname, c.contype, pg_get_constraintdef(c.oid), "
        "       ARRAY(SELECT a.attname FROM unnest(c.conkey) k JOIN pg_attribute a "
        "             ON a.attrelid = c.conrelid AND a.attnum = k) AS columns "
        "FROM pg_constraint c WHERE c.conrelid = 'dpr_pg.passages'::regclass AND c.contype IN ('p', 'u', 'f') "
        "ORDER BY c.contype, c.conname")).all()
    for name, kind, definition, columns in found:
        temporary = _temporary(name)
        if kind == "f":
            run(sql.SQL("ALTER TABLE dpr_pg.{} ADD CONSTRAINT {} {}").format(
                sql.Identifier(_NEW), sql.Identifier(name), sql.SQL(definition)))
            continue
        keys = list(columns) + ([] if "collection" in columns else ["collection"])
        run(sql.SQL("ALTER TABLE dpr_pg.{} ADD CONSTRAINT {} {} ({})").format(
            sql.Identifier(_NEW), sql.Identifier(temporary), sql.SQL("PRIMARY KEY" if kind == "p" else "UNIQUE"),
            sql.SQL(", ").join(sql.Identifier(k) for k in keys)))
        renames.append(("constraint", temporary, name))
    return renames


def _copy_indexes(conn: Connection, run: Callable[[sql.Composable | str], None]) -> list[tuple[str, str, str]]:
    """Every index that no constraint owns, with its method, expression and options, on the copy."""
    renames = []
    found = conn.execute(sa.text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'dpr_pg.passages'::regclass AND i.indisvalid "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY c.relname")).all()
    for name, definition in found:
        head = f"INDEX {name} ON dpr_pg.passages USING "
        if head not in definition:
            raise SchemaError(f"cannot copy index dpr_pg.{name} ({definition}); drop it and re-run")
        temporary = _temporary(name)
        run(definition.replace(head, f"INDEX {temporary} ON dpr_pg.{_NEW} USING ", 1))
        renames.append(("index", temporary, name))
    return renames


def _copy_security(conn: Connection, run: Callable[[sql.Composable | str], None]) -> None:
    """Grants, row-level security and its policies, as the old table had them."""
    for grantee, privilege, grantable in conn.execute(sa.text(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE a.grantee::regrole::text END, a.privilege_type, "
            "a.is_grantable FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = 'dpr_pg.passages'::regclass AND a.grantee <> c.relowner")):
        target = sql.SQL("PUBLIC") if grantee is None else sql.SQL(grantee)  # regrole's text is quoted already
        run(sql.SQL("GRANT {} ON dpr_pg.{} TO {}{}").format(
            sql.SQL(privilege), sql.Identifier(_NEW), target, sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    for name, command, permissive, roles, using, check in conn.execute(sa.text(
            "SELECT p.polname, p.polcmd, p.polpermissive, "
            "       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE r::regrole::text END FROM unnest(p.polroles) r), "
            "       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid) "
            "FROM pg_policy p WHERE p.polrelid = 'dpr_pg.passages'::regclass ORDER BY p.polname")):
        verb = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}[command]
        statement = sql.SQL("CREATE POLICY {} ON dpr_pg.{} AS {} FOR {} TO {}").format(
            sql.Identifier(name), sql.Identifier(_NEW), sql.SQL("PERMISSIVE" if permissive else "RESTRICTIVE"),
            sql.SQL(verb), sql.SQL(", ").join(sql.SQL(r) for r in roles))
        if using is not None:
            statement += sql.SQL(" USING ({})").format(sql.SQL(using))
        if check is not None:
            statement += sql.SQL(" WITH CHECK ({})").format(sql.SQL(check))
        run(statement)
    enabled, forced = conn.execute(sa.text(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'dpr_pg.passages'::regclass")).one()
    if enabled:
        run(f"ALTER TABLE dpr_pg.{_NEW} ENABLE ROW LEVEL SECURITY")
    if forced:
        run(f"ALTER TABLE dpr_pg.{_NEW} FORCE ROW LEVEL SECURITY")


def _name_leaf_hnsw(conn: Connection, run: Callable[[sql.Composable | str], None]) -> None:
    """Name each partition's HNSW index ``<partition>_hnsw``, so that a rebuild can find and replace it."""
    from dpr_pg.ingest.index import HNSW_INDEX  # lazy: the index module imports this one

    for index, table in conn.execute(sa.text(
            "SELECT c.relname, t.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_index x ON x.indexrelid = c.oid JOIN pg_class t ON t.oid = x.indrelid "
            "WHERE i.inhparent = to_regclass(:index)"), {"index": f"dpr_pg.{HNSW_INDEX}"}):
        if index != f"{table}_hnsw":
            run(sql.SQL("ALTER INDEX dpr_pg.{} RENAME TO {}").format(sql.Identifier(index),
                                                                     sql.Identifier(f"{table}_hnsw")))


def partition_warnings(conn: Connection) -> list[str]:
    """What ``dpr-pg doctor`` says of the partitions: ones without an HNSW index, rows in the default one."""
    from dpr_pg.ingest.index import HNSW_INDEX  # lazy: the index module imports this one

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


__all__ = ["DEFAULT_PARTITION", "Conversion", "DroppedCollection", "Partition", "drop_collection", "ensure_partition",
           "is_partitioned", "list_partitions", "partition_name", "partition_passages", "partition_warnings"]
