"""Sync of an application's own table: enable it, drain its queue, report on it, fix stuck items.

:func:`enable_table` runs ``dpr_pg.enable_table()`` (sql/sync.sql): the app table gets an
embedding column, an HNSW index, and triggers that only upsert the row's primary key into
``dpr_pg.sync_queue`` with the writer's transaction id as the item's version. :func:`~dpr_pg.sync.worker.run_worker`
drains that queue: it claims a batch with advisory locks (so several workers never take the same
item, and the app never waits for one), reads the rows, encodes them, writes the embeddings back
into the app's rows, and deletes the items whose version is still the claimed one, all in one
transaction. A worker that dies mid-batch loses nothing: its transaction rolls back, its locks
go, and the items are due again. A write-back never waits for the app: the row is locked with
``SKIP LOCKED`` and only written if its text still hashes to what was encoded; an app write
during the batch changes the item's version, so the item stays queued for the new text.
An item that keeps failing is dead-lettered after ``max_attempts``: :func:`~dpr_pg.sync.queue.sync_status` counts
it, :func:`retry_items` and :func:`discard_items` act on it (see :mod:`dpr_pg.sync.queue`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from dpr_pg.config import DEFAULT_DIM
from dpr_pg.errors import SchemaError, SyncError


def regclass_name(table: str, *, schema: str | None = None) -> str:
    """``table`` (and ``schema``) as a fully quoted name that ``regclass`` parses literally.

    >>> regclass_name("Articles", schema="app")
    '"app"."Articles"'
    """
    if not table:
        raise SyncError("expected a table name, not an empty string; pass the app table's name")
    parts = [schema, table] if schema else [table]
    # PostgreSQL's own rule, by hand: SQLAlchemy's preparer would also double a '%' (for its
    # pyformat parameters), which then reaches the server as part of a bound name.
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


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


__all__ = ["SyncedTable", "disable_statement", "disable_table", "enable_statement", "enable_table", "regclass_name"]
