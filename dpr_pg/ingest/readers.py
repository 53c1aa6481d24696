"""Streaming readers for JSONL, CSV and Parquet: one :class:`SourceRecord` at a time, never the whole file.

Policies (documented in README "Ingest"):

* JSONL: one JSON object per line; blank lines are skipped and are not records. A line that is
  not valid UTF-8, not valid JSON (``NaN``/``Infinity`` included) or not an object is a rejected
  record. A last line cut short (no closing newline, invalid JSON) is rejected as "truncated".
* CSV: a header row names the fields; UTF-8 (a BOM is allowed); fields of any length (Python's
  131072-character default limit is lifted while reading). ``.tsv`` files are tab-separated.
* Parquet: read in row batches; timestamps and dates become ISO 8601 strings in metadata.
* An input without any record is a fatal error (nothing to ingest, and ``--prune`` would
  otherwise empty the collection).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dpr_pg.errors import IngestError
from dpr_pg.ingest.records import SourceRecord

FORMATS = ("jsonl", "csv", "parquet", "squad")
_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet", ".pq": "parquet", ".json": "squad",
}
PARQUET_BATCH_ROWS = 4096


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


def read_jsonl(path: str | Path) -> Iterator[SourceRecord]:
    """Records of a JSON Lines file, one per non-blank line.

    Example:
        >>> next(read_jsonl("wiki.jsonl")).fields  # doctest: +SKIP
        {'id': '1', 'title': 'Sevilla', 'text': '...'}
    """
    name = Path(path).name
    number = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            number += 1
            where = f"{name}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield SourceRecord(number, where, None,
                                   f"line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                                   "re-encode the file as UTF-8")
                continue
            try:
                value = _DECODER.decode(line)
            except ValueError as e:
                if not raw.endswith(b"\n"):
                    problem = f"truncated last line (no closing newline, and not valid JSON: {e}); the file was cut short"
                else:
                    problem = f"line is not valid JSON: {e}"
                yield SourceRecord(number, where, None, problem)
                continue
            if not isinstance(value, dict):
                yield SourceRecord(number, where, None,
                                   f"expected a JSON object per line, not a {type(value).__name__}")
                continue
            yield SourceRecord(number, where, value)


class _LargeFields:
    """Lift csv's field size limit while a CSV is read; restore it after."""

    def __enter__(self) -> None:
        self.previous = csv.field_size_limit()
        csv.field_size_limit(sys.maxsize if sys.maxsize < 2**63 else 2**62)

    def __exit__(self, *exc: object) -> None:
        csv.field_size_limit(self.previous)


def read_csv(path: str | Path) -> Iterator[SourceRecord]:
    """Records of a CSV (or ``.tsv``) file with a header row.

    Invalid UTF-8 is read with ``surrogateescape`` and rejected per record by the text checks.

    Example:
        >>> next(read_csv("wiki.csv")).where  # doctest: +SKIP
        'wiki.csv:2'
    """
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with _LargeFields(), open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise IngestError(f"{path.name}: cannot read the CSV header: {e}") from e
        number = 0
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                number += 1
                yield SourceRecord(number, f"{path.name}:{start}", None, f"malformed CSV: {e}")
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


def read_parquet(path: str | Path, *, exclude: Sequence[str] = ()) -> Iterator[SourceRecord]:
    """Records of a Parquet file, read in row batches; ``exclude`` columns (an embedding column) are not read.

    Example:
        >>> next(read_parquet("wiki.parquet", exclude=["embedding"])).number  # doctest: +SKIP
        1
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow.ArrowInvalid and OSError
        raise IngestError(f"{path.name} is not a readable Parquet file: {e}") from e
    columns = [name for name in parquet.schema_arrow.names if name not in set(exclude)]
    number = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        for row in batch.to_pylist():
            number += 1
            yield SourceRecord(number, f"{path.name} row {number}", _json_friendly(row))


def read_records(path: str | Path, fmt: str, *, exclude: Sequence[str] = ()) -> Iterator[SourceRecord]:
    """Records of ``path`` in format ``fmt`` (jsonl, csv or parquet; SQuAD has its own reader).

    Example:
        >>> sum(1 for _ in read_records("wiki.csv", "csv"))  # doctest: +SKIP
        1000
    """
    if not Path(path).is_file():
        raise IngestError(f"input file {str(path)!r} does not exist or is not a file; check the path")
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "csv":
        return read_csv(path)
    if fmt == "parquet":
        return read_parquet(path, exclude=exclude)
    raise IngestError(f"read_records reads jsonl, csv and parquet, not {fmt!r}")
