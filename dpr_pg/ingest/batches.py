"""Batches: map, chunk and hash records, skip unchanged passages, encode, and hand batches to the writer.

A :class:`BatchRun` holds what one ingest needs per batch. Each batch is written on a writer
thread while the next one is read, checked and looked up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.engine import Engine

from dpr_pg.errors import IngestError
from dpr_pg.ingest.chunking import chunk_count, chunk_document
from dpr_pg.ingest.limits import TSVECTOR_SAFE_BYTES, RecordLimits, utf8_size
from dpr_pg.ingest.loader import PassageWriter, StagedPassage
from dpr_pg.ingest.mapping import FieldMapping, to_document
from dpr_pg.ingest.readers import InputWatch
from dpr_pg.ingest.records import Document, SourceRecord
from dpr_pg.ingest.report import IngestReport
from dpr_pg.ingest.validate import vector_problems
from dpr_pg.ingest.vectors import EmbeddingSource

if TYPE_CHECKING:
    from dpr_pg._fingerprint import EncoderFingerprint
    from dpr_pg.encoders import EncoderPair


class RecordRejectedError(IngestError):
    """``strict=True`` stopped at a bad record; ``report`` says what was committed before it."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


def content_hash(title: str, text: str, metadata_json: str, fingerprint_id: str) -> str:
    """sha256 over (title, text, metadata, encoder fingerprint): equal hashes mean nothing to redo.

    Example:
        >>> content_hash("T", "texto", "{}", "fp")[:12]
        'f6a48213f12e'
    """
    # The bytes of json.dumps([title, text, metadata_json, fingerprint_id], ensure_ascii=True,
    # separators=(",", ":")), built from json's own C string encoder without a JSONEncoder per call.
    canonical = "[" + ",".join(map(encode_basestring_ascii, (title, text, metadata_json, fingerprint_id))) + "]"
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# Built once: json.dumps(..., sort_keys=True, ...) makes a new JSONEncoder on every call.
_METADATA_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _metadata_json(metadata: dict[str, Any]) -> str:
    return _METADATA_ENCODER.encode(metadata)


@dataclass
class Batch:
    """Passages waiting to be written, keyed by external id, and the range of records they came from."""

    first_record: int
    last_record: int = 0
    passages: dict[str, tuple[Document, str, str]] = field(default_factory=dict)


