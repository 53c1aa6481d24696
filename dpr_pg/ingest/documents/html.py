"""HTML with trafilatura: the main text without menus, footers and other boilerplate, headings kept.

trafilatura writes the main text as Markdown (headings as ``#``), which :mod:`.markdown` cuts into
sections. HTML5's boilerplate elements (``nav``, ``aside``, ``menu``, ``noscript``, a page-level
``header`` or ``footer``, ARIA navigation/banner/contentinfo roles) are pruned before extraction:
trafilatura drops them from the main text, but on a page with nothing else its fallback extractors
would return them. A page with no main text left is reported. The title and the page's own
metadata (author, date, description, site name...) come from trafilatura's metadata extraction.
"""

from __future__ import annotations

from typing import Any

from dpr_pg.ingest.documents.extra import require
from dpr_pg.ingest.documents.markdown import markdown_blocks
from dpr_pg.ingest.documents.structure import ParsedDocument, UnreadableDocument, quiet_logger
from dpr_pg.ingest.documents.text import decode_text, looks_binary

# Page-level boilerplate; an article's own header (its title) and footer stay.
PRUNE = ("//nav", "//aside", "//menu", "//noscript", "//header[not(ancestor::article)]",
         "//footer[not(ancestor::article)]", "//*[@role='navigation' or @role='banner' or @role='contentinfo']")
_METADATA = ("author", "date", "description", "sitename", "hostname", "url", "language", "categories", "tags")


def parse(data: bytes, name: str) -> ParsedDocument:
    """The main text of an HTML page as blocks, with its title and metadata.

    Example:
        >>> parse(b"<html><body><article><h1>Sevilla</h1><p>Est\\xc3\\xa1 en Andaluc\\xc3\\xada.</p></article></body></html>",
        ...       "s.html").title  # doctest: +SKIP
        'Sevilla'
    """
    trafilatura = require("trafilatura")
    if looks_binary(data):
        decode_text(data, "HTML")  # raises with the reason
    options: dict[str, Any] = {"output_format": "markdown", "include_formatting": True, "include_tables": True,
                               "include_comments": False, "prune_xpath": list(PRUNE)}
    try:
        with quiet_logger("trafilatura"):
            main = trafilatura.extract(data, **options)
            found = trafilatura.bare_extraction(data, with_metadata=True) if main else None
    except Exception as e:  # lxml and trafilatura raise various types on markup they cannot parse
        raise UnreadableDocument(f"not readable HTML: {type(e).__name__}: {e}") from e
    if not main or not main.strip():
        raise UnreadableDocument("no main text found (the page holds only menus, footers or other boilerplate, "
                                 "or nothing at all)")
    _, blocks, first_heading = markdown_blocks(main)
    if not blocks:
        raise UnreadableDocument("no main text found (only headings)")
    metadata = {key: getattr(found, key, None) for key in _METADATA} if found is not None else {}
    title = getattr(found, "title", None) if found is not None else None
    return ParsedDocument(title or first_heading, metadata, blocks)
