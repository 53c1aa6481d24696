"""Questions through an encoder pair, from Python and from ``dpr-pg search``; encoder mismatches refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _encoders import stand_in_encoder
from sqlalchemy.engine import Engine

from dpr_pg import EncoderMismatchError, EncoderPair, register_encoder, search, search_many

PASSAGES = [
    ("madrid", "Madrid", "Madrid es la capital de España y su ciudad más poblada.", {"lang": "es", "year": 2020}),
    ("insulina", "Insulina", "La insulina es una hormona que regula la glucosa en la sangre.", {"lang": "es", "year": 2022}),
    ("sevilla", "Sevilla", "Sevilla es la capital de Andalucía, a orillas del Guadalquivir.", {"lang": "es", "year": 2019}),
    ("dna", "DNA", "DNA stores the genetic information of living beings.", {"lang": "en", "year": 2021}),
]


def _store(engine: Engine, pair: EncoderPair) -> None:
    vectors = pair.passage.encode([(title, text) for _, title, text, _ in PASSAGES])
    with engine.begin() as conn:
        encoder_id = register_encoder(conn, pair.fingerprint)
        for (external_id, title, text, metadata), vector in zip(PASSAGES, vectors):
            conn.execute(sa.text(
                "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
                "encoder_id) VALUES ('wiki', :e, :t, :x, CAST(:m AS jsonb), 'h', :v, :enc)"),
                {"e": external_id, "t": title, "x": text, "m": json.dumps(metadata), "v": str(vector.tolist()),
                 "enc": encoder_id})


def test_a_question_searches_like_its_encoded_vector(engine: Engine, fp32_pair: EncoderPair) -> None:
    _store(engine, fp32_pair)
    question = "¿Cuál es la capital de España?"
    by_question = search(engine, question, encoder=fp32_pair, k=4, filter={"lang": "es"})
    by_vector = search(engine, fp32_pair.question.encode(question), k=4, filter={"lang": "es"})
    assert [h.external_id for h in by_question] == [h.external_id for h in by_vector]
    assert len(by_question) == 3 and {h.metadata["lang"] for h in by_question} == {"es"}
    batch = search_many(engine, [question, "¿Qué es la insulina?"], encoder=fp32_pair, k=2)
    assert [len(hits) for hits in batch] == [2, 2]
    hybrid = search(engine, "insulina glucosa", encoder=fp32_pair, k=2, mode="hybrid")
    assert hybrid[0].external_id == "insulina"


def test_vectors_of_another_encoder_pair_are_refused(engine: Engine, fp32_pair: EncoderPair) -> None:
    with engine.begin() as conn:
        other = stand_in_encoder(conn, 768, fingerprint="someone-else", question_model="other/q",
                                 passage_model="other/p")
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, text, content_hash, embedding, encoder_id) "
            "VALUES ('wiki', 'x', 'texto', 'h', :v, :enc)"), {"v": str([0.1] * 768), "enc": other})
    with pytest.raises(EncoderMismatchError, match="other/p"):
        search(engine, "¿Dónde está Sevilla?", encoder=fp32_pair, collection="wiki")


def _cli_env(tiny_models: tuple[Path, Path]) -> dict[str, str]:
    return {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}


def test_cli_search_prints_a_table_of_hits(cli: Any, database_url: str, engine: Engine, fp32_pair: EncoderPair,
                                           tiny_models: tuple[Path, Path]) -> None:
    _store(engine, fp32_pair)
    result = cli("--database-url", database_url, "search", "¿Cuál es la capital de Andalucía?", "-k", "2",
                 "--filter", '{"year": {"$lt": 2021}}', "--explain", env=_cli_env(tiny_models), check=True)
    assert "Sevilla" in result.stdout and "Madrid" in result.stdout and "Insulina" not in result.stdout
    assert "path: exact" in result.stderr


def test_cli_search_json_with_a_vector_file(cli: Any, database_url: str, engine: Engine, fp32_pair: EncoderPair,
                                            tmp_path: Path) -> None:
    _store(engine, fp32_pair)
    vector_file = tmp_path / "q.npy"
    np.save(vector_file, fp32_pair.passage.encode(("Madrid", PASSAGES[0][2])))
    result = cli("--database-url", database_url, "search", "capital", "--vector", str(vector_file), "-k", "3",
                 "--collection", "wiki", "--json", check=True)
    hits = json.loads(result.stdout)
    assert [set(hit) for hit in hits] == [{"id", "external_id", "collection", "title", "text", "metadata", "score",
                                          "rank"}] * 3
    assert hits[0]["external_id"] == "madrid" and [hit["rank"] for hit in hits] == [0, 1, 2]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_cli_search_reports_a_bad_filter_in_one_line(cli: Any, database_url: str, tmp_path: Path) -> None:
    vector_file = tmp_path / "q.json"
    vector_file.write_text(json.dumps([0.0] * 768))
    result = cli("--database-url", database_url, "search", "x", "--vector", str(vector_file),
                 "--filter", '{"year": {"$regex": "20"}}')
    assert result.returncode == 64  # a --filter the core refuses is a usage error
    assert "unknown operator '$regex' on field 'year'; allowed operators: $eq" in result.stderr


def test_cli_search_refuses_an_overlong_question_before_loading_a_model(cli: Any, database_url: str) -> None:
    result = cli("--database-url", database_url, "search", "x" * 10_001, "--question-model", "nobody/no-such-model")
    assert result.returncode == 1
    assert "expected a question of at most 10000 characters, not 10001" in result.stderr
    assert "Traceback" not in result.stderr and "nobody" not in result.stderr


def test_cli_search_takes_the_audit_recommended_ef_search(cli: Any, database_url: str, engine: Engine,
                                                          fp32_pair: EncoderPair, tmp_path: Path) -> None:
    _store(engine, fp32_pair)
    vector_file = tmp_path / "q.npy"
    np.save(vector_file, fp32_pair.passage.encode(("Madrid", PASSAGES[0][2])))
    common = ("--database-url", database_url, "search", "capital", "--vector", str(vector_file), "--json")
    tuned = cli(*common, "--ef-search", "400", check=True)
    default = cli(*common, check=True)
    refused = cli(*common, "--ef-search", "0")
    assert json.loads(tuned.stdout) == json.loads(default.stdout)
    assert refused.returncode == 64 and "--ef-search" in refused.stderr


def test_cli_search_runtimes_give_the_same_hits(cli: Any, database_url: str, engine: Engine, fp32_pair: EncoderPair,
                                                tiny_models: tuple[Path, Path]) -> None:
    _store(engine, fp32_pair)
    common = ("--database-url", database_url, "search", "¿Dónde está Sevilla?", "-k", "4", "--json")
    # fp32 on both: ONNX Runtime runs fp32 on the CPU, torch on whatever device there is
    runs = {runtime: json.loads(cli(*common, "--runtime", runtime, "--precision", "fp32", env=_cli_env(tiny_models),
                                    check=True).stdout)
            for runtime in ("torch", "onnx")}  # auto is torch for one question: the other search tests
    ranked = {runtime: [hit["external_id"] for hit in hits] for runtime, hits in runs.items()}
    assert ranked["torch"] == ranked["onnx"] and len(ranked["torch"]) == 4
    np.testing.assert_allclose([h["score"] for h in runs["onnx"]], [h["score"] for h in runs["torch"]], rtol=1e-4)
    refused = cli(*common, "--runtime", "onnx", "--precision", "int8", env=_cli_env(tiny_models))
    assert refused.returncode == 1 and "runtime 'onnx' runs fp32 on CPU only" in refused.stderr


@pytest.mark.parametrize("columns", [60, 80])
def test_cli_search_table_fits_the_terminal_with_rank_and_score_whole(
        cli: Any, database_url: str, engine: Engine, fp32_pair: EncoderPair, tiny_models: tuple[Path, Path],
        columns: int) -> None:
    _store(engine, fp32_pair)
    result = cli("--database-url", database_url, "search", "¿Dónde está Sevilla?", "-k", "4",
                 env={**_cli_env(tiny_models), "COLUMNS": str(columns)}, check=True)
    lines = result.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= columns
    assert "rank" in lines[1] and "score" in lines[1]  # the header row, not squeezed to "r…"
    scores = [float(line.split("│")[2]) for line in lines if line.startswith("│")]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)


def test_no_hits_are_explained_from_python(engine: Engine, fp32_pair: EncoderPair) -> None:
    from dpr_pg import explain_no_hits

    empty = explain_no_hits(engine, collection="wiki")
    assert (empty.reason, empty.passages) == ("no_passages", 0)
    assert "collection 'wiki' is empty" in empty.message and "dpr-pg ingest" in empty.message
    _store(engine, fp32_pair)
    unknown = explain_no_hits(engine, collection="nosuch")
    assert unknown.reason == "unknown_collection" and unknown.collections == {"wiki": 4}
    assert "collection 'nosuch' does not exist" in unknown.message and "wiki (4 passages)" in unknown.message
    filtered = explain_no_hits(engine, collection="wiki", filter={"year": {"$gt": 3000}})
    assert (filtered.reason, filtered.passages) == ("filter_matched_nothing", 4)
    assert "matched none of the 4 passages in collection 'wiki'" in filtered.message
    assert explain_no_hits(engine, collection="wiki", filter={"lang": "en"}) is None
    assert len(search(engine, [0.1] * 768, collection="wiki", filter={"year": {"$gt": 3000}})) == 0


@pytest.mark.parametrize(
    "args,expected",
    [
        (("--collection", "nosuch"), "no hits: collection 'nosuch' does not exist in this database; it holds wiki (4"),
        (("--collection", "wiki", "--filter", '{"lang": "fr"}'),
         "no hits: the filter matched none of the 4 passages in collection 'wiki'"),
    ],
)
def test_cli_search_with_no_hits_says_why_on_stderr_and_exits_0(
        cli: Any, database_url: str, engine: Engine, fp32_pair: EncoderPair, args: tuple[str, ...],
        expected: str) -> None:
    _store(engine, fp32_pair)
    # No model folder exists here: the answer comes before any model would load.
    env = {"DPR_PG_QUESTION_MODEL": "/nonexistent/q", "DPR_PG_PASSAGE_MODEL": "/nonexistent/p"}
    table = cli("--database-url", database_url, "search", "¿Dónde está Sevilla?", *args, env=env)
    as_json = cli("--database-url", database_url, "search", "¿Dónde está Sevilla?", *args, "--json", env=env)
    assert (table.returncode, as_json.returncode) == (0, 0), table.stderr + as_json.stderr
    assert table.stdout == "" and json.loads(as_json.stdout) == []
    assert expected in table.stderr and len(table.stderr.splitlines()) == 1


def test_cli_search_checks_its_options_before_loading_models(cli: Any, database_url: str) -> None:
    env = {"DPR_PG_QUESTION_MODEL": "/nonexistent/q", "DPR_PG_PASSAGE_MODEL": "/nonexistent/p"}
    precision = cli("--database-url", database_url, "search", "x", "--precision", "fp64", env=env)
    bad_json = cli("--database-url", database_url, "search", "x", "--filter", "{bad", env=env)
    bad_grammar = cli("--database-url", database_url, "search", "x", "--filter", '{"a": {"$regex": 1}}', env=env)
    assert precision.returncode == 64 and "'fp64' is not one of 'auto', 'fp32'" in precision.stderr
    assert bad_json.returncode == 64 and "expected a JSON filter document" in bad_json.stderr
    assert bad_grammar.returncode == 64 and "unknown operator '$regex'" in bad_grammar.stderr
    for result in (precision, bad_json, bad_grammar):
        assert "cannot load" not in result.stderr  # no model was loaded


def test_cli_search_progress_names_the_model_loading(cli: Any, database_url: str, engine: Engine,
                                                     fp32_pair: EncoderPair, tiny_models: tuple[Path, Path]) -> None:
    _store(engine, fp32_pair)
    common = ("--database-url", database_url, "search", "¿Dónde está Sevilla?", "-k", "1", "--json")
    shown = cli(*common, "--progress", env=_cli_env(tiny_models), check=True)
    hidden = cli(*common, env=_cli_env(tiny_models), check=True)  # stderr is no terminal here
    assert "loading the question encoder" in shown.stderr and hidden.stderr == ""
    assert json.loads(shown.stdout) == json.loads(hidden.stdout)
