"""One batch of the sync worker: claim, read, encode, write back, settle the queue items.

A batch is one transaction on a psycopg connection, so that a worker killed at any point leaves
its items queued (its advisory locks die with its session). Each item is settled only if it is
unchanged since the claim (see :mod:`dpr_pg.sync.queries`), on every path: encoded, unchanged,
cleared and removed. A statement the database refuses for one table is retried item by item, each
in its own savepoint, so that one bad item (a malformed key, a value of the wrong type) fails alone:
it is retried with backoff and dead-lettered after ``max_attempts``, while the rest goes on.
After the commit, a table whose embeddings changed a large share of its rows is analysed (see
:mod:`dpr_pg.search.statistics`), so that a search of it is planned on its new rows.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import Connection as PgConnection
from sqlalchemy.engine import Engine

from dpr_pg.encoders.fingerprint import register_encoder
from dpr_pg.search.statistics import analyze_if_changed
from dpr_pg.sync import queries as q
from dpr_pg.sync.tables import SyncedTable

log = logging.getLogger("dpr_pg.sync")
_REGISTERED: weakref.WeakSet[Any] = weakref.WeakSet()  # psycopg connections that know the vector type

_BAD_VALUES = "the encoder returned NaN, infinite or all-zero values for this row; check the model and the text"
_SHOWN = 200  # characters of a queued key quoted in an error


@dataclass
class WorkerReport:
    """What a worker run did, item by item.

    ``embedded``: rows encoded and written; ``unchanged``: the stored embedding already matched;
    ``removed``: the row is gone (deleted); ``cleared``: the row has no text, so no embedding;
    ``deferred``: the row was locked or changed meanwhile, so it stays queued; ``failed``: an item
    failed (bad key, encoding), retried later with backoff (see ``dpr-pg status``); ``dead``: of
    those, the ones that reached ``max_attempts`` and were parked. ``refused``: the tables this
    worker leaves alone, and why (another encoder pair or dimension, or a paused table).
    """

    batches: int = 0
    embedded: int = 0
    unchanged: int = 0
    removed: int = 0
    cleared: int = 0
    deferred: int = 0
    failed: int = 0
    dead: int = 0
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return self.embedded + self.unchanged + self.removed + self.cleared

    def add(self, other: WorkerReport) -> None:
        for counter in fields(self):
            if counter.name != "refused":
                setattr(self, counter.name, getattr(self, counter.name) + getattr(other, counter.name))
        self.refused = dict(other.refused)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Item:
    key: str  # the row key as jsonb text
    version: str
    attempts: int


@dataclass
class _Row:
    key: str
    title: str
    text: str
    content_hash: str
    stored_hash: str | None
    stored_encoder: int | None
    has_embedding: bool


def _shown(key: str) -> str:
    return key if len(key) <= _SHOWN else key[:_SHOWN] + "…"


def _key_problem(key: str, table: SyncedTable) -> str | None:
    """Why the queued ``key`` cannot name a row of ``table``, or None."""
    value = json.loads(key)
    if isinstance(value, dict) and sorted(value) == sorted(table.key_columns):
        return None
    return (f"the queued key {_shown(key)} is not a JSON object of the key columns "
            f"({', '.join(table.key_columns)}) of {table.display_name}; the triggers never queue such a key: "
            "discard it with dpr-pg sync discard")


def _database_reason(error: psycopg.Error) -> str:
    diag = error.diag
    return (diag.message_primary or str(error)).strip() if diag else str(error).strip()


def _execute(pg: PgConnection[Any], query: Any, params: Any = None) -> psycopg.Cursor[Any]:
    """Run ``query`` with ``$n`` placeholders: its text is never scanned for ``%``."""
    cursor = psycopg.RawCursor(pg)
    cursor.execute(query, params)
    return cursor


def _usable(embeddings: np.ndarray) -> np.ndarray:
    """Per row: finite and not all zero (a zero vector scores 0 against every question)."""
    return np.isfinite(embeddings).all(axis=1) & np.any(embeddings != 0, axis=1)


class Batcher:
    """Processes batches for one engine and encoder pair; the encoder is registered on first use."""

    def __init__(self, engine: Engine, pair: Any, *, retry_base: float, retry_max: float,
                 max_attempts: int) -> None:
        self.engine = engine
        self.pair = pair
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.refused: dict[str, str] = {}  # table -> why this worker leaves its items alone
        self._encoder_id: int | None = None
        self._changed: dict[int, int] = {}  # table OID -> rows whose embedding the current batch wrote

    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_max, self.retry_base * 2 ** min(attempts, 30)))

    def _ensure_encoder(self) -> int:
        if self._encoder_id is None:
            with self.engine.begin() as conn:
                self._encoder_id = register_encoder(conn, self.pair.fingerprint)
        return self._encoder_id

    def process_batch(self, batch_size: int) -> WorkerReport:
        encoder_id = self._ensure_encoder()
        raw = self.engine.raw_connection()
        pg: PgConnection[Any] = raw.driver_connection  # type: ignore[assignment]
        try:
            if pg not in _REGISTERED:
                register_vector(pg)
                _REGISTERED.add(pg)
            self._changed = {}
            report = self._process(pg, batch_size, encoder_id)
            pg.commit()
        except BaseException:
            if pg.closed or pg.broken:
                raw.invalidate()  # the pool must not hand this connection out again
            else:
                pg.rollback()
            raise
        finally:
            raw.close()
        for oid, changed in self._changed.items():  # embeddings the planner's statistics have not seen
            analyze_if_changed(self.engine, changed=changed, relation=oid)
        return report

    def _refuse(self, table: SyncedTable, reason: str, before: dict[str, str]) -> None:
        if before.get(table.display_name) != reason:  # said once, not on every batch
            log.warning("leaving %s alone: %s", table.display_name, reason)
        self.refused[table.display_name] = reason

    def _servable(self, pg: PgConnection[Any], encoder_id: int
                  ) -> tuple[dict[int, SyncedTable], dict[int, int | None], list[int]]:
        """The enabled tables this worker may write and their bound encoders, and those it leaves alone."""
        tables: dict[int, SyncedTable] = {}
        bound: dict[int, int | None] = {}
        left: list[int] = []
        before, self.refused = self.refused, {}
        for oid, nsp, rel, keys, texts, title, embedding, dim, table_encoder, problem in _execute(pg, q.TABLES):
            table = SyncedTable(oid, nsp, rel, tuple(keys), tuple(texts), title, embedding, dim)
            if problem is not None:
                self._refuse(table, problem, before)
            elif dim != self.pair.dim:
                self._refuse(table, f"the encoder outputs {self.pair.dim} dimensions but {table.display_name}."
                                    f"{table.embedding_column} is vector({dim}); run a worker with a {dim}-d "
                                    "encoder pair for it", before)
            elif table_encoder is not None and table_encoder != encoder_id:
                self._refuse(table, self._mismatch(pg, table, table_encoder), before)
            else:
                tables[oid] = table
                bound[oid] = table_encoder
                continue
            left.append(oid)
        return tables, bound, left

    def _mismatch(self, pg: PgConnection[Any], table: SyncedTable, other: int) -> str:
        question, passage, fingerprint = _execute(pg, q.ENCODER, [other]).fetchone() or ("?", "?", "?")
        return (f"its embeddings were made by question={question} passage={passage} (fingerprint "
                f"{fingerprint[:12]}), but this worker encodes with {self.pair.fingerprint.describe()}; expected "
                "the same pair: run the worker with the pair that made the table, or re-embed it "
                "(op.disable_dpr, op.enable_dpr)")

    def _bind(self, pg: PgConnection[Any], table: SyncedTable, encoder_id: int) -> bool:
        """Bind an unbound table to this worker's pair (its own short transaction); False if refused."""
        raw = self.engine.raw_connection()
        try:
            bind: PgConnection[Any] = raw.driver_connection  # type: ignore[assignment]
            belongs_to = _execute(bind, q.BIND, [table.oid, encoder_id]).fetchone()[0]  # type: ignore[index]
            bind.commit()
        finally:
            raw.close()
        if belongs_to == encoder_id:
            return True
        self._refuse(table, self._mismatch(pg, table, belongs_to), {})
        return False

    def _process(self, pg: PgConnection[Any], batch_size: int, encoder_id: int) -> WorkerReport:
        report = WorkerReport()
        tables, bound, skip = self._servable(pg, encoder_id)
        claimed = _execute(pg, q.CLAIM, [skip, batch_size * 8, q.LOCK_CLASS, batch_size]).fetchall()
        report.refused = dict(self.refused)
        if not claimed:
            pg.rollback()
            return report
        report.batches = 1
        items: dict[int, list[_Item]] = {}
        oids, keys = [oid for oid, _ in claimed], [key for _, key in claimed]
        for oid, key, version, attempts in _execute(pg, q.ITEMS, [oids, keys]):
            items.setdefault(oid, []).append(_Item(key, version, attempts))
        for oid, table_items in items.items():
            table = tables.get(oid)
            if table is None:  # no longer (or never) enabled: nothing to sync
                settled = self._settle(pg, oid, table_items)
                report.removed += len(settled)
                report.deferred += len(table_items) - len(settled)
            elif bound[oid] is not None or self._bind(pg, table, encoder_id):
                bound[oid] = encoder_id
                self._process_table(pg, table, table_items, encoder_id, report)
        report.refused = dict(self.refused)
        return report

    def _settle(self, pg: PgConnection[Any], oid: int, items: list[_Item]) -> set[str]:
        """Delete the items still at their claimed version and not held by the app; their keys."""
        if not items:
            return set()
        params = [oid, [item.key for item in items], [item.version for item in items]]
        return {key for (key,) in _execute(pg, q.SETTLE, params)}

    def _fail(self, pg: PgConnection[Any], table: SyncedTable, item: _Item, reason: str,
              report: WorkerReport) -> None:
        log.warning("%s %s: %s", table.display_name, _shown(item.key), reason)
        dead = _execute(pg, q.FAIL, [table.oid, item.key, item.version, reason, self._backoff(item.attempts),
                                     self.max_attempts]).fetchone()
        report.failed += 1
        if dead and dead[0]:
            report.dead += 1

    def _isolated(self, pg: PgConnection[Any], table: SyncedTable, items: list[_Item],
                  run: Callable[[list[_Item]], dict[str, Any]], what: str, report: WorkerReport
                  ) -> tuple[dict[str, Any], set[str]]:
        """``run(items)`` in a savepoint; if the database refuses it, item by item, each in its own
        savepoint, failing the refused ones. Returns the results and the keys that failed."""
        if not items:
            return {}, set()
        try:
            with pg.transaction():
                return run(items), set()
        except psycopg.OperationalError:
            raise  # the connection, a deadlock or a cancel: the whole batch is retried
        except psycopg.Error:
            if pg.broken:
                raise
        results: dict[str, Any] = {}
        failed: set[str] = set()
        for item in items:
            try:
                with pg.transaction():
                    results.update(run([item]))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                if pg.broken:
                    raise
                self._fail(pg, table, item, f"could not {what} {table.display_name} row {_shown(item.key)}: "
                                            f"{_database_reason(e)}", report)
                failed.add(item.key)
        return results, failed

    def _read(self, pg: PgConnection[Any], table: SyncedTable, items: list[_Item]) -> dict[str, _Row]:
        query = q.read_rows(table)
        found = {}
        rows = _execute(pg, query, ["[" + ", ".join(item.key for item in items) + "]"]).fetchall()
        for key, title_value, text_values, content_hash, stored_hash, stored_encoder, has_embedding in rows:
            text = "\n".join(part.strip() for part in text_values if part and part.strip())
            found[key] = _Row(key, (title_value or "").strip(), text, content_hash, stored_hash, stored_encoder,
                              has_embedding)
        return found

    def _write(self, pg: PgConnection[Any], table: SyncedTable, written: list[tuple[_Item, _Row, Any]],
               encoder_id: int, report: WorkerReport) -> list[_Item]:
        """Write embeddings back (None clears); the items written, to settle."""
        query = q.write_back(table)
        by_key = {item.key: (item, row, embedding) for item, row, embedding in written}

        def run(items: list[_Item]) -> dict[str, bool]:
            done = {}
            for item in items:
                _, row, embedding = by_key[item.key]
                params = [embedding, None if embedding is None else encoder_id, row.content_hash, row.key]
                done[item.key] = _execute(pg, query, params).rowcount == 1
            return done

        results, failed = self._isolated(pg, table, [item for item, _, _ in written], run, "write back", report)
        settled = []
        for item, _, embedding in written:
            if item.key in failed:
                continue
            if results[item.key]:
                settled.append(item)
                if embedding is None:
                    report.cleared += 1
                else:
                    report.embedded += 1
            else:
                report.deferred += 1  # changed or locked by the app meanwhile: stays due
        return settled

    def _process_table(self, pg: PgConnection[Any], table: SyncedTable, items: list[_Item],
                       encoder_id: int, report: WorkerReport) -> None:
        readable = []
        for item in items:
            problem = _key_problem(item.key, table)
            if problem is None:
                readable.append(item)
            else:
                self._fail(pg, table, item, problem, report)
        rows, failed = self._isolated(pg, table, readable, lambda some: self._read(pg, table, some), "read", report)
        removed = [item for item in readable if item.key not in rows and item.key not in failed]  # deleted rows
        unchanged: list[_Item] = []
        writes: list[tuple[_Item, _Row, Any]] = []
        to_encode: list[tuple[_Item, _Row]] = []
        for item in readable:
            row = rows.get(item.key)
            if row is None:
                continue
            if row.stored_hash == row.content_hash and row.stored_encoder == encoder_id and row.has_embedding:
                unchanged.append(item)
            elif not row.text and not row.title:
                writes.append((item, row, None))
            else:
                to_encode.append((item, row))
        for (item, row), (embedding, error) in zip(to_encode, self._encode([row for _, row in to_encode])):
            if error is not None:
                self._fail(pg, table, item, error, report)
            else:
                writes.append((item, row, embedding))
        written = self._write(pg, table, writes, encoder_id, report)
        self._changed[table.oid] = self._changed.get(table.oid, 0) + len(written)
        settled = self._settle(pg, table.oid, removed + unchanged + written)
        # An item not settled was written by the app after the claim (or is being written now): it
        # stays queued, and the next round reads the row again.
        report.removed += sum(item.key in settled for item in removed)
        report.unchanged += sum(item.key in settled for item in unchanged)
        report.deferred += sum(item.key not in settled for item in removed + unchanged)

    def _encode(self, rows: list[_Row]) -> list[tuple[np.ndarray | None, str | None]]:
        """Encode the batch; if that fails, encode row by row so that one bad row fails alone."""
        if not rows:
            return []
        try:
            embeddings = np.asarray(self.pair.passage.encode([(row.title, row.text) for row in rows]), np.float32)
        except Exception:  # retried row by row below, which records each row's own error
            return [self._encode_one(row) for row in rows]
        return [(embedding, None) if ok else (None, _BAD_VALUES) for embedding, ok in zip(embeddings, _usable(embeddings))]

    def _encode_one(self, row: _Row) -> tuple[np.ndarray | None, str | None]:
        try:
            embedding = np.asarray(self.pair.passage.encode([(row.title, row.text)]), np.float32)
        except Exception as e:  # any model failure is recorded on the item and retried
            return None, f"encoding failed: {type(e).__name__}: {e}"
        if not _usable(embedding)[0]:
            return None, _BAD_VALUES
        return embedding[0], None
