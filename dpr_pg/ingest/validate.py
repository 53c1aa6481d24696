"""Checks at the boundary: text, metadata and vectors are refused before anything is written.

Each check returns a reason (a string that says what was expected and what came) or None. Nothing
is ever repaired: a record with a NUL byte, a lone surrogate or a NaN is rejected, not altered.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from dpr_pg.validation import HALF_MAX

# Surrogates only exist in a str that came from "\udXXX" escapes in JSON, or from invalid UTF-8
# decoded with errors="surrogateescape" (U+DC80..U+DCFF): PostgreSQL can store neither.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
MAX_METADATA_DEPTH = 64


def text_problem(value: str, field: str) -> str | None:
    """Why ``value`` cannot be stored as ``field`` (NUL, lone surrogate, invalid UTF-8), or None.

    Example:
        >>> text_problem("a\\x00b", "text")
        'text contains a NUL byte (0x00) at character 1; PostgreSQL text cannot store it: remove it from the source'
    """
    nul = value.find("\x00")
    if nul >= 0:
        return (f"{field} contains a NUL byte (0x00) at character {nul}; PostgreSQL text cannot store it: "
                "remove it from the source")
    match = _SURROGATE.search(value)
    if match is None:
        return None
    char = match.group()
    if _ESCAPED_BYTE.fullmatch(char):
        return (f"{field} is not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at character {match.start()}); "
                "re-encode the file as UTF-8")
    return (f"{field} contains a lone surrogate U+{ord(char):04X} at character {match.start()}; "
            "expected valid Unicode: fix the escape in the source")


def passage_text_problem(value: Any, field: str) -> str | None:
    """``text_problem`` plus: must be a str with something besides whitespace.

    Example:
        >>> passage_text_problem("   ", "text")
        "text is empty or whitespace only; expected the passage's text"
    """
    if not isinstance(value, str):
        return f"{field} must be a string, not {type(value).__name__} ({_preview(value)})"
    if not value.strip():
        return f"{field} is empty or whitespace only; expected the passage's text"
    return text_problem(value, field)


def metadata_problem(value: Any, path: str = "metadata", depth: int = 0) -> str | None:
    """Why ``value`` cannot be stored in a jsonb column (NUL, surrogates, NaN, non-JSON types), or None.

    Example:
        >>> metadata_problem({"score": float("nan")})
        'metadata.score is NaN; JSON (and jsonb) has no NaN or Infinity: use null or a string'
    """
    if depth > MAX_METADATA_DEPTH:
        return f"{path} is nested deeper than {MAX_METADATA_DEPTH} levels"
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        shown = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return f"{path} is {shown}; JSON (and jsonb) has no NaN or Infinity: use null or a string"
    if isinstance(value, str):
        return text_problem(value, path)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a key {key!r} that is not a string"
            problem = text_problem(key, f"key {key!r} of {path}") or metadata_problem(item, f"{path}.{key}", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = metadata_problem(item, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__name__} ({_preview(value)}); expected a JSON value"


def vector_problems(vectors: np.ndarray, dim: int, *, half: bool = False) -> list[str | None]:
    """Per row of ``vectors`` (n, d): why it cannot be stored, or None. ``half``: the column stores
    halfvec, which holds at most ±65,504 (and a row that rounds to all zeros is refused too).

    Example:
        >>> vector_problems(np.array([[1.0, 0.0], [0.0, 0.0], [np.nan, 1.0]]), 2)
        [None, 'embedding is all zeros; it would score 0 against every question: check the encoder output', 'embedding has NaN or Infinity at dimension 0; expected finite floats']
        >>> vector_problems(np.array([[1.0, 70000.0]]), 2, half=True)
        ["embedding value 70000.0 at dimension 1 is beyond halfvec's range (±65504), the type the database stores; check the encoder output, or keep a vector column"]
    """
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        shape = "x".join(map(str, vectors.shape))
        return [f"expected {dim} dimensions, not {vectors.shape[-1] if vectors.ndim else 0} (shape {shape})"] * (
            len(vectors) if vectors.ndim else 1)
    with np.errstate(over="ignore", invalid="ignore"):
        as_float4 = vectors.astype(np.float32, copy=False)
    finite = np.isfinite(as_float4)
    zero = ~np.any(as_float4 != 0, axis=1)
    problems: list[str | None] = [None] * len(vectors)
    for row in np.flatnonzero(~finite.all(axis=1) | zero):
        if not finite[row].all():
            column = int(np.flatnonzero(~finite[row])[0])
            overflow = vectors.dtype != np.float32 and np.isfinite(vectors[row, column])
            problems[row] = (f"embedding value {float(vectors[row, column])!r} at dimension {column} overflows float4"
                             if overflow else
                             f"embedding has NaN or Infinity at dimension {column}; expected finite floats")
        else:
            problems[row] = "embedding is all zeros; it would score 0 against every question: check the encoder output"
    if half:
        _half_problems(as_float4, problems)
    return problems


def _half_problems(vectors: np.ndarray, problems: list[str | None]) -> None:
    """Fill in the rows that a halfvec column cannot hold: a value beyond ±65,504, or all zeros once rounded."""
    with np.errstate(over="ignore"):
        beyond = np.abs(vectors) > HALF_MAX
        zero = ~np.any(vectors.astype(np.float16) != 0, axis=1)
    for row in np.flatnonzero(beyond.any(axis=1) | zero):
        if problems[row] is not None:
            continue
        if beyond[row].any():
            column = int(np.flatnonzero(beyond[row])[0])
            problems[row] = (f"embedding value {float(vectors[row, column])!r} at dimension {column} is beyond "
                             f"halfvec's range (±{HALF_MAX:g}), the type the database stores; check the encoder "
                             "output, or keep a vector column")
        else:
            problems[row] = ("embedding rounds to all zeros in half precision, the type the database stores; "
                             "it would score 0 against every question: check the encoder output")


def _preview(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
