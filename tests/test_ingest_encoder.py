"""Ingest with a (tiny, random) encoder pair: encode only what changed, chunk long documents, SQuAD."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.ingest import ingest
from dpr_pg.ingest.squad import passage_id


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_only_new_or_changed_passages_are_encoded(engine: Engine, fp32_pair: EncoderPair, tmp_path: Path) -> None:
    records = [{"id": str(i), "title": "Sevilla", "text": f"Sevilla está en Andalucía, número {i}."} for i in range(6)]
    source = write_jsonl(tmp_path / "s.jsonl", records)
    first = ingest(engine, fp32_pair, source, collection="c")
    assert (first.encoded, first.inserted) == (6, 6)
    again = ingest(engine, fp32_pair, source, collection="c")
    assert (again.encoded, again.inserted, again.updated, again.unchanged) == (0, 0, 0, 6)
    records[2]["topic"] = "geografía"  # metadata is part of the content hash
    write_jsonl(source, records)
    changed = ingest(engine, fp32_pair, source, collection="c")
    assert (changed.encoded, changed.updated, changed.unchanged) == (1, 1, 5)


def test_long_documents_become_titled_chunks_and_overlong_passages_are_counted(
        engine: Engine, fp32_pair: EncoderPair, tmp_path: Path) -> None:
    words = " ".join(f"palabra{i}" for i in range(230))
    source = write_jsonl(tmp_path / "long.jsonl", [{"id": "doc", "title": "Largo", "text": words}])
    report = ingest(engine, fp32_pair, source, collection="c", chunk_words=100, chunk_overlap=20)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT external_id, title, text FROM dpr_pg.passages ORDER BY external_id")).all()
    assert [r.external_id for r in rows] == ["doc#0", "doc#1", "doc#2"]
    assert {r.title for r in rows} == {"Largo"}
    assert rows[1].text.split()[0] == "palabra80"
    assert report.read == 1 and report.passages == 3
    unchunked = ingest(engine, fp32_pair, source, collection="whole", chunk_words=0)
    assert unchunked.inserted == 1 and unchunked.truncated == 1  # 230 rare words > 512 word pieces


def test_squad_file_gives_passages_and_a_questions_file_for_eval(engine: Engine, fp32_pair: EncoderPair,
                                                                  tmp_path: Path) -> None:
    context = "Lima es la capital del Perú y su ciudad más poblada."
    squad = {"data": [{"title": "Lima", "paragraphs": [
        {"context": context, "qas": [{"id": "a", "question": "¿Cuál es la capital del Perú?",
                                      "answers": [{"text": "Lima", "answer_start": 0}]}]},
        {"context": context, "qas": [{"id": "b", "question": "¿Qué ciudad es la más poblada del Perú?",
                                      "answers": [{"text": "Lima", "answer_start": 0}]}]},
        {"context": "   ", "qas": []}]}]}
    source = tmp_path / "squad.json"
    source.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    questions = tmp_path / "q.jsonl"
    report = ingest(engine, fp32_pair, source, collection="squad", questions_path=questions)
    assert (report.inserted, report.rejected, report.questions) == (1, 1, 2)
    assert "data[0].paragraphs[2]" in report.rejections[0].record
    lines = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines()]
    assert [q["gold_ids"] for q in lines] == [[passage_id("Lima", context)]] * 2
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT external_id FROM dpr_pg.passages")).scalar_one() == passage_id("Lima", context)
