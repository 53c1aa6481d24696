"""Text files (Markdown, HTML): refuse binary content and invalid UTF-8 instead of ingesting noise."""

from __future__ import annotations

import codecs

from dpr_pg.ingest.documents.structure import UnreadableDocument

_SNIFF = 8192


def looks_binary(data: bytes) -> bool:
    """A NUL byte near the start: no text format (UTF-8, Latin-1, HTML) has one.

    Example:
        >>> looks_binary(b"%PDF\\x00\\x01"), looks_binary("¿Qué?".encode())
        (True, False)
    """
    return b"\x00" in data[:_SNIFF]


def decode_text(data: bytes, kind: str) -> str:
    """``data`` as UTF-8 text (a byte order mark skipped), or :class:`UnreadableDocument` saying why not."""
    if looks_binary(data):
        raise UnreadableDocument(f"binary content (a NUL byte in the first {_SNIFF} bytes), not a {kind} text file; "
                                 "check the file's real type")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableDocument(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                                 f"re-encode the {kind} file as UTF-8") from e