@dataclass
class BatchRun:
    engine: Engine
    encoder: EncoderPair | None
    fingerprint: EncoderFingerprint
    writer: PassageWriter
    report: IngestReport
    vectors: EmbeddingSource | None
    strict: bool
    dim: int
    last: dict[str, int]
    lookups: PassageWriter
    executor: ThreadPoolExecutor
    fingerprint_id: str = ""
    more_writers: list[PassageWriter] = field(default_factory=list)
    limits: RecordLimits = field(default_factory=RecordLimits)
    watch: InputWatch | None = None  # the input files as they were at the first pass
    pending: list[tuple[Future[tuple[int, int]], int]] = field(default_factory=list)
    parts: int = 0

    def __post_init__(self) -> None:
        self.fingerprint_id = self.fingerprint.id  # a sha256 over the fields: compute it once

    def submit(self, staged: list[StagedPassage], *, fresh: bool) -> None:
        """Write a batch on the writer threads, so that reading and checking the next one overlaps it.

        The batch is split among the writers (one connection each), so the server's per-row work
        (the Spanish tsvector) runs on several cores. Each part waits for the oldest part in
        flight, so at most one batch is ever uncommitted: what a kill -9 can lose. Batches hold
        disjoint keys (duplicates are resolved beforehand), so the parts' order is free.
        """
        writers = [self.writer, *self.more_writers]
        share = -(-len(staged) // len(writers))
        for start in range(0, len(staged), share):
            if len(self.pending) >= len(writers):
                self._drain_oldest()  # its writer is the one this part gets
            part = staged[start:start + share]
            writer = writers[self.parts % len(writers)]
            self.parts += 1
            self.pending.append((self.executor.submit(writer.write, part, fresh=fresh), len(part)))

    def _drain_oldest(self) -> None:
        future, rows = self.pending.pop(0)
        inserted, updated = future.result()
        self.report.inserted += inserted
        self.report.updated += updated
        self.report.unchanged += rows - inserted - updated  # written meanwhile by a concurrent ingest

    def drain(self) -> None:
        """Wait for the parts being written (re-raising the first error) and count them."""
        while self.pending:
            self._drain_oldest()

    def reject(self, where: str, reason: str) -> None:
        self.report.reject(where, reason)
        if self.strict:
            self.drain()
            self.report.stopped = f"{where}: {reason}"
            raise RecordRejectedError(
                f"{where}: {reason}. Stopped there (--strict): nothing of the current batch was written, "
                f"{self.report.inserted + self.report.updated} passages were written before it; "
                "fix the record and re-run (the committed passages will be skipped as unchanged)",
                self.report)

    def flush(self, batch: Batch) -> None:
        self.check_input()  # before writing records read from a file that changed meanwhile
        items = [item for item in batch.passages.values() if not self._tsvector_rejected(item[0])]
        rows = None
        if self.vectors is not None:
            rows = self.vectors.rows(batch.first_record - 1, batch.last_record)
            problems = vector_problems(rows, self.dim)
            checked = []
            for doc, metadata_json, digest in items:
                row = doc.number - batch.first_record
                problem = self.vectors.length_problem(doc.number - 1) or problems[row]
                if problem:
                    self.reject(doc.where, f"{problem} (embedding row {doc.number - 1}, id {doc.external_id!r})")
                else:
                    checked.append((doc, metadata_json, digest))
            items = checked
        stored = self.lookups.existing_hashes([doc.external_id for doc, _, _ in items])
        changed = [item for item in items if stored.get(item[0].external_id) != item[2]]
        self.report.unchanged += len(items) - len(changed)
        if not changed:
            return
        if rows is not None:
            embeddings = np.stack([rows[doc.number - batch.first_record] for doc, _, _ in changed]).astype(np.float32)
        else:
            assert self.encoder is not None
            result = self.encoder.passage.encode_result([(doc.title, doc.text) for doc, _, _ in changed])
            embeddings = result.embeddings
            self.report.truncated += len(result.truncated)
            self.report.encoded += len(changed)
            problems = vector_problems(embeddings, self.dim)
            keep = []
            for index, problem in enumerate(problems):
                if problem:
                    self.reject(changed[index][0].where, f"the encoder gave a bad vector: {problem}")
                else:
                    keep.append(index)
            changed, embeddings = [changed[i] for i in keep], embeddings[keep]
        staged = [StagedPassage(doc.external_id, doc.title, doc.text, metadata_json, digest, embeddings[i])
                  for i, (doc, metadata_json, digest) in enumerate(changed)]
        self.submit(staged, fresh=not stored)

    def _tsvector_rejected(self, passage: Document) -> bool:
        """Reject a passage whose Spanish tsvector PostgreSQL would refuse (over 1 MB), asking the server only
        when the passage is large enough for that to be possible."""
        if utf8_size(passage.title) + utf8_size(passage.text) < TSVECTOR_SAFE_BYTES:
            return False
        problem = self.lookups.tsvector_problem(passage.title, passage.text)
        if problem:
            self.reject(passage.where, f"its Spanish full-text vector (title + text) is over PostgreSQL's tsvector "
                                       f"limit: {problem}; shorten the title or the text, or chunk the text "
                                       f"(--chunk-words){_id_note(passage)}")
        return problem is not None

    def check_input(self, change: str | None = None) -> None:
        """Stop, keeping what was committed, when an input file changed since the first pass."""
        change = change or (self.watch.change() if self.watch is not None else None)
        if change is None:
            return
        self.drain()
        raise IngestError(f"{change}; the {self.report.inserted + self.report.updated} passages committed before "
                          "are kept: re-run the same command once the file is complete (they will be skipped as "
                          "unchanged)")

    def unknown_key(self, record: SourceRecord, key: str) -> None:
        """A key the first pass did not see: the input changed in between."""
        change = self.watch.change() if self.watch is not None else None
        self.check_input(change or f"{record.where} has the id {key!r}, which was not there when the input was "
                                   "first read: the input changed while it was being ingested")


def _id_note(passage: Document) -> str:
    return f" (id {passage.external_id!r})" if "#" in passage.external_id else ""


def write_all(run: BatchRun, records: Iterator[SourceRecord], mapping: FieldMapping, *, size: int, chunk_words: int,
               chunk_overlap: int, bar: Any, on_batch: Callable[[IngestReport], None] | None) -> None:
    batch = Batch(first_record=1)
    try:
        for record in records:
            run.report.read += 1
            bar.update(1)
            batch.last_record = record.number
            _add_record(run, batch, record, mapping, chunk_words, chunk_overlap)
            if len(batch.passages) >= size:
                run.flush(batch)
                batch = Batch(first_record=record.number + 1)
                if on_batch:
                    on_batch(run.report)
        if batch.last_record:
            run.flush(batch)
        run.drain()
        if on_batch and batch.last_record:
            on_batch(run.report)
    finally:
        bar.close()


def _add_record(run: BatchRun, batch: Batch, record: SourceRecord, mapping: FieldMapping,
                chunk_words: int, chunk_overlap: int) -> None:
    document = to_document(record, mapping, run.limits)
    if isinstance(document, str):
        run.reject(record.where, document)
        return
    for k, passage in enumerate(chunk_document(document, words=chunk_words, overlap=chunk_overlap)):
        key = passage.external_id
        if key not in run.last:
            run.unknown_key(record, key)
        if run.last[key] != _occurrence(record.number, k):
            run.report.duplicate(key, passage.where, winner=run.last[key] >> 32)
            continue
        run.report.passages += 1
        metadata_json = _metadata_json(passage.metadata)
        digest = content_hash(passage.title, passage.text, metadata_json, run.fingerprint_id)
        batch.passages[key] = (passage, metadata_json, digest)


def _occurrence(record_number: int, chunk: int) -> int:
    return record_number << 32 | chunk  # one int per key, not a tuple: ~60 bytes less per passage


def last_occurrences(records: Iterator[SourceRecord], mapping: FieldMapping, chunk_words: int,
                      chunk_overlap: int, limits: RecordLimits | None = None) -> tuple[dict[str, int], int]:
    """``{external_id: record number << 32 | chunk number}`` of each key's last occurrence, and the record count."""
    last: dict[str, int] = {}
    total = 0
    for record in records:
        total += 1
        document = to_document(record, mapping, limits)
        if isinstance(document, str):
            continue
        count = chunk_count(document.text, words=chunk_words, overlap=chunk_overlap)  # ids only: no slicing here
        if count == 1:
            last[document.external_id] = _occurrence(record.number, 0)
        else:
            for k in range(count):
                last[f"{document.external_id}#{k}"] = _occurrence(record.number, k)
    return last, total
