"""Evaluation end to end: tiny offline models, the embedded PostgreSQL, and a numpy oracle."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from dpr_pg.evaluation.answers import has_answer
from dpr_pg.evaluation.audit import audit_ann
from dpr_pg.cli import main
from dpr_pg.errors import EvaluationError, SchemaError
from dpr_pg.evaluation.evaluate import evaluate
from dpr_pg.ingest import ingest
from dpr_pg.evaluation.qa import read_jsonl

DATA = Path(__file__).resolve().parent.parent / "dpr_pg" / "data"
PASSAGES = DATA / "sample_es.jsonl"
QUESTIONS = DATA / "sample_questions_es.jsonl"
KS = (1, 5, 10, 20, 100)


@pytest.fixture(scope="module")
def corpus(server, fp32_pair):
    """A database holding sample_es.jsonl in collection 'demo', and the pair that encoded it."""
    name = server.create_database(template=server.initialized_template(768))
    engine = sa.create_engine(server.url_for(name))
    ingest(engine, fp32_pair, PASSAGES, collection="demo", progress=False)
    yield server.url_for(name), engine, fp32_pair
    engine.dispose()
    server.drop_database(name)


def _stored(engine, where: str = "TRUE", params: dict | None = None):
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT external_id, text, embedding::real[] AS embedding FROM dpr_pg.passages "
                                    f"WHERE collection = 'demo' AND {where} ORDER BY id"), params or {}).all()
    return [r.external_id for r in rows], [r.text for r in rows], np.stack([np.asarray(r.embedding) for r in rows])


def _oracle_ranks(pair, questions, ids, matrix, is_gold_for, depth=100):
    """0-based rank of the first gold by exact inner product (gold placed after equal scores)."""
    ranks = []
    for item, vector in zip(questions, pair.question.encode([q.question for q in questions])):
        scores = matrix @ vector
        gold = [i for i, eid in enumerate(ids) if is_gold_for(item, i)]
        if not gold:
            ranks.append(depth)
            continue
        best = max(scores[i] for i in gold)
        ranks.append(int(sum(1 for i in range(len(ids)) if i not in gold and scores[i] >= best)))
    return ranks


def test_exact_evaluation_agrees_with_a_numpy_oracle(corpus):
    _, engine, pair = corpus
    questions = read_jsonl(QUESTIONS)
    ids, _, matrix = _stored(engine)
    ranks = _oracle_ranks(pair, questions, ids, matrix, lambda item, i: ids[i] in item.gold_ids)

    report = evaluate(engine, pair, QUESTIONS, collection="demo", mode="exact")

    m = report.metrics
    assert m.questions == len(questions) == report.judged_by_ids
    assert m.top_k_accuracy == {k: pytest.approx(sum(r < k for r in ranks) / len(ranks)) for k in KS}
    assert m.top_k_accuracy[100] == 1.0  # 47 passages: every gold is within 100 hits
    assert m.mrr == pytest.approx(statistics.fmean(1 / (r + 1) for r in ranks))
    assert m.mean_rank == pytest.approx(statistics.fmean(ranks))
    assert m.median_rank == statistics.median(ranks)
    assert m.recall_at_k == m.top_k_accuracy  # one gold passage per question
    assert report.paths == {"exact": len(questions)}


def test_precomputed_question_vectors_give_the_same_report(corpus):
    _, engine, pair = corpus
    questions = read_jsonl(QUESTIONS)
    vectors = pair.question.encode([q.question for q in questions])

    with_encoder = evaluate(engine, pair, questions, collection="demo", mode="exact")
    with_vectors = evaluate(engine, None, questions, collection="demo", mode="exact", query_vectors=vectors)

    assert with_vectors.metrics == with_encoder.metrics
    with pytest.raises(EvaluationError, match="one row per question"):
        evaluate(engine, None, questions, collection="demo", query_vectors=vectors[:3])
    with pytest.raises(EvaluationError, match="or query_vectors="):
        evaluate(engine, None, questions, collection="demo")


def test_hybrid_mode_is_evaluated_through_the_same_search(corpus):
    _, engine, pair = corpus

    report = evaluate(engine, pair, QUESTIONS, collection="demo", mode="hybrid", ks=(1, 10), depth=10)

    assert report.paths == {"hybrid": 12} and report.judged_by_ids == 12
    assert 0.0 <= report.metrics.top_k_accuracy[1] <= report.metrics.top_k_accuracy[10] <= 1.0
    # Spanish full text finds passages sharing the question's words: better than the random tiny model alone.
    dense = evaluate(engine, pair, QUESTIONS, collection="demo", mode="exact", ks=(1, 10), depth=10)
    assert report.metrics.mrr > dense.metrics.mrr


def test_a_filter_that_excludes_the_gold_counts_it_missing(corpus):
    _, engine, pair = corpus
    questions = read_jsonl(QUESTIONS)
    ids, _, _ = _stored(engine, "metadata->>'topic' = :t", {"t": "geografía"})
    reachable = sum(1 for q in questions if set(q.gold_ids) & set(ids))

    report = evaluate(engine, pair, QUESTIONS, collection="demo", filter={"topic": "geografía"}, depth=20, ks=(1, 20))

    assert 0 < reachable < len(questions)
    assert report.metrics.top_k_accuracy[20] == pytest.approx(reachable / len(questions))
    assert report.metrics.mean_rank >= 20 * (len(questions) - reachable) / len(questions)


def test_answers_only_questions_are_judged_by_has_answer(corpus):
    _, engine, pair = corpus
    questions = read_jsonl(QUESTIONS)
    ids, texts, matrix = _stored(engine)
    ranks = _oracle_ranks(pair, questions, ids, matrix, lambda item, i: has_answer(texts[i], item.answers))

    report = evaluate(engine, pair, QUESTIONS, collection="demo", mode="exact", gold="answers")

    assert report.judged_by_answers == len(questions) and report.judged_by_ids == 0
    assert report.metrics.mean_rank == pytest.approx(statistics.fmean(ranks))
    assert report.metrics.recall_at_k is None
    assert report.unknown_gold_ids == 0


def test_gold_ids_missing_from_the_collection_fall_back_to_answers(corpus):
    _, engine, pair = corpus
    questions = [{"question": "¿Cuál es la capital de España?", "gold_ids": ["no-such-id"], "answers": ["Madrid"]},
                 {"question": "¿Qué descubrió Alexander Fleming?", "gold_ids": ["penicilina"]}]

    report = evaluate(engine, pair, questions, collection="demo", ks=(1, 47), depth=47)

    assert (report.judged_by_ids, report.judged_by_answers, report.unknown_gold_ids) == (1, 1, 1)
    assert report.metrics.top_k_accuracy[47] == 1.0


def test_card_view_scores_positives_and_hard_negatives(corpus):
    _, engine, pair = corpus
    questions = read_jsonl(QUESTIONS)
    ids, _, matrix = _stored(engine)
    expected_ranks = []
    for item, vector in zip(questions, pair.question.encode([q.question for q in questions])):
        scores = matrix @ vector
        order = np.argsort(-scores, kind="stable")
        negatives = [scores[i] for i in order if ids[i] not in item.gold_ids][:5]
        gold = max(scores[i] for i, eid in enumerate(ids) if eid in item.gold_ids)
        expected_ranks.append(sum(1 for s in negatives if s >= gold))

    report = evaluate(engine, pair, QUESTIONS, collection="demo", mode="exact", hard_negatives=5, threshold=0.0)

    card = report.card
    assert card is not None and card.questions == len(questions)
    assert card.report.classes["positive"].support == len(questions)
    assert card.report.classes["hard_negative"].support == 5 * len(questions)
    assert card.mean_positive_rank == pytest.approx(statistics.fmean(expected_ranks))
    assert card.report.threshold == 0.0 and not card.report.chosen_on_data


def test_squad_file_and_the_questions_ingest_kept_give_the_same_result(corpus, tmp_path):
    _, engine, pair = corpus
    squad = {"version": "1.1", "data": [{"title": "Sevilla", "paragraphs": [
        {"context": "Sevilla está a orillas del Guadalquivir, en Andalucía.",
         "qas": [{"id": "s1", "question": "¿Qué río pasa por Sevilla?", "answers": [{"text": "Guadalquivir", "answer_start": 23}]},
                 {"id": "s2", "question": "¿Dónde está Sevilla?", "answers": [], "is_impossible": True}]},
        {"context": "La Giralda es el campanario de la catedral de Sevilla.",
         "qas": [{"id": "s3", "question": "¿Qué es la Giralda?", "answers": [{"text": "el campanario", "answer_start": 13}]}]}]}]}
    source = tmp_path / "mini_squad.json"
    source.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    kept = tmp_path / "mini.questions.jsonl"
    ingest(engine, pair, source, collection="squad", questions_path=kept, progress=False)

    from_squad = evaluate(engine, pair, source, collection="squad", ks=(1, 2), depth=2)
    from_kept = evaluate(engine, pair, kept, collection="squad", ks=(1, 2), depth=2)

    assert from_squad.metrics.questions == from_kept.metrics.questions == 2  # the unanswerable one is skipped
    assert from_squad.judged_by_ids == from_kept.judged_by_ids == 2
    assert from_squad.metrics == from_kept.metrics
    assert from_squad.metrics.top_k_accuracy[2] == 1.0


def test_bad_requests_are_refused_before_searching(corpus, tmp_path):
    _, engine, pair = corpus
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "¿Uno?", "answers": ["1"]}\n{"question": "¿Dos?"\n', encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"broken.jsonl:2"):
        evaluate(engine, pair, broken, collection="demo")
    with pytest.raises(EvaluationError, match="depth >= the largest k"):
        evaluate(engine, pair, QUESTIONS, collection="demo", ks=(1, 100), depth=10)
    bad_squad = tmp_path / "bad.json"
    bad_squad.write_text('{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}', encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"data\[0\]\.paragraphs\[0\]\.context"):
        evaluate(engine, pair, bad_squad, collection="demo")


def test_an_empty_collection_or_a_database_without_schema_is_refused(corpus, empty_url):
    _, engine, pair = corpus
    with pytest.raises(EvaluationError, match="collection 'nope' does not exist in this database; it holds demo"):
        evaluate(engine, pair, QUESTIONS, collection="nope")
    with pytest.raises(EvaluationError, match="collection 'nope' does not exist"):
        audit_ann(engine, pair, QUESTIONS, collection="nope")
    with pytest.raises(EvaluationError, match="the filter matched none of the .* passages in collection 'demo'"):
        evaluate(engine, pair, QUESTIONS, collection="demo", filter={"topic": "no such topic"})
    bare = sa.create_engine(empty_url)
    try:
        with pytest.raises(SchemaError, match="run dpr-pg init"):
            evaluate(bare, pair, QUESTIONS, collection="demo")
    finally:
        bare.dispose()


def test_audit_recommends_the_smallest_ef_search_reaching_the_target(corpus):
    _, engine, pair = corpus

    report = audit_ann(engine, pair, QUESTIONS, collection="demo", k=5, sample=4, target_recall=0.5,
                       ef_search_values=(1, 10, 40))

    assert report.questions == 4 and report.k == 5
    assert report.current_paths == {"exact": 4} and report.current_recall == 1.0  # 47 rows: the planner scans
    assert [row.ef_search for row in report.sweep] == [5, 10, 40]  # below k is raised to k
    assert all(0.0 <= row.min_recall <= row.recall <= 1.0 for row in report.sweep)
    reaching = [row.ef_search for row in report.sweep if row.recall >= 0.5]
    assert report.recommended_ef_search == (reaching[0] if reaching else None)


def test_cli_eval_json_matches_the_api(corpus, cli, tiny_models):
    url, engine, pair = corpus
    env = {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}

    result = cli("--database-url", url, "eval", str(QUESTIONS), "--collection", "demo", "--mode", "exact",
                 "--precision", "fp32", "--json", env=env, check=True)

    printed = json.loads(result.stdout)
    expected = evaluate(engine, pair, QUESTIONS, collection="demo", mode="exact").as_dict()
    assert {"top_k_accuracy", "mrr", "mean_rank", "median_rank", "questions", "seconds"} <= printed.keys()
    assert printed["top_k_accuracy"] == expected["top_k_accuracy"]
    assert (printed["mrr"], printed["mean_rank"], printed["median_rank"], printed["questions"]) == (
        expected["mrr"], expected["mean_rank"], expected["median_rank"], expected["questions"])


def _run_in_process(url, tiny_models, *args):
    """The CLI in this process (models already imported): for output checks that need no fresh interpreter."""
    env = {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}
    result = CliRunner().invoke(main, ["--database-url", url, *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_eval_prints_a_table_with_the_card_view(corpus, tiny_models):
    url, _, _ = corpus

    output = _run_in_process(url, tiny_models, "eval", str(QUESTIONS), "--collection", "demo", "--limit", "3",
                             "--k", "1,5")

    assert "3 questions, 5 hits each" in output
    assert "MRR" in output and "median rank" in output
    assert "hard_negative" in output and "positive" in output


def test_cli_audit_json(corpus, tiny_models):
    url, _, _ = corpus

    output = _run_in_process(url, tiny_models, "audit", str(QUESTIONS), "--collection", "demo",
                             "-k", "3", "--sample", "2", "--json")

    printed = json.loads(output)
    assert printed["questions"] == 2 and printed["k"] == 3
    assert [row["ef_search"] for row in printed["sweep"]] == [10, 20, 40, 64, 100, 200, 400, 800, 1000]
    assert printed["recommended_ef_search"] in (None, 10, 20, 40, 64, 100, 200, 400, 800, 1000)


def test_cli_eval_audit_still_runs_the_audit_and_points_to_dpr_pg_audit(corpus, tiny_models):
    url, _, _ = corpus
    env = {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}

    result = CliRunner().invoke(main, ["--database-url", url, "eval", str(QUESTIONS), "--collection", "nosuch",
                                       "--audit", "--audit-k", "3"], env=env)

    assert result.exit_code == 1  # the audit's own check of the collection ran
    assert "dpr-pg eval --audit is now dpr-pg audit QA_FILE" in result.output
    assert "nosuch" in result.output
    assert "--audit" not in CliRunner().invoke(main, ["eval", "--help"]).output


def test_cli_eval_rejects_a_malformed_filter(corpus, tiny_models):
    url, _, _ = corpus
    result = CliRunner().invoke(main, ["--database-url", url, "eval", str(QUESTIONS), "--filter", "{bad"])
    assert result.exit_code == 64
    assert "expected a JSON filter document" in result.output


@pytest.mark.parametrize("args,code,message", [
    (("--collection", "nope"), 1, "collection 'nope' does not exist in this database; it holds demo"),
    (("--filter", '{"year": {"$regex": "19"}}'), 64, "unknown operator '$regex' on field 'year'"),
    (("--runtime", "onnx", "--precision", "int8"), 1, "runtime 'onnx' runs fp32 on CPU only"),
])
def test_cli_eval_refuses_before_loading_the_models(corpus, tiny_models, tmp_path, args, code, message):
    url, _, _ = corpus
    # A copy of the pair without its weights: reading them would fail with "cannot load".
    env = {}
    for kind, folder in zip(("QUESTION", "PASSAGE"), tiny_models):
        copy = tmp_path / kind.lower()
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("model.safetensors"))
        env[f"DPR_PG_{kind}_MODEL"] = str(copy)
    result = CliRunner().invoke(main, ["--database-url", url, "eval", str(QUESTIONS), *args], env=env)
    assert result.exit_code == code and message in result.output and "cannot load" not in result.output
