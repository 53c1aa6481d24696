"""Precomputed passage embeddings: a ``.npy`` array or a Parquet column, one row per input record.

Rows are read in order, batch by batch (a ``.npy`` through a memory map whose read pages are
given back, a Parquet column in row batches), so memory stays flat however large the file.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from dpr_pg.errors import DimensionError, IngestError
from dpr_pg.ingest.readers import require_file

DEFAULT_COLUMN = "embedding"


class EmbeddingSource:
    """Sequential reader of precomputed vectors; ``rows(start, stop)`` must be called in order.

    Example:
        >>> source = EmbeddingSource.open("vectors.npy")   # doctest: +SKIP
        >>> source.count, source.dim                        # doctest: +SKIP
        (100000, 768)
    """

    def __init__(self, path: Path, count: int, dim: int | None) -> None:
        self.path = path
        self.count = count
        self.dim = dim

    @staticmethod
    def open(path: str | Path, *, column: str = DEFAULT_COLUMN) -> EmbeddingSource:
        """A ``.npy`` file (2-d float array), or a list column of a ``.parquet`` file."""
        path = require_file(path, "embeddings file", "check --embeddings")
        if path.suffix.lower() == ".npy":
            return _NpySource(path)
        if path.suffix.lower() in (".parquet", ".pq"):
            return _ParquetSource(path, column)
        raise IngestError(f"expected --embeddings to be a .npy or .parquet file, not {path.name!r}")

    def check(self, *, records: int, dim: int) -> None:
        """Fail before anything is written when the row count or the dimension is wrong."""
        if self.count != records:
            raise IngestError(
                f"{self.path.name} has {self.count} embedding rows but the input has {records} records; "
                "expected one row per record, in input order")
        if self.dim is not None and self.dim != dim:
            raise DimensionError(
                f"{self.path.name}: expected {dim} dimensions, not {self.dim} ({dim} is the encoder pair's and the "
                "passages table's dimension); use vectors made by the named encoder pair")

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (exclusive) as an array (n, dim); float64 is kept for overflow checks."""
        raise NotImplementedError

    def length_problem(self, row: int) -> str | None:
        """Why row ``row`` has the wrong number of dimensions, or None (a .npy has one shape)."""
        return None


class _NpySource(EmbeddingSource):
    """A memory map of the ``.npy`` (``np.load(mmap_mode="r")``), read in order, batch by batch.

    Only the rows of the batch being read are copied out. The pages of the rows already read are
    handed back to the kernel (``madvise(MADV_DONTNEED)``; they stay in the page cache), so the
    process's RSS holds about one batch of the file however large it is, and nothing is read twice.
    """

    def __init__(self, path: Path) -> None:
        try:
            with open(path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(handle)
        except ValueError as e:
            raise IngestError(f"{path.name} is not a readable .npy array: {e}") from e
        if len(shape) != 2 or dtype.kind not in "fiu" or dtype.hasobject:
            raise IngestError(f"expected {path.name} to hold a 2-d float array (rows, dim), "
                              f"not {len(shape)}-d {dtype}")
        if fortran_order:
            raise IngestError(f"{path.name} is stored in Fortran order; save it with np.save(path, "
                              "np.ascontiguousarray(vectors)) so that rows can be streamed")
        super().__init__(path, int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.array: np.ndarray | None = None
        self._map: Any = None  # the mmap under the array, whose read pages are released
        self._base = 0  # where row 0 starts in the map
        self._released = 0  # bytes of the map given back so far
        if shape[0] and shape[1]:
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise IngestError(f"{path.name} is not a readable .npy array: {e}") from e
            self.array = array
            self._map = getattr(array, "_mmap", None)
            self._base = int(array.offset) % mmap.ALLOCATIONGRANULARITY
            if self._map is not None and hasattr(mmap, "MADV_SEQUENTIAL"):
                self._map.madvise(mmap.MADV_SEQUENTIAL)

    def rows(self, start: int, stop: int) -> np.ndarray:
        assert self.dim is not None
        if self.array is None:
            return np.empty((0, self.dim), dtype=np.float32)
        block = self.array[start:stop]
        # A copy: the pages under it are released below, and the batch outlives this call.
        block = np.array(block, dtype=block.dtype if block.dtype.kind == "f" else np.float64)
        self._release(stop)
        return block

    def _release(self, stop: int) -> None:
        """Give back the map's pages of the rows before ``stop`` (whole pages only)."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        end = (self._base + stop * self.dim * self.dtype.itemsize) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > self._released:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end


class _ParquetSource(EmbeddingSource):
    """Reads one list column; rows of another length become NaN rows with their length remembered."""

    def __init__(self, path: Path, column: str) -> None:
        import pyarrow.parquet as pq  # lazy: ~0.2 s; only Parquet needs it

        self.parquet = pq.ParquetFile(path)
        if column not in self.parquet.schema_arrow.names:
            raise IngestError(f"{path.name} has no column {column!r}; name the vectors column with "
                              f"--embeddings-column (columns: {', '.join(self.parquet.schema_arrow.names)})")
        field_type = self.parquet.schema_arrow.field(column).type
        size = getattr(field_type, "list_size", None)
        super().__init__(path, int(self.parquet.metadata.num_rows), int(size) if size else None)
        self.column = column
        self.batches = self.parquet.iter_batches(batch_size=8192, columns=[column])
        self.buffer = np.empty((0, 0))
        self.position = 0
        self.lengths: dict[int, int] = {}

    def _next_block(self) -> tuple[np.ndarray, np.ndarray]:
        import pyarrow as pa  # lazy: ~0.2 s; only Parquet needs it

        batch = next(self.batches)
        values = batch.column(0)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        lengths = values.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        dim = self.dim or (int(np.bincount(lengths).argmax()) if len(lengths) else 0)
        self.dim = dim
        block = np.full((len(values), dim), np.nan)
        good = lengths == dim
        if good.any():
            flat = values.filter(pa.array(good)).flatten().to_numpy(zero_copy_only=False)
            block[good] = np.asarray(flat, dtype=np.float64).reshape(-1, dim)
        return block, lengths

    def rows(self, start: int, stop: int) -> np.ndarray:
        if start != self.position:
            raise IngestError(f"internal error: embedding rows read out of order ({start} after {self.position})")
        parts, needed = [], stop - start
        while needed > 0:
            if len(self.buffer) == 0:
                block, lengths = self._next_block()
                base = self.position + sum(len(p) for p in parts)
                for offset in np.flatnonzero(lengths != self.dim):
                    self.lengths[base + int(offset)] = int(lengths[offset])
                self.buffer = block
            take = self.buffer[:needed]
            self.buffer = self.buffer[needed:]
            parts.append(take)
            needed -= len(take)
        self.position = stop
        return np.concatenate(parts) if parts else np.empty((0, self.dim or 0))

    def length_problem(self, row: int) -> str | None:
        """Why row ``row`` has the wrong number of dimensions, or None."""
        length = self.lengths.pop(row, None)
        return None if length is None else f"expected {self.dim} dimensions, not {length}"
