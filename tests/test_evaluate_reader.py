"""The reader's exact match and F1, Spanish-aware, on the same questions as the retrieval metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from dpr_pg.evaluation.answers import exact_match, token_f1
from dpr_pg.cli import main
from dpr_pg.errors import EvaluationError
from dpr_pg.evaluation.evaluate import evaluate, load_questions
from dpr_pg.ingest import ingest
from dpr_pg.evaluation.metrics import reader_metrics
from dpr_pg.reader import Reader
from dpr_pg.search.api import search_many

DATA = Path(__file__).resolve().parent.parent / "dpr_pg" / "data"
QUESTIONS = DATA / "sample_questions_es.jsonl"


def test_squad_normalisation_with_spanish_articles_and_accents() -> None:
    assert exact_match("El río Guadalquivir.", ["rio guadalquivir"]) == 1.0  # article, accent, case, punctuation
    assert exact_match("¡Los Andes!", ["andes"]) == 1.0 and exact_match("unas islas", ["islas"]) == 1.0
    assert exact_match("año", ["ano"]) == 0.0  # ñ is a letter of its own
    assert exact_match("Madrid", ["Barcelona", "Madrid"]) == 1.0  # the best of the answers
    assert token_f1("la catedral de Sevilla", ["catedral gótica de Sevilla"]) == pytest.approx(2 * (3 / 3) * (3 / 4) / (3 / 3 + 3 / 4))
    assert token_f1("el", ["la"]) == 1.0 and token_f1("Sevilla", ["la"]) == 0.0  # nothing left on either side
    assert exact_match("El río", ["rio"], style="dpr") == 0.0  # DPR's rule keeps articles and accents


@given(st.text(max_size=30), st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_f1_bounds_and_exact_match_implies_full_f1(prediction: str, answers: list[str]) -> None:
    em, f1 = exact_match(prediction, answers), token_f1(prediction, answers)
    assert 0.0 <= f1 <= 1.0 and em in (0.0, 1.0)
    assert em == 0.0 or f1 == 1.0
    assert token_f1(answers[0], answers) == 1.0 == exact_match(answers[0], answers)


def test_no_answer_counts_as_wrong() -> None:
    metrics = reader_metrics([None, "Madrid"], [["Sevilla"], ["Madrid"]], passages=5)
    assert (metrics.exact_match, metrics.f1, metrics.no_answer) == (0.5, 0.5, 1)


@pytest.fixture(scope="module")
def demo(server, fp32_pair, tiny_reader):
    name = server.create_database(template=server.initialized_template(768))
    engine = sa.create_engine(server.url_for(name))
    ingest(engine, fp32_pair, DATA / "sample_es.jsonl", collection="demo", progress=False)
    reader = Reader.load(str(tiny_reader))
    yield server.url_for(name), engine, fp32_pair, reader
    engine.dispose()
    server.drop_database(name)


def test_reader_scores_beside_the_retrieval_metrics_on_the_same_questions(demo) -> None:
    _, engine, pair, reader = demo
    plain = evaluate(engine, pair, QUESTIONS, collection="demo", mode="exact")
    report = evaluate(engine, pair, QUESTIONS, collection="demo", mode="exact", reader=reader, reader_passages=3)
    assert report.metrics == plain.metrics and plain.reader is None

    items = load_questions(QUESTIONS)
    with engine.begin() as conn:
        hits = search_many(conn, [i.question for i in items], encoder=pair, k=3, collection="demo", mode="exact")
    readings = reader.read_many([i.question for i in items], [[h.text for h in found] for found in hits])
    predictions = [r.answers[0].text for r in readings]
    em = sum(exact_match(p, i.answers) for p, i in zip(predictions, items)) / len(items)
    f1 = sum(token_f1(p, i.answers) for p, i in zip(predictions, items)) / len(items)
    assert report.reader.questions == len(items) and report.reader.passages == 3
    assert (report.reader.exact_match, report.reader.f1) == (pytest.approx(em), pytest.approx(f1))
    assert set(report.as_dict()["reader"]) == {"questions", "exact_match", "f1", "no_answer", "passages", "seconds"}


def test_questions_without_answers_are_left_out_of_the_reader_scores(demo) -> None:
    _, engine, pair, reader = demo
    questions = [{"question": "¿Cuál es la capital de España?", "gold_ids": ["madrid"]},
                 {"question": "¿Qué altura tiene el Everest?", "answers": ["8849 metros"]}]
    report = evaluate(engine, pair, questions, collection="demo", reader=reader, no_answer_threshold=1.0)
    assert (report.metrics.questions, report.reader.questions, report.reader.no_answer) == (2, 1, 1)
    assert report.reader.exact_match == report.reader.f1 == 0.0
    with pytest.raises(EvaluationError, match="reader_passages"):
        evaluate(engine, pair, questions, collection="demo", reader=reader, ks=(1, 5), reader_passages=6)


def test_cli_eval_with_the_reader(demo, tiny_models, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url, _, _, reader = demo
    monkeypatch.setenv("DPR_PG_QUESTION_MODEL", str(tiny_models[0]))
    monkeypatch.setenv("DPR_PG_PASSAGE_MODEL", str(tiny_models[1]))
    monkeypatch.setenv("DPR_PG_READER_MODEL", reader.name)
    args = ["--database-url", url, "eval", str(QUESTIONS), "--collection", "demo", "--reader", "--reader-passages", "5"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["reader"]["questions"] == 12 and found["reader"]["passages"] == 5 and "top_k_accuracy" in found
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0 and "exact match" in table.output and "F1" in table.output
