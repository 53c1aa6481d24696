"""The ingest report: counts, rejections and duplicates, as ``--json`` prints it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpr_pg.ingest.records import Rejection

MAX_LISTED = 1000  # rejections/duplicates listed in the report; the counts are always exact


@dataclass
class IngestReport:
    """What an ingest did. ``read`` counts input records; the passage counts come after chunking.

    ``inserted + updated + unchanged`` is the number of distinct passages written or found
    up to date; ``rejected`` counts records (or passages) that were not ingested.

    Example:
        >>> IngestReport(collection="wiki").as_dict()["inserted"]
        0
    """

    collection: str
    source: str = ""
    read: int = 0
    passages: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    duplicate_count: int = 0
    truncated: int = 0
    encoded: int = 0
    pruned: int = 0
    prune_skipped: str | None = None
    retries: int = 0
    questions: int | None = None
    questions_path: str | None = None
    stopped: str | None = None
    documents: int | None = None  # document files found (None: not a documents ingest)
    documents_parsed: int | None = None
    documents_unchanged: int | None = None  # skipped after their hash check
    removed: int = 0  # stored chunks of changed documents that their new version no longer has
    seconds: float = 0.0
    index_seconds: float | None = None
    # Each stage's busy seconds (waits for work or for room downstream left out); the stages overlap,
    # so the wall time is close to the largest. write: while at least one writer was writing.
    read_seconds: float = 0.0  # both passes over the input: parse, map, chunk, hash
    lookup_seconds: float = 0.0  # stored hashes and checks
    tokenize_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    writers: int = 0  # connections that wrote (the pool grows while the writes fall behind)
    ray_actors: int | None = None  # encoders on Ray (None: encoded here; 0: nothing needed encoding)
    ray_retries: int = 0  # batches sent again after their Ray actor died

    @property
    def passages_per_second(self) -> float:
        return round(self.passages / self.seconds, 1) if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when nothing was rejected, 2 when records were rejected (1 is for fatal errors)."""
        return 2 if self.rejected else 0

    def reject(self, record: str, reason: str) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_LISTED:
            self.rejections.append(Rejection(record, reason))

    def duplicate(self, external_id: str, record: str, *, winner: int) -> None:
        """``record`` was skipped: record number ``winner``, later in the input, has the same id."""
        self.duplicate_count += 1
        if len(self.duplicates) < MAX_LISTED:
            self.duplicates.append({"external_id": external_id, "record": record,
                                    "resolution": f"skipped: record {winner}, later in the input, has the same id "
                                                  "(the last one wins)"})

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values (the keys of ``dpr-pg ingest --json``)."""
        return {
            "collection": self.collection, "source": self.source, "read": self.read, "passages": self.passages,
            "inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged,
            "rejected": self.rejected, "rejections": [r.as_dict() for r in self.rejections],
            "duplicates": self.duplicate_count, "duplicate_keys": self.duplicates,
            "truncated": self.truncated, "encoded": self.encoded, "pruned": self.pruned,
            "prune_skipped": self.prune_skipped, "retries": self.retries,
            "questions": self.questions, "questions_path": self.questions_path, "stopped": self.stopped,
            "documents": self.documents, "documents_parsed": self.documents_parsed,
            "documents_unchanged": self.documents_unchanged, "removed": self.removed,
            "seconds": round(self.seconds, 3), "passages_per_second": self.passages_per_second,
            "index_seconds": None if self.index_seconds is None else round(self.index_seconds, 3),
            "read_seconds": round(self.read_seconds, 3), "lookup_seconds": round(self.lookup_seconds, 3),
            "tokenize_seconds": round(self.tokenize_seconds, 3), "encode_seconds": round(self.encode_seconds, 3),
            "write_seconds": round(self.write_seconds, 3), "writers": self.writers,
            "ray_actors": self.ray_actors, "ray_retries": self.ray_retries,
        }
