"""Batches: map, chunk and hash records, skip unchanged passages, encode, and hand batches to the writers.

A :class:`BatchRun` holds what the stages of one ingest share. They run at the same time (see
:mod:`dpr_pg.ingest.stages`): the caller's thread reads, maps, chunks and hashes records into
batches; one thread checks a batch and looks up its stored hashes, then tokenizes the changed
passages; one thread encodes them (on a GPU it does nothing else); a pool of writers writes them.
At most :data:`IN_FLIGHT_BATCHES` batches are read and not yet committed: what memory holds, and
what a kill -9 can lose (the re-run redoes it). The reader checks, batch by batch, that the input
is still the file of the first pass before it hands the batch on.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
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
from dpr_pg.ingest.stages import END, Channel, Clock, Halt, Pipeline, Stopped
from dpr_pg.ingest.validate import vector_problems
from dpr_pg.ingest.vectors import EmbeddingSource
from dpr_pg.ingest.writers import WRITE_BATCHES, WriterPool

if TYPE_CHECKING:
    from dpr_pg.encoders.fingerprint import EncoderFingerprint
    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.ingest.ray_encoders import RayEncoders


PREPARE_QUEUE = 1  # batches read and waiting for their lookup
ENCODE_QUEUE = 2  # batches tokenized and waiting for the encoder: the GPU always has the next one
# Batches read but not committed, at most: queued or held by each stage (the lookup, the encoder) and
# with the writers. What memory holds, and what a kill -9 can lose (the re-run redoes it).
IN_FLIGHT_BATCHES = PREPARE_QUEUE + 1 + ENCODE_QUEUE + 1 + WRITE_BATCHES


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
class Prepared:
    """A batch's changed passages, tokenized, on their way to the encoder."""

    order: int  # the batch's first record
    changed: list[tuple[Document, str, str]]
    fresh: bool  # none of the batch's ids was stored when looked up
    tokens: Any


