"""Streaming readers for JSONL, CSV and Parquet: one :class:`SourceRecord` at a time, never the whole file.

Policies (documented in docs/ingest.md):

* JSONL: one JSON object per line; blank lines are skipped and are not records. A line that is
  not valid UTF-8, not valid JSON (``NaN``/``Infinity`` included) or not an object is a rejected
  record. A last line cut short (no closing newline, invalid JSON) is rejected as "truncated".
  A UTF-8 byte order mark at the start of the file is skipped.
* CSV: a header row names the fields; UTF-8 (a BOM is allowed); fields of any length up to the
  record limit (Python's 131072-character default is lifted while reading). ``.tsv`` files are
  tab-separated.
* Parquet: read in row batches of at most ~64 MB; timestamps and dates become ISO 8601 strings in
  metadata.
* A record longer than ``max_record_bytes`` (a JSONL line, a CSV record, a Parquet row) is
  skipped without being held in memory and rejected with its size (see :mod:`dpr_pg.ingest.limits`).
* The input must be a regular file: a device, a FIFO or a folder is refused before it is read.
* An input without any record is a fatal error (nothing to ingest, and ``--prune`` would
  otherwise empty the collection).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import decimal
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from dpr_pg.errors import IngestError
from dpr_pg.ingest.limits import DEFAULT_MAX_RECORD_BYTES, RecordLimits
from dpr_pg.ingest.records import SourceRecord

FORMATS = ("jsonl", "csv", "parquet", "squad")
_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet", ".pq": "parquet", ".json": "squad",
}
PARQUET_BATCH_ROWS = 4096
PARQUET_BATCH_BYTES = 64 * 2**20  # fewer rows per batch when the rows are large
_SKIP_CHUNK = 2**16
_OVER_LIMIT = "(--max-record-bytes); split the record, or raise the limit"


def require_file(path: str | Path, what: str = "input file", hint: str = "check the path") -> Path:
    """``path`` as a Path, if it is a regular file (or a link to one); else :class:`IngestError`.

    A device (``/dev/zero``), a FIFO or a folder would be read forever, block, or fail obscurely.

    Example:
        >>> require_file("/dev/zero")
        Traceback (most recent call last):
        ...
        dpr_pg.errors.IngestError: input file '/dev/zero' is not a regular file; check the path
    """
    path = Path(path)
    if path.is_file():
        return path
    problem = "is not a regular file" if path.exists() else "does not exist (or is not a regular file)"
    raise IngestError(f"{what} {str(path)!r} {problem}; {hint}")


@dataclass(frozen=True)
class InputWatch:
    """What the input files were (device, inode, size, mtime) when first read, to notice a change under the ingest.

    The input is read twice (see :mod:`dpr_pg.ingest.pipeline`): lines appended, removed or
    rewritten in between would no longer match what the first pass found.

    Example:
        >>> watch = InputWatch.of("wiki.jsonl")  # doctest: +SKIP
        >>> watch.change() is None               # doctest: +SKIP
        True
    """

    paths: tuple[Path, ...]
    states: tuple[tuple[int, int, int, int] | None, ...]

    @classmethod
    def of(cls, *paths: str | Path) -> InputWatch:
        files = tuple(Path(path) for path in paths)
        return cls(files, tuple(_state(path) for path in files))

    def change(self) -> str | None:
        """How a file changed since :meth:`of`, or None."""
        for path, before in zip(self.paths, self.states, strict=True):
            now = _state(path)
            if now == before:
                continue
            if now is None or before is None:
                how = "it is gone" if now is None else "it appeared"
            elif now[2] != before[2]:
                how = f"its size went from {before[2]} to {now[2]} bytes"
            elif now[:2] != before[:2]:
                how = "it was replaced by another file"
            else:
                how = "it was modified"
            return f"{path.name} changed while it was being ingested ({how})"
        return None


def _state(path: Path) -> tuple[int, int, int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns


def detect_format(path: str | Path, explicit: str | None = None) -> str:
    """The input format: ``explicit``, else from the file extension.

    Example:
        >>> detect_format("wiki.jsonl")
        'jsonl'
    """
    if explicit is not None:
        if explicit not in FORMATS:
            raise IngestError(f"expected --format to be one of {', '.join(FORMATS)}, not {explicit!r}")
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise IngestError(
        f"cannot tell the format of {str(path)!r} from its extension {suffix or '(none)'!r}; expected one of "
        f"{', '.join(sorted(_EXTENSIONS))}, or pass --format {{{','.join(FORMATS)}}}"
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


# What json.loads(line, parse_constant=_reject_constant) builds per call, built once.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def read_jsonl(path: str | Path, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[SourceRecord]:
    """Records of a JSON Lines file, one per non-blank line; a line over ``max_record_bytes`` is rejected unread.

    Example:
        >>> next(read_jsonl("wiki.jsonl")).fields  # doctest: +SKIP
        {'id': '1', 'title': 'Sevilla', 'text': '...'}
    """
    path = require_file(path)
    name = path.name
    number = 0
    with open(path, "rb") as handle:
        line_number = 0
        while raw := handle.readline(max_record_bytes + 1):  # never more than one bounded line in memory
            line_number += 1
            where = f"{name}:{line_number}"
            if len(raw) > max_record_bytes and not raw.endswith(b"\n"):
                size = len(raw) + _skip_line(handle)
                number += 1
                yield SourceRecord(number, where, None, f"line is {size} bytes, over the limit of {max_record_bytes} "
                                                        f"bytes per record {_OVER_LIMIT}")
                continue
            if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            number += 1
            yield _json_record(number, where, raw)


def _skip_line(handle: BinaryIO) -> int:
    """Read past the rest of the current line, a block at a time; returns its length without the newline."""
    skipped = 0
    while chunk := handle.readline(_SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return skipped + len(chunk) - 1
        skipped += len(chunk)
    return skipped


def _json_record(number: int, where: str, raw: bytes) -> SourceRecord:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return SourceRecord(number, where, None,
                            f"line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                            "re-encode the file as UTF-8")
    try:
        value = _DECODER.decode(line)
    except ValueError as e:
        if not raw.endswith(b"\n"):
            problem = f"truncated last line (no closing newline, and not valid JSON: {e}); the file was cut short"
        else:
            problem = f"line is not valid JSON: {e}"
        return SourceRecord(number, where, None, problem)
    if not isinstance(value, dict):
        return SourceRecord(number, where, None, f"expected a JSON object per line, not a {type(value).__name__}")
    return SourceRecord(number, where, value)


class _LargeFields:
    """Raise csv's field size limit to ``limit`` while a CSV is read; restore it after."""

    def __init__(self, limit: int) -> None:
        self.limit = min(limit, sys.maxsize if sys.maxsize < 2**63 else 2**62)

    def __enter__(self) -> None:
        self.previous = csv.field_size_limit()
        csv.field_size_limit(max(self.limit, self.previous))

    def __exit__(self, *exc: object) -> None:
        csv.field_size_limit(self.previous)


