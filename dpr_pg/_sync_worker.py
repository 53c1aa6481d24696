"""One batch of the sync worker: claim, read, encode, write back, settle the queue items.

Everything happens in one transaction on a psycopg connection, so that a worker killed at any
point leaves its items queued (its locks die with its session). Table and column names come from
``dpr_pg.synced_tables`` and are composed with :class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import Connection as PgConnection
from psycopg import sql
from sqlalchemy.engine import Engine

from dpr_pg.sync import SyncedTable, WorkerReport

log = logging.getLogger("dpr_pg.sync")
_REGISTERED: weakref.WeakSet[Any] = weakref.WeakSet()  # psycopg connections that know the vector type

_CLAIM = """
SELECT q.tbl::oid, q.row_key::text, q.attempts
FROM dpr_pg.sync_queue q
WHERE q.next_attempt_at <= clock_timestamp()
ORDER BY q.next_attempt_at
LIMIT %s
FOR UPDATE SKIP LOCKED
"""

_TABLES = """
SELECT s.tbl::oid, n.nspname, c.relname, s.key_columns, s.text_columns, s.title_column, s.embedding_column, s.dim
FROM dpr_pg.synced_tables s
JOIN pg_class c ON c.oid = s.tbl
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE s.tbl = ANY(%s::oid[])
"""

_DONE = "DELETE FROM dpr_pg.sync_queue WHERE tbl = %s::oid AND row_key = ANY(%s::text[]::jsonb[])"

_FAILED = """
UPDATE dpr_pg.sync_queue
SET attempts = attempts + 1, last_error = %s, next_attempt_at = clock_timestamp() + make_interval(secs => %s)
WHERE tbl = %s::oid AND row_key = %s::jsonb
"""

_BAD_VALUES = "the encoder returned NaN, infinite or all-zero values for this row; check the model and the text"


@dataclass
class _Row:
    key: str
    title: str
    text: str
    content_hash: str
    stored_hash: str | None
    stored_encoder: int | None
    has_embedding: bool


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


def _read_rows(pg: PgConnection[Any], table: SyncedTable, keys: list[str]) -> dict[str, _Row]:
    title = sql.Identifier("t", table.title_column) if table.title_column else sql.SQL("NULL::text")
    texts = sql.SQL(", ").join(sql.Identifier("t", column) for column in table.text_columns)
    query = sql.SQL(
        "SELECT k.key::text, {title}, ARRAY[{texts}]::text[], {hash}, t.dpr_content_hash, t.dpr_encoder_id, "
        "t.{embedding} IS NOT NULL "
        "FROM jsonb_array_elements(%s::jsonb) AS k(key) "
        "CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, k.key) AS r "
        "JOIN {table} AS t ON {join}"
    ).format(
        title=title, texts=texts, hash=_hash_expr(table, "t"), embedding=sql.Identifier(table.embedding_column),
        table=table.identifier, join=_key_join(table, "t"),
    )
    rows = pg.execute(query, ["[" + ", ".join(keys) + "]"]).fetchall()
    found = {}
    for key, title_value, text_values, content_hash, stored_hash, stored_encoder, has_embedding in rows:
        text = "\n".join(part.strip() for part in text_values if part and part.strip())
        found[key] = _Row(key, (title_value or "").strip(), text, content_hash, stored_hash, stored_encoder,
                          has_embedding)
    return found


def _write_back(pg: PgConnection[Any], table: SyncedTable, row: _Row, embedding: Any, encoder_id: int | None) -> bool:
    """Write one row's embedding if its text is unchanged and nobody holds it; True when written."""
    query = sql.SQL(
        "UPDATE {table} AS t SET {embedding} = %(embedding)s, dpr_encoder_id = %(encoder_id)s, "
        "dpr_content_hash = %(hash)s "
        "WHERE t.ctid = (SELECT u.ctid FROM jsonb_populate_record(NULL::{table}, %(key)s::jsonb) AS r "
        "JOIN {table} AS u ON {join} WHERE {hash} = %(hash)s FOR UPDATE OF u SKIP LOCKED)"
    ).format(
        table=table.identifier, embedding=sql.Identifier(table.embedding_column), join=_key_join(table, "u"),
        hash=_hash_expr(table, "u"),
    )
    params = {"embedding": embedding, "encoder_id": encoder_id, "hash": row.content_hash, "key": row.key}
    return pg.execute(query, params).rowcount == 1


def _usable(embeddings: np.ndarray) -> np.ndarray:
    """Per row: finite and not all zero (a zero vector scores 0 against every question)."""
    return np.isfinite(embeddings).all(axis=1) & np.any(embeddings != 0, axis=1)


