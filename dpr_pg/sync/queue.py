"""The sync queue seen from outside a worker: each enabled table's state, and what to do with dead items.

:func:`sync_status` is what ``dpr-pg status`` shows; :func:`retry_items` and :func:`discard_items`
are ``dpr-pg sync retry|discard``, and run the SQL functions ``dpr_pg.sync_retry`` and
``dpr_pg.sync_discard`` (sql/sync.sql), so every face acts the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import SchemaError, SyncError
from dpr_pg.sync.tables import regclass_name


@dataclass(frozen=True)
class TableStatus:
    """The sync state of one enabled table.

    ``pending``: queue items never failed; ``failed``: failed, retried with backoff; ``dead``:
    failed ``max_attempts`` times, parked until ``dpr-pg sync retry`` or ``discard``;
    ``last_error``: the worker's latest error on one of its items; ``problem``: why its sync is
    paused (a renamed text column, say), or None; ``encoder``: the passage model (and fingerprint)
    its embeddings come from, once a worker has written one.
    """

    table: str
    pending: int
    failed: int
    dead: int
    last_error: str | None
    problem: str | None
    encoder: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# last_error is only ever written by a worker: the queue's row-level security lets no other role
# insert an item that carries one (migration 0012).
_STATUS = sa.text(
    """
    SELECT n.nspname || '.' || c.relname AS table,
           count(q.row_key) FILTER (WHERE q.dead_at IS NULL AND q.last_error IS NULL) AS pending,
           count(q.row_key) FILTER (WHERE q.dead_at IS NULL AND q.last_error IS NOT NULL) AS failed,
           count(q.row_key) FILTER (WHERE q.dead_at IS NOT NULL) AS dead,
           (array_agg(q.last_error ORDER BY q.next_attempt_at DESC) FILTER (WHERE q.last_error IS NOT NULL))[1]
               AS last_error,
           dpr_pg.sync_table_problem(s.tbl) AS problem,
           e.passage_model || ' (' || left(e.fingerprint, 12) || ')' AS encoder
    FROM dpr_pg.synced_tables s
    JOIN pg_class c ON c.oid = s.tbl
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN dpr_pg.encoders e ON e.id = s.encoder_id
    LEFT JOIN dpr_pg.sync_queue q ON q.tbl = s.tbl
    GROUP BY s.tbl, n.nspname, c.relname, e.passage_model, e.fingerprint
    ORDER BY n.nspname, c.relname
    """
)


def sync_status(engine: Engine) -> list[TableStatus]:
    """Pending, failed and dead queue items of each enabled table, and why its sync is paused; never writes.

    Example:
        >>> sync_status(engine)  # doctest: +SKIP
        [TableStatus(table='public.articles', pending=3, failed=0, dead=0, last_error=None, problem=None, encoder=None)]
    """
    require_queue(engine)
    with engine.connect() as conn:
        return [TableStatus(**row) for row in conn.execute(_STATUS).mappings()]


def require_queue(engine: Engine) -> None:
    """Raise :class:`SchemaError` unless the database has the sync queue of this version of dpr_pg."""
    with engine.connect() as conn:
        queue, current = conn.execute(sa.text(
            "SELECT to_regclass('dpr_pg.sync_queue') IS NOT NULL, "
            "to_regprocedure('dpr_pg.sync_table_problem(regclass)') IS NOT NULL"
        )).one()
    if not queue:
        raise SchemaError("this database has no dpr_pg sync queue; run dpr-pg init first")
    if not current:
        raise SchemaError("this database's dpr_pg sync queue predates dead-lettering and item versions; "
                          "run dpr-pg init to upgrade it")


def _table_argument(conn: Connection, table: str | None, schema: str | None) -> int | None:
    if table is None:
        return None
    name = regclass_name(table, schema=schema)
    oid = conn.execute(sa.text("SELECT to_regclass(:name)::oid"), {"name": name}).scalar()
    if oid is None:
        raise SyncError(f"expected an existing table, not {name}; dpr-pg status lists the enabled tables")
    return int(oid)


def retry_items(engine: Engine, table: str | None = None, *, schema: str | None = None) -> int:
    """Make the dead and failing queue items of ``table`` (or of every table) due now; returns how many.

    Their attempts start again from 0. Runs ``dpr_pg.sync_retry`` (sql/sync.sql).

    Example:
        >>> retry_items(engine, "articles")  # doctest: +SKIP
        2
    """
    require_queue(engine)
    with engine.begin() as conn:
        oid = _table_argument(conn, table, schema)
        return int(conn.execute(sa.text("SELECT dpr_pg.sync_retry(CAST(CAST(:oid AS oid) AS regclass))"),
                                {"oid": oid}).scalar_one())


def discard_items(engine: Engine, table: str | None = None, *, schema: str | None = None) -> int:
    """Delete the dead queue items of ``table`` (or of every table); returns how many.

    A discarded row keeps the embedding it had (or none) until the app writes it again. Runs
    ``dpr_pg.sync_discard`` (sql/sync.sql).

    Example:
        >>> discard_items(engine)  # doctest: +SKIP
        1
    """
    require_queue(engine)
    with engine.begin() as conn:
        oid = _table_argument(conn, table, schema)
        return int(conn.execute(sa.text("SELECT dpr_pg.sync_discard(CAST(CAST(:oid AS oid) AS regclass))"),
                                {"oid": oid}).scalar_one())