class _RecordTooLong(Exception):
    def __init__(self, characters: int) -> None:
        self.characters = characters


class _BoundedRecords:
    """The lines of a CSV file for :func:`csv.reader`, each record (its lines) at most ``limit`` characters.

    A record ends at a line end outside quotes: with csv's default dialect a quote inside a field
    is doubled, so an odd count of quote characters so far means a field is still open. A
    record over the limit is read past a block at a time and raised as :class:`_RecordTooLong`;
    csv.reader starts afresh on the next call.
    """

    def __init__(self, handle: TextIO, limit: int, quote: str = '"') -> None:
        self.handle, self.limit, self.quote = handle, limit, quote
        self.line_number = 0  # physical lines read so far
        self.record_characters = 0
        self.in_quotes = False

    def __iter__(self) -> _BoundedRecords:
        return self

    def __next__(self) -> str:
        if not self.in_quotes:
            self.record_characters = 0
        line = self.handle.readline(self.limit - self.record_characters + 1)
        if not line:
            raise StopIteration
        self._count(line)
        if self.record_characters <= self.limit:
            return line
        ended = line.endswith(("\n", "\r")) and not self.in_quotes
        while not ended and (chunk := self.handle.readline(_SKIP_CHUNK)):
            self._count(chunk)
            ended = chunk.endswith(("\n", "\r")) and not self.in_quotes
        self.in_quotes = False
        raise _RecordTooLong(self.record_characters)

    def _count(self, text: str) -> None:
        self.record_characters += len(text)
        self.in_quotes ^= text.count(self.quote) % 2 == 1
        if text.endswith(("\n", "\r")):
            self.line_number += 1


