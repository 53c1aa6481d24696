"""Writes: binary COPY into a TEMP staging table, then one upsert into passages, one transaction per batch.

* A batch whose ids are all new (the usual first load) is COPied straight into passages.
* The staging table is ``pg_temp`` and ``ON COMMIT DELETE ROWS``: no migration, nothing left behind.
* The upsert only touches rows whose ``content_hash`` differs, so a re-run writes nothing and
  ``updated_at`` stays put. Rows are inserted in key order under a per-collection advisory lock,
  so two ingests of one collection serialize their upserts: no deadlock, no unique violation.
* A dropped connection (server restart, terminated backend) is retried with exponential backoff
  on a fresh connection; this is safe because every write is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy.engine import Engine

from dpr_pg.errors import DatabaseError
from dpr_pg.db.storage import COLUMN_TYPE_SQL
from dpr_pg.ingest.copybin import copy_payload, int4_field, text_field
from dpr_pg.db.models import TSV_EXPRESSION
from dpr_pg.db.partitions import ensure_partition, is_partitioned_table

T = TypeVar("T")
APPLICATION_NAME = "dpr_pg ingest"
_STAGING = "dpr_pg_ingest_staging"
_KEEP = "dpr_pg_ingest_keep"
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('dpr_pg.ingest:' || %s, 0))"
LOCK_SQL = _LOCK  # the collection's write lock, for other writers of passages (dpr_pg.ingest.delete)
_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtextextended('dpr_pg.ingest:' || %s, 0))"
_UPSERT = f"""
WITH written AS (
    INSERT INTO dpr_pg.passages AS p
        (collection, external_id, title, text, metadata, content_hash, embedding, encoder_id)
    SELECT %(collection)s, s.external_id, s.title, s.text, s.metadata, s.content_hash, s.embedding, %(encoder_id)s
    FROM pg_temp.{_STAGING} s
    ORDER BY s.external_id
    ON CONFLICT (collection, external_id) DO UPDATE
    SET title = EXCLUDED.title, text = EXCLUDED.text, metadata = EXCLUDED.metadata,
        content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding,
        encoder_id = EXCLUDED.encoder_id, updated_at = now()
    WHERE p.content_hash IS DISTINCT FROM EXCLUDED.content_hash
    RETURNING (p.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
"""
# A partitioned table has no xmax to return: a row this transaction inserted has created_at = now(),
# an updated one keeps the created_at of an earlier transaction.
_UPSERT_PARTITIONED = _UPSERT.replace("(p.xmax = 0) AS inserted", "(p.created_at = now()) AS inserted")
# The generated column's expression, on one passage's values (autocommit: a refusal leaves the session clean).
_TSVECTOR_SIZE = f"SELECT pg_column_size({TSV_EXPRESSION}) FROM (SELECT %s::text AS title, %s::text AS text) AS passage"
# The embedding goes last: copybin appends each row's fixed-size vector block after its other fields.
_COPY_NEW = ("COPY dpr_pg.passages (external_id, title, text, metadata, content_hash, collection, encoder_id, "
             "embedding) FROM STDIN WITH (FORMAT BINARY)")
_COPY_STAGING = (f"COPY pg_temp.{_STAGING} (external_id, title, text, metadata, content_hash, embedding) "
                 "FROM STDIN WITH (FORMAT BINARY)")
_PRUNE = f"""
DELETE FROM dpr_pg.passages p
WHERE p.collection = %s
  AND NOT EXISTS (SELECT 1 FROM pg_temp.{_KEEP} k WHERE k.external_id = p.external_id)
"""


@dataclass(frozen=True)
class StagedPassage:
    """One row for the staging table; ``metadata_json`` is the canonical JSON text of the metadata."""

    external_id: str
    title: str
    text: str
    metadata_json: str
    content_hash: str
    embedding: np.ndarray


class PassageWriter:
    """A dedicated connection that looks up hashes, upserts batches and prunes one collection.

    Example:
        >>> with PassageWriter(engine, collection="wiki", encoder_id=1, dim=768) as writer:  # doctest: +SKIP
        ...     writer.write(rows)
        (1000, 0)
    """

    def __init__(self, engine: Engine, *, collection: str, encoder_id: int, dim: int, max_retries: int = 5,
                 on_retry: Callable[[Exception], None] | None = None) -> None:
        self.engine = engine
        self.collection = collection
        self.encoder_id = encoder_id
        self.dim = dim
        self.max_retries = max_retries
        self.on_retry = on_retry
        self._raw: Any = None
        self._conn: psycopg.Connection | None = None
        self._copy_direct = True
        self.half = False  # the column stores halfvec: read when the connection opens
        self._upsert_sql = _UPSERT
        self._partition_ready = False

    def __enter__(self) -> PassageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._raw is not None:
            try:
                self._raw.detach()  # never return a connection with our temp tables to the pool
                self._raw.close()
            except Exception:  # the connection may already be gone; nothing to clean up then
                pass
        self._raw = self._conn = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self.close()
            self._raw = self.engine.raw_connection()
            conn = self._raw.driver_connection
            conn.rollback()
            conn.autocommit = True
            register_vector(conn)
            conn.execute("SELECT set_config('application_name', %s, false)", (APPLICATION_NAME,))
            conn.execute("SET client_encoding TO 'UTF8'")  # copybin sends text as UTF-8 bytes
            # The staging table's vectors have the column's type: binary COPY sends that type's format.
            (column,) = conn.execute(COLUMN_TYPE_SQL).fetchone() or ("vector",)
            self.half = column == "halfvec"
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (external_id text NOT NULL, title text NOT NULL, "
                f"text text NOT NULL, metadata jsonb NOT NULL, content_hash text NOT NULL, "
                f"embedding {'halfvec' if self.half else 'vector'}({int(self.dim)}) NOT NULL) ON COMMIT DELETE ROWS")
            conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_KEEP} (external_id text NOT NULL) ON COMMIT DELETE ROWS")
            # PostgreSQL refuses COPY FROM into a table whose row-level security applies to the role
            # (a tenant, see dpr_pg.db.tenancy): such a writer always goes through staging + upsert.
            self._copy_direct = not conn.execute("SELECT row_security_active('dpr_pg.passages')").fetchone()[0]
            self._upsert_sql = _UPSERT_PARTITIONED if is_partitioned_table(conn) else _UPSERT
            self._conn = conn
        return self._conn

    def _retrying(self, operation: Callable[[psycopg.Connection], T]) -> T:
        for attempt in range(self.max_retries + 1):
            try:
                return operation(self._connection())
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                broken = self._conn is None or self._conn.closed or self._conn.broken
                if not broken or attempt == self.max_retries:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise DatabaseError(
                        f"ingest into collection {self.collection!r} failed after {attempt + 1} attempt(s): {reason}; "
                        "what was committed is kept: re-run the same command to finish the job") from e
                self.close()
                if self.on_retry:
                    self.on_retry(e)
                time.sleep(min(0.25 * 2**attempt, 8.0))
        raise AssertionError("unreachable")

    def existing_hashes(self, external_ids: Sequence[str]) -> dict[str, str]:
        """``{external_id: content_hash}`` of the given ids already stored in the collection."""
        def lookup(conn: psycopg.Connection) -> dict[str, str]:
            rows = conn.execute(
                "SELECT external_id, content_hash FROM dpr_pg.passages WHERE collection = %s AND external_id = ANY(%s)",
                (self.collection, list(external_ids)))
            return dict(rows.fetchall())
        return self._retrying(lookup) if external_ids else {}

    def tsvector_problem(self, title: str, text: str) -> str | None:
        """PostgreSQL's reason for refusing the passage's tsvector (over 1 MB), or None when it fits.

        Runs the column's own expression on the values alone; nothing is written.
        """
        def check(conn: psycopg.Connection) -> str | None:
            try:
                conn.execute(_TSVECTOR_SIZE, (title, text))
            except psycopg.errors.ProgramLimitExceeded as e:
                return str(e).strip().splitlines()[0]
            return None
        return self._retrying(check)

    def write(self, rows: Sequence[StagedPassage], *, fresh: bool = False) -> tuple[int, int]:
        """Write ``rows`` in one transaction; returns (inserted, updated).

        ``fresh`` (none of the ids was stored when looked up) COPYs straight into passages; if
        another writer stored one of them meanwhile, the unique violation rolls that transaction
        back and the batch goes through staging + upsert instead.
        """
        if not rows:
            return 0, 0
        if not self._partition_ready:  # the collection's partition, before its first row (a no-op unpartitioned)
            self._retrying(lambda conn: ensure_partition(conn, self.collection))
            self._partition_ready = True
        if fresh and self._retrying(lambda conn: self._copy_direct):
            try:
                return self._retrying(lambda conn: self._copy_new(conn, rows))
            except psycopg.errors.UniqueViolation:
                pass
        return self._retrying(lambda conn: self._upsert(conn, rows))

    def _copy_rows(self, cur: psycopg.Cursor, statement: str, rows: Sequence[StagedPassage], *,
                   with_owner: bool = False) -> None:
        """COPY ``rows`` in key order as one binary payload built for the whole batch (see copybin)."""
        ordered = sorted(rows, key=lambda r: r.external_id)
        suffix = text_field(self.collection) + int4_field(self.encoder_id) if with_owner else b""
        data = copy_payload([(r.external_id, r.title, r.text, r.metadata_json, r.content_hash) for r in ordered],
                            np.stack([r.embedding for r in ordered]).astype(np.float32, copy=False), jsonb=3,
                            suffix=suffix, suffix_fields=2 if with_owner else 0, half=self.half)
        with cur.copy(statement) as copy:
            copy.write(data)

    def _copy_new(self, conn: psycopg.Connection, rows: Sequence[StagedPassage]) -> tuple[int, int]:
        with conn.transaction(), conn.cursor() as cur:
            # Shared: COPYs of new keys (key order, so no deadlock; a key stored meanwhile is a unique
            # violation, retried as an upsert) run side by side; upserts take the lock exclusively.
            cur.execute(_LOCK_SHARED, (self.collection,))
            self._copy_rows(cur, _COPY_NEW, rows, with_owner=True)
        return len(rows), 0

    def _upsert(self, conn: psycopg.Connection, rows: Sequence[StagedPassage]) -> tuple[int, int]:
        with conn.transaction(), conn.cursor() as cur:
            self._copy_rows(cur, _COPY_STAGING, rows)
            cur.execute(_LOCK, (self.collection,))
            cur.execute(self._upsert_sql, {"collection": self.collection, "encoder_id": self.encoder_id})
            inserted, updated = cur.fetchone()  # type: ignore[misc]
        return int(inserted), int(updated)

    def delete(self, external_ids: Sequence[str]) -> int:
        """Delete these passages of the collection (under the collection's lock); returns how many."""
        keys = list(external_ids)

        def delete(conn: psycopg.Connection) -> int:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_LOCK, (self.collection,))
                cur.execute("DELETE FROM dpr_pg.passages WHERE collection = %s AND external_id = ANY(%s)",
                            (self.collection, keys))
                return cur.rowcount
        return self._retrying(delete) if keys else 0

    def prune(self, keep: Iterable[str]) -> int:
        """Delete the collection's passages whose external id is not in ``keep``; returns how many."""
        keys = list(keep)

        def delete(conn: psycopg.Connection) -> int:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY pg_temp.{_KEEP} (external_id) FROM STDIN") as copy:
                    for key in keys:
                        copy.write_row((key,))
                cur.execute(f"ANALYZE pg_temp.{_KEEP}")
                cur.execute(_LOCK, (self.collection,))
                cur.execute(_PRUNE, (self.collection,))
                return cur.rowcount
        return self._retrying(delete)
