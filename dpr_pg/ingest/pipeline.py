"""``ingest()``: read → map fields → chunk → hash → skip unchanged → encode → COPY + upsert, batch by batch.

The input is read twice, streaming both times: a first pass finds the last occurrence of each
external id (so duplicates are resolved before anything is written), the second one writes.
Memory stays flat: one batch of passages (and of vectors) is held at a time, plus one dict entry
per external id (for duplicates and ``prune``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.engine import Engine

from dpr_pg.errors import ConfigError, DimensionError, EncoderMismatchError, IngestError
from dpr_pg.ingest.chunking import DEFAULT_CHUNK_WORDS, check_chunking, chunk_document
from dpr_pg.ingest.index import drop_hnsw, ensure_hnsw
from dpr_pg.ingest.loader import PassageWriter, StagedPassage
from dpr_pg.ingest.mapping import FieldMapping, to_document
from dpr_pg.ingest.readers import detect_format, read_records
from dpr_pg.ingest.records import Document, SourceRecord
from dpr_pg.ingest.report import IngestReport
from dpr_pg.ingest.squad import read_squad, write_questions
from dpr_pg.ingest.validate import text_problem, vector_problems
from dpr_pg.ingest.vectors import DEFAULT_COLUMN, EmbeddingSource

if TYPE_CHECKING:
    from dpr_pg._fingerprint import EncoderFingerprint
    from dpr_pg.encoders import EncoderPair

ENCODER_BATCH = 256
PRECOMPUTED_BATCH = 2000


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
    canonical = json.dumps([title, text, metadata_json, fingerprint_id], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _metadata_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass
class _Batch:
    """Passages waiting to be written, keyed by external id, and the range of records they came from."""

    first_record: int
    last_record: int = 0
    passages: dict[str, tuple[Document, str, str]] = field(default_factory=dict)


@dataclass
class _Run:
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
    pending: Future[tuple[int, int]] | None = None
    pending_rows: int = 0

    def __post_init__(self) -> None:
        self.fingerprint_id = self.fingerprint.id  # a sha256 over the fields: compute it once

    def submit(self, staged: list[StagedPassage], *, fresh: bool) -> None:
        """Write a batch on the writer thread, so that reading and checking the next one overlaps it."""
        self.drain()
        self.pending = self.executor.submit(self.writer.write, staged, fresh=fresh)
        self.pending_rows = len(staged)

    def drain(self) -> None:
        """Wait for the batch being written (re-raising its error) and count it."""
        if self.pending is None:
            return
        future, self.pending = self.pending, None
        inserted, updated = future.result()
        self.report.inserted += inserted
        self.report.updated += updated
        self.report.unchanged += self.pending_rows - inserted - updated  # written meanwhile by a concurrent ingest

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

    def flush(self, batch: _Batch) -> None:
        items = list(batch.passages.values())
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


def ingest(
    engine: Engine,
    encoder: EncoderPair | None,
    source: str | Path,
    *,
    collection: str,
    format: str | None = None,
    fields: FieldMapping | None = None,
    chunk_words: int | None = None,
    chunk_overlap: int = 0,
    embeddings: str | Path | None = None,
    embeddings_column: str = DEFAULT_COLUMN,
    fingerprint: EncoderFingerprint | None = None,
    batch_size: int | None = None,
    strict: bool = False,
    prune: bool = False,
    questions_path: str | Path | None = None,
    progress: bool | None = None,
    max_retries: int = 5,
    defer_index: bool = False,
    on_batch: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Ingest a JSONL, CSV, Parquet or SQuAD file into ``collection``; re-running it is a no-op.

    ``encoder`` encodes the passages; with ``embeddings`` (precomputed vectors, one row per
    record) pass the pair that made them, or just its ``fingerprint``, and nothing is encoded.
    ``chunk_words`` defaults to 100 (0 turns chunking off; precomputed vectors are never chunked).
    Bad records are rejected and listed in the report (``strict`` stops at the first one).
    ``prune`` deletes the collection's passages that are not in the source (skipped when any
    record was rejected). SQuAD questions go to ``questions_path`` (default ``<stem>.questions.jsonl``
    in the current folder). ``defer_index`` drops the HNSW index for a bulk load and builds it
    once at the end (see :mod:`dpr_pg.ingest.index`).

    Example:
        >>> pair = EncoderPair.load("/tmp/tiny/question", "/tmp/tiny/passage")  # doctest: +SKIP
        >>> ingest(engine, pair, "wiki.jsonl", collection="wiki").inserted      # doctest: +SKIP
        1000
    """
    started = time.perf_counter()
    if (not isinstance(collection, str) or not collection.strip() or text_problem(collection, "collection")
            or len(collection.encode("utf-8")) > 256):
        raise ConfigError(f"expected a non-empty collection name of at most 256 bytes without NUL bytes, "
                          f"not {collection[:60] if isinstance(collection, str) else collection!r}")
    fmt = detect_format(source, format)
    if embeddings is not None:
        if chunk_words:
            raise ConfigError("precomputed --embeddings belong to the input records as they are: "
                              f"expected --chunk-words 0 (or unset) with --embeddings, not {chunk_words}")
        chunk_words = 0
    chunk_words = DEFAULT_CHUNK_WORDS if chunk_words is None else chunk_words
    if fmt == "squad":
        chunk_words = 0
    check_chunking(chunk_words, chunk_overlap)
    fingerprint = _resolve_fingerprint(encoder, fingerprint, embeddings)
    dim = _check_database(engine, fingerprint, collection, prune=prune)
    report = IngestReport(collection=collection, source=str(source))
    mapping = fields or FieldMapping()
    exclude = [embeddings_column] if embeddings and Path(embeddings) == Path(source) else []
    open_records = _record_source(fmt, Path(source), report, questions_path, exclude=exclude)
    # A first pass finds each key's last occurrence, so a duplicate is resolved before anything is
    # written (last wins) and a re-run writes nothing; it also gives the record count.
    last, total = _last_occurrences(open_records(), mapping, chunk_words, chunk_overlap)
    if total == 0:
        raise IngestError(f"{Path(source).name} has no records; expected at least one ({fmt}); nothing was written")
    vectors = None
    if embeddings is not None:
        vectors = EmbeddingSource.open(embeddings, column=embeddings_column)
        vectors.check(records=total, dim=dim)
    from dpr_pg._fingerprint import register_encoder

    with engine.begin() as conn:
        encoder_id = register_encoder(conn, fingerprint)

    def count_retry(_: Exception) -> None:
        report.retries += 1

    size = batch_size or (PRECOMPUTED_BATCH if embeddings is not None else ENCODER_BATCH)
    if defer_index:
        drop_hnsw(engine)
    options = {"collection": collection, "encoder_id": encoder_id, "dim": dim, "max_retries": max_retries,
               "on_retry": count_retry}
    try:
        with PassageWriter(engine, **options) as writer, PassageWriter(engine, **options) as lookups:
            # Leaving this block waits for the write in flight before the connections close.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpr_pg-ingest-writer") as executor:
                run = _Run(engine, encoder, fingerprint, writer, report, vectors, strict, dim, last, lookups, executor)
                _write_all(run, open_records(), mapping, size=size, chunk_words=chunk_words,
                           chunk_overlap=chunk_overlap, bar=_progress_bar(progress, total), on_batch=on_batch)
            if prune and report.rejected:
                report.prune_skipped = f"{report.rejected} record(s) were rejected; fix them and re-run with --prune"
            elif prune:
                report.pruned = writer.prune(last.keys())
    finally:
        if defer_index:  # also after a failure: never leave the table without its index
            built = time.perf_counter()
            if ensure_hnsw(engine):
                report.index_seconds = time.perf_counter() - built
    report.seconds = time.perf_counter() - started
    return report


