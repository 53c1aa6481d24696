"""DOCX with python-docx: paragraphs and tables in document order; Heading and Title styles open sections.

The title is the core properties' title, else the first Title- or Heading-styled paragraph. The
core properties (author, subject, keywords, created, modified...) are the document's metadata.
A table is one block, a row per line, cells separated by `` | ``.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

from dpr_pg.ingest.chunking import Block
from dpr_pg.ingest.documents.extra import require
from dpr_pg.ingest.documents.structure import ParsedDocument, UnreadableDocument, clean_text

_HEADING = re.compile(r"(?i)^heading (\d)$")
_PROPERTIES = ("author", "subject", "keywords", "category", "comments", "language", "created", "modified",
               "last_modified_by")


def parse(data: bytes, name: str) -> ParsedDocument:
    """The blocks, title and core properties of a DOCX file; :class:`UnreadableDocument` when it holds no text.

    Example:
        >>> parse(open("informe.docx", "rb").read(), "informe.docx").title  # doctest: +SKIP
        'Informe anual'
    """
    docx = require("docx")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise UnreadableDocument("not a DOCX file (a DOCX is a ZIP package; this is not one): check the file's "
                                 "real type, or save it again as .docx")
    try:
        document = docx.Document(io.BytesIO(data))
        items = list(document.iter_inner_content())
        properties = document.core_properties
        metadata = {key: getattr(properties, key, None) for key in _PROPERTIES}
        title = properties.title
    except Exception as e:  # python-docx raises KeyError, ValueError, lxml errors... on damaged packages
        raise UnreadableDocument(f"not a readable DOCX file: {type(e).__name__}: {e}") from e
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    first_heading: str | None = None
    for item in items:
        if hasattr(item, "rows"):
            text = _table_text(item)
            if text:
                blocks.append(Block(text, tuple(h for _, h in path)))
            continue
        text = clean_text(item.text)
        if not text:
            continue
        level = _heading_level(item)
        if level is None:
            blocks.append(Block(text, tuple(h for _, h in path)))
            continue
        path = [entry for entry in path if entry[0] < level] + [(level, text)]
        first_heading = first_heading or text
    if not blocks:
        raise UnreadableDocument("the DOCX file holds no text" + (" besides headings" if first_heading else ""))
    return ParsedDocument(title or first_heading, metadata, blocks)


def _heading_level(paragraph: Any) -> int | None:
    """0 for the Title style, n for Heading n, None for body text."""
    try:
        style = paragraph.style.name if paragraph.style is not None else ""
    except Exception:  # a style the package does not define reads as body text
        return None
    if style.lower() == "title":
        return 0
    match = _HEADING.match(style or "")
    return int(match.group(1)) if match else None


def _table_text(table: Any) -> str:
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) not in seen:  # a merged cell comes once per grid column it spans: keep one
                seen.add(id(cell._tc))
                cells.append(clean_text(cell.text))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)