class Batcher:
    """Processes batches for one engine and encoder pair; the encoder is registered on first use."""

    def __init__(self, engine: Engine, pair: Any, *, retry_base: float, retry_max: float) -> None:
        self.engine = engine
        self.pair = pair
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._encoder_id: int | None = None

    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_max, self.retry_base * 2 ** min(attempts, 30)))

    def _ensure_encoder(self) -> int:
        if self._encoder_id is None:
            from dpr_pg.encoders import register_encoder

            with self.engine.begin() as conn:
                self._encoder_id = register_encoder(conn, self.pair.fingerprint)
        return self._encoder_id

    def process_batch(self, batch_size: int) -> WorkerReport:
        encoder_id = self._ensure_encoder()
        raw = self.engine.raw_connection()
        pg: PgConnection[Any] = raw.driver_connection  # type: ignore[assignment]
        try:
            if pg not in _REGISTERED:
                from pgvector.psycopg import register_vector

                register_vector(pg)
                _REGISTERED.add(pg)
            report = self._process(pg, batch_size, encoder_id)
            pg.commit()
            return report
        except BaseException:
            if pg.closed or pg.broken:
                raw.invalidate()  # the pool must not hand this connection out again
            else:
                pg.rollback()
            raise
        finally:
            raw.close()

    def _process(self, pg: PgConnection[Any], batch_size: int, encoder_id: int) -> WorkerReport:
        report = WorkerReport()
        claimed = pg.execute(_CLAIM, [batch_size]).fetchall()
        if not claimed:
            pg.rollback()
            return report
        report.batches = 1
        by_table: dict[int, list[tuple[str, int]]] = {}
        for oid, key, attempts in claimed:
            by_table.setdefault(oid, []).append((key, attempts))
        tables = {
            row[0]: SyncedTable(row[0], row[1], row[2], tuple(row[3]), tuple(row[4]), row[5], row[6], row[7])
            for row in pg.execute(_TABLES, [list(by_table)]).fetchall()
        }
        for oid, items in by_table.items():
            if oid in tables:
                self._process_table(pg, tables[oid], items, encoder_id, report)
            else:  # the table was disabled after these items were queued
                pg.execute(_DONE, [oid, [key for key, _ in items]])
                report.removed += len(items)
        return report

    def _fail(self, pg: PgConnection[Any], table: SyncedTable, key: str, attempts: int, reason: str,
              report: WorkerReport) -> None:
        log.warning("%s %s: %s", table.display_name, key, reason)
        pg.execute(_FAILED, [reason, self._backoff(attempts), table.oid, key])
        report.failed += 1

    def _process_table(self, pg: PgConnection[Any], table: SyncedTable, items: list[tuple[str, int]],
                       encoder_id: int, report: WorkerReport) -> None:
        attempts = dict(items)
        rows = _read_rows(pg, table, list(attempts))
        done = [key for key in attempts if key not in rows]  # deleted from the app table
        report.removed += len(done)
        to_encode: list[_Row] = []
        for row in rows.values():
            if row.stored_hash == row.content_hash and row.stored_encoder == encoder_id and row.has_embedding:
                done.append(row.key)
                report.unchanged += 1
            elif not row.text and not row.title:
                if _write_back(pg, table, row, None, None):
                    done.append(row.key)
                    report.cleared += 1
                else:
                    report.deferred += 1
            else:
                to_encode.append(row)
        if to_encode and self.pair.dim != table.dim:
            reason = (f"the encoder outputs {self.pair.dim} dimensions but {table.display_name}."
                      f"{table.embedding_column} is vector({table.dim}); run the worker with a "
                      f"{table.dim}-d encoder pair")
            for row in to_encode:
                self._fail(pg, table, row.key, attempts[row.key], reason, report)
            to_encode = []
        for row, embedding, error in self._encode(to_encode):
            if error is not None:
                self._fail(pg, table, row.key, attempts[row.key], error, report)
            elif _write_back(pg, table, row, embedding, encoder_id):
                done.append(row.key)
                report.embedded += 1
            else:
                report.deferred += 1  # changed or locked by the app meanwhile: stays due
        if done:
            pg.execute(_DONE, [table.oid, done])

    def _encode(self, rows: list[_Row]) -> list[tuple[_Row, np.ndarray | None, str | None]]:
        """Encode the batch; if that fails, encode row by row so that one bad row fails alone."""
        if not rows:
            return []
        try:
            embeddings = np.asarray(self.pair.passage.encode([(row.title, row.text) for row in rows]), np.float32)
        except Exception:  # retried row by row below, which records each row's own error
            return [self._encode_one(row) for row in rows]
        return [
            (row, embedding, None) if ok else (row, None, _BAD_VALUES)
            for row, embedding, ok in zip(rows, embeddings, _usable(embeddings))
        ]

    def _encode_one(self, row: _Row) -> tuple[_Row, np.ndarray | None, str | None]:
        try:
            embedding = np.asarray(self.pair.passage.encode([(row.title, row.text)]), np.float32)
        except Exception as e:  # any model failure is recorded on the item and retried
            return row, None, f"encoding failed: {type(e).__name__}: {e}"
        if not _usable(embedding)[0]:
            return row, None, _BAD_VALUES
        return row, embedding[0], None
