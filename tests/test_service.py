"""dpr-pg serve: a real server on a free local port against the embedded PostgreSQL, every endpoint."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from click.testing import CliRunner
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dpr_pg
from dpr_pg.db import embedded
from dpr_pg.cli import main
from dpr_pg.errors import DimensionError, FilterError, InvalidKError, QueryVectorError, ReaderError, SearchError
from dpr_pg.search.orm import DprSearchable, model_search_statement
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.ingest import ingest, ingest_records
from dpr_pg.reader import Reader
from dpr_pg.db.schema import head_revision
from dpr_pg.service.keys import create_key, revoke_key
import _served
from _devices import assert_same_vectors
from _encoders import stand_in_encoder

SAMPLE = Path(dpr_pg.__file__).parent / "data" / "sample_es.jsonl"
QUESTION = "¿Cuál es la capital de España?"
QUESTIONS = ["¿Quién pintó el Guernica?", "¿Dónde está Sevilla?", "¿Qué es la insulina?", QUESTION,
             "¿Quién escribió Cien años de soledad?", "¿Cuál es el río más largo?"]
EXPECTED_PATHS = {"/v1/search", "/v1/search/batch", "/v1/ask", "/v1/encode/questions", "/v1/encode/passages",
                  "/v1/collections/{collection}/passages", "/v1/collections/{collection}/passages/{external_id}",
                  "/v1/collections", "/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def reader(tiny_reader: Path) -> Reader:
    return Reader.load(str(tiny_reader))


@pytest.fixture(scope="module")
def service_db(server, pair: EncoderPair) -> Iterator[tuple[str, str]]:
    """(URL, name) of a database with the sample in 'demo' and two passages in 'other'."""
    name = server.create_database(template=server.initialized_template(768))
    url = server.url_for(name)
    engine = sa.create_engine(url)
    ingest(engine, pair, SAMPLE, collection="demo")
    ingest_records(engine, pair, [{"id": "o1", "text": "Otra colección, otro texto sobre Sevilla."},
                                  {"id": "o2", "text": "El Guadalquivir pasa por Sevilla."}], collection="other")
    engine.dispose()
    yield url, name
    server.drop_database(name)


@pytest.fixture(scope="module")
def engine(service_db: tuple[str, str]) -> Iterator[Engine]:
    eng = sa.create_engine(service_db[0], pool_pre_ping=True)  # survives the outage test
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def served(service_db: tuple[str, str], tiny_models: tuple[Path, Path],
           tiny_reader: Path) -> Iterator[_served.Served]:
    running = _served.start(service_db[0], tiny_models, "--reader", str(tiny_reader))
    yield running
    assert running.stop() == -signal.SIGTERM
    assert "Finished server process" in running.output


@pytest.fixture
def client(served: _served.Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120) as c:
        yield c


@pytest.fixture
def no_keys_after(engine: Engine) -> Iterator[None]:
    """Revoke every key the test made: the other tests run on an open (loopback, keyless) server."""
    yield
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE dpr_pg.api_keys SET revoked_at = now() WHERE revoked_at IS NULL"))


def _ids_and_scores(hits: list[dict]) -> tuple[list[str], list[float]]:
    return [h["external_id"] for h in hits], [h["score"] for h in hits]


# ---- start-up, documents ----------------------------------------------------------------------------


def test_a_keyless_server_says_it_serves_localhost_only(served: _served.Served) -> None:
    assert "no API key is live: serving without authentication on 127.0.0.1 (this machine) only" in served.output


def test_openapi_lists_every_endpoint_and_docs_are_served(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == EXPECTED_PATHS
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text


# ---- search -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"k": 5, "collection": "demo"},
    {"k": 3, "mode": "exact"},
    {"k": 4, "mode": "hybrid", "collection": "demo"},
    {"k": 5, "filter": {"topic": "arte"}},
], ids=["dense", "exact", "hybrid", "filter"])
def test_search_answers_as_the_python_api_does(client: httpx.Client, engine: Engine, pair: EncoderPair,
                                               options: dict) -> None:
    response = client.post("/v1/search", json={"question": QUESTION, **options})
    assert response.status_code == 200, response.text
    body = response.json()
    hits = dpr_pg.search(engine, QUESTION, encoder=pair, **options)
    ids, scores = _ids_and_scores(body["hits"])
    assert ids == [h.external_id for h in hits] and len(ids) == len(hits) > 0
    assert scores == pytest.approx([h.score for h in hits], abs=1e-4)
    assert (body["plan"]["path"], body["plan"]["reason"]) == (hits.plan.path, hits.plan.reason)
    assert set(body["hits"][0]) == {"id", "external_id", "collection", "title", "text", "metadata", "score", "rank"}


def test_a_query_vector_finds_what_its_question_finds(client: httpx.Client, pair: EncoderPair) -> None:
    vector = pair.question.encode(QUESTION).tolist()
    by_vector = client.post("/v1/search", json={"vector": vector, "k": 5}).json()
    by_question = client.post("/v1/search", json={"question": QUESTION, "k": 5}).json()
    assert _ids_and_scores(by_vector["hits"])[0] == _ids_and_scores(by_question["hits"])[0]


def test_batch_search_equals_one_search_per_question(client: httpx.Client) -> None:
    batch = client.post("/v1/search/batch", json={"questions": QUESTIONS, "k": 3, "collection": "demo"})
    assert batch.status_code == 200, batch.text
    singles = [client.post("/v1/search", json={"question": q, "k": 3, "collection": "demo"}).json()
               for q in QUESTIONS]
    assert [_ids_and_scores(r["hits"])[0] for r in batch.json()["results"]] == \
        [_ids_and_scores(r["hits"])[0] for r in singles]


# ---- ask --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"k": 5, "collection": "demo", "top_answers": 3},
    {"k": 4, "mode": "hybrid", "filter": {"topic": "arte"}},
], ids=["dense", "hybrid-filter"])
def test_ask_answers_as_the_python_api_does(client: httpx.Client, engine: Engine, pair: EncoderPair,
                                            reader: Reader, options: dict) -> None:
    response = client.post("/v1/ask", json={"question": QUESTION, **options})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = dpr_pg.ask(engine, QUESTION, encoder=pair, reader=reader, **options).as_dict()
    assert set(body) == set(expected)
    assert (body["passages_read"], body["search_path"], body["no_answer"]) == \
        (expected["passages_read"], expected["search_path"], False)
    got = [(a["answer"], a["start"], a["end"], a["passage"]["external_id"]) for a in body["answers"]]
    assert got == [(a["answer"], a["start"], a["end"], a["passage"]["external_id"]) for a in expected["answers"]]
    assert len(got) == options.get("top_answers", 1)
    assert [a["score"] for a in body["answers"]] == pytest.approx([a["score"] for a in expected["answers"]], abs=1e-4)
    for answer in body["answers"]:
        assert answer["passage"]["text"][answer["start"]:answer["end"]] == answer["answer"]
        assert 0 <= answer["score"] <= 1
    if "filter" in options:
        assert {a["passage"]["metadata"]["topic"] for a in body["answers"]} == {"arte"}


def test_ask_with_an_unreachable_threshold_answers_no_answer(client: httpx.Client) -> None:
    response = client.post("/v1/ask", json={"question": QUESTION, "k": 3, "no_answer_threshold": 1.0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["no_answer"], body["answers"], body["passages_read"]) == (True, [], 3)
    assert 0 <= body["no_answer_score"] <= 1


@pytest.mark.parametrize(("body", "error"), [
    ({"question": "   "}, "reader_error"),
    ({"question": "x", "top_answers": 0}, "reader_error"),
    ({"question": "x", "no_answer_threshold": 1.5}, "invalid_request"),
    ({"question": "x", "k": 101}, "search_error"),
    ({"question": "x", "filter": {"$where": "1"}}, "filter_error"),
    ({"question": "x", "mode": "fuzzy"}, "invalid_request"),
    ({"question": "a\u0000b"}, "invalid_request"),
    ({"k": 3}, "invalid_request"),
    ({"question": "x" * 10_001}, "invalid_request"),
], ids=["blank", "top-answers-0", "threshold", "k-big", "filter", "mode", "nul", "no-question", "long-question"])
def test_bad_ask_input_gets_422_json(client: httpx.Client, body: dict, error: str) -> None:
    response = client.post("/v1/ask", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == error and response.json()["message"]


def test_concurrent_questions_get_the_results_of_unbatched_ones(client: httpx.Client, engine: Engine,
                                                                 pair: EncoderPair, served: _served.Served) -> None:
    questions = [f"{q} ({i})" for i in range(4) for q in QUESTIONS]  # 24 distinct questions, none cached

    async def ask_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=served.url, timeout=120) as aclient:
            replies = await asyncio.gather(*(aclient.post("/v1/search", json={"question": q, "k": 3})
                                             for q in questions))
        return [r.json() for r in replies]

    answers = asyncio.run(ask_all())
    for question, answer in zip(questions, answers):
        expected = dpr_pg.search(engine, question, encoder=pair, k=3)  # unbatched, in this process
        ids, scores = _ids_and_scores(answer["hits"])
        assert ids == [h.external_id for h in expected]
        assert scores == pytest.approx([h.score for h in expected], abs=1e-4)
    metrics = client.get("/metrics").text
    assert "dpr_pg_encoder_batch_size_count" in metrics


# ---- encode -----------------------------------------------------------------------------------------


def test_encode_endpoints_return_the_encoders_vectors_and_fingerprint(client: httpx.Client, pair: EncoderPair) -> None:
    questions = client.post("/v1/encode/questions", json={"questions": ["¿Qué es el ADN?", "¿Dónde está Cádiz?"]})
    assert questions.status_code == 200, questions.text
    body = questions.json()
    assert body["dim"] == 768 and body["fingerprint"]["id"] == pair.fingerprint.id
    assert_same_vectors(np.array(body["vectors"]), pair.question.encode(["¿Qué es el ADN?", "¿Dónde está Cádiz?"]),
                        pair.question)
    passages = client.post("/v1/encode/passages", json={"passages": [{"title": "Cádiz", "text": "Una ciudad."},
                                                                     {"text": "palabra " * 2000}]}).json()
    # Encoded beside a 512-token passage there, alone here: equal up to the device's rounding
    assert_same_vectors(np.array(passages["vectors"][0]), pair.passage.encode(("Cádiz", "Una ciudad.")), pair.passage)
    assert passages["truncated"] == [1]


# ---- write ------------------------------------------------------------------------------------------


def test_upsert_reports_like_ingest_and_writes_nothing_twice(client: httpx.Client, engine: Engine) -> None:
    records = [{"id": "p1", "title": "Cádiz", "text": "Cádiz es una ciudad antigua.", "topic": "geografía"},
               {"id": "p2", "text": "   "},
               {"id": "p3", "text": "El Teide está en Tenerife.", "year": 2024}]
    first = client.put("/v1/collections/writes/passages", json={"records": records})
    assert first.status_code == 200, first.text
    report = first.json()
    assert (report["inserted"], report["rejected"], report["encoded"]) == (2, 1, 2)
    assert report["rejections"] == [{"record": "records[1]",
                                     "reason": "text is empty or whitespace only; expected the passage's text"}]
    again = client.put("/v1/collections/writes/passages", json={"records": records}).json()
    assert (again["inserted"], again["updated"], again["unchanged"], again["encoded"]) == (0, 0, 2, 0)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT external_id, metadata FROM dpr_pg.passages "
                                      "WHERE collection = 'writes' ORDER BY external_id")).all()
    assert stored == [("p1", {"topic": "geografía"}), ("p3", {"year": 2024})]


def test_strict_upsert_stops_at_a_bad_record_with_422(client: httpx.Client) -> None:
    response = client.put("/v1/collections/strict/passages",
                          json={"records": [{"id": "x", "text": "bien"}, {"id": "y"}], "strict": True})
    assert response.status_code == 422
    assert response.json()["error"] == "ingest_error" and "records[1]" in response.json()["message"]


def test_delete_removes_one_passage_then_says_404(client: httpx.Client) -> None:
    client.put("/v1/collections/deletes/passages", json={"records": [{"id": "gone", "text": "Adiós."}]})
    first = client.delete("/v1/collections/deletes/passages/gone")
    assert (first.status_code, first.json()["deleted"]) == (200, 1)
    second = client.delete("/v1/collections/deletes/passages/gone")
    assert (second.status_code, second.json()["error"]) == (404, "not_found")


def test_collections_lists_counts_and_encoders(client: httpx.Client, pair: EncoderPair) -> None:
    found = {c["name"]: c for c in client.get("/v1/collections").json()["collections"]}
    assert found["demo"]["passages"] == 47 and found["other"]["passages"] == 2
    assert [e["fingerprint"] for e in found["demo"]["encoders"]] == [pair.fingerprint.id]


# ---- operations -------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(client: httpx.Client, pair: EncoderPair, tiny_reader: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert (ready["status"], ready["schema_revision"], ready["dim"]) == ("ready", head_revision(), 768)
    assert ready["encoder"]["id"] == pair.fingerprint.id
    assert ready["reader"] == str(tiny_reader.resolve())
    client.post("/v1/search", json={"question": QUESTION, "k": 1})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'dpr_pg_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'dpr_pg_http_request_duration_seconds_bucket{le="0.002",method="POST",route="/v1/search"}' in text
    assert 'dpr_pg_database_seconds_count{operation="search"}' in text
    assert "dpr_pg_encoder_batch_seconds_count" in text and "dpr_pg_question_cache_hits" in text


# ---- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "error"), [
    ({"question": "x", "filter": {"topic": {"$regex": "a"}}}, "filter_error"),
    ({"question": "x", "filter": {"$where": "1"}}, "filter_error"),
    ({"vector": [0.5, 1.0, 2.0]}, "dimension_error"),
    ({"question": "x", "k": 0}, "search_error"),
    ({"question": "x", "k": 10001}, "search_error"),
    ({"question": "x", "vector": [1.0]}, "invalid_request"),
    ({"question": "x", "mode": "fuzzy"}, "invalid_request"),
    ({"question": "a\u0000b"}, "invalid_request"),
    ({"question": "\ud800"}, "invalid_request"),
    ({"question": "x", "collection": "a\u0000"}, "invalid_request"),
    ({"question": "x" * 10_001}, "invalid_request"),
    ({"vector": [0.5] * 8, "mode": "hybrid", "query_text": "x" * 10_001}, "invalid_request"),
], ids=["operator", "dollar-field", "dimension", "k-0", "k-big", "both", "mode", "nul", "surrogate", "nul-collection",
        "long-question", "long-query-text"])
def test_bad_search_input_gets_422_json(client: httpx.Client, body: dict, error: str) -> None:
    response = client.post("/v1/search", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == error and response.json()["message"]


def test_non_finite_vectors_and_malformed_json_get_422(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    nan = client.post("/v1/search", content='{"vector": [NaN' + ", 1.0" * 767 + "]}", headers=headers)
    assert (nan.status_code, nan.json()["error"]) == (422, "search_error")
    broken = client.post("/v1/search", content='{"question": ', headers=headers)
    assert (broken.status_code, broken.json()["error"]) == (422, "invalid_request")


def test_an_overflowing_score_is_null_not_a_500(client: httpx.Client) -> None:
    response = client.post("/v1/search", json={"vector": [3e38] * 768, "k": 1, "mode": "exact"})
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["score"] is None


def test_a_body_over_the_limit_gets_413(client: httpx.Client) -> None:
    records = [{"id": str(i), "text": "x" * 1000} for i in range(1100)]
    response = client.put("/v1/collections/big/passages", json={"records": records})
    assert (response.status_code, response.json()["error"]) == (413, "body_too_large")


def test_an_unknown_route_gets_json_404(client: httpx.Client) -> None:
    response = client.get("/v2/nothing")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


def test_another_encoder_pairs_collection_gets_409(client: httpx.Client, engine: Engine) -> None:
    with engine.begin() as conn:
        other = stand_in_encoder(conn, 768, fingerprint="elsewhere")
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, content_hash, embedding, encoder_id) "
            "SELECT 'foreign', external_id, title, text, content_hash, embedding, :other FROM dpr_pg.passages "
            "WHERE collection = 'demo' LIMIT 1"), {"other": other})
    try:
        response = client.post("/v1/search", json={"question": QUESTION, "collection": "foreign"})
        assert (response.status_code, response.json()["error"]) == (409, "encoder_mismatch")
        assert "made by question=q@unknown" in response.json()["message"]
        asked = client.post("/v1/ask", json={"question": QUESTION, "collection": "foreign"})
        assert (asked.status_code, asked.json()["error"]) == (409, "encoder_mismatch")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM dpr_pg.passages WHERE encoder_id = :other"), {"other": other})
            conn.execute(sa.text("DELETE FROM dpr_pg.encoders WHERE id = :other"), {"other": other})


def test_a_database_that_goes_away_gives_503_then_recovers(client: httpx.Client, server,
                                                           service_db: tuple[str, str]) -> None:
    admin = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = service_db[1]
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
    try:
        down = client.post("/v1/search", json={"question": QUESTION, "k": 2})
        assert (down.status_code, down.json()["error"]) == (503, "database_unavailable")
        assert down.headers["retry-after"] == "1"
        assert client.get("/readyz").status_code == 503
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    back = client.post("/v1/search", json={"question": QUESTION, "k": 2})
    assert back.status_code == 200 and len(back.json()["hits"]) == 2


# ---- keys -------------------------------------------------------------------------------------------


def test_keys_scopes_and_collections(client: httpx.Client, engine: Engine, served: _served.Served,
                                     no_keys_after: None) -> None:
    _, reader = create_key(engine, "reader", collections=["demo"], scopes=["search"])
    _, writer = create_key(engine, "writer", collections=["other"], scopes=["search", "write"])

    def as_(secret: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"} if secret else {}

    ask = {"question": QUESTION, "k": 3}
    anonymous = client.post("/v1/search", json=ask)
    assert (anonymous.status_code, anonymous.headers["www-authenticate"]) == (401, "Bearer")
    assert client.post("/v1/search", json=ask, headers=as_("dprpg_not-a-key")).status_code == 401
    assert client.post("/v1/search", json={"k": 0}).status_code == 401  # the key is checked before the body
    assert client.post("/v1/search", json={**ask, "collection": "demo"}, headers=as_(reader)).status_code == 200
    assert client.post("/v1/search", json={**ask, "collection": "other"}, headers=as_(reader)).status_code == 403
    everywhere = client.post("/v1/search", json={**ask, "k": 50}, headers=as_(reader)).json()
    assert {h["collection"] for h in everywhere["hits"]} == {"demo"}  # no collection named: the key's only
    assert client.post("/v1/ask", json=ask).status_code == 401
    assert client.post("/v1/ask", json={**ask, "collection": "other"}, headers=as_(reader)).status_code == 403
    answered = client.post("/v1/ask", json={**ask, "k": 50, "top_answers": 20}, headers=as_(reader)).json()
    assert {a["passage"]["collection"] for a in answered["answers"]} == {"demo"}
    record = {"records": [{"id": "k1", "text": "Escrito con una llave."}]}
    assert client.put("/v1/collections/demo/passages", json=record, headers=as_(reader)).status_code == 403
    assert client.put("/v1/collections/demo/passages", json=record, headers=as_(writer)).status_code == 403
    assert client.put("/v1/collections/other/passages", json=record, headers={"X-API-Key": writer}).status_code == 200
    listed = client.get("/v1/collections", headers=as_(reader)).json()["collections"]
    assert [c["name"] for c in listed] == ["demo"]
    assert client.get("/healthz").status_code == 200  # operations need no key
    revoke_key(engine, "reader")
    revoked = client.post("/v1/search", json={**ask, "collection": "demo"}, headers=as_(reader))
    assert revoked.status_code == 401
    assert reader not in served.output and writer not in served.output
    assert "dprpg_not-a-key" not in served.output


def test_keys_cli_creates_lists_and_revokes(cli, service_db: tuple[str, str], no_keys_after: None) -> None:
    url = service_db[0]
    created = cli("--database-url", url, "keys", "create", "ci", "--collection", "demo", "--scope", "search",
                  "--json", check=True)
    secret = json.loads(created.stdout)["key"]
    assert secret.startswith("dprpg_") and len(secret) > 40
    listed = json.loads(cli("--database-url", url, "keys", "list", "--json", check=True).stdout)
    assert [(k["name"], k["collections"], k["scopes"]) for k in listed] == [("ci", ["demo"], ["search"])]
    assert secret not in json.dumps(listed) and listed[0]["prefix"] == secret[:12]
    assert "revoked ci" in cli("--database-url", url, "keys", "revoke", "ci", check=True).stdout
    assert json.loads(cli("--database-url", url, "keys", "list", "--json", check=True).stdout) == []
    again = cli("--database-url", url, "keys", "revoke", "ci")
    assert again.returncode == 1 and "no live key named 'ci'" in again.stderr


def test_serve_refuses_another_address_without_keys(cli, service_db: tuple[str, str]) -> None:
    result = cli("--database-url", service_db[0], "serve", "--host", "0.0.0.0")
    assert result.returncode == 1
    assert "binds to localhost only, not 0.0.0.0" in result.stderr and "--insecure-no-auth" in result.stderr


def test_serve_with_a_missing_reader_folder_says_so_before_starting(cli, service_db: tuple[str, str],
                                                                      tmp_path: Path) -> None:
    result = cli("--database-url", service_db[0], "serve", "--reader", str(tmp_path / "no-reader"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot load the reader '{tmp_path / 'no-reader'}': the folder" in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_serve_without_the_extra_says_what_to_install() -> None:
    code = "import sys; sys.modules['fastapi'] = None; from dpr_pg.cli import main; main(['serve'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "pip install 'dpr-pg[serve]'" in result.stderr


def test_serve_runs_on_the_embedded_server_without_a_url_or_a_reader(cli, tiny_models: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    home = {"DPR_PG_HOME": str(tmp_path / "home")}
    cli("init", env=home, check=True)
    running = _served.start(None, tiny_models, env=home)
    try:
        put = httpx.put(f"{running.url}/v1/collections/local/passages", timeout=120,
                        json={"records": [{"id": "a", "text": "Sevilla está en Andalucía."}]})
        assert put.status_code == 200 and put.json()["inserted"] == 1
        found = httpx.post(f"{running.url}/v1/search", json={"question": "¿Dónde está Sevilla?", "k": 1}, timeout=120)
        assert [h["external_id"] for h in found.json()["hits"]] == ["a"]
        unread = httpx.post(f"{running.url}/v1/ask", json={"question": "¿Dónde está Sevilla?"}, timeout=120)
        assert (unread.status_code, unread.json()["error"]) == (404, "reader_not_configured")
        assert "dpr-pg serve --reader MODEL" in unread.json()["message"]
        assert httpx.get(f"{running.url}/readyz", timeout=120).json()["reader"] is None
    finally:
        stopped = running.stop()
        left = _server_left_running(tmp_path / "home")
    assert stopped == -signal.SIGTERM
    assert not left, "dpr-pg serve, stopped by SIGTERM, left the embedded server it started running"


def _server_left_running(home: Path) -> bool:
    """Whether the embedded server under ``home`` still runs (within its stop wait); stops it if so."""
    for _ in range(300):
        if not embedded.server_status(home=home).running:
            return False
        time.sleep(0.1)
    embedded.stop_server(home=home, force=True)
    return True


# ---- shutdown ---------------------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish(service_db: tuple[str, str], tiny_models: tuple[Path, Path],
                                                    engine: Engine, client: httpx.Client) -> None:
    client.put("/v1/collections/shutdown/passages", json={"records": [{"id": "last", "text": "La última."}]})
    running = _served.start(service_db[0], tiny_models)
    reply: list[httpx.Response] = []
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended('dpr_pg.ingest:' || 'shutdown', 0))"))
        thread = threading.Thread(target=lambda: reply.append(
            httpx.delete(f"{running.url}/v1/collections/shutdown/passages/last", timeout=120)))
        thread.start()
        with engine.connect() as probe:  # wait until the server's DELETE waits for our lock
            for _ in range(6000):
                waiting = probe.execute(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar_one()
                if waiting:
                    break
                probe.execute(sa.text("SELECT pg_sleep(0.02)"))
        assert waiting == 1
        running.process.send_signal(signal.SIGTERM)  # while the DELETE is in flight
        holder.commit()  # releases the lock: the DELETE goes on
    thread.join(120)
    assert running.process.wait(120) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
    assert reply and reply[0].status_code == 200 and reply[0].json()["deleted"] == 1
    assert "Shutting down" in running.output and "Finished server process" in running.output


# ---- one validation path: the same mistake, the same error on every face ------------------------------

_GOOD = [0.1] * 768
FACE_CASES = {
    "k-0": ({"k": 0}, InvalidKError, "search_error", "expected k between 1 and 10000, not 0"),
    "k-too-large": ({"k": 10_001}, InvalidKError, "search_error", "expected k between 1 and 10000, not 10001"),
    "nan-vector": ({"vector": [float("nan")] + _GOOD[1:]}, QueryVectorError, "search_error",
                   "the query vector holds NaN, infinity or values beyond float32"),
    "wrong-dimension": ({"vector": [0.5, 1.0, 2.0]}, DimensionError, "dimension_error",
                        "expected a query vector of 768 dimensions, not 3"),
    "bad-filter": ({"filter": {"lang": {"$regex": "x"}}}, FilterError, "filter_error",
                   "unknown operator '$regex' on field 'lang'"),
}


class _FacesBase(DeclarativeBase):
    pass


class _FacesDoc(DprSearchable, _FacesBase):
    __tablename__ = "faces_docs"
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.mark.parametrize("case", list(FACE_CASES), ids=list(FACE_CASES))
def test_the_same_mistake_gets_the_same_error_on_every_face(case: str, engine: Engine, client: httpx.Client,
                                                            service_db: tuple[str, str], tmp_path: Path) -> None:
    change, kind, service_error, expected = FACE_CASES[case]
    request = {"vector": _GOOD, "k": 5, "filter": None} | change

    with pytest.raises(kind) as python_face:
        dpr_pg.search(engine, request["vector"], k=request["k"], filter=request["filter"])
    message = str(python_face.value)
    assert expected in message

    with pytest.raises(kind) as orm_face:
        model_search_statement(_FacesDoc, request["vector"], k=request["k"], filter=request["filter"])
    assert str(orm_face.value) == message

    body = {"vector": request["vector"], "k": request["k"]} | ({"filter": request["filter"]} if request["filter"] else {})
    response = client.post("/v1/search", content=json.dumps(body), headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"], response.json()["message"]) == (422, service_error, message)

    vector_file = tmp_path / "q.json"
    vector_file.write_text(json.dumps(request["vector"]))
    args = ["--database-url", service_db[0], "search", "x", "--vector", str(vector_file), "-k", str(request["k"])]
    if request["filter"]:
        args += ["--filter", json.dumps(request["filter"])]
    result = CliRunner().invoke(main, args)
    # An option the core refuses is a usage error (64); a vector file it refuses, an error (1).
    assert result.exit_code == (64 if "k" in change or "filter" in change else 1), result.output
    assert message in " ".join(result.output.split()), result.output


ASK_AND_EF_CASES = {
    "ask-k-101": ({"k": 101}, InvalidKError, "expected k between 1 and 100, not 101"),
    "ef-search-0": ({"ef_search": 0}, SearchError, "expected ef_search between 1 and 1000, not 0"),
    "ef-search-1001": ({"ef_search": 1001}, SearchError, "expected ef_search between 1 and 1000, not 1001"),
    "top-answers-0": ({"top_answers": 0}, ReaderError, "expected top_answers between 1 and 100, not 0"),
    "top-answers-101": ({"top_answers": 101}, ReaderError, "expected top_answers between 1 and 100, not 101"),
}


@pytest.mark.parametrize("case", list(ASK_AND_EF_CASES), ids=list(ASK_AND_EF_CASES))
def test_ask_k_and_ef_search_get_the_same_error_on_every_face(case: str, engine: Engine, client: httpx.Client,
                                                              service_db: tuple[str, str], reader: Reader) -> None:
    change, kind, message = ASK_AND_EF_CASES[case]
    options = {"k": 5} | change
    # The checks run before anything is encoded or read: no encoder or reader is needed to see them.
    with pytest.raises(kind, match=f"^{message}$"):
        dpr_pg.ask(engine, "¿Dónde está Sevilla?", encoder=None, reader=None, **options)  # type: ignore[arg-type]
    with pytest.raises(kind, match=f"^{message}$"):
        asyncio.run(dpr_pg.aio.ask(engine, "¿Dónde está Sevilla?", encoder=None,  # type: ignore[arg-type]
                                   reader=None, **options))
    response = client.post("/v1/ask", json={"question": "¿Dónde está Sevilla?"} | options)
    error = "reader_error" if "top_answers" in change else "search_error"
    assert (response.status_code, response.json()["error"], response.json()["message"]) == (422, error, message)
    if "top_answers" in change:
        with pytest.raises(kind, match=f"^{message}$"):  # the reader's own face
            reader.read("¿Dónde está Sevilla?", ["Sevilla está a orillas del Guadalquivir."], **change)
    if "ef_search" in change:
        with pytest.raises(kind, match=f"^{message}$"):
            dpr_pg.search(engine, _GOOD, **options)
        response = client.post("/v1/search", json={"vector": _GOOD} | options)
        assert (response.status_code, response.json()["message"]) == (422, message)
    if "k" in change:
        command = ["ask", "x", "-k", str(options["k"])]
    elif "top_answers" in change:
        command = ["ask", "x", "--top-answers", str(options["top_answers"])]
    else:
        command = ["search", "x", "--ef-search", str(options["ef_search"])]
    result = CliRunner().invoke(main, ["--database-url", service_db[0], *command])
    assert result.exit_code == 64, result.output  # a usage error, as for any option the core refuses
    assert message in " ".join(result.output.split()), result.output

