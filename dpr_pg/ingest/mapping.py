"""Field mapping: which field of a record is the id, the title, the text, and what goes to metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dpr_pg.ingest.limits import RecordLimits, size_problem
from dpr_pg.ingest.records import Document, SourceRecord
from dpr_pg.ingest.validate import metadata_problem, passage_text_problem, text_problem

MAX_ID_BYTES = 1024


@dataclass(frozen=True)
class FieldMapping:
    """Names of the id, title and text fields; ``metadata`` lists the metadata fields (None: all others).

    A record without an id field gets its record number (1-based) as its id; without a title
    field, an empty title. A record without its text field is rejected.

    Example:
        >>> FieldMapping(text="body", metadata=("lang",)).text
        'body'
    """

    id: str = "id"
    title: str = "title"
    text: str = "text"
    metadata: Sequence[str] | None = None


def to_document(record: SourceRecord, mapping: FieldMapping, limits: RecordLimits | None = None) -> Document | str:
    """The record as a :class:`Document`, or the reason it is rejected (``limits``: the text and title sizes).

    Example:
        >>> to_document(SourceRecord(1, "a.jsonl:1", {"id": 7, "text": "Hola"}), FieldMapping()).external_id
        '7'
    """
    fields = record.fields
    if fields is None:
        return record.problem or "unreadable record"
    if mapping.text not in fields:
        return f"no {mapping.text!r} field (the passage text); fields present: {', '.join(map(repr, fields)) or 'none'}"
    limits = limits or RecordLimits()
    text = fields[mapping.text]
    problem = ((isinstance(text, str) and size_problem(text, mapping.text, limits.max_text_bytes, "--max-text-bytes"))
               or passage_text_problem(text, mapping.text))
    if problem:
        return problem
    raw_id = fields.get(mapping.id, record.number)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return f"{mapping.id} must be a string or an integer, not {type(raw_id).__name__}"
    external_id = str(raw_id)
    if not external_id.strip():
        return f"{mapping.id} is empty; expected a non-empty id"
    if len(external_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        # (collection, external_id) is a btree key: PostgreSQL refuses index rows over ~2700 bytes.
        return f"{mapping.id} is {len(external_id)} characters long; expected an id of at most {MAX_ID_BYTES} bytes"
    title = fields.get(mapping.title, "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        return f"{mapping.title} must be a string, not {type(title).__name__}"
    problem = (size_problem(title, mapping.title, limits.max_title_bytes, "--max-title-bytes")
               or text_problem(external_id, mapping.id) or text_problem(title, mapping.title))
    if problem:
        return problem
    reserved = {mapping.id, mapping.title, mapping.text}
    if mapping.metadata is None:
        metadata = {key: value for key, value in fields.items() if key not in reserved}
    else:
        metadata = {key: fields[key] for key in mapping.metadata if key in fields}
    problem = metadata_problem(metadata)
    if problem:
        return problem
    return Document(record.number, record.where, external_id, title, fields[mapping.text], metadata)
