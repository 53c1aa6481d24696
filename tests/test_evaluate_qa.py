"""Question files: SQuAD JSON, JSONL with gold ids and/or answers, and their error messages."""

from __future__ import annotations

import json

import pytest

from dpr_pg.errors import EvaluationError
from dpr_pg.ingest.squad import passage_id
from dpr_pg.ingest.squad import read_squad as ingest_read_squad
from dpr_pg.evaluation.qa import QAItem, qa_from_record, read_questions
from dpr_pg.evaluation.evaluate import load_questions

SQUAD = {"version": "v2.0", "data": [{"title": "Perú", "paragraphs": [{
    "context": "Lima es la capital del Perú.",
    "qas": [
        {"id": "a", "question": "¿Cuál es la capital del Perú?",
         "answers": [{"text": "Lima", "answer_start": 0}, {"text": "Lima", "answer_start": 0}]},
        {"id": "b", "question": "¿Cuál es la capital de Marte?", "answers": [], "is_impossible": True},
    ]}]}]}


def test_jsonl_accepts_ids_answers_or_both(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "¿Uno?", "gold_ids": "p1"}\n\n'
        '{"question": "¿Dos?", "answers": [{"text": "dos"}, "2"], "id": 7}\n'
        '{"question": "¿Tres?", "gold_ids": ["p3", "p3b"], "answers": ["tres"], "title": "extra fields are ignored"}\n',
        encoding="utf-8")

    items = read_questions(path)

    assert items == [QAItem("¿Uno?", ("p1",)), QAItem("¿Dos?", (), ("dos", "2"), "7"),
                     QAItem("¿Tres?", ("p3", "p3b"), ("tres",))]


def test_squad_questions_carry_the_ids_ingest_gives_their_contexts(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD, ensure_ascii=False), encoding="utf-8")

    items = load_questions(str(path))
    kept = ingest_read_squad(path).questions

    assert items == [QAItem("¿Cuál es la capital del Perú?", (passage_id("Perú", "Lima es la capital del Perú."),),
                            ("Lima",), "a")]
    assert [tuple(q["gold_ids"]) for q in kept] == [items[0].gold_ids]


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "¿Sin oro?"}', "'gold_ids' or 'answers'"),
    ('{"question": "", "answers": ["x"]}', "non-empty string in 'question'"),
    ('{"question": "¿Tipo?", "answers": [3]}', r"answers\[0\] to be a string"),
    ('["not", "an", "object"]', "expected a JSON object"),
    ('{"question": "¿Cortado?", "answers": ["x"', "not valid JSON"),
])
def test_malformed_jsonl_names_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "¿Bien?", "answers": ["sí"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=message) as raised:
        read_questions(path)
    assert "bad.jsonl:2" in str(raised.value)


def test_empty_or_missing_files_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match="holds no questions"):
        read_questions(empty)
    with pytest.raises(EvaluationError, match="does not exist"):
        read_questions(tmp_path / "missing.json")


def test_squad_with_wrong_types_names_the_json_path(tmp_path):
    document = {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"question": 5, "answers": []}]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]\.question"):
        read_questions(path)


def test_records_and_limits():
    assert qa_from_record({"question": "¿Q?", "answers": "una"}).answers == ("una",)
    items = load_questions([{"question": f"¿{i}?", "answers": ["x"]} for i in range(5)], limit=2)
    assert [i.question for i in items] == ["¿0?", "¿1?"]
    with pytest.raises(EvaluationError, match="limit >= 1"):
        load_questions([{"question": "¿Q?", "answers": ["x"]}], limit=0)
