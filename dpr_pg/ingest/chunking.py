"""DPR-style passages: a long document is cut into windows of ``words`` words, the title kept.

Windows start every ``words - overlap`` words; the last one ends at the document's end. A
document that fits in one window keeps its id; a longer one gives ``<id>#<k>`` (k from 0). Each
chunk is an exact slice of the original text (its inner whitespace kept), never rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import accumulate

from dpr_pg.errors import IngestError
from dpr_pg.ingest.records import Document

DEFAULT_CHUNK_WORDS = 100
_SPACE = re.compile(r"(\s+)")


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
    if words == 0 or len(text.split()) <= words:  # str.split() and \S+ / \s+ agree on what whitespace is
        return [text]
    # [word, space, word, …] (a leading/trailing '' when the text starts/ends with space) and each
    # part's offset: lengths summed in C, no Python work per word.
    parts = _SPACE.split(text)
    offsets = list(accumulate(map(len, parts), initial=0))
    first = 2 if parts[0] == "" else 0
    count = (len(parts) - first + 1) // 2 - (parts[-1] == "")
    step = words - overlap
    chunks = []
    for start in range(0, count, step):
        end = min(start + words, count)
        chunks.append(text[offsets[first + 2 * start]:offsets[first + 2 * (end - 1) + 1]])
        if end == count:
            break
    return chunks


def chunk_count(text: str, *, words: int = DEFAULT_CHUNK_WORDS, overlap: int = 0) -> int:
    """How many chunks :func:`chunk_text` makes, without making them.

    Example:
        >>> chunk_count("a b c d e", words=2, overlap=1)
        4
    """
    if words == 0:
        return 1
    count = len(text.split())
    return 1 if count <= words else 1 + -(-(count - words) // (words - overlap))


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


@dataclass(frozen=True)
class Block:
    """A paragraph-like piece of a structured document: its text, the headings above it, its page.

    ``sections`` is the heading path, outermost first (empty before the first heading);
    ``page`` is 1-based, for formats that have pages.
    """

    text: str
    sections: tuple[str, ...] = ()
    page: int | None = None


@dataclass(frozen=True)
class SectionChunk:
    """A passage cut from the blocks of one section: its text, the section's heading path, its pages."""

    text: str
    sections: tuple[str, ...]
    page: int | None = None
    page_end: int | None = None


# A sentence ends at . ! ? … (and a closing quote or bracket) before a space and a capital,
# digit, opening question/exclamation mark, quote or bracket. Abbreviations ("Sr. García") still
# split, which costs a slightly shorter chunk, never a word.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][»”\")\]]))\s+(?=[¿¡«“\"(\[0-9A-ZÁÉÍÓÚÜÑ])")


def sentences(text: str) -> list[str]:
    """``text`` cut after each sentence end; the pieces joined by single spaces give the text back, whitespace aside.

    Example:
        >>> sentences("Hola. ¿Qué tal? Bien, gracias.")
        ['Hola.', '¿Qué tal?', 'Bien, gracias.']
    """
    return [piece for piece in _SENTENCE_END.split(text.strip()) if piece]


def chunk_blocks(blocks: list[Block], *, words: int = DEFAULT_CHUNK_WORDS, overlap: int = 0) -> list[SectionChunk]:
    """Passages that follow the document's structure, none longer than ``words`` words.

    A chunk never spans two sections. Whole paragraphs are packed while they fit; a paragraph
    longer than ``words`` is packed sentence by sentence; a sentence longer than that is cut
    into windows by :func:`chunk_text` (consecutive windows sharing ``overlap`` words). Cuts fall
    between words, never inside one. ``words=0`` makes one passage per section.

    Example:
        >>> chunks = chunk_blocks([Block("Uno dos.", ("A",)), Block("Tres cuatro.", ("A",)), Block("Cinco.", ("B",))],
        ...                       words=3)
        >>> [(c.text, c.sections) for c in chunks]
        [('Uno dos.', ('A',)), ('Tres cuatro.', ('A',)), ('Cinco.', ('B',))]
    """
    check_chunking(words, overlap)
    chunks: list[SectionChunk] = []
    parts: list[tuple[str, str, int | None]] = []  # (joiner before it, text, page) of the chunk being filled
    size = 0
    current: tuple[str, ...] | None = None

    def flush() -> None:
        nonlocal parts, size
        if parts:
            text = "".join(joiner + piece for joiner, piece, _ in parts).strip()
            pages = [page for _, _, page in parts if page is not None]
            first, last = (min(pages), max(pages)) if pages else (None, None)
            chunks.append(SectionChunk(text, current or (), first, last if last != first else None))
        parts, size = [], 0

    def add(piece: str, joiner: str, page: int | None) -> None:
        nonlocal size
        parts.append((joiner if parts else "", piece, page))
        size += len(piece.split())

    for block in blocks:
        text = block.text.strip()
        if not text:
            continue
        if block.sections != current:
            flush()
            current = block.sections
        count = len(text.split())
        if not words or size + count <= words:
            add(text, "\n\n", block.page)
            continue
        if count <= words:
            flush()
            add(text, "\n\n", block.page)
            continue
        joiner = "\n\n"  # a long paragraph: sentence by sentence, continuing the chunk being filled
        for sentence in sentences(text):
            length = len(sentence.split())
            if size + length > words:
                flush()
            if length <= words:
                add(sentence, joiner, block.page)
            else:
                for window in chunk_text(sentence, words=words, overlap=overlap):
                    add(window, joiner, block.page)
                    flush()
            joiner = " "
    flush()
    return chunks
