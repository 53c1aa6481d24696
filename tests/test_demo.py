"""`make demo` runs `dpr-pg demo`: schema, sample ingest and questions, offline."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from dpr_pg.demo import sample_corpus, sample_questions


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


def test_demo_without_models_or_hub_falls_back_to_tiny_models(cli, empty_url: str) -> None:
    result = cli("--database-url", empty_url, "demo", env={"HF_HUB_OFFLINE": "1"}, check=True)
    assert "Hugging Face Hub is unreachable" in result.stdout
    assert "Ingested: 47 inserted" in result.stdout
    assert "only the pipeline is real" in result.stdout


def test_demo_after_the_encoder_pair_changed_replaces_its_collection(cli, empty_url: str, tmp_path: Path,
                                                                     tiny_models: tuple[Path, Path]) -> None:
    from dpr_pg.encoders import make_tiny_models

    other_question, other_passage = make_tiny_models(tmp_path / "other", dim=768, seed=1)
    first = {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}
    second = {"DPR_PG_QUESTION_MODEL": str(other_question), "DPR_PG_PASSAGE_MODEL": str(other_passage)}
    cli("--database-url", empty_url, "demo", env=first, check=True)
    result = cli("--database-url", empty_url, "demo", env=second, check=True)
    assert "Ingested: 0 inserted, 47 updated, 0 unchanged" in result.stdout
