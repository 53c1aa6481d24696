"""Ingest: files and precomputed vectors → passages → embeddings → PostgreSQL, idempotent and resumable.

Modules: ``readers`` (JSONL, CSV, Parquet), ``squad`` (SQuAD JSON and its questions file), ``documents``
(PDF, HTML, Markdown, DOCX files and folders), ``mapping`` (fields), ``limits`` (record sizes),
``chunking``, ``validate``, ``vectors`` (precomputed embeddings), ``loader`` (COPY + upsert), ``batches``,
``stages`` (the threads that overlap),
``writers`` (the writer pool), ``ray_encoders`` (encoding on Ray), ``report``, ``pipeline``
(:func:`ingest`). The HNSW index a bulk load defers and rebuilds is :mod:`dpr_pg.db.index`.
"""

from dpr_pg.ingest.chunking import chunk_text
from dpr_pg.ingest.limits import RecordLimits
from dpr_pg.ingest.mapping import FieldMapping
from dpr_pg.ingest.pipeline import RecordRejectedError, content_hash, ingest, ingest_records
from dpr_pg.ingest.ray_encoders import RayEncoding
from dpr_pg.ingest.records import Rejection
from dpr_pg.ingest.report import IngestReport

__all__ = [
    "FieldMapping",
    "IngestReport",
    "RayEncoding",
    "RecordLimits",
    "RecordRejectedError",
    "Rejection",
    "chunk_text",
    "content_hash",
    "ingest",
    "ingest_records",
]
