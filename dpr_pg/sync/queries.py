"""The SQL of the sync worker, in PostgreSQL's own ``$n`` placeholders.

The worker runs these on a :class:`psycopg.RawCursor`, which sends the text as it is: a table or
column name holding ``%`` (a legal name, such as ``ofertas_50%``) is never read as a placeholder.
Names come from ``dpr_pg.synced_tables`` and are composed with :class:`psycopg.sql.Identifier`.

Claiming takes a transaction-level advisory lock per item (key space :data:`LOCK_CLASS`), not a row
lock, so that the app's triggers can upsert an item (bump its version) while a worker encodes it.
Settling deletes an item only if its version is still the claimed one and nobody holds its row
(``SKIP LOCKED``): the worker never waits for the app, so the app and the worker cannot deadlock.
"""

from __future__ import annotations

from psycopg import sql

from dpr_pg.sync.tables import SyncedTable

LOCK_CLASS = 0x64707273  # "dprs": the first key of the queue items' advisory locks

TABLES = """
SELECT s.tbl::oid, n.nspname, c.relname, s.key_columns, s.text_columns, s.title_column, s.embedding_column,
       s.dim, s.encoder_id, dpr_pg.sync_table_problem(s.tbl)
FROM dpr_pg.synced_tables s
JOIN pg_class c ON c.oid = s.tbl
JOIN pg_namespace n ON n.oid = c.relnamespace
"""

# The candidates are materialised in queue order first, so that the lock function runs on them one
# by one, in that order, and only until the batch is full.
CLAIM = """
WITH candidates AS MATERIALIZED (
    SELECT q.tbl::oid AS tbl, q.row_key
    FROM dpr_pg.sync_queue q
    WHERE q.dead_at IS NULL AND q.next_attempt_at <= clock_timestamp() AND q.tbl::oid <> ALL ($1::oid[])
    ORDER BY q.next_attempt_at
    LIMIT $2
)
SELECT c.tbl, c.row_key::text
FROM candidates c
WHERE pg_try_advisory_xact_lock($3, hashtext(c.tbl::text || ' ' || c.row_key::text))
LIMIT $4
"""

# Read after the locks are held, so that the versions are at least as new as the claim.
ITEMS = """
SELECT q.tbl::oid, q.row_key::text, q.version::text, q.attempts
FROM unnest($1::oid[], $2::text[]) AS c(tbl, row_key)
JOIN dpr_pg.sync_queue q ON q.tbl = c.tbl::regclass AND q.row_key = c.row_key::jsonb
WHERE q.dead_at IS NULL
"""

BIND = "SELECT dpr_pg.bind_table_encoder($1::oid::regclass, $2)"

ENCODER = "SELECT question_model, passage_model, fingerprint FROM dpr_pg.encoders WHERE id = $1"

SETTLE = """
DELETE FROM dpr_pg.sync_queue q
WHERE q.ctid = ANY (ARRAY(
    SELECT s.ctid
    FROM unnest($2::text[], $3::text[]) AS c(row_key, version)
    JOIN dpr_pg.sync_queue s ON s.tbl = $1::oid::regclass AND s.row_key = c.row_key::jsonb
                             AND s.version = c.version::xid8
    FOR UPDATE OF s SKIP LOCKED
))
RETURNING q.row_key::text
"""

FAIL = """
UPDATE dpr_pg.sync_queue q
SET attempts = q.attempts + 1, last_error = $4,
    next_attempt_at = clock_timestamp() + make_interval(secs => $5),
    dead_at = CASE WHEN q.attempts + 1 >= $6 THEN clock_timestamp() END
WHERE q.ctid = (SELECT s.ctid FROM dpr_pg.sync_queue s
                WHERE s.tbl = $1::oid::regclass AND s.row_key = $2::jsonb AND s.version = $3::xid8
                FOR UPDATE SKIP LOCKED)
RETURNING q.dead_at IS NOT NULL
"""


def _hash_expr(table: SyncedTable, alias: str) -> sql.Composable:
    """SQL computing the hash of the embedded text of row ``alias``: the same at read and at write."""
    columns = ([table.title_column] if table.title_column else []) + list(table.text_columns)
    parts = sql.SQL(", ").join(sql.Identifier(alias, column) for column in columns)
    return sql.SQL("encode(sha256(convert_to(jsonb_build_array({})::text, 'UTF8')), 'hex')").format(parts)


def _key_join(table: SyncedTable, alias: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(alias, column), sql.Identifier("r", column))
        for column in table.key_columns
    )


def read_rows(table: SyncedTable) -> sql.Composed:
    """Rows of ``table`` for the keys in ``$1`` (a jsonb array): key, title, texts, hash, stored state."""
    title = sql.Identifier("t", table.title_column) if table.title_column else sql.SQL("NULL::text")
    texts = sql.SQL(", ").join(sql.Identifier("t", column) for column in table.text_columns)
    return sql.SQL(
        "SELECT k.key::text, {title}, ARRAY[{texts}]::text[], {hash}, t.dpr_content_hash, t.dpr_encoder_id, "
        "t.{embedding} IS NOT NULL "
        "FROM jsonb_array_elements($1::jsonb) AS k(key) "
        "CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, k.key) AS r "
        "JOIN {table} AS t ON {join}"
    ).format(
        title=title, texts=texts, hash=_hash_expr(table, "t"), embedding=sql.Identifier(table.embedding_column),
        table=table.identifier, join=_key_join(table, "t"),
    )


def write_back(table: SyncedTable) -> sql.Composed:
    """Write ``$1`` (embedding), ``$2`` (encoder id), ``$3`` (hash) into the row keyed ``$4``, if its
    text still hashes to ``$3`` and nobody holds it."""
    return sql.SQL(
        "UPDATE {table} AS t SET {embedding} = $1, dpr_encoder_id = $2, dpr_content_hash = $3 "
        "WHERE t.ctid = (SELECT u.ctid FROM jsonb_populate_record(NULL::{table}, $4::jsonb) AS r "
        "JOIN {table} AS u ON {join} WHERE {hash} = $3 FOR UPDATE OF u SKIP LOCKED)"
    ).format(
        table=table.identifier, embedding=sql.Identifier(table.embedding_column), join=_key_join(table, "u"),
        hash=_hash_expr(table, "u"),
    )
