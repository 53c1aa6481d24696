"""Changing how collections are stored: converting ``dpr_pg.passages`` into partitions, dropping a collection.

The partitions themselves (names, listing, the first write's partition, doctor's warnings) are
:mod:`dpr_pg.db.partitions`; this module holds the operations that take the collection's write
lock, rewrite the table and make searches read the database's facts again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from dpr_pg.db.index import HnswParameters, graph_memory, index_parameters
from dpr_pg.db.models import HNSW_INDEX
from dpr_pg.db.partitions import DEFAULT_PARTITION, is_partitioned, list_partitions, partition_name
from dpr_pg.db.revision import require_schema
from dpr_pg.db.storage import read_storage
from dpr_pg.errors import ConfigError, DatabaseError, PrivilegeError, SchemaError
from dpr_pg.ingest.loader import LOCK_SQL
from dpr_pg.search.api import forget_database_facts

log = logging.getLogger(__name__)

# The partitioned copy's name while a conversion builds it.
_NEW = "passages_partitioned"

Progress = Callable[[str], None]


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
        raise _owner_only(e, "only the owner of the dpr_pg tables (the role that ran dpr-pg init) can drop a "
                             "collection's partition; connect as that role",
                          f"collection {collection!r} was not dropped") from e
    forget_database_facts(engine)
    return DroppedCollection(collection, int(removed), bool(owned))


def _owner_only(error: sa.exc.DBAPIError, who: str, failed: str) -> PrivilegeError | DatabaseError:
    """The error for a rolled-back change that only the tables' owner may make: ``who`` says who may."""
    if isinstance(error.orig, psycopg.errors.InsufficientPrivilege):
        return PrivilegeError(f"{error.orig.diag.message_primary}: {who}")
    return DatabaseError(f"{failed}: {_first_line(error)}; nothing was changed")


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
        raise _owner_only(e, "only the owner of the dpr_pg tables can partition them; connect as the role that ran "
                             "dpr-pg init", "dpr_pg.passages was not partitioned") from e
    forget_database_facts(engine)
    return Conversion(result[0], result[1], time.perf_counter() - started)


def _convert(conn: Connection, say: Progress, maintenance_work_mem: str | None) -> tuple[int, int]:
    quoting = conn.connection.driver_connection

    def run(statement: sql.Composable | str) -> None:
        # Straight to the driver, in this transaction: no parameters, so no placeholder is parsed.
        quoting.execute(statement if isinstance(statement, sql.Composable) else statement.encode())

    conn.execute(sa.text("SET LOCAL row_security = off"))  # a role under row-level security fails, never copies less
    say("locking dpr_pg.passages (SHARE: searches go on, writes wait)")
    conn.execute(sa.text("LOCK TABLE dpr_pg.passages IN SHARE MODE"))
    counts = conn.execute(sa.text(
        "SELECT collection, count(*) FROM dpr_pg.passages GROUP BY collection ORDER BY collection")).all()
    rows = sum(int(n) for _, n in counts)
    if maintenance_work_mem is None:
        # Each partition's graph is built on its own: enough memory for the largest. In the server's
        # default 64MB, a 1M-row table's 110k-row partitions built about five times slower.
        largest = max((int(n) for _, n in counts), default=0)
        maintenance_work_mem = graph_memory(conn, largest, index_parameters(conn) or HnswParameters(),
                                            read_storage(conn).kind)
    if maintenance_work_mem is not None:
        try:
            conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :m, true)"), {"m": maintenance_work_mem})
        except sa.exc.DBAPIError as e:
            raise ConfigError("expected a maintenance_work_mem size such as 512MB or 4GB, "
                              f"not {maintenance_work_mem!r}") from e
    say(f"building with maintenance_work_mem {conn.execute(sa.text('SHOW maintenance_work_mem')).scalar()}")
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
    """Every index that no constraint owns, with its method, expression, options, predicate and comment
    (a filtered HNSW index's document, see dpr_pg.db.filtered), on the copy."""
    renames = []
    found = conn.execute(sa.text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), obj_description(i.indexrelid, 'pg_class') "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'dpr_pg.passages'::regclass AND i.indisvalid "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY c.relname")).all()
    for name, definition, comment in found:
        head = f"INDEX {name} ON dpr_pg.passages USING "
        if head not in definition:
            raise SchemaError(f"cannot copy index dpr_pg.{name} ({definition}); drop it and re-run")
        temporary = _temporary(name)
        run(definition.replace(head, f"INDEX {temporary} ON dpr_pg.{_NEW} USING ", 1))
        if comment is not None:
            run(sql.SQL("COMMENT ON INDEX dpr_pg.{} IS {}").format(sql.Identifier(temporary), sql.Literal(comment)))
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
    for index, table in conn.execute(sa.text(
            "SELECT c.relname, t.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_index x ON x.indexrelid = c.oid JOIN pg_class t ON t.oid = x.indrelid "
            "WHERE i.inhparent = to_regclass(:index)"), {"index": f"dpr_pg.{HNSW_INDEX}"}):
        if index != f"{table}_hnsw":
            run(sql.SQL("ALTER INDEX dpr_pg.{} RENAME TO {}").format(sql.Identifier(index),
                                                                     sql.Identifier(f"{table}_hnsw")))


__all__ = ["Conversion", "DroppedCollection", "drop_collection", "partition_passages"]
