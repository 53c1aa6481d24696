"""A parsed document (title, own metadata, blocks) and the chunk records it becomes.

Each chunk is one record for the ingest pipeline, with the id ``<source>#<k>`` and the fields:

* ``title``: the document's title, and `` — <section heading>`` when the chunk sits under one;
* ``text``: the chunk (see :func:`dpr_pg.ingest.chunking.chunk_blocks`);
* metadata: ``source`` (the path relative to the folder given), ``format``, ``section`` and
  ``sections`` (the heading path), ``page`` (and ``page_end``) for PDFs, ``chunk`` and ``chunks``
  (its position, and how many the file gave), ``sha256`` (of the file's bytes), ``chunking``
  (the options that cut it), and ``document``: the document's own metadata (author, dates...).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dpr_pg.ingest.chunking import Block, chunk_blocks

DOCUMENT_FORMATS = {".pdf": "pdf", ".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown",
                    ".docx": "docx"}
# Bumped when parsing or chunking changes what a file gives, so that unchanged files are parsed again.
PARSER_VERSION = 1
TITLE_SEPARATOR = " — "
# C0/C1 control characters but tab and newline: parsers leave them in (PDF text in particular), and
# PostgreSQL refuses NUL. Extracted text is a derivation of the file, so it is cleaned, not rejected.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


class UnreadableDocument(Exception):
    """A file that gives no passages: encrypted, corrupt, binary, scanned, or without text. ``str()`` says why."""


@dataclass
class ParsedDocument:
    """What a parser found: the title (metadata or first heading), the document's own metadata, its blocks."""

    title: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence a parser's warnings (recoverable damage, discarded boilerplate): what matters reaches the report."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def clean_text(text: str) -> str:
    """``text`` without control characters, runs of spaces as one, lines stripped.

    Example:
        >>> clean_text("a\\x00b  c \\n d")
        'ab c\\nd'
    """
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")).strip()


def plain_metadata(values: dict[str, Any]) -> dict[str, Any]:
    """The non-empty values as JSON: dates as ISO 8601, lists of strings kept, anything else as a string.

    Example:
        >>> plain_metadata({"author": " Ana ", "created": dt.date(2024, 5, 1), "pages": 3, "none": None})
        {'author': 'Ana', 'created': '2024-05-01', 'pages': 3}
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (dt.datetime, dt.date)):
            value = value.isoformat()
        elif isinstance(value, (list, tuple)):
            value = [clean_text(str(item)) for item in value if str(item).strip()]
        elif isinstance(value, bool) or isinstance(value, int):
            pass
        elif value is not None:
            value = clean_text(str(value))
        if value not in (None, "", []):
            out[key] = value
    return out


def chunk_title(title: str, sections: tuple[str, ...]) -> str:
    """The DPR title of a chunk: the document's title and the heading it sits under.

    Example:
        >>> chunk_title("Guía de Sevilla", ("Guía de Sevilla", "Monumentos"))
        'Guía de Sevilla — Monumentos'
    """
    heading = sections[-1] if sections else ""
    if not heading or heading == title:
        return title
    return f"{title}{TITLE_SEPARATOR}{heading}" if title else heading


def chunking_key(words: int, overlap: int) -> str:
    """What the chunks of a file depend on besides its bytes and the encoder (stored as ``chunking``)."""
    return f"structure/v{PARSER_VERSION}/words={words}/overlap={overlap}"


def document_records(parsed: ParsedDocument, *, source: str, fmt: str, sha256: str, fallback_title: str,
                     words: int, overlap: int) -> list[dict[str, Any]]:
    """The chunk records of one parsed file (fields as :class:`dpr_pg.ingest.mapping.FieldMapping` reads them)."""
    title = clean_text(parsed.title or "") or fallback_title
    own = plain_metadata(parsed.metadata)
    chunks = chunk_blocks(parsed.blocks, words=words, overlap=overlap)
    records = []
    for k, chunk in enumerate(chunks):
        fields: dict[str, Any] = {"id": f"{source}#{k}", "title": chunk_title(title, chunk.sections),
                                  "text": chunk.text, "source": source, "format": fmt}
        if chunk.sections:
            fields["section"] = chunk.sections[-1]
            fields["sections"] = list(chunk.sections)
        if chunk.page is not None:
            fields["page"] = chunk.page
        if chunk.page_end is not None:
            fields["page_end"] = chunk.page_end
        fields.update({"chunk": k, "chunks": len(chunks), "sha256": sha256, "chunking": chunking_key(words, overlap),
                       "document": {**own, "title": title}})
        records.append(fields)
    return records
