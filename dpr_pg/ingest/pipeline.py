"""``ingest()``: read → map fields → chunk → hash → skip unchanged → encode → COPY + upsert, batch by batch.

The input is read twice, streaming both times: a first pass finds the last occurrence of each
external id (so duplicates are resolved before anything is written), the second one writes.
Memory stays flat: one batch of passages (and of vectors) is held at a time, plus one dict entry
per external id (for duplicates and ``prune``).
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from tqdm import tqdm

from dpr_pg._progress import shown
from dpr_pg.db.revision import require_schema
from dpr_pg.db.storage import column_type
from dpr_pg.db.tenancy import check_write_access
from dpr_pg.encoders.fingerprint import check_encoder, register_encoder
from dpr_pg.search.statistics import analyze_if_changed
from dpr_pg.errors import ConfigError, DimensionError, EncoderMismatchError, IngestError
from dpr_pg.ingest.batches import BatchRun, RecordRejectedError, content_hash, last_occurrences, write_all
from dpr_pg.ingest.chunking import DEFAULT_CHUNK_WORDS, check_chunking
from dpr_pg.ingest.documents.source import DocumentSource
from dpr_pg.ingest.documents.structure import DOCUMENT_FORMATS
from dpr_pg.db.index import drop_hnsw, ensure_hnsw
from dpr_pg.ingest.loader import PassageWriter
from dpr_pg.ingest.mapping import FieldMapping
from dpr_pg.ingest.limits import RecordLimits
from dpr_pg.ingest.ray_encoders import RayEncoders, RayEncoding
from dpr_pg.ingest.readers import InputWatch, detect_format, read_records
from dpr_pg.ingest.records import SourceRecord
from dpr_pg.ingest.report import IngestReport
from dpr_pg.ingest.squad import read_squad, write_questions
from dpr_pg.ingest.stages import Clock, Pipeline
from dpr_pg.ingest.validate import text_problem
from dpr_pg.ingest.vectors import DEFAULT_COLUMN, EmbeddingSource
from dpr_pg.ingest.writers import WriterPool, writer_limit

if TYPE_CHECKING:
    from dpr_pg.encoders.fingerprint import EncoderFingerprint
    from dpr_pg.encoders.pair import EncoderPair

__all__ = ["ENCODER_BATCH", "PRECOMPUTED_BATCH", "RecordRejectedError", "content_hash", "ingest", "ingest_records"]

ENCODER_BATCH = 256
PRECOMPUTED_BATCH = 2000
STAGES = ("read", "lookup", "tokenize", "encode", "write")  # the report's <stage>_seconds


def ingest(
    engine: Engine,
    encoder: EncoderPair | None,
    source: str | Path | Sequence[str | Path],
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
    limits: RecordLimits | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    ray: RayEncoding | str | bool | None = None,
) -> IngestReport:
    """Ingest a JSONL, CSV, Parquet or SQuAD file, or documents, into ``collection``; re-running it is a no-op.

    Documents (PDF, HTML, Markdown, DOCX: a folder, or one or more files; see
    :mod:`dpr_pg.ingest.documents`) are chunked along their structure into ``chunk_words``-word
    passages; ``include``/``exclude`` globs choose the files of a folder. An unchanged file costs a
    hash check, a changed one ends with exactly its new chunks, and with ``prune`` a deleted one's
    chunks go. A file that cannot be read is rejected by path; nothing of it is written.

    ``encoder`` encodes the passages; with ``embeddings`` (precomputed vectors, one row per
    record) pass the pair that made them, or just its ``fingerprint``, and nothing is encoded.
    ``chunk_words`` defaults to 100 (0 turns chunking off; precomputed vectors are never chunked).
    Bad records are rejected and listed in the report (``strict`` stops at the first one).
    ``prune`` deletes the collection's passages that are not in the source (skipped when any
    record was rejected). SQuAD questions go to ``questions_path`` (default ``<stem>.questions.jsonl``
    in the current folder). ``defer_index`` drops the HNSW index for a bulk load and builds it
    once at the end (see :mod:`dpr_pg.db.index`). ``limits`` bounds each record's size (default:
    1 MB of text, 64 kB of title, 8 MB read per record); a record over one is rejected, the run goes on.
    An input file that changes during the run stops it with :class:`IngestError`; what was
    committed before is kept.

    Reading, the hash lookup and tokenization, encoding and writing overlap (see
    :mod:`dpr_pg.ingest.stages`); the report's ``*_seconds`` say how long each was busy.
    ``on_batch(report)`` is called on the reading thread each time a batch has been read and
    handed on, with the counts as they stand (later stages may still be at earlier batches).

    ``ray`` encodes on a Ray cluster instead of here (True, an address such as ``"auto"`` or
    ``"ray://head:10001"``, or a :class:`~dpr_pg.ingest.ray_encoders.RayEncoding`): actors load the
    pair's passage model by name; ``encoder`` may then be None with ``fingerprint`` naming the pair.
    Reading, hashing and the writes stay here, so the results and the report are the same.

    Example:
        >>> pair = EncoderPair.load("/tmp/tiny/question", "/tmp/tiny/passage")  # doctest: +SKIP
        >>> ingest(engine, pair, "wiki.jsonl", collection="wiki").inserted      # doctest: +SKIP
        1000
    """
    started = time.perf_counter()
    check_collection_name(collection)
    on_ray = RayEncoding.of(ray)
    if on_ray is not None and embeddings is not None:
        raise ConfigError("precomputed --embeddings leave nothing to encode: drop --ray or --embeddings")
    if on_ray is not None and encoder is None and fingerprint is None:
        raise ConfigError("encoding on Ray needs the pair to load on the actors: pass encoder= or fingerprint= "
                          "(fingerprint_of(question_model, passage_model))")
    roots = [source] if isinstance(source, (str, Path)) else list(source)
    if is_documents(roots, format):
        return _ingest_documents(engine, encoder, roots, collection=collection, fields=fields,
                                 chunk_words=chunk_words, chunk_overlap=chunk_overlap, embeddings=embeddings,
                                 batch_size=batch_size, strict=strict, prune=prune, progress=progress,
                                 max_retries=max_retries, defer_index=defer_index, on_batch=on_batch,
                                 limits=limits, include=include, exclude=exclude, started=started,
                                 fingerprint=fingerprint, ray=on_ray)
    if len(roots) != 1 or include or exclude:
        raise ConfigError(f"expected one input file for JSONL, CSV, Parquet or SQuAD, not {len(roots)} "
                          "(several inputs, folders, --include and --exclude are for documents)")
    source = roots[0]
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
    fingerprint = _resolve_fingerprint(encoder, fingerprint, embeddings, on_ray=on_ray is not None)
    dim = _check_database(engine, fingerprint, collection, prune=prune)
    report = IngestReport(collection=collection, source=str(source))
    limits = limits or RecordLimits()
    exclude = [embeddings_column] if embeddings and Path(embeddings) == Path(source) else []
    watched = ([] if fmt == "squad" else [source]) + ([embeddings] if embeddings is not None else [])
    watch = InputWatch.of(*watched)  # before the first pass: the second one must read the same input
    open_records = _record_source(fmt, Path(source), report, questions_path, exclude=exclude, limits=limits)
    vectors = (lambda: EmbeddingSource.open(embeddings, column=embeddings_column)) if embeddings is not None else None
    empty = f"{Path(source).name} has no records; expected at least one ({fmt}); nothing was written"
    return _write(engine, encoder, fingerprint, open_records, report, dim=dim, started=started, empty=empty,
                  mapping=fields or FieldMapping(), chunk_words=chunk_words, chunk_overlap=chunk_overlap,
                  vectors=vectors, batch_size=batch_size, strict=strict, prune=prune, progress=progress,
                  max_retries=max_retries, defer_index=defer_index, on_batch=on_batch, limits=limits, watch=watch,
                  ray=on_ray)


def ingest_records(
    engine: Engine,
    encoder: EncoderPair,
    records: Iterable[Mapping[str, Any]],
    *,
    collection: str,
    fields: FieldMapping | None = None,
    chunk_words: int | None = None,
    chunk_overlap: int = 0,
    batch_size: int | None = None,
    strict: bool = False,
    max_retries: int = 5,
    limits: RecordLimits | None = None,
    source: str = "records",
) -> IngestReport:
    """Ingest records given as mappings (parsed JSON objects) into ``collection``, like :func:`ingest`.

    The same field mapping, chunking, checks and limits, idempotency and report as a file: a bad
    record is rejected and listed as ``records[i]`` (0-based; ``source`` names the list), the
    others are written; re-sending the same records writes nothing.

    Example:
        >>> ingest_records(engine, pair, [{"id": "a", "text": "Hola"}], collection="demo").inserted  # doctest: +SKIP
        1
    """
    started = time.perf_counter()
    check_collection_name(collection)
    chunk_words = DEFAULT_CHUNK_WORDS if chunk_words is None else chunk_words
    check_chunking(chunk_words, chunk_overlap)
    if encoder is None:
        raise ConfigError("nothing would encode the passages: pass an encoder pair")
    items = [_source_record(i, record, source) for i, record in enumerate(records)]
    dim = _check_database(engine, encoder.fingerprint, collection, prune=False)
    report = IngestReport(collection=collection, source=source)
    return _write(engine, encoder, encoder.fingerprint, lambda: iter(items), report, dim=dim, started=started,
                  empty=f"{source} is empty; expected at least one record; nothing was written",
                  mapping=fields or FieldMapping(), chunk_words=chunk_words, chunk_overlap=chunk_overlap,
                  vectors=None, batch_size=batch_size, strict=strict, prune=False, progress=False,
                  max_retries=max_retries, defer_index=False, on_batch=None, limits=limits or RecordLimits(),
                  watch=None)


def check_collection_name(collection: Any) -> None:
    """Refuse a collection name that is empty, over 256 bytes, or holds NUL or lone surrogates."""
    if (not isinstance(collection, str) or not collection.strip() or text_problem(collection, "collection")
            or len(collection.encode("utf-8")) > 256):
        raise ConfigError(f"expected a non-empty collection name of at most 256 bytes without NUL bytes, "
                          f"not {collection[:60] if isinstance(collection, str) else collection!r}")


def _source_record(index: int, record: Any, source: str) -> SourceRecord:
    where = f"{source}[{index}]"
    if not isinstance(record, Mapping):
        return SourceRecord(index + 1, where, None, f"expected a JSON object, not {type(record).__name__}")
    return SourceRecord(index + 1, where, dict(record))


def _write(engine: Engine, encoder: EncoderPair | None, fingerprint: EncoderFingerprint,
           open_records: Callable[[], Iterator[SourceRecord]], report: IngestReport, *, dim: int, started: float,
           empty: str | None, mapping: FieldMapping, chunk_words: int, chunk_overlap: int,
           vectors: Callable[[], EmbeddingSource] | None, batch_size: int | None, strict: bool, prune: bool,
           progress: bool | None, max_retries: int, defer_index: bool,
           on_batch: Callable[[IngestReport], None] | None, limits: RecordLimits,
           watch: InputWatch | None, documents: DocumentSource | None = None,
           ray: RayEncoding | None = None) -> IngestReport:
    """What every ingest shares once its records can be opened: both passes, then replaced chunks, then prune.

    ``empty`` is the error for an input without records (None: none is fine, as for documents that
    are all unchanged). ``documents`` removes the stored chunks that changed files no longer have.
    """
    collection = report.collection
    first_pass = time.perf_counter()
    # A first pass finds each key's last occurrence, so a duplicate is resolved before anything is
    # written (last wins) and a re-run writes nothing; it also gives the record count.
    last, total = last_occurrences(open_records(), mapping, chunk_words, chunk_overlap, limits)
    if total == 0 and empty is not None:
        raise IngestError(empty)
    source_vectors = None
    if vectors is not None:  # opened after the first pass: an empty input is reported as such
        source_vectors = vectors()
        source_vectors.check(records=total, dim=dim)
    with engine.begin() as conn:
        encoder_id = register_encoder(conn, fingerprint)

    def count_retry(_: Exception) -> None:
        with lock:
            report.retries += 1

    def count_ray_retry() -> None:
        with lock:
            report.ray_retries += 1

    lock = threading.Lock()
    size = batch_size or (PRECOMPUTED_BATCH if vectors is not None else ENCODER_BATCH)
    dropped = drop_hnsw(engine) if defer_index else None
    options = {"collection": collection, "encoder_id": encoder_id, "dim": dim, "max_retries": max_retries,
               "on_retry": count_retry}
    clocks = {stage: Clock() for stage in STAGES}
    clocks["read"].add(time.perf_counter() - first_pass)
    pipeline = Pipeline()
    pool = WriterPool(engine, options, pipeline=pipeline, report=report, lock=lock, clock=clocks["write"],
                      limit=writer_limit())
    analyzed = False
    try:
        with PassageWriter(engine, **options) as lookups, ExitStack() as stack:
            remote = None
            if ray is not None:
                remote = stack.enter_context(RayEncoders(ray, fingerprint, on_retry=count_ray_retry))
            run = BatchRun(engine, encoder, fingerprint, report, source_vectors, strict, dim, last, lookups, pool,
                           pipeline, clocks, limits=limits, watch=watch, lock=lock, remote=remote,
                           half=_half_column(engine))
            try:
                write_all(run, open_records(), mapping, size=size, chunk_words=chunk_words,
                          chunk_overlap=chunk_overlap, bar=_progress_bar(progress, total), on_batch=on_batch)
            finally:
                report.writers = pool.writers
                if remote is not None:
                    report.ray_actors = remote.actors
                for stage, clock in clocks.items():
                    setattr(report, f"{stage}_seconds", clock.seconds)
            if documents is not None:
                report.removed = lookups.delete(documents.stale_ids())
            # A document file that could not be read keeps what was stored for it: it does not block the prune.
            rejected = report.rejected - (documents.rejected_files if documents is not None else 0)
            if prune and rejected:
                report.prune_skipped = f"{rejected} record(s) were rejected; fix them and re-run with --prune"
            elif prune:
                kept = documents.kept if documents is not None else []
                report.pruned = lookups.prune(itertools.chain(last.keys(), kept))
    finally:
        if defer_index:  # also after a failure: never leave the table without its index
            # Statistics first: the build sizes its memory from the table's row count, which a
            # new table has none of until it is analysed.
            analyzed = analyze_if_changed(engine, changed=_changed(report), collection=collection)
            built = time.perf_counter()
            if ensure_hnsw(engine, dropped, progress=progress):  # with the parameters it had
                report.index_seconds = time.perf_counter() - built
    # Fresh statistics for the planner: after a load into a new collection it would take 0.5 % as the estimate.
    if not analyzed:
        analyze_if_changed(engine, changed=_changed(report), collection=collection)
    report.seconds = time.perf_counter() - started
    return report


def _changed(report: IngestReport) -> int:
    return report.inserted + report.updated + report.pruned + report.removed


def is_documents(roots: Sequence[str | Path], format: str | None) -> bool:
    """Whether the inputs are documents: ``format="documents"``, a folder, or a document extension."""
    if format is not None:
        return format == "documents"
    return any(Path(root).is_dir() or Path(root).suffix.lower() in DOCUMENT_FORMATS for root in roots)


def _ingest_documents(engine: Engine, encoder: EncoderPair | None, roots: list[str | Path], *, collection: str,
                      fields: FieldMapping | None, chunk_words: int | None, chunk_overlap: int,
                      embeddings: str | Path | None, batch_size: int | None, strict: bool, prune: bool,
                      progress: bool | None, max_retries: int, defer_index: bool,
                      on_batch: Callable[[IngestReport], None] | None, limits: RecordLimits | None,
                      include: Sequence[str] | None, exclude: Sequence[str] | None, started: float,
                      fingerprint: EncoderFingerprint | None, ray: RayEncoding | None) -> IngestReport:
    """Documents through the same pipeline: their chunks are the records (see :mod:`dpr_pg.ingest.documents.source`)."""
    if embeddings is not None:
        raise ConfigError("documents are parsed and chunked at ingest, so precomputed --embeddings cannot match "
                          "their chunks; drop --embeddings")
    if fields is not None and fields != FieldMapping():
        raise ConfigError("documents have no fields to map: drop --id-field, --title-field, --text-field and "
                          "--metadata-field (ids are <path>#<chunk>, titles come from the documents)")
    words = DEFAULT_CHUNK_WORDS if chunk_words is None else chunk_words
    check_chunking(words, chunk_overlap)
    fingerprint = _resolve_fingerprint(encoder, fingerprint if ray is not None else None, None,
                                       on_ray=ray is not None)
    dim = _check_database(engine, fingerprint, collection, prune=prune)
    limits = limits or RecordLimits()
    report = IngestReport(collection=collection, source=", ".join(str(root) for root in roots))
    with DocumentSource(roots, limits=limits, words=words, overlap=chunk_overlap, include=include,
                        exclude=exclude) as documents:
        documents.prepare(engine, collection, fingerprint.id, report)
        if strict and report.rejected:
            first = report.rejections[0]
            report.stopped = f"{first.record}: {first.reason}"
            raise RecordRejectedError(f"{first.record}: {first.reason}. Stopped there (--strict): nothing was "
                                      "written; fix the file or leave it out (--exclude) and re-run", report)
        if documents.found == 0 and not report.rejected:
            raise IngestError(f"no documents found in {report.source}; expected files matching "
                              f"{', '.join(documents.include)} (--include), outside {', '.join(documents.exclude)} "
                              "(--exclude); nothing was written")
        # The chunks are already cut along the documents' structure: the pipeline does not chunk them again.
        return _write(engine, encoder, fingerprint, documents.records, report, dim=dim, started=started, empty=None,
                      mapping=FieldMapping(), chunk_words=0, chunk_overlap=0, vectors=None, batch_size=batch_size,
                      strict=strict, prune=prune, progress=progress, max_retries=max_retries,
                      defer_index=defer_index, on_batch=on_batch, limits=limits, watch=None, documents=documents,
                      ray=ray)


def _resolve_fingerprint(encoder: EncoderPair | None, fingerprint: EncoderFingerprint | None,
                         embeddings: str | Path | None, *, on_ray: bool = False) -> EncoderFingerprint:
    if encoder is not None:
        if fingerprint is not None and fingerprint.id != encoder.fingerprint.id:
            raise ConfigError("expected either an encoder pair or a fingerprint, or both of the same pair; "
                              "the fingerprint given differs from the encoder's")
        return encoder.fingerprint
    if on_ray and fingerprint is not None:  # the actors load the pair
        return fingerprint
    if embeddings is None:
        raise ConfigError("nothing would encode the passages: pass an encoder pair, or precomputed vectors "
                          "with --embeddings FILE and the pair that made them")
    if fingerprint is None:
        raise ConfigError("precomputed --embeddings need the encoder pair that made them, so that its fingerprint "
                          "is recorded: pass encoder= or fingerprint= (CLI: --question-model/--passage-model)")
    return fingerprint


def _half_column(engine: Engine) -> bool:
    """Whether dpr_pg.passages stores halfvec: vectors beyond its range are rejected per record."""
    with engine.connect() as conn:
        return column_type(conn) == "halfvec"


def _check_database(engine: Engine, fingerprint: EncoderFingerprint, collection: str, *, prune: bool) -> int:
    with engine.connect() as conn:
        dim = require_schema(conn)
        check_write_access(conn, collection, prune=prune)
        if fingerprint.dim != dim:
            raise DimensionError(f"the encoder pair makes {fingerprint.dim}-d vectors but dpr_pg.passages stores "
                                 f"vector({dim}); expected {dim} dimensions, not {fingerprint.dim}: use a {dim}-d "
                                 "encoder pair, or another database initialised with dpr-pg init --dim")
        if not prune:
            try:
                check_encoder(conn, fingerprint, collection=collection)
            except EncoderMismatchError as e:
                stored = e.stored.describe() if e.stored is not None else "another encoder pair"
                raise EncoderMismatchError(
                    f"collection {collection!r} holds vectors of another encoder pair: stored {stored}; "
                    f"this ingest encodes with {fingerprint.describe()}. Expected one pair per collection, since "
                    "scores across pairs mean nothing. To go on: ingest into another collection; or replace the "
                    "collection's vectors with this pair (--prune / prune=True: every passage of the input is "
                    "re-encoded, the others are deleted); or load the stored pair (DPR_PG_QUESTION_MODEL and "
                    "DPR_PG_PASSAGE_MODEL, --question-model/--passage-model)",
                    stored=e.stored, requested=fingerprint) from e
    return dim


def _record_source(fmt: str, source: Path, report: IngestReport, questions_path: str | Path | None,
                   *, exclude: list[str], limits: RecordLimits) -> Callable[[], Iterator[SourceRecord]]:
    """A function that opens the records afresh (the input is read twice, streaming both times)."""
    if fmt != "squad":
        read_records(source, fmt, exclude=exclude, limits=limits)  # fail early on a missing file
        return lambda: read_records(source, fmt, exclude=exclude, limits=limits)
    corpus = read_squad(source)
    target = Path(questions_path) if questions_path else Path.cwd() / f"{source.stem}.questions.jsonl"
    write_questions(corpus.questions, target)
    report.questions, report.questions_path = len(corpus.questions), str(target)
    return lambda: iter(corpus.records)


def _progress_bar(progress: bool | None, total: int | None) -> Any:
    return tqdm(total=total, unit=" records", disable=not shown(progress), file=sys.stderr, mininterval=0.5)
