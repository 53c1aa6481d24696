"""``dpr-pg ingest`` as a user runs it: JSON report, exit codes, kill -9 then re-run, two at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.ingest import ingest
from dpr_pg.db.index import hnsw_exists

REPORT_KEYS = {"read", "inserted", "updated", "unchanged", "rejected", "rejections", "truncated", "seconds",
               "passages_per_second"}


def make_input(tmp_path: Path, n: int) -> tuple[Path, Path]:
    source = tmp_path / "big.jsonl"
    source.write_text("".join(json.dumps({"id": f"k{i:05d}", "title": "T", "text": f"pasaje {i}", "n": i}) + "\n"
                              for i in range(n)), encoding="utf-8")
    emb = tmp_path / "big.npy"
    np.save(emb, np.random.default_rng(1).standard_normal((n, 768)).astype(np.float32))
    return source, emb


def ingest_args(database_url: str, tiny_models: tuple[Path, Path], *args: str) -> list[str]:
    return ["--database-url", database_url, "ingest", *args, "--question-model", str(tiny_models[0]),
            "--passage-model", str(tiny_models[1]), "--precision", "fp32"]


def popen(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dpr_pg.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def snapshot(engine: Engine, collection: str) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT external_id, title, text, metadata, content_hash, embedding::text, encoder_id "
            "FROM dpr_pg.passages WHERE collection = :c"), {"c": collection})
        return {row[0]: tuple(row[1:]) for row in rows}


def count(engine: Engine, collection: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages WHERE collection = :c"),
                            {"c": collection}).scalar_one()


def test_json_report_and_exit_codes(cli, database_url: str, tiny_models, tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("id,title,text,lang\n1,Sevilla,Sevilla está en Andalucía.,es\n", encoding="utf-8")
    result = cli(*ingest_args(database_url, tiny_models, str(good), "--collection", "c", "--json"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert REPORT_KEYS <= set(report) and (report["read"], report["inserted"], report["rejected"]) == (1, 1, 0)
    assert "|" not in result.stderr  # no progress bar without a terminal

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "bien"}\n{"id": "b", "text": "NUL \\u0000"}\n{"id": "c", "text": "cut')
    result = cli(*ingest_args(database_url, tiny_models, str(bad), "--collection", "c", "--json"))
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["rejected"] == 2 and [r["record"] for r in report["rejections"]] == ["bad.jsonl:2", "bad.jsonl:3"]
    assert "NUL byte" in report["rejections"][0]["reason"] and "truncated" in report["rejections"][1]["reason"]

    result = cli(*ingest_args(database_url, tiny_models, str(bad), "--collection", "s", "--strict"))
    assert result.returncode == 2 and "bad.jsonl:2" in result.stderr and "--strict" in result.stderr

    short = tmp_path / "short.npy"
    np.save(short, np.ones((2, 768), dtype=np.float32))
    fatal = cli(*ingest_args(database_url, tiny_models, str(bad), "--collection", "f", "--embeddings", str(short)))
    assert fatal.returncode == 1 and "2 embedding rows but the input has 3 records" in fatal.stderr


def test_kill_9_then_rerun_equals_one_clean_run(database_url: str, engine: Engine, tiny_models, fp32_pair: EncoderPair,
                                                tmp_path: Path) -> None:
    # --defer-index keeps batches fast (no HNSW upkeep) and shows that a killed bulk load gets its index back.
    source, emb = make_input(tmp_path, 6000)
    args = ingest_args(database_url, tiny_models, str(source), "--collection", "c", "--embeddings", str(emb),
                       "--batch-size", "100", "--defer-index", "--json")
    process = popen(args)
    try:
        while count(engine, "c") == 0 and process.poll() is None:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    partial = count(engine, "c")
    assert 0 < partial < 6000 and partial % 50 == 0  # whole halves of batches (two writers, 50 rows each)
    assert not hnsw_exists(engine)

    rerun = popen(args)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    report = json.loads(out)
    assert report["unchanged"] >= partial and report["inserted"] == 6000 - report["unchanged"]
    assert hnsw_exists(engine) and report["index_seconds"] > 0

    ingest(engine, fp32_pair, source, collection="clean", embeddings=emb, defer_index=True)
    assert snapshot(engine, "c") == snapshot(engine, "clean")


def test_two_concurrent_ingests_of_one_collection_converge(database_url: str, engine: Engine, tiny_models,
                                                           fp32_pair: EncoderPair, tmp_path: Path) -> None:
    source, emb = make_input(tmp_path, 1200)
    args = ingest_args(database_url, tiny_models, str(source), "--collection", "c", "--embeddings", str(emb),
                       "--batch-size", "100", "--json")
    first, second = popen(args), popen(args)
    results = [process.communicate(timeout=600) for process in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), results
    reports = [json.loads(out) for out, _ in results]
    assert sum(r["inserted"] for r in reports) == 1200
    assert all(r["inserted"] + r["unchanged"] == 1200 and r["updated"] == 0 for r in reports)
    assert not any("deadlock" in err or "duplicate key" in err for _, err in results)
    ingest(engine, fp32_pair, source, collection="clean", embeddings=emb)
    assert snapshot(engine, "c") == snapshot(engine, "clean")


def _hub_cache_without_weights(root: Path, tiny_models: tuple[Path, Path]) -> tuple[Path, dict[str, str]]:
    """A Hugging Face cache holding the IIC pair's configs and tokenizers (the tiny ones) but no weights."""
    commits = {}
    for folder, name in zip(tiny_models, ("IIC/dpr-spanish-question_encoder-allqa-base",
                                          "IIC/dpr-spanish-passage_encoder-allqa-base"), strict=True):
        commit = f"{len(commits) + 1:040x}"
        repo = root / ("models--" + name.replace("/", "--"))
        snapshot_dir = repo / "snapshots" / commit
        snapshot_dir.mkdir(parents=True)
        for file in folder.iterdir():
            if file.suffix != ".safetensors":
                (snapshot_dir / file.name).write_bytes(file.read_bytes())
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        commits[name] = commit
    return root, commits


def test_precomputed_vectors_of_a_hub_pair_need_no_weights(cli, database_url: str, engine: Engine, tiny_models,
                                                          tmp_path: Path) -> None:
    cache, commits = _hub_cache_without_weights(tmp_path / "hub", tiny_models)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}  # the default model names: the IIC pair
    source, emb = make_input(tmp_path, 5)
    ingested = cli("--database-url", database_url, "ingest", str(source), "--collection", "hub",
                   "--embeddings", str(emb), "--json", env=env)
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["inserted"] == 5
    with engine.connect() as conn:
        recorded = conn.execute(sa.text(
            "SELECT e.question_model, e.question_revision, e.passage_model, e.passage_revision FROM dpr_pg.encoders e "
            "JOIN dpr_pg.passages p ON p.encoder_id = e.id WHERE p.collection = 'hub' LIMIT 1")).one()
    assert tuple(recorded) == tuple(item for pair in commits.items() for item in pair)
    encoded = cli("--database-url", database_url, "ingest", str(source), "--collection", "hub2", env=env)
    assert encoded.returncode == 1 and "cannot load the question encoder" in encoded.stderr  # weights needed here


def test_ingest_help_gives_each_default_once() -> None:
    from click.testing import CliRunner

    from dpr_pg.cli import main

    help_text = " ".join(CliRunner().invoke(main, ["ingest", "--help"], terminal_width=200).output.split())
    assert "Field with the passage id; a record without it gets its record number. [default: id]" in help_text
    assert "(default: record number)" not in help_text
