"""DPR-style passages: a long document is cut into windows of ``words`` words, the title kept.

Windows start every ``words - overlap`` words; the last one ends at the document's end. A
document that fits in one window keeps its id; a longer one gives ``<id>#<k>`` (k from 0). Each
chunk is an exact slice of the original text (its inner whitespace kept), never rewritten.
"""

from __future__ import annotations

import re
from dataclasses import replace

from dpr_pg.errors import IngestError
from dpr_pg.ingest.records import Document

DEFAULT_CHUNK_WORDS = 100
_WORD = re.compile(r"\S+")


def check_chunking(words: int, overlap: int) -> None:
    """Raise :class:`IngestError` unless 0 <= overlap < words (or words == 0, chunking off)."""
    if words < 0 or overlap < 0:
        raise IngestError(f"expected --chunk-words >= 0 and --chunk-overlap >= 0, not {words} and {overlap}")
    if words and overlap >= words:
        raise IngestError(f"expected --chunk-overlap smaller than --chunk-words ({words}), not {overlap}")


def chunk_text(text: str, *, words: int = DEFAULT_CHUNK_WORDS, overlap: int = 0) -> list[str]:
    """Slices of ``text`` of at most ``words`` words, consecutive ones sharing ``overlap`` words.

    Example:
        >>> chunk_text("a b c d e", words=2, overlap=1)
        ['a b', 'b c', 'c d', 'd e']
    """
    check_chunking(words, overlap)
    if words == 0 or len(text.split()) <= words:  # str.split() and \S+ agree on what whitespace is
        return [text]
    spans = [match.span() for match in _WORD.finditer(text)]
    step = words - overlap
    chunks = []
    for start in range(0, len(spans), step):
        end = min(start + words, len(spans))
        chunks.append(text[spans[start][0]:spans[end - 1][1]])
        if end == len(spans):
            break
    return chunks


def chunk_document(document: Document, *, words: int = DEFAULT_CHUNK_WORDS, overlap: int = 0) -> list[Document]:
    """The document's passages: itself when short, else ``<id>#0``, ``<id>#1``… with the same title.

    Example:
        >>> doc = Document(1, "a.jsonl:1", "d1", "T", "uno dos tres")
        >>> [p.external_id for p in chunk_document(doc, words=2)]
        ['d1#0', 'd1#1']
    """
    pieces = chunk_text(document.text, words=words, overlap=overlap)
    if len(pieces) == 1:
        return [document]
    return [replace(document, external_id=f"{document.external_id}#{k}", text=piece) for k, piece in enumerate(pieces)]