def read_csv(path: str | Path, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[SourceRecord]:
    """Records of a CSV (or ``.tsv``) file with a header row; a record over ``max_record_bytes`` characters is rejected.

    Invalid UTF-8 is read with ``surrogateescape`` and rejected per record by the text checks.

    Example:
        >>> next(read_csv("wiki.csv")).where  # doctest: +SKIP
        'wiki.csv:2'
    """
    path = require_file(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with (_LargeFields(max_record_bytes),
          open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle):
        lines = _BoundedRecords(handle, max_record_bytes)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise IngestError(f"{path.name}: cannot read the CSV header: {e}") from e
        except _RecordTooLong as e:
            raise IngestError(f"{path.name}: the CSV header is {e.characters} characters, over the limit of "
                              f"{max_record_bytes} per record {_OVER_LIMIT}") from e
        number = 0
        while True:
            start = lines.line_number + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                number += 1
                yield SourceRecord(number, f"{path.name}:{start}", None, f"malformed CSV: {e}")
                continue
            except _RecordTooLong as e:
                number += 1
                yield SourceRecord(number, f"{path.name}:{start}", None,
                                   f"record is {e.characters} characters, over the limit of {max_record_bytes} "
                                   f"per record {_OVER_LIMIT}")
                continue
            if not row:
                continue
            number += 1
            where = f"{path.name}:{start}"
            if len(row) != len(header):
                yield SourceRecord(number, where, None,
                                   f"expected {len(header)} fields as in the header, found {len(row)}")
                continue
            yield SourceRecord(number, where, dict(zip(header, row)))


def _json_friendly(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_friendly(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_friendly(item) for item in value]
    return value


def read_parquet(path: str | Path, *, exclude: Sequence[str] = (),
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[SourceRecord]:
    """Records of a Parquet file, read in row batches; ``exclude`` columns (an embedding column) are not read.

    A row whose values take more than ``max_record_bytes`` is rejected before it becomes Python
    objects. Arrow reads a batch whole, so one value larger than a batch is still held once.

    Example:
        >>> next(read_parquet("wiki.parquet", exclude=["embedding"])).number  # doctest: +SKIP
        1
    """
    import pyarrow as pa  # lazy: ~0.2 s; only Parquet needs it
    import pyarrow.parquet as pq  # lazy: ~0.2 s; only Parquet needs it

    path = require_file(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow.ArrowInvalid and OSError
        raise IngestError(f"{path.name} is not a readable Parquet file: {e}") from e
    columns = [name for name in parquet.schema_arrow.names if name not in set(exclude)]
    number = 0
    for batch in parquet.iter_batches(batch_size=_parquet_batch_rows(parquet), columns=columns):
        sizes = _row_sizes(batch)
        fits = sizes <= max_record_bytes
        rows = iter((batch if fits.all() else batch.filter(pa.array(fits))).to_pylist())
        for size, ok in zip(sizes.tolist(), fits.tolist(), strict=True):
            number += 1
            where = f"{path.name} row {number}"
            if ok:
                yield SourceRecord(number, where, _json_friendly(next(rows)))
            else:
                yield SourceRecord(number, where, None, f"row is {size} bytes, over the limit of {max_record_bytes} "
                                                        f"bytes per record {_OVER_LIMIT}")


def _parquet_batch_rows(parquet: Any) -> int:
    """Rows per batch so that a batch of the file's largest rows (on average per row group) stays near 64 MB."""
    metadata = parquet.metadata
    widest = max((metadata.row_group(i).total_byte_size / max(metadata.row_group(i).num_rows, 1)
                  for i in range(metadata.num_row_groups)), default=0)
    return max(1, min(PARQUET_BATCH_ROWS, int(PARQUET_BATCH_BYTES // max(widest, 1))))


def _row_sizes(batch: Any) -> Any:
    """Bytes per row of a record batch: string and binary lengths, fixed widths, nested values measured alone."""
    import pyarrow as pa  # lazy: ~0.2 s; only Parquet needs it
    import pyarrow.compute as pc  # lazy: ~0.2 s; only Parquet needs it

    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
                or pa.types.is_large_binary(kind):
            sizes += pc.binary_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        elif pa.types.is_nested(kind):
            sizes += np.fromiter((column.slice(i, 1).nbytes for i in range(batch.num_rows)), dtype=np.int64,
                                 count=batch.num_rows)
        else:
            sizes += max(getattr(kind, "bit_width", 64) // 8, 1)
    return sizes


def read_records(path: str | Path, fmt: str, *, exclude: Sequence[str] = (),
                 limits: RecordLimits | None = None) -> Iterator[SourceRecord]:
    """Records of ``path`` in format ``fmt`` (jsonl, csv or parquet; SQuAD has its own reader).

    Example:
        >>> sum(1 for _ in read_records("wiki.csv", "csv"))  # doctest: +SKIP
        1000
    """
    require_file(path)
    bound = (limits or RecordLimits()).max_record_bytes
    if fmt == "jsonl":
        return read_jsonl(path, max_record_bytes=bound)
    if fmt == "csv":
        return read_csv(path, max_record_bytes=bound)
    if fmt == "parquet":
        return read_parquet(path, exclude=exclude, max_record_bytes=bound)
    raise IngestError(f"read_records reads jsonl, csv and parquet, not {fmt!r}")
