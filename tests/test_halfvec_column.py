"""A halfvec column: ``dpr-pg init --storage halfvec`` on a new database, every face on it, and the offline rewrite.

Clustered rows as in tests/test_storage.py (tests/_clustered.py, another seed) live in a database whose
``dpr_pg.passages.embedding`` is halfvec(32); scores there are the inner products of half-precision
values (the query is cast to halfvec once), which :func:`half_scores` computes with numpy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _clustered import DIM, N, clustered_vectors, lang_of, load_clustered
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dpr_pg import ConfigError, current_storage, set_storage
from dpr_pg.cli import main
from dpr_pg.db.column import storage_sizes
from dpr_pg.db.schema import downgrade, init
from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.errors import QueryVectorError
from dpr_pg.evaluation.evaluate import evaluate
from dpr_pg.evaluation.qa import read_jsonl
from dpr_pg.ingest import ingest
from dpr_pg.search.api import ann_settings, search, search_statement
from dpr_pg.service.app import create_app
from dpr_pg.service.settings import ServiceSettings
from dpr_pg.sync.worker import run_worker

K = 10
DATA = Path(__file__).resolve().parent.parent / "dpr_pg" / "data"

VECTORS, QUERIES = clustered_vectors(seed=11, clusters=15, queries=5)
HALF = VECTORS.astype(np.float16).astype(np.float32)


def half_scores(query: np.ndarray) -> np.ndarray:
    """What pgvector computes on a halfvec column: half-precision values, summed in float4."""
    return HALF @ query.astype(np.float16).astype(np.float32)


def truth(query: np.ndarray, lang: str | None = None) -> list[int]:
    order = [int(i) for i in np.argsort(-half_scores(query), kind="stable") if lang is None or lang_of(int(i)) == lang]
    return [i + 1 for i in order[:K]]


def _column_type(engine: Engine, table: str = "dpr_pg.passages", column: str = "embedding") -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(:t) AND a.attname = :c"), {"t": table, "c": column}).scalar_one()


def _indexdefs(engine: Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE format('%I.%I', schemaname, tablename)::regclass = to_regclass(:t) "
            "AND indexdef LIKE '%hnsw%'"), {"t": table}).scalars())


@pytest.fixture(scope="module")
def half(server: Any) -> Iterator[Engine]:
    """A new database made with init(storage="halfvec"), then loaded: a halfvec column and app table."""
    name = server.create_database()
    engine = sa.create_engine(server.url_for(name))
    result = init(engine, dim=DIM, storage="halfvec")
    assert (result.storage, result.column) == ("halfvec", "halfvec")
    load_clustered(engine, VECTORS)
    yield engine
    engine.dispose()
    server.drop_database(name)


def test_init_with_halfvec_makes_a_halfvec_column_and_its_index(half: Engine) -> None:
    assert _column_type(half) == f"halfvec({DIM})"
    (definition,) = _indexdefs(half, "dpr_pg.passages")
    assert "(embedding halfvec_ip_ops)" in definition
    chosen = current_storage(half)
    assert (chosen.kind, chosen.column, chosen.bytes_per_dimension) == ("halfvec", "halfvec", 2)
    sizes = storage_sizes(half)
    assert sizes.rows == N and sizes.vector_bytes == N * (8 + 2 * DIM) and sizes.index_bytes > 0


@pytest.mark.parametrize(("document", "path"), [({}, "hnsw"), ({"lang": "es"}, "hnsw-iterative"),
                                                ({"lang": "ca"}, "exact")])
def test_python_and_sql_search_agree_and_score_in_half_precision(half: Engine, document: dict[str, Any],
                                                                 path: str) -> None:
    lang = document.get("lang")
    for query in QUERIES:
        hits = search(half, query, k=K, filter=document, explain=True)
        assert hits.plan.path == path and hits.plan.storage == "halfvec"
        if path != "exact":
            assert "Index Scan using passages_embedding_hnsw" in (hits.plan.explain or "")
        found = [h.id for h in hits]
        assert [h.score for h in hits] == pytest.approx([float(half_scores(query)[i - 1]) for i in found], rel=1e-5)
        assert len(set(found) & set(truth(query, lang))) >= (K if path == "exact" else K - 1)
        with half.begin() as conn:
            rows = conn.execute(sa.text("SELECT id, score FROM dpr_pg.search(CAST(:q AS vector), :k, CAST(:f AS jsonb))"),
                                {"q": str(query.tolist()), "k": K, "f": json.dumps(document)}).all()
        assert [r.id for r in rows] == found
        assert [r.score for r in rows] == pytest.approx([h.score for h in hits], rel=1e-6)


def test_exact_and_hybrid_modes_run_on_the_halfvec_column(half: Engine) -> None:
    query = QUERIES[0]
    exact = search(half, query, k=K, mode="exact")
    assert [h.id for h in exact] == truth(query)
    hybrid = search(half, query, k=K, mode="hybrid", query_text="texto número 7")
    assert hybrid.plan.path == "hybrid" and len(hybrid) == K
    with half.begin() as conn:
        rows = conn.execute(sa.text("SELECT id FROM dpr_pg.hybrid_search(CAST(:q AS vector), 'texto número 7', :k)"),
                            {"q": str(query.tolist()), "k": K}).scalars().all()
    assert rows == [h.id for h in hybrid]


def test_search_statement_in_a_session_uses_the_halfvec_index(half: Engine) -> None:
    query = QUERIES[1]
    for storage in (current_storage(half), None):  # the cast is a no-op on a halfvec column: both reach the index
        stmt = search_statement(query, k=K, storage=storage)
        with Session(half) as session, ann_settings(session.connection(), ef_search=100, iterative=False):
            plan = "\n".join(session.execute(sa.text("EXPLAIN " + str(stmt.compile(
                dialect=half.dialect, compile_kwargs={"literal_binds": True})))).scalars())
            rows = session.execute(stmt).all()
        assert "passages_embedding_hnsw" in plan
        assert [r.id for r in rows] == [h.id for h in search(half, query, k=K)]


def test_app_table_follows_the_storage_and_search_table_reads_its_index(half: Engine) -> None:
    assert _column_type(half, "docs") == f"halfvec({DIM})"
    (definition,) = _indexdefs(half, "docs")
    assert "(embedding halfvec_ip_ops)" in definition
    query = QUERIES[2]
    with half.begin() as conn:
        rows = conn.execute(sa.text("SELECT row_key, score FROM dpr_pg.search_table('docs', CAST(:q AS vector), :k, "
                                    "CAST(:f AS jsonb))"),
                            {"q": str(query.tolist()), "k": K, "f": json.dumps({"lang": "es"})}).all()
    assert [r.row_key["id"] for r in rows] == truth(query, "es")
    assert [r.score for r in rows] == pytest.approx([float(half_scores(query)[r.row_key["id"] - 1]) for r in rows],
                                                    rel=1e-5)


def test_a_query_vector_beyond_halfvec_range_is_refused_before_the_server(half: Engine) -> None:
    query = QUERIES[0].copy()
    query[3] = 70000.0
    with pytest.raises(QueryVectorError, match=r"beyond halfvec's range \(±65504\)"):
        search(half, query, k=K)


def test_a_vector_index_over_the_halfvec_column_is_refused_naming_the_rewrite(half: Engine) -> None:
    with pytest.raises(ConfigError, match="dpr-pg storage set vector --rewrite-column"):
        set_storage(half, "vector")
    with pytest.raises(ConfigError, match="--rewrite-column with one of vector, halfvec"):
        set_storage(half, "bit", rewrite_column=True)
    result = CliRunner().invoke(main, ["--database-url", half.url.render_as_string(hide_password=False),
                                       "storage", "show", "--json"])
    shown = json.loads(result.output)
    assert (shown["storage"], shown["column"], shown["rows"]) == ("halfvec", "halfvec", N)
    assert shown["vector_bytes"] == N * (8 + 2 * DIM) and shown["index_bytes"] > 0


def test_halfvec_beyond_its_index_limit_is_refused_naming_it(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    with pytest.raises(ConfigError, match="halfvec takes at most 4000 dimensions"):
        init(engine, dim=4001, storage="halfvec")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('dpr_pg.passages')")).scalar() is None
    engine.dispose()


# ---- ingest, sync, evaluation, the service: 768-d, tiny encoders --------------------------------------


@pytest.fixture(scope="module")
def half768(server: Any, fp32_pair: EncoderPair) -> Iterator[Engine]:
    """A halfvec(768) database holding sample_es.jsonl (encoded) in collection 'demo'."""
    name = server.create_database()
    engine = sa.create_engine(server.url_for(name))
    init(engine, storage="halfvec")
    report = ingest(engine, fp32_pair, DATA / "sample_es.jsonl", collection="demo", progress=False)
    assert report.inserted > 0 and report.rejected == 0
    yield engine
    engine.dispose()
    server.drop_database(name)


def _stored(engine: Engine, collection: str) -> dict[str, np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT external_id, embedding::real[] FROM dpr_pg.passages "
                                    "WHERE collection = :c"), {"c": collection}).all()
    return {r[0]: np.asarray(r[1], np.float32) for r in rows}


def test_text_ingest_stores_the_encoder_vectors_rounded_to_half(half768: Engine, fp32_pair: EncoderPair) -> None:
    stored = _stored(half768, "demo")
    records = [json.loads(line) for line in (DATA / "sample_es.jsonl").read_text(encoding="utf-8").splitlines()]
    first = records[0]
    (vector,) = fp32_pair.passage.encode([(first.get("title", ""), first["text"])])
    value = stored[str(first["id"])]
    assert np.array_equal(value, value.astype(np.float16).astype(np.float32))  # half-precision values
    # the encoder's vector within half precision (a batch pads differently: the last float4 bits differ)
    assert np.allclose(value, vector, rtol=2**-10, atol=1e-6)


def test_precomputed_embeddings_are_copied_in_halfvec_format_and_out_of_range_rows_rejected(
        half768: Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((6, 768)).astype(np.float32)
    vectors[4, 10] = 1e6  # beyond halfvec: this record is rejected, the others go in
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"e{i}", "text": f"Texto {i}."}) + "\n" for i in range(6)),
                      encoding="utf-8")
    np.save(tmp_path / "in.npy", vectors)
    fingerprint = EncoderFingerprint("test/question", "r1", "test/passage", "r1", "tok", 768, 512)
    report = ingest(half768, None, source, collection="precomputed", embeddings=tmp_path / "in.npy",
                    fingerprint=fingerprint, progress=False)
    assert (report.inserted, report.rejected) == (5, 1), report.as_dict()
    reasons = [json.dumps(r.as_dict(), ensure_ascii=False) for r in report.rejections]
    assert any("beyond halfvec's range (±65504)" in reason and "dimension 10" in reason for reason in reasons), reasons
    stored = _stored(half768, "precomputed")
    assert sorted(stored) == ["e0", "e1", "e2", "e3", "e5"]
    assert np.array_equal(stored["e2"], vectors[2].astype(np.float16).astype(np.float32))


def test_evaluation_doctor_and_the_http_service_work_on_the_halfvec_column(half768: Engine,
                                                                           fp32_pair: EncoderPair) -> None:
    questions = read_jsonl(DATA / "sample_questions_es.jsonl")
    exact = evaluate(half768, fp32_pair, questions, collection="demo", mode="exact")
    dense = evaluate(half768, fp32_pair, questions, collection="demo", mode="dense")
    assert exact.metrics.questions == dense.metrics.questions == len(questions)
    assert exact.metrics.top_k_accuracy == dense.metrics.top_k_accuracy  # a dozen passages: HNSW finds them all
    url = half768.url.render_as_string(hide_password=False)
    doctor = CliRunner().invoke(main, ["--database-url", url, "doctor", "--json"])
    hnsw = json.loads(doctor.stdout)["hnsw"]
    assert (hnsw["storage"], hnsw["column"]) == ("halfvec", "halfvec")
    question = questions[0].question
    expected = search(half768, question, encoder=fp32_pair, k=5, collection="demo")
    with TestClient(create_app(ServiceSettings(database_url=url), pair=fp32_pair)) as client:
        response = client.post("/v1/search", json={"question": question, "k": 5, "collection": "demo"})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert [h["external_id"] for h in hits] == [h.external_id for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_sync_worker_writes_embeddings_into_a_halfvec_app_column(half768: Engine, fp32_pair: EncoderPair) -> None:
    with half768.begin() as conn:
        conn.execute(sa.text("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL)"))
        conn.execute(sa.text("SELECT dpr_pg.enable_table('notes', ARRAY['body'])"))
        conn.execute(sa.text("INSERT INTO notes VALUES (1, 'La Alhambra está en Granada.'), "
                             "(2, 'Sevilla tiene la Giralda.')"))
    assert _column_type(half768, "notes") == "halfvec(768)"
    run_worker(half768, fp32_pair, once=True)
    with half768.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT id, embedding::real[] FROM notes")).all())
    (vector,) = fp32_pair.passage.encode([("", "Sevilla tiene la Giralda.")])
    value = np.asarray(stored[2], np.float32)
    assert np.array_equal(value, value.astype(np.float16).astype(np.float32))  # half-precision values
    assert np.allclose(value, vector, rtol=2**-10, atol=1e-6)


# ---- switching an existing vector database ------------------------------------------------------------


def test_rewrite_column_switches_a_populated_database_offline_and_back(server: Any) -> None:
    name = server.create_database(template=server.initialized_template(DIM))
    engine = sa.create_engine(server.url_for(name))
    load_clustered(engine, VECTORS)
    online = set_storage(engine, "halfvec")  # the index alone: the heap keeps float4 vectors
    assert (online.storage.column, online.column_rewritten) == ("vector", False)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE later (id integer PRIMARY KEY, body text NOT NULL)"))
        conn.execute(sa.text("SELECT dpr_pg.enable_table('later', ARRAY['body'], NULL, :d)"), {"d": DIM})
    (later,) = _indexdefs(engine, "later")  # app tables follow: a halfvec index over their vector column
    assert _column_type(engine, "later") == f"vector({DIM})" and f"::halfvec({DIM})" in later
    query = QUERIES[3]
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO later (id, body, embedding) SELECT id, 'x', embedding FROM docs"))
        conn.execute(sa.text("ANALYZE later"))
        plan = "\n".join(conn.execute(sa.text(
            "EXPLAIN SELECT * FROM dpr_pg.search_table('later', CAST(:q AS vector), :k)"), {
                "q": str(query.tolist()), "k": K}).scalars())
        keys = conn.execute(sa.text("SELECT row_key FROM dpr_pg.search_table('later', CAST(:q AS vector), :k)"),
                            {"q": str(query.tolist()), "k": K}).scalars().all()
    assert "Function Scan" in plan and len(keys) == K
    before = storage_sizes(engine)
    runner = CliRunner()
    url = server.url_for(name)
    result = runner.invoke(main, ["--database-url", url, "storage", "set", "halfvec", "--rewrite-column", "--progress"])
    assert result.exit_code == 0, result.output
    assert f"column vector -> halfvec, index halfvec -> halfvec: {N} rows rewritten" in result.stdout
    assert "ACCESS EXCLUSIVE" in result.stderr
    assert _column_type(engine) == f"halfvec({DIM})"
    (definition,) = _indexdefs(engine, "dpr_pg.passages")
    assert "(embedding halfvec_ip_ops)" in definition
    after = storage_sizes(engine)
    assert after.rows == N and after.vector_bytes * 2 - N * 8 == before.vector_bytes
    assert [h.id for h in search(engine, query, k=K, mode="exact")] == truth(query)
    widened = set_storage(engine, "vector", rewrite_column=True)
    assert (widened.storage.kind, widened.storage.column, widened.rows) == ("vector", "vector", N)
    assert _column_type(engine) == f"vector({DIM})"
    with engine.connect() as conn:  # widening is exact: the half values come back as they were stored
        first = np.asarray(conn.execute(sa.text("SELECT embedding::real[] FROM dpr_pg.passages WHERE external_id = 'doc-1'")).scalar(), np.float32)
    assert np.array_equal(first, HALF[0]), (np.flatnonzero(first != HALF[0]), first[:4], HALF[0][:4])
    engine.dispose()
    server.drop_database(name)


def test_a_halfvec_column_is_widened_before_a_downgrade_below_the_settings(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    init(engine, dim=DIM, storage="halfvec")
    downgrade(engine, "0014")
    assert _column_type(engine) == f"vector({DIM})"
    (definition,) = _indexdefs(engine, "dpr_pg.passages")
    assert "vector_ip_ops" in definition
    engine.dispose()


def test_cli_init_with_halfvec_says_so(empty_url: str) -> None:
    created = CliRunner().invoke(main, ["--database-url", empty_url, "init", "--dim", str(DIM), "--storage", "halfvec"])
    assert created.exit_code == 0, created.output
    assert f"(halfvec({DIM}))" in created.output
    refused = CliRunner().invoke(main, ["--database-url", empty_url, "init", "--storage", "vector"])
    assert refused.exit_code != 0 and "dpr-pg storage set vector --rewrite-column" in refused.output
