"""Per-record size limits: one huge record is rejected with its line and the limit, never fatal.

* ``max_record_bytes`` bounds what is read into memory for one record: a JSONL line, a CSV
  record (its lines, in characters), a Parquet row. A longer one is skipped unread and rejected.
* ``max_document_bytes`` bounds a document file (PDF, HTML, Markdown, DOCX), which is read whole to be
  parsed: a larger one is reported by path and not read.
* ``max_text_bytes`` and ``max_title_bytes`` bound a document's text and title (UTF-8 bytes,
  before chunking): the encoder reads 512 tokens of a passage, and a title is repeated in every chunk.
* The Spanish tsvector that PostgreSQL computes for title + text has a hard limit of 1 MB; a
  passage whose tsvector would exceed it is rejected (see :data:`TSVECTOR_SAFE_BYTES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dpr_pg.errors import ConfigError

DEFAULT_MAX_TEXT_BYTES = 2**20
DEFAULT_MAX_TITLE_BYTES = 64 * 2**10
DEFAULT_MAX_RECORD_BYTES = 8 * 2**20
DEFAULT_MAX_DOCUMENT_BYTES = 64 * 2**20
# PostgreSQL's tsvector holds at most 1 MB. Each distinct lexeme costs ~8 bytes (entry, position count,
# one position) besides its characters, and a hyphenated word gives the compound and each part: the
# worst inputs measured (distinct "x1-y1-z1" words) take 3.8 bytes of tsvector per byte of text, and
# no input can take 16. So a passage whose title + text are smaller than this is never sent to be checked.
TSVECTOR_SAFE_BYTES = 64 * 2**10
_SIZE = re.compile(r"\s*(\d+)\s*(?:([kKmMgG])(?:i?B)?|B)?\s*")
_UNITS = {None: 1, "k": 2**10, "m": 2**20, "g": 2**30}


@dataclass(frozen=True)
class RecordLimits:
    """Size limits of one input record, in bytes; a record over one is rejected, and the run goes on.

    Example:
        >>> RecordLimits(max_text_bytes=4 * 2**20).max_title_bytes
        65536
    """

    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_title_bytes: int = DEFAULT_MAX_TITLE_BYTES
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES

    def __post_init__(self) -> None:
        for name in ("max_text_bytes", "max_title_bytes", "max_record_bytes", "max_document_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"expected {name} to be a positive number of bytes, not {value!r}")


def parse_size(text: str) -> int:
    """Bytes in ``"1048576"``, ``"64kB"``, ``"8MB"`` or ``"1GiB"`` (k, M, G are powers of 1024, as in PostgreSQL).

    Example:
        >>> parse_size("64kB"), parse_size("8MB"), parse_size("100")
        (65536, 8388608, 100)
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a size such as 1048576, 64kB or 8MB, not {text!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _UNITS[unit]


def utf8_size(text: str) -> int:
    """The length of ``text`` in UTF-8 bytes (lone surrogates count as 3, as PostgreSQL would refuse them anyway)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def size_problem(text: str, field: str, limit: int, option: str) -> str | None:
    """Why ``text`` is too large for ``field``, or None.

    Example:
        >>> size_problem("x" * 10, "title", 8, "--max-title-bytes")
        'title is 10 bytes, over the limit of 8 bytes (--max-title-bytes); shorten it, or raise the limit'
    """
    if len(text) <= limit // 4:  # 4 bytes per character at most: no need to count
        return None
    size = utf8_size(text)
    if size <= limit:
        return None
    return f"{field} is {size} bytes, over the limit of {limit} bytes ({option}); shorten it, or raise the limit"