@dataclass
class BatchRun:
    """What the stages of one ingest share; see :mod:`dpr_pg.ingest.stages` for how they run.

    The caller's thread reads (:func:`write_all`); :meth:`prepare` looks up and tokenizes on one
    thread, :meth:`encode` encodes on another, and ``pool`` writes. The report is counted under
    ``lock``, since several stages add to it.
    """

    engine: Engine
    encoder: EncoderPair | None
    fingerprint: EncoderFingerprint
    report: IngestReport
    vectors: EmbeddingSource | None
    strict: bool
    dim: int
    last: dict[str, int]
    lookups: PassageWriter
    pool: WriterPool
    pipeline: Pipeline
    clocks: dict[str, Clock]
    limits: RecordLimits = field(default_factory=RecordLimits)
    watch: InputWatch | None = None  # the input files as they were at the first pass
    fingerprint_id: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    to_encode: Channel[Prepared] = field(default_factory=lambda: Channel(ENCODE_QUEUE))
    remote: RayEncoders | None = None  # encode on Ray actors instead of ``encoder``
    in_flight: deque[tuple[Prepared, Any]] = field(default_factory=deque)  # batches out with the actors
    half: bool = False  # the column stores halfvec: values beyond ±65,504 are rejected

    def __post_init__(self) -> None:
        self.fingerprint_id = self.fingerprint.id  # a sha256 over the fields: compute it once

    def reject(self, where: str, reason: str, *, order: int) -> None:
        """Count a rejected record (any stage); with ``strict``, halt the ingest at its batch."""
        with self.lock:
            self.report.reject(where, reason)
        if self.strict:
            raise Halt(lambda report: RecordRejectedError(
                f"{where}: {reason}. Stopped there (--strict): nothing of the current batch was written, "
                f"{report.inserted + report.updated} passages were written before it; "
                "fix the record and re-run (the committed passages will be skipped as unchanged)", report),
                order=order, stopped=f"{where}: {reason}")

    def prepare(self, batch: Batch) -> None:
        """Stage 2: checks, the hash lookup and tokenization; the changed passages go on to be encoded."""
        with self.clocks["lookup"].busy():
            items = [item for item in batch.passages.values() if not self._tsvector_rejected(item[0], batch)]
            rows = None
            if self.vectors is not None:
                rows = self.vectors.rows(batch.first_record - 1, batch.last_record)
                problems = vector_problems(rows, self.dim, half=self.half)
                checked = []
                for doc, metadata_json, digest in items:
                    row = doc.number - batch.first_record
                    problem = self.vectors.length_problem(doc.number - 1) or problems[row]
                    if problem:
                        self.reject(doc.where, f"{problem} (embedding row {doc.number - 1}, id {doc.external_id!r})",
                                    order=batch.first_record)
                    else:
                        checked.append((doc, metadata_json, digest))
                items = checked
            stored = self.lookups.existing_hashes([doc.external_id for doc, _, _ in items])
            changed = [item for item in items if stored.get(item[0].external_id) != item[2]]
            with self.lock:
                self.report.unchanged += len(items) - len(changed)
        if not changed:
            return
        if rows is not None:
            picks = np.fromiter((doc.number - batch.first_record for doc, _, _ in changed), dtype=np.intp,
                                count=len(changed))
            embeddings = rows[picks].astype(np.float32, copy=False)  # one copy of the batch's rows, no per-row arrays
            self._submit(changed, embeddings, fresh=not stored)
            return
        passages = [(doc.title, doc.text) for doc, _, _ in changed]
        if self.remote is not None:  # the actors tokenize
            tokens: Any = passages
        else:
            assert self.encoder is not None
            with self.clocks["tokenize"].busy():
                tokens = self.encoder.passage.tokenize(passages)
        if not self.pipeline.put(self.to_encode, Prepared(batch.first_record, changed, not stored, tokens)):
            raise Stopped

    def encode(self, prepared: Prepared) -> None:
        """Stage 3, the only thread that runs the model: embeddings of a tokenized batch, checked."""
        assert self.encoder is not None
        with self.clocks["encode"].busy():
            result = self.encoder.passage.embed(prepared.tokens)
        self._encoded(prepared, result)

    def encode_remote(self, prepared: Prepared) -> None:
        """Stage 3 on Ray: send the batch to an actor; collect the oldest once enough are out."""
        assert self.remote is not None
        self.in_flight.append((prepared, self.remote.submit(prepared.tokens)))
        while len(self.in_flight) > self.remote.capacity:
            self._collect(*self.in_flight.popleft())

    def finish_remote(self) -> None:
        """After the last batch (or a stop): collect what the actors still have, up to a halt, then close."""
        try:
            while self.in_flight and not self.pipeline.aborted.is_set():
                prepared, pending = self.in_flight.popleft()
                halt = self.pipeline.halt_order()
                if halt is not None and prepared.order >= halt:
                    continue  # at or after the batch where the ingest halted: not written
                self._collect(prepared, pending)
        except Stopped:  # the writers stopped: their error is the one to raise
            pass
        finally:
            self.in_flight.clear()
            self.pool.close()

    def _collect(self, prepared: Prepared, pending: Any) -> None:
        assert self.remote is not None
        with self.clocks["encode"].busy():
            result = self.remote.result(pending)
        self._encoded(prepared, result)

    def _encoded(self, prepared: Prepared, result: Any) -> None:
        """Count, check and hand on the vectors of a batch (bad vectors are rejected)."""
        changed = prepared.changed
        with self.clocks["encode"].busy():
            embeddings = result.embeddings
            with self.lock:
                self.report.truncated += len(result.truncated)
                self.report.encoded += len(changed)
            problems = vector_problems(embeddings, self.dim, half=self.half)
            keep = []
            for index, problem in enumerate(problems):
                if problem:
                    self.reject(changed[index][0].where, f"the encoder gave a bad vector: {problem}",
                                order=prepared.order)
                else:
                    keep.append(index)
            if len(keep) < len(changed):
                changed, embeddings = [changed[i] for i in keep], embeddings[keep]
        self._submit(changed, embeddings, fresh=prepared.fresh)

    def _submit(self, changed: list[tuple[Document, str, str]], embeddings: np.ndarray, *, fresh: bool) -> None:
        staged = [StagedPassage(doc.external_id, doc.title, doc.text, metadata_json, digest, embeddings[i])
                  for i, (doc, metadata_json, digest) in enumerate(changed)]
        if staged and not self.pool.submit(staged, fresh=fresh):
            raise Stopped

    def _tsvector_rejected(self, passage: Document, batch: Batch) -> bool:
        """Reject a passage whose Spanish tsvector PostgreSQL would refuse (over 1 MB), asking the server only
        when the passage is large enough for that to be possible."""
        if utf8_size(passage.title) + utf8_size(passage.text) < TSVECTOR_SAFE_BYTES:
            return False
        problem = self.lookups.tsvector_problem(passage.title, passage.text)
        if problem:
            self.reject(passage.where, f"its Spanish full-text vector (title + text) is over PostgreSQL's tsvector "
                                       f"limit: {problem}; shorten the title or the text, or chunk the text "
                                       f"(--chunk-words){_id_note(passage)}", order=batch.first_record)
        return problem is not None

    def check_input(self, change: str | None = None, *, order: int) -> None:
        """Halt, keeping what was committed, when an input file changed since the first pass."""
        change = change or (self.watch.change() if self.watch is not None else None)
        if change is None:
            return
        raise Halt(lambda report: IngestError(
            f"{change}; the {report.inserted + report.updated} passages committed before are kept: re-run the "
            "same command once the file is complete (they will be skipped as unchanged)"), order=order)

    def unknown_key(self, record: SourceRecord, key: str, *, order: int) -> None:
        """A key the first pass did not see: the input changed in between."""
        change = self.watch.change() if self.watch is not None else None
        self.check_input(change or f"{record.where} has the id {key!r}, which was not there when the input was "
                                   "first read: the input changed while it was being ingested", order=order)


def _id_note(passage: Document) -> str:
    return f" (id {passage.external_id!r})" if "#" in passage.external_id else ""


def write_all(run: BatchRun, records: Iterator[SourceRecord], mapping: FieldMapping, *, size: int, chunk_words: int,
               chunk_overlap: int, bar: Any, on_batch: Callable[[IngestReport], None] | None) -> None:
    """Read on this thread while the other stages look up, encode and write; raise what stopped them."""
    pipeline, pool = run.pipeline, run.pool
    to_prepare: Channel[Batch] = Channel(PREPARE_QUEUE)
    if run.remote is not None:
        pipeline.stage("lookup", to_prepare, run.prepare, done=lambda: pipeline.put(run.to_encode, END))
        pipeline.stage("encode", run.to_encode, run.encode_remote, done=run.finish_remote)
    elif run.vectors is None:
        pipeline.stage("lookup", to_prepare, run.prepare, done=lambda: pipeline.put(run.to_encode, END))
        pipeline.stage("encode", run.to_encode, run.encode, done=pool.close)
    else:  # precomputed vectors: nothing to tokenize or encode
        pipeline.stage("lookup", to_prepare, run.prepare, done=pool.close)
    batch = Batch(first_record=1)
    started, waited = time.perf_counter(), 0.0

    def hand_on(full: Batch) -> bool:
        nonlocal waited
        run.check_input(order=full.first_record)  # its records were read from the file of the first pass
        before = time.perf_counter()
        try:
            return pipeline.put(to_prepare, full)
        finally:
            waited += time.perf_counter() - before

    try:
        for record in records:
            run.report.read += 1
            bar.update(1)
            batch.last_record = record.number
            _add_record(run, batch, record, mapping, chunk_words, chunk_overlap)
            if len(batch.passages) >= size:
                if not hand_on(batch):
                    break
                batch = Batch(first_record=record.number + 1)
                if on_batch:
                    before = time.perf_counter()
                    on_batch(run.report)
                    waited += time.perf_counter() - before
        else:
            if batch.last_record:  # even when empty: hand_on checks that the input did not change
                hand_on(batch)
    except BaseException as e:  # the other stages stop (a halt: after writing what came before)
        pipeline.fail(e)
    finally:
        pipeline.put(to_prepare, END)
        run.clocks["read"].add(time.perf_counter() - started - waited)
        bar.close()
    try:
        pipeline.join(run.report)
    finally:
        pool.join()
    if on_batch and batch.last_record:
        on_batch(run.report)


def _add_record(run: BatchRun, batch: Batch, record: SourceRecord, mapping: FieldMapping,
                chunk_words: int, chunk_overlap: int) -> None:
    document = to_document(record, mapping, run.limits)
    if isinstance(document, str):
        run.reject(record.where, document, order=batch.first_record)
        return
    for k, passage in enumerate(chunk_document(document, words=chunk_words, overlap=chunk_overlap)):
        key = passage.external_id
        if key not in run.last:
            run.unknown_key(record, key, order=batch.first_record)
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
