"""Sync of an application's own table: enable it, drain its queue, report on it.

:func:`enable_table` runs ``dpr_pg.enable_table()`` (sql/sync.sql): the app table gets an
embedding column, an HNSW index, and triggers that only enqueue the row's primary key in
``dpr_pg.sync_queue``. :func:`run_worker` drains that queue: it claims a batch with
``FOR UPDATE SKIP LOCKED`` (so several workers never take the same item), reads the rows,
encodes them, and writes the embeddings back into the app's rows, all in one transaction.
A worker that dies mid-batch loses nothing: its transaction rolls back, its row locks go, and
the items are due again. A write-back never waits for the app: the row is locked with
``SKIP LOCKED`` and only written if its text still hashes to what was encoded; otherwise the
item stays queued and the next round encodes the new text.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import sqlalchemy as sa
import psycopg
from psycopg import sql
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from dpr_pg.config import DEFAULT_DIM
from dpr_pg.errors import DatabaseError, SchemaError, SyncError

log = logging.getLogger(__name__)

_PREPARER = postgresql.dialect().identifier_preparer


def regclass_name(table: str, *, schema: str | None = None) -> str:
    """``table`` (and ``schema``) as a fully quoted name that ``regclass`` parses literally.

    >>> regclass_name("Articles", schema="app")
    '"app"."Articles"'
    """
    if not table:
        raise SyncError("expected a table name, not an empty string; pass the app table's name")
    parts = [schema, table] if schema else [table]
    return ".".join(_PREPARER.quote_identifier(part) for part in parts)


def enable_statement(
    table: str,
    *,
    text_columns: Sequence[str],
    title_column: str | None = None,
    dim: int = DEFAULT_DIM,
    embedding_column: str = "embedding",
    schema: str | None = None,
) -> sa.Select[Any]:
    """The ``SELECT dpr_pg.enable_table(...)`` that :func:`enable_table` and ``op.enable_dpr`` run.

    >>> print(enable_statement("articles", text_columns=["body"]).compile(
    ...     dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))  # doctest: +ELLIPSIS
    SELECT dpr_pg.enable_table(CAST('"articles"' AS REGCLASS), ARRAY['body'], NULL, 768, 'embedding') AS ...
    """
    if isinstance(text_columns, str) or not text_columns:
        raise SyncError(f"expected text_columns as a non-empty list of column names, not {text_columns!r}")
    return sa.select(
        sa.func.dpr_pg.enable_table(
            sa.cast(sa.literal(regclass_name(table, schema=schema), sa.Text), postgresql.REGCLASS),
            sa.literal(list(text_columns), postgresql.ARRAY(sa.Text)),
            sa.literal(title_column, sa.Text),
            sa.literal(int(dim), sa.Integer),
            sa.literal(embedding_column, sa.Text),
        )
    )


def disable_statement(table: str, *, schema: str | None = None) -> sa.Select[Any]:
    """The ``SELECT dpr_pg.disable_table(...)`` that :func:`disable_table` and ``op.disable_dpr`` run."""
    return sa.select(
        sa.func.dpr_pg.disable_table(
            sa.cast(sa.literal(regclass_name(table, schema=schema), sa.Text), postgresql.REGCLASS)
        )
    )


def _run_ddl(conn: Connection, statement: sa.Select[Any], what: str) -> None:
    has_function = conn.execute(sa.text("SELECT to_regproc('dpr_pg.enable_table') IS NOT NULL")).scalar()
    if not has_function:
        raise SchemaError(f"this database has no dpr_pg sync functions, needed to {what}; run dpr-pg init first")
    try:
        with conn.begin_nested():
            conn.execute(statement)
    except sa.exc.DBAPIError as e:
        diag = getattr(e.orig, "diag", None)
        reason = (diag.message_primary if diag else None) or str(e.orig or e).strip()
        hint = diag.message_hint if diag else None
        raise SyncError(f"could not {what}: {reason}" + (f"; {hint}" if hint else "")) from e


def enable_table(
    conn: Connection,
    table: str,
    *,
    text_columns: Sequence[str],
    title_column: str | None = None,
    dim: int = DEFAULT_DIM,
    embedding_column: str = "embedding",
    schema: str | None = None,
) -> None:
    """Add DPR search to the app table ``table``, in the caller's transaction.

    Adds ``embedding vector(dim)``, ``dpr_encoder_id`` and ``dpr_content_hash``, an HNSW index
    (inner product), the queue triggers, and queues every existing row for ``dpr-pg worker``.

    Example:
        >>> with engine.begin() as conn:  # doctest: +SKIP
        ...     enable_table(conn, "articles", text_columns=["body"], title_column="title")
    """
    statement = enable_statement(
        table, text_columns=text_columns, title_column=title_column, dim=dim,
        embedding_column=embedding_column, schema=schema,
    )
    _run_ddl(conn, statement, f"enable DPR search on {regclass_name(table, schema=schema)}")


def disable_table(conn: Connection, table: str, *, schema: str | None = None) -> None:
    """Remove what :func:`enable_table` added (the embeddings are dropped), in the caller's transaction.

    Example:
        >>> with engine.begin() as conn:  # doctest: +SKIP
        ...     disable_table(conn, "articles")
    """
    _run_ddl(conn, disable_statement(table, schema=schema),
             f"disable DPR search on {regclass_name(table, schema=schema)}")


@dataclass(frozen=True)
class SyncedTable:
    """An enabled app table, as recorded in ``dpr_pg.synced_tables``."""

    oid: int
    schema: str
    name: str
    key_columns: tuple[str, ...]
    text_columns: tuple[str, ...]
    title_column: str | None
    embedding_column: str
    dim: int

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display_name(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class TableStatus:
    """Queue counts of one enabled table: ``pending`` (never failed) and ``failed`` (will be retried)."""

    table: str
    pending: int
    failed: int
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkerReport:
    """What a worker run did, item by item.

    ``embedded``: rows encoded and written; ``unchanged``: the stored embedding already matched;
    ``removed``: the row is gone (deleted); ``cleared``: the row has no text, so no embedding;
    ``deferred``: the row was locked or changed meanwhile, so it stays queued; ``failed``: encoding
    failed, retried later with backoff (see ``dpr-pg status``).
    """

    batches: int = 0
    embedded: int = 0
    unchanged: int = 0
    removed: int = 0
    cleared: int = 0
    deferred: int = 0
    failed: int = 0

    @property
    def completed(self) -> int:
        return self.embedded + self.unchanged + self.removed + self.cleared

    def add(self, other: WorkerReport) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_STATUS = sa.text(
    """
    SELECT n.nspname || '.' || c.relname AS table,
           count(q.row_key) FILTER (WHERE q.last_error IS NULL) AS pending,
           count(q.row_key) FILTER (WHERE q.last_error IS NOT NULL) AS failed,
           (array_agg(q.last_error ORDER BY q.next_attempt_at DESC) FILTER (WHERE q.last_error IS NOT NULL))[1]
               AS last_error
    FROM dpr_pg.synced_tables s
    JOIN pg_class c ON c.oid = s.tbl
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN dpr_pg.sync_queue q ON q.tbl = s.tbl
    GROUP BY n.nspname, c.relname
    ORDER BY n.nspname, c.relname
    """
)


def sync_status(engine: Engine) -> list[TableStatus]:
    """Pending and failed queue items of each enabled table; never writes.

    Example:
        >>> sync_status(engine)  # doctest: +SKIP
        [TableStatus(table='public.articles', pending=3, failed=0, last_error=None)]
    """
    _require_queue(engine)
    with engine.connect() as conn:
        return [TableStatus(**row) for row in conn.execute(_STATUS).mappings()]


def _require_queue(engine: Engine) -> None:
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('dpr_pg.sync_queue') IS NULL")).scalar():
            raise SchemaError("this database has no dpr_pg sync queue; run dpr-pg init first")


def run_worker(
    engine: Engine,
    pair: Any,
    *,
    once: bool = False,
    batch_size: int = 32,
    poll_interval: float = 2.0,
    retry_base: float = 5.0,
    retry_max: float = 3600.0,
    reconnects: int = 10,
    stop: threading.Event | None = None,
) -> WorkerReport:
    """Drain the sync queue with the encoder pair ``pair`` (an :class:`~dpr_pg.encoders.EncoderPair`).

    With ``once``, return when no due item is left (or a batch could complete none: its rows are
    locked by the app right now); otherwise poll every ``poll_interval`` seconds until ``stop`` is set.
    A failed item is retried after ``retry_base * 2**attempts`` seconds, at most ``retry_max``.
    A dropped connection is retried ``reconnects`` times in a row (waiting 1, 2, 4 ... 60 s) before
    :class:`DatabaseError`; the batch it interrupted stays queued.

    Example:
        >>> run_worker(engine, EncoderPair.load(), once=True).embedded  # doctest: +SKIP
        12
    """
    from dpr_pg._sync_worker import Batcher

    if batch_size < 1:
        raise SyncError(f"expected a batch size of at least 1, not {batch_size}")
    stop = stop or threading.Event()
    batcher = Batcher(engine, pair, retry_base=retry_base, retry_max=retry_max)
    total = WorkerReport()
    lost = 0  # consecutive batches lost to a dropped connection
    checked = False
    while not stop.is_set():
        try:
            if not checked:
                _require_queue(engine)
                checked = True
            report = batcher.process_batch(batch_size)
        except (sa.exc.OperationalError, psycopg.OperationalError) as e:
            # The batch rolled back (or died with its session), so its items are still queued.
            lost += 1
            if lost > reconnects:
                raise DatabaseError(
                    f"the worker lost its database connection {lost} times in a row: {e}; "
                    "check that the server is up and the URL is right, then start the worker again"
                ) from e
            log.warning("database connection lost (%s); retrying in %s s", e, min(60, 2 ** (lost - 1)))
            stop.wait(min(60, 2 ** (lost - 1)))
            continue
        lost = 0
        total.add(report)
        if report.batches:
            log.info("batch: %s", report.as_dict())
        if report.completed == 0:
            # Nothing due, or nothing could be completed (only failures, or rows the app holds locked).
            if once:
                break
            stop.wait(poll_interval)
    return total
