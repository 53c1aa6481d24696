"""The values that flow through an ingest: records read from a file, documents, passages, rejections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceRecord:
    """One record as read from the input, before field mapping.

    ``number`` is 1-based and counts every record, readable or not; with ``--embeddings`` the
    record ``number`` owns row ``number - 1`` of the vectors. ``where`` names the file and line
    for messages. ``problem`` says why the record could not be read (then ``fields`` is None).
    """

    number: int
    where: str
    fields: dict[str, Any] | None
    problem: str | None = None


@dataclass(frozen=True)
class Document:
    """A record mapped to (external id, title, text, metadata), ready to chunk and encode."""

    number: int
    where: str
    external_id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A record that was not ingested, and why (``record`` names the file and line)."""

    record: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"record": self.record, "reason": self.reason}
