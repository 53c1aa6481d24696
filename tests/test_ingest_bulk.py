"""Bulk loads of precomputed vectors: the .npy is streamed through a memory map, a mismatch is refused
before anything is written, and a load with a deferred index ends with a valid index."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.db.column import set_storage
from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.errors import DimensionError, IngestError
from dpr_pg.ingest import ingest
from dpr_pg.db.index import HnswParameters, graph_bytes, parallel_workers
from dpr_pg.ingest.vectors import EmbeddingSource

FP = EncoderFingerprint("test/question", "r1", "test/passage", "r1", "tok", 768, 512)
MiB = 2**20


def write_records(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": f"p{i}", "title": f"Título {i}", "text": f"Texto número {i} de Sevilla.",
                                     "n": i}) + "\n")
    return path


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, 768))
    return (centers[rng.integers(0, 8, n)] + rng.normal(scale=0.5, size=(n, 768))).astype(np.float32)


def index_state(engine: Engine) -> tuple[int, bool, str]:
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar()
        valid, definition = conn.execute(sa.text(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indexrelid = to_regclass('dpr_pg.passages_embedding_hnsw')")).one()
    return count, valid, definition


# The child reads a .npy of 256 MiB in batches, as an ingest does, and reports how much its peak RSS grew.
_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from dpr_pg.ingest.vectors import EmbeddingSource
    source = EmbeddingSource.open(sys.argv[1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = 0.0
    for start in range(0, source.count, 2000):
        rows = source.rows(start, min(start + 2000, source.count))
        total += float(rows[:, 0].sum())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kib": after - before, "total": total, "count": source.count}))
""")


def test_a_large_npy_is_streamed_at_a_bounded_memory(tmp_path: Path) -> None:
    rows = 256 * MiB // (768 * 4)
    path = tmp_path / "big.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 768))
    for start in range(0, rows, 10_000):
        array[start:start + 10_000, 0] = 1.0
    array.flush()
    del array
    child = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout)
    assert result["count"] == rows and result["total"] == rows  # every row was read, in order
    print(f"peak RSS grew by {result['grew_kib']} KiB while reading {rows} rows (256 MiB)")
    # A batch is 2000 rows (6 MiB); a map whose read pages were kept would have grown by 256 MiB.
    assert result["grew_kib"] < 48 * 1024, result


def test_rows_of_the_map_are_copies_that_outlive_the_released_pages(tmp_path: Path) -> None:
    vectors = clustered(5000)
    np.save(tmp_path / "v.npy", vectors)
    source = EmbeddingSource.open(tmp_path / "v.npy")
    first = source.rows(0, 2000)
    second = source.rows(2000, 5000)
    assert (source.count, source.dim) == (5000, 768)
    assert np.array_equal(first, vectors[:2000]) and np.array_equal(second, vectors[2000:])
    assert first.flags.owndata and first.flags.writeable


def test_a_truncated_npy_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, clustered(100))
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(IngestError, match="cut.npy is not a readable .npy array"):
        EmbeddingSource.open(path)


@pytest.mark.parametrize(("vectors", "error", "message"), [
    (clustered(41), IngestError, "41 embedding rows but the input has 40 records"),
    (np.ones((40, 384), dtype=np.float32), DimensionError, "expected 768 dimensions, not 384"),
])
def test_a_mismatch_with_the_records_is_refused_before_anything_is_written_or_dropped(
        engine: Engine, tmp_path: Path, vectors: np.ndarray, error: type, message: str) -> None:
    source = write_records(tmp_path / "in.jsonl", 40)
    np.save(tmp_path / "v.npy", vectors)
    with pytest.raises(error, match=message):
        ingest(engine, None, source, collection="c", embeddings=tmp_path / "v.npy", fingerprint=FP, defer_index=True)
    count, valid, _ = index_state(engine)
    assert count == 0 and valid  # nothing written, and the index was not dropped


@pytest.mark.parametrize("storage", ["vector", "halfvec"])
def test_a_load_with_a_deferred_index_ends_with_a_valid_index_of_the_storage(
        engine: Engine, tmp_path: Path, storage: str, capsys: pytest.CaptureFixture[str]) -> None:
    set_storage(engine, storage)
    with engine.connect() as conn:  # a server setting below what the graph needs: the build sizes its own
        name = conn.execute(sa.text("SELECT current_database()")).scalar()
        conn.execute(sa.text(f'ALTER DATABASE "{name}" SET maintenance_work_mem = \'1MB\''))
        conn.commit()
    engine.dispose()
    vectors = clustered(3000)
    source = write_records(tmp_path / "in.jsonl", 3000)
    np.save(tmp_path / "v.npy", vectors)
    report = ingest(engine, None, source, collection="c", embeddings=tmp_path / "v.npy", fingerprint=FP,
                    defer_index=True, batch_size=500, progress=True)
    assert (report.inserted, report.rejected) == (3000, 0) and report.index_seconds > 0
    count, valid, definition = index_state(engine)
    assert count == 3000 and valid
    assert ("halfvec_ip_ops" in definition) == (storage == "halfvec")
    # The build says what it uses: the memory (sized for the graph of the new table's 3000 rows, never
    # analysed before the build), its cap and the parallel workers.
    err = capsys.readouterr().err
    memory = graph_bytes(3000, 768, HnswParameters(), storage) // MiB
    assert f"HNSW index ({storage}): maintenance_work_mem {memory}MB (cap " in err, err[-500:]
    assert f"{parallel_workers()} parallel worker(s) + leader" in err
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT embedding FROM dpr_pg.passages WHERE external_id = 'p1234'")).scalar()
        conn.execute(sa.text("SET enable_seqscan = off"))
        plan = "\n".join(conn.execute(sa.text(
            "EXPLAIN SELECT external_id FROM dpr_pg.passages ORDER BY embedding <#> :q LIMIT 5"
            if storage == "vector" else
            "EXPLAIN SELECT external_id FROM dpr_pg.passages ORDER BY embedding::halfvec(768) <#> "
            "(:q)::halfvec(768) LIMIT 5"), {"q": str(vectors[1234].tolist())}).scalars())
    assert np.allclose(np.array(json.loads(stored), dtype=np.float32), vectors[1234])
    assert "passages_embedding_hnsw" in plan