def _write_all(run: _Run, records: Iterator[SourceRecord], mapping: FieldMapping, *, size: int, chunk_words: int,
               chunk_overlap: int, bar: Any, on_batch: Callable[[IngestReport], None] | None) -> None:
    batch = _Batch(first_record=1)
    try:
        for record in records:
            run.report.read += 1
            bar.update(1)
            batch.last_record = record.number
            _add_record(run, batch, record, mapping, chunk_words, chunk_overlap)
            if len(batch.passages) >= size:
                run.flush(batch)
                batch = _Batch(first_record=record.number + 1)
                if on_batch:
                    on_batch(run.report)
        if batch.last_record:
            run.flush(batch)
        run.drain()
        if on_batch and batch.last_record:
            on_batch(run.report)
    finally:
        bar.close()


def _add_record(run: _Run, batch: _Batch, record: SourceRecord, mapping: FieldMapping,
                chunk_words: int, chunk_overlap: int) -> None:
    document = to_document(record, mapping)
    if isinstance(document, str):
        run.reject(record.where, document)
        return
    for k, passage in enumerate(chunk_document(document, words=chunk_words, overlap=chunk_overlap)):
        key = passage.external_id
        if run.last[key] != _occurrence(record.number, k):
            run.report.duplicate(key, passage.where, winner=run.last[key] >> 32)
            continue
        run.report.passages += 1
        metadata_json = _metadata_json(passage.metadata)
        digest = content_hash(passage.title, passage.text, metadata_json, run.fingerprint_id)
        batch.passages[key] = (passage, metadata_json, digest)


