"""PDF with pypdf: text per page, sections from the outline (bookmarks), title from the metadata.

* Encrypted files are opened with the empty password (many PDFs are encrypted only against
  editing); one that needs a real password is reported.
* A page's lines are joined into paragraphs: a line that ends a sentence and is clearly shorter
  than the page's longest line ends its paragraph; a word hyphenated at a line end is joined.
* A file with pages but no text layer (a scan) is reported: run OCR first (e.g. ocrmypdf).
"""

from __future__ import annotations

import io
import re
from typing import Any

from dpr_pg.ingest.chunking import Block
from dpr_pg.ingest.documents.extra import require
from dpr_pg.ingest.documents.structure import ParsedDocument, UnreadableDocument, clean_text, quiet_logger

_HYPHENATED = re.compile(r"(\w)-\n(?=[a-záéíóúüñ])")
_SENTENCE_END = (".", "!", "?", ":", "…", "»", "\"", "”", ")")
_SHORT_LINE = 0.8  # of the page's longest line
_METADATA = {"/Author": "author", "/Subject": "subject", "/Keywords": "keywords", "/Creator": "creator",
             "/Producer": "producer"}


def parse(data: bytes, name: str) -> ParsedDocument:
    """The pages of a PDF as blocks, with outline sections and metadata; :class:`UnreadableDocument` if none.

    Example:
        >>> parse(open("guia.pdf", "rb").read(), "guia.pdf").title  # doctest: +SKIP
        'Guía de Sevilla'
    """
    pypdf = require("pypdf")
    with quiet_logger("pypdf"):
        try:
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise UnreadableDocument("the PDF is encrypted and needs a password; decrypt it first "
                                         "(e.g. qpdf --decrypt --password=... in.pdf out.pdf)")
            pages = [page.extract_text() or "" for page in reader.pages]
            images = sum(_image_count(page) for page in reader.pages) if not any(p.strip() for p in pages) else 0
            outline = _outline(reader)
            info = _metadata(reader)
        except UnreadableDocument:
            raise
        except pypdf.errors.FileNotDecryptedError as e:
            raise UnreadableDocument(f"the PDF is encrypted and could not be decrypted ({e})") from e
        except pypdf.errors.DependencyError as e:
            raise UnreadableDocument(f"the PDF is encrypted with a cipher that needs the 'cryptography' package: "
                                     f"{e}") from e
        except Exception as e:  # pypdf raises many types on damaged files (PdfReadError, ValueError, KeyError...)
            raise UnreadableDocument(f"not a readable PDF (corrupt or truncated): {_reason(e)}") from e
    if not pages:
        raise UnreadableDocument("the PDF has no pages")
    if not any(page.strip() for page in pages):
        if images:
            raise UnreadableDocument(f"the PDF has no text layer ({len(pages)} page(s) of images: a scan?); "
                                     "run OCR first, e.g. ocrmypdf in.pdf out.pdf")
        raise UnreadableDocument(f"the PDF's {len(pages)} page(s) hold no text")
    title = info.pop("title", None) or (outline[0][2] if outline else None)
    return ParsedDocument(title, info, _blocks(pages, outline))


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _image_count(page: Any) -> int:
    try:
        return len(page.images)
    except Exception:  # an unreadable image is still not text
        return 1


def _metadata(reader: Any) -> dict[str, Any]:
    info = reader.metadata
    if not info:
        return {}
    found: dict[str, Any] = {"title": info.title} if info.title else {}
    for key, name in _METADATA.items():
        if info.get(key):
            found[name] = str(info.get(key))
    for attribute, name in (("creation_date", "created"), ("modification_date", "modified")):
        try:
            value = getattr(info, attribute)
        except Exception:  # a malformed date string is not worth losing the document
            value = None
        if value is not None:
            found[name] = value
    return found


def _outline(reader: Any) -> list[tuple[int, int, str]]:
    """Outline entries as (0-based page, depth, title), in document order."""
    entries: list[tuple[int, int, str]] = []

    def visit(items: list[Any], depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                visit(item, depth + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:
                continue
            title = clean_text(str(getattr(item, "title", "") or ""))
            if title and page is not None and page >= 0:
                entries.append((page, depth, title))

    try:
        visit(reader.outline, 0)
    except Exception:  # a broken outline leaves the text without sections
        return []
    return sorted(entries, key=lambda entry: entry[0])


def _blocks(pages: list[str], outline: list[tuple[int, int, str]]) -> list[Block]:
    """Paragraph blocks per page, each under the outline sections that started before it."""
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []  # (depth, title) of the open sections
    for number, raw in enumerate(pages):
        text = _HYPHENATED.sub(r"\1", clean_text(raw))
        starts = [(depth, title) for page, depth, title in outline if page == number]
        # A section that starts on this page starts where its heading is printed, if it is; else at the page top.
        cuts = []
        position = 0
        for depth, title in starts:
            found = _find_heading(text, title, position)
            cuts.append((found if found is not None else position, depth, title))
            position = found if found is not None else position
        cuts.sort(key=lambda cut: cut[0])
        edges = [0] + [cut[0] for cut in cuts] + [len(text)]
        for index, (start, end) in enumerate(zip(edges, edges[1:])):
            if index > 0:
                _, depth, title = cuts[index - 1]
                path = [entry for entry in path if entry[0] < depth] + [(depth, title)]
                start = _after_heading(text, start, title)
            sections = tuple(title for _, title in path)
            for paragraph in _paragraphs(text[start:end]):
                blocks.append(Block(paragraph, sections, number + 1))
    return blocks


def _find_heading(text: str, title: str, start: int) -> int | None:
    """Where ``title`` is printed at the start of a line, at or after ``start``."""
    match = re.compile(r"(?m)^" + r"\s+".join(map(re.escape, title.split()))).search(text, start)
    return match.start() if match else None


def _after_heading(text: str, start: int, title: str) -> int:
    """Skip the printed heading itself: it is the section's name, kept in the chunk titles."""
    match = re.compile(r"\s+".join(map(re.escape, title.split())) + r"[ \t]*\n?").match(text, start)
    return match.end() if match else start


def _paragraphs(text: str) -> list[str]:
    """A page's lines joined into paragraphs (see the module docstring); each paragraph on one line."""
    lines = [line.strip() for line in text.split("\n")]
    longest = max((len(line) for line in lines), default=0)
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        if not line:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line)
        if line.endswith(_SENTENCE_END) and len(line) < _SHORT_LINE * longest:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs
