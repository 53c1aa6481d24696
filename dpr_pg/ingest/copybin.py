"""PostgreSQL binary COPY payloads for whole batches, built with numpy instead of per-row ``write_row``.

The format (PostgreSQL docs, "COPY … Binary Format"): an 11-byte signature, two int32 zeros
(flags, header extension), then per row an int16 field count and per field an int32 length and
the value's binary ``send`` form, and an int16 -1 trailer. text is its UTF-8 bytes, jsonb is a
version byte 1 and the JSON text, int4 is big-endian, and pgvector's ``vector`` is int16 dim,
int16 unused (0) and dim big-endian float4 (as pgvector-python's ``Vector.to_binary``); ``halfvec``
is the same with big-endian float2 (``HalfVector.to_binary``).

The embedding is the last column, so each row is a short byte string for the text fields followed
by one fixed-size block: all the blocks of a batch are converted to big-endian in one numpy call.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
_INT32 = struct.Struct(">i").pack


def vector_blocks(vectors: np.ndarray, *, half: bool = False) -> np.ndarray:
    """(n, 8 + 4·dim) bytes: each row is a ready COPY field (length, dim, 0, big-endian float4);
    with ``half``, (n, 8 + 2·dim) bytes of a halfvec field (big-endian float2, rounded to nearest).

    Example:
        >>> vector_blocks(np.array([[1.0, 2.0]], dtype=np.float32)).tobytes().hex()
        '0000000c000200003f80000040000000'
        >>> vector_blocks(np.array([[1.0, 2.0]], dtype=np.float32), half=True).tobytes().hex()
        '00000008000200003c004000'
    """
    count, dim = vectors.shape
    width = 2 if half else 4
    blocks = np.empty((count, 8 + width * dim), dtype=np.uint8)
    blocks[:, :8] = np.frombuffer(struct.pack(">ihh", 4 + width * dim, dim, 0), dtype=np.uint8)
    blocks[:, 8:].view(">f2" if half else ">f4")[:] = vectors
    return blocks


def copy_payload(rows: Sequence[Sequence[str]], vectors: np.ndarray, *, jsonb: int = -1, suffix: bytes = b"",
                 suffix_fields: int = 0, half: bool = False) -> bytes:
    """One binary COPY stream: per row its text values (the one at index ``jsonb`` as jsonb), then
    ``suffix`` (``suffix_fields`` constant fields, already encoded), then its row of ``vectors``
    (as halfvec with ``half``: the callers check the values fit, see :func:`dpr_pg.ingest.validate.vector_problems`).

    Example:
        >>> data = copy_payload([("id1", "{}")], np.ones((1, 2), dtype=np.float32), jsonb=1)
        >>> data[:11], len(data)
        (b'PGCOPY\\n\\xff\\r\\n\\x00', 53)
    """
    blocks = vector_blocks(vectors, half=half)
    count = struct.pack(">h", (len(rows[0]) if rows else 0) + suffix_fields + 1)
    parts: list[bytes | np.ndarray] = [SIGNATURE]
    append = parts.append
    for row, values in enumerate(rows):
        append(count)
        for column, value in enumerate(values):
            data = value.encode("utf-8")
            if column == jsonb:
                append(_INT32(len(data) + 1))
                append(b"\x01")  # jsonb's binary format version
            else:
                append(_INT32(len(data)))
            append(data)
        append(suffix)
        append(blocks[row])
    append(TRAILER)
    return b"".join(parts)


def int4_field(value: int) -> bytes:
    """A binary COPY int4 field (length and value).

    Example:
        >>> int4_field(7).hex()
        '0000000400000007'
    """
    return _INT32(4) + _INT32(value)


def text_field(value: str) -> bytes:
    """A binary COPY text field (length and UTF-8 bytes).

    Example:
        >>> text_field("ab").hex()
        '000000026162'
    """
    data = value.encode("utf-8")
    return _INT32(len(data)) + data