def _occurrence(record_number: int, chunk: int) -> int:
    return record_number << 32 | chunk  # one int per key, not a tuple: ~60 bytes less per passage


def _last_occurrences(records: Iterator[SourceRecord], mapping: FieldMapping, chunk_words: int,
                      chunk_overlap: int) -> tuple[dict[str, int], int]:
    """``{external_id: record number << 32 | chunk number}`` of each key's last occurrence, and the record count."""
    last: dict[str, int] = {}
    total = 0
    for record in records:
        total += 1
        document = to_document(record, mapping)
        if isinstance(document, str):
            continue
        for k, passage in enumerate(chunk_document(document, words=chunk_words, overlap=chunk_overlap)):
            last[passage.external_id] = _occurrence(record.number, k)
    return last, total


def _resolve_fingerprint(encoder: EncoderPair | None, fingerprint: EncoderFingerprint | None,
                         embeddings: str | Path | None) -> EncoderFingerprint:
    if encoder is not None:
        if fingerprint is not None and fingerprint.id != encoder.fingerprint.id:
            raise ConfigError("expected either an encoder pair or a fingerprint, or both of the same pair; "
                              "the fingerprint given differs from the encoder's")
        return encoder.fingerprint
    if embeddings is None:
        raise ConfigError("nothing would encode the passages: pass an encoder pair, or precomputed vectors "
                          "with --embeddings FILE and the pair that made them")
    if fingerprint is None:
        raise ConfigError("precomputed --embeddings need the encoder pair that made them, so that its fingerprint "
                          "is recorded: pass encoder= or fingerprint= (CLI: --question-model/--passage-model)")
    return fingerprint


def _check_database(engine: Engine, fingerprint: EncoderFingerprint, collection: str, *, prune: bool) -> int:
    from dpr_pg._fingerprint import check_encoder
    from dpr_pg.schema import require_schema

    with engine.connect() as conn:
        dim = require_schema(conn)
        if fingerprint.dim != dim:
            raise DimensionError(f"the encoder pair makes {fingerprint.dim}-d vectors but dpr_pg.passages stores "
                                 f"vector({dim}); expected {dim} dimensions, not {fingerprint.dim}: use a {dim}-d "
                                 "encoder pair, or another database initialised with dpr-pg init --dim")
        if not prune:
            try:
                check_encoder(conn, fingerprint, collection=collection)
            except EncoderMismatchError as e:
                raise EncoderMismatchError(
                    f"collection {collection!r} holds vectors of another encoder pair; expected "
                    f"{fingerprint.describe()}. Mixing pairs in one collection makes scores meaningless: ingest "
                    "into a new collection, or re-ingest the whole collection with --prune to replace them") from e
    return dim


def _record_source(fmt: str, source: Path, report: IngestReport, questions_path: str | Path | None,
                   *, exclude: list[str]) -> Callable[[], Iterator[SourceRecord]]:
    """A function that opens the records afresh (the input is read twice, streaming both times)."""
    if fmt != "squad":
        read_records(source, fmt, exclude=exclude)  # fail early on a missing file
        return lambda: read_records(source, fmt, exclude=exclude)
    corpus = read_squad(source)
    target = Path(questions_path) if questions_path else Path.cwd() / f"{source.stem}.questions.jsonl"
    write_questions(corpus.questions, target)
    report.questions, report.questions_path = len(corpus.questions), str(target)
    return lambda: iter(corpus.records)


def _progress_bar(progress: bool | None, total: int | None) -> Any:
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, unit=" records", disable=not enabled, file=sys.stderr, mininterval=0.5)
