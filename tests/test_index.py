"""``build_index`` / ``dpr-pg index``: rebuild the HNSW index with other parameters, on a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.errors import ConfigError
from dpr_pg.ingest import ingest
from dpr_pg.db.index import HnswParameters, build_index, hnsw_exists, hnsw_parameters
from dpr_pg.search.api import search

FP = EncoderFingerprint("test/question", "r1", "test/passage", "r1", "tok", 768, 512)


def load(engine: Engine, folder: Path, n: int, **options) -> np.ndarray:
    vectors = np.random.default_rng(n).standard_normal((n, 768)).astype(np.float32)
    source = folder / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{i}", "text": f"Texto {i}."}) + "\n" for i in range(n)))
    np.save(folder / "in.npy", vectors)
    ingest(engine, None, source, collection="c", embeddings=folder / "in.npy", fingerprint=FP, **options)
    return vectors


def test_rebuild_swaps_in_an_index_with_the_new_parameters(engine: Engine, tmp_path: Path) -> None:
    vectors = load(engine, tmp_path, 300)
    before = [hit.external_id for hit in search(engine, vectors[7], k=5)]
    assert hnsw_parameters(engine) == HnswParameters(16, 64)

    build = build_index(engine, m=8, ef_construction=32)

    assert build.parameters == HnswParameters(8, 32) and build.rows == 300 and build.seconds > 0
    assert hnsw_exists(engine) and hnsw_parameters(engine) == HnswParameters(8, 32)
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'passages' "
                                     "AND indexdef LIKE '%hnsw%'")).scalars().all()
    assert names == ["passages_embedding_hnsw"]  # the old one is gone, the new one has its name
    hits = search(engine, vectors[7], k=5)
    assert hits.plan.path == "hnsw" and [hit.external_id for hit in hits] == before


def test_a_killed_build_left_behind_is_dropped_by_the_next_one(engine: Engine, tmp_path: Path) -> None:
    load(engine, tmp_path, 50)
    with engine.begin() as conn:
        # What a killed CREATE INDEX CONCURRENTLY of the new index leaves: an INVALID index.
        conn.execute(sa.text("CREATE INDEX passages_embedding_hnsw_new ON dpr_pg.passages "
                             "USING hnsw (embedding vector_ip_ops)"))
        conn.execute(sa.text("UPDATE pg_index SET indisvalid = false "
                             "WHERE indexrelid = 'dpr_pg.passages_embedding_hnsw_new'::regclass"))
    build_index(engine, m=12, ef_construction=40)
    assert hnsw_parameters(engine) == HnswParameters(12, 40)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('dpr_pg.passages_embedding_hnsw_new')")).scalar() is None


def test_a_bulk_load_with_defer_index_keeps_the_chosen_parameters(engine: Engine, tmp_path: Path) -> None:
    build_index(engine, m=10, ef_construction=48)
    load(engine, tmp_path, 120, defer_index=True)
    assert hnsw_exists(engine) and hnsw_parameters(engine) == HnswParameters(10, 48)


@pytest.mark.parametrize(("options", "message"), [
    ({"m": 20, "ef_construction": 30}, "ef_construction >= 2 \\* m"),
    ({"m": 1}, "m to be an integer from 2 to 100"),
    ({"ef_construction": 5000}, "ef_construction to be an integer from 4 to 1000"),
    ({"maintenance_work_mem": "lots"}, "maintenance_work_mem size such as 512MB"),
])
def test_bad_parameters_are_refused_and_the_index_is_kept(engine: Engine, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_index(engine, **options)
    assert hnsw_exists(engine) and hnsw_parameters(engine) == HnswParameters(16, 64)


def test_cli_index_as_a_user_types_it(database_url: str, cli) -> None:
    done = cli("--database-url", database_url, "index", "--m", "8", "--ef-construction", "32", "--json")
    assert done.returncode == 0, done.stderr
    assert {k: v for k, v in json.loads(done.stdout).items() if k in ("m", "ef_construction", "rows")} == {
        "m": 8, "ef_construction": 32, "rows": 0}
    refused = cli("--database-url", database_url, "index", "--m", "40", "--ef-construction", "64")
    assert refused.returncode == 1 and "ef_construction must be at least 80" in refused.stderr


def test_cli_index_progress_shows_the_build_phase(database_url: str, engine: Engine, tmp_path: Path) -> None:
    load(engine, tmp_path, 50)
    log = tmp_path / "stderr.txt"
    with engine.connect() as writer:
        # An open write transaction: CREATE INDEX CONCURRENTLY waits for it, in a phase the bar must show.
        writer.execute(sa.text("UPDATE dpr_pg.passages SET title = 'x' WHERE external_id = 'p0'"))
        with log.open("w") as stderr:
            build = subprocess.Popen([sys.executable, "-m", "dpr_pg.cli", "--database-url", database_url, "index",
                                      "--progress"], stdout=subprocess.PIPE, stderr=stderr, text=True)
        deadline = time.monotonic() + 300  # not a timing assertion: only a bound on waiting for the bar
        while "waiting for writers before build" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        writer.commit()
    out, _ = build.communicate(timeout=300)
    assert build.returncode == 0 and "HNSW index rebuilt" in out
    assert "HNSW index: waiting for writers before build" in log.read_text()
    quiet = subprocess.run([sys.executable, "-m", "dpr_pg.cli", "--database-url", database_url, "index"],
                           capture_output=True, text=True, check=True)
    assert quiet.stderr == ""  # not a terminal: no bar unless asked
