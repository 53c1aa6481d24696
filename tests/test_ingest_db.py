"""Ingest into the embedded PostgreSQL through the Python API: idempotency, duplicates, vectors, prune, retries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.errors import DimensionError, EncoderMismatchError, IngestError
from dpr_pg.ingest import IngestReport, RecordRejectedError, ingest
from dpr_pg.ingest.batches import IN_FLIGHT_BATCHES

FP = EncoderFingerprint("test/question", "r1", "test/passage", "r1", "tok", 768, 512)
OTHER_FP = EncoderFingerprint("test/question", "r2", "test/passage", "r2", "tok", 768, 512)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def corpus(n: int, *, prefix: str = "p") -> list[dict]:
    return [{"id": f"{prefix}{i}", "title": f"Título {i}", "text": f"Texto del pasaje {i}.", "lang": "es"}
            for i in range(n)]


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 768)).astype(np.float32)


def stored(engine: Engine, collection: str = "c") -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT external_id, title, text, metadata, content_hash, embedding::text, updated_at "
            "FROM dpr_pg.passages WHERE collection = :c"), {"c": collection})
        return {row[0]: tuple(row[1:]) for row in rows}


def run(engine: Engine, source: Path, emb: Path, **options) -> IngestReport:
    return ingest(engine, None, source, collection=options.pop("collection", "c"), embeddings=emb,
                  fingerprint=options.pop("fingerprint", FP), **options)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    source = write_jsonl(tmp_path / "in.jsonl", corpus(25))
    emb = tmp_path / "in.npy"
    np.save(emb, vectors(25))
    return source, emb


def test_rerun_writes_nothing_and_a_changed_passage_alone_is_updated(engine: Engine, files, tmp_path) -> None:
    source, emb = files
    first = run(engine, source, emb, batch_size=10)
    assert (first.read, first.inserted, first.updated, first.unchanged, first.rejected) == (25, 25, 0, 0, 0)
    before = stored(engine)
    again = run(engine, source, emb, batch_size=10)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 25)
    assert stored(engine) == before  # updated_at included
    records = corpus(25)
    records[7]["text"] = "Texto cambiado."
    write_jsonl(source, records)
    changed = run(engine, source, emb, batch_size=10)
    assert (changed.inserted, changed.updated, changed.unchanged) == (0, 1, 24)
    after = stored(engine)
    assert after["p7"][1] == "Texto cambiado." and after["p7"][5] > before["p7"][5]
    assert {k: v for k, v in after.items() if k != "p7"} == {k: v for k, v in before.items() if k != "p7"}


def test_stored_vectors_and_metadata_are_the_input_ones(engine: Engine, files) -> None:
    source, emb = files
    run(engine, source, emb)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT metadata, embedding, title FROM dpr_pg.passages WHERE external_id = 'p3'")).one()
        encoder = conn.execute(sa.text("SELECT fingerprint FROM dpr_pg.encoders e JOIN dpr_pg.passages p "
                                       "ON p.encoder_id = e.id WHERE p.external_id = 'p3'")).scalar_one()
    assert row.metadata == {"lang": "es"} and row.title == "Título 3"
    assert np.allclose(np.array(row.embedding.to_list() if hasattr(row.embedding, "to_list") else
                                json.loads(str(row.embedding)), dtype=np.float32), vectors(25)[3])
    assert encoder == FP.id


def test_duplicate_keys_resolve_last_wins_across_batches_and_rerun_is_a_no_op(engine: Engine, tmp_path: Path) -> None:
    records = corpus(6) + [{"id": "p1", "title": "Nuevo", "text": "Última versión."}]
    source = write_jsonl(tmp_path / "dup.jsonl", records)
    emb = tmp_path / "dup.npy"
    np.save(emb, vectors(7))
    report = run(engine, source, emb, batch_size=2)
    assert report.duplicate_count == 1 and report.duplicates[0]["record"] == "dup.jsonl:2"
    assert (report.inserted, report.rejected) == (6, 0)
    assert stored(engine)["p1"][:2] == ("Nuevo", "Última versión.")
    again = run(engine, source, emb, batch_size=2)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 6)


def test_bad_vectors_are_rejected_per_record_and_the_rest_is_written(engine: Engine, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "v.jsonl", corpus(5))
    matrix = vectors(5).astype(np.float64)
    matrix[1, 4] = np.nan
    matrix[2, 0] = np.inf
    matrix[3] = 0.0
    matrix[4, 9] = 1e300
    emb = tmp_path / "v.npy"
    np.save(emb, matrix)
    report = run(engine, source, emb)
    assert report.inserted == 1 and report.rejected == 4
    assert [r.record for r in report.rejections] == ["v.jsonl:2", "v.jsonl:3", "v.jsonl:4", "v.jsonl:5"]
    assert "NaN or Infinity at dimension 4" in report.rejections[0].reason
    assert "all zeros" in report.rejections[2].reason and "overflows float4" in report.rejections[3].reason
    assert set(stored(engine)) == {"p0"}


def test_wrong_dimension_or_row_count_fails_before_anything_is_written(engine: Engine, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", corpus(4))
    np.save(tmp_path / "small.npy", np.ones((4, 384), dtype=np.float32))
    np.save(tmp_path / "short.npy", vectors(3))
    with pytest.raises(DimensionError, match="expected 768 dimensions, not 384"):
        run(engine, source, tmp_path / "small.npy")
    with pytest.raises(IngestError, match="3 embedding rows but the input has 4 records"):
        run(engine, source, tmp_path / "short.npy")
    with pytest.raises(DimensionError, match="768"):
        run(engine, source, tmp_path / "short.npy",
            fingerprint=EncoderFingerprint("q", None, "p", None, "t", 384, 512))
    assert stored(engine) == {}


def test_parquet_input_with_its_own_embedding_column(engine: Engine, tmp_path: Path) -> None:
    rows = vectors(3).tolist()
    rows[1] = rows[1][:700]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["uno", "dos", "tres"], "embedding": rows}), path)
    report = run(engine, path, path)
    assert report.inserted == 2 and report.rejections[0].record == "in.parquet row 2"
    assert "expected 768 dimensions, not 700" in report.rejections[0].reason
    assert stored(engine)["a"][2] == {}  # the embedding column is not metadata


def test_strict_stops_at_the_first_bad_record_and_writes_nothing_of_its_batch(engine: Engine, tmp_path: Path) -> None:
    records = corpus(12)
    records[8]["text"] = "malo\x00"
    source = write_jsonl(tmp_path / "s.jsonl", records)
    emb = tmp_path / "s.npy"
    np.save(emb, vectors(12))
    with pytest.raises(RecordRejectedError, match="s.jsonl:9") as caught:
        run(engine, source, emb, batch_size=5, strict=True)
    assert caught.value.report.inserted == 5
    assert set(stored(engine)) == {f"p{i}" for i in range(5)}


def test_prune_removes_passages_no_longer_in_the_source(engine: Engine, tmp_path: Path) -> None:
    emb = tmp_path / "v.npy"
    np.save(emb, vectors(10))
    run(engine, write_jsonl(tmp_path / "a.jsonl", corpus(10)), emb)
    np.save(tmp_path / "v2.npy", vectors(2))
    run(engine, write_jsonl(tmp_path / "other.jsonl", corpus(2, prefix="o")), tmp_path / "v2.npy", collection="other")
    kept = corpus(10)[:6]
    kept.append({"id": "p9", "text": "x\x00"})  # a rejected record: prune must not run
    np.save(tmp_path / "v7.npy", vectors(7))
    skipped = run(engine, write_jsonl(tmp_path / "b.jsonl", kept), tmp_path / "v7.npy", prune=True)
    assert skipped.pruned == 0 and "rejected" in skipped.prune_skipped
    np.save(tmp_path / "v6.npy", vectors(6))
    report = run(engine, write_jsonl(tmp_path / "c.jsonl", corpus(6)), tmp_path / "v6.npy", prune=True)
    assert report.pruned == 4 and report.unchanged == 6
    assert set(stored(engine)) == {f"p{i}" for i in range(6)}
    assert set(stored(engine, "other")) == {"o0", "o1"}


def test_an_empty_file_is_an_error_and_prunes_nothing(engine: Engine, files, tmp_path: Path) -> None:
    source, emb = files
    run(engine, source, emb)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    np.save(tmp_path / "none.npy", np.zeros((0, 768), dtype=np.float32))
    with pytest.raises(IngestError, match="has no records"):
        run(engine, empty, tmp_path / "none.npy", prune=True)
    assert len(stored(engine)) == 25


def test_another_encoder_pair_is_refused_unless_the_collection_is_replaced(engine: Engine, files) -> None:
    source, emb = files
    run(engine, source, emb)
    with pytest.raises(EncoderMismatchError, match="collection 'c' holds vectors of another encoder pair") as caught:
        run(engine, source, emb, fingerprint=OTHER_FP)
    message = str(caught.value)
    # Both pairs, the stored one first, and the three ways on.
    assert f"stored {FP.describe()}" in message
    assert f"this ingest encodes with {OTHER_FP.describe()}" in message
    assert "another collection" in message and "--prune" in message and "DPR_PG_QUESTION_MODEL" in message
    assert (caught.value.stored, caught.value.requested) == (FP, OTHER_FP)
    report = run(engine, source, emb, fingerprint=OTHER_FP, prune=True)
    assert report.updated == 25
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(DISTINCT encoder_id) FROM dpr_pg.passages")).scalar() == 1


def test_a_dropped_connection_is_retried_and_the_result_is_complete(engine: Engine, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "r.jsonl", corpus(40))
    emb = tmp_path / "r.npy"
    np.save(emb, vectors(40))
    killed = []

    def terminate_ingest_connections(report: IngestReport) -> None:
        # The stages after the reader open their connections as they get to the batch: wait for one.
        # (With a timeout, pg_terminate_backend returns once the backend is gone.)
        while len(killed) < 2:
            with engine.connect() as conn:
                count = conn.execute(sa.text(
                    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                    "WHERE application_name = 'dpr_pg ingest' AND datname = current_database()")).scalar()
            if count:
                killed.append(count)
                return
            time.sleep(0.02)

    report = run(engine, source, emb, batch_size=10, on_batch=terminate_ingest_connections)
    assert len(killed) == 2 and report.retries >= 2
    assert report.inserted == 40 and len(stored(engine)) == 40


def test_what_a_kill_9_can_lose_is_bounded_by_the_batches_in_flight(engine: Engine, tmp_path: Path) -> None:
    # Passages read but not committed, at every batch boundary: the stages hold a bounded number of batches.
    source = write_jsonl(tmp_path / "b.jsonl", corpus(600))
    emb = tmp_path / "b.npy"
    np.save(emb, vectors(600))
    uncommitted = []

    def look(report: IngestReport) -> None:
        uncommitted.append(report.passages - len(stored(engine)))

    report = run(engine, source, emb, batch_size=40, on_batch=look)
    assert report.inserted == 600 and len(uncommitted) == 15
    assert 0 <= min(uncommitted) and max(uncommitted) <= IN_FLIGHT_BATCHES * 40 and len(stored(engine)) == 600


def test_progress_bar_only_when_asked_or_on_a_terminal(engine: Engine, files, capsys) -> None:
    source, emb = files
    run(engine, source, emb)  # progress=None: stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    run(engine, source, emb, collection="shown", progress=True)
    assert "25/25" in capsys.readouterr().err
