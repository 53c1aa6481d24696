"""dpr_pg.aio gives the sync API's results; ingest_records, delete_passages and list_collections."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import dpr_pg
from dpr_pg import aio
from dpr_pg.db.collections import list_collections
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.errors import ConfigError, EncoderMismatchError, FilterError, IngestError, ReaderError, SearchError
from dpr_pg.ingest import ingest, ingest_records
from dpr_pg.ingest.delete import delete_passages
from dpr_pg.reader import Reader

SAMPLE = Path(dpr_pg.__file__).parent / "data" / "sample_es.jsonl"
QUESTIONS = ["¿Cuál es la capital de España?", "¿Quién pintó el Guernica?", "¿Dónde está Sevilla?"]


@pytest.fixture
def loaded(engine: Engine, pair: EncoderPair) -> Engine:
    ingest(engine, pair, SAMPLE, collection="demo")
    return engine


def _summary(hits: dpr_pg.Hits) -> tuple[list[str], list[float], str]:
    return [h.external_id for h in hits], [round(h.score, 5) for h in hits], hits.plan.path


@pytest.mark.parametrize("options", [
    {"k": 5},
    {"k": 5, "collection": "demo", "mode": "exact"},
    {"k": 4, "mode": "hybrid"},
    {"k": 5, "filter": {"topic": "arte"}},
    {"k": 5, "filter": {"year": {"$gte": 1900}}, "exact_threshold": 0, "exact_selectivity": 0},
], ids=["hnsw", "exact", "hybrid", "filter-exact", "filter-iterative"])
def test_async_search_equals_the_sync_search(loaded: Engine, database_url: str, pair: EncoderPair,
                                             options: dict) -> None:
    async def run() -> tuple[list[dpr_pg.Hits], dpr_pg.Hits]:
        engine = await aio.create_async_engine(database_url)
        try:
            many = await aio.search_many(engine, QUESTIONS, encoder=pair, **options)
            one = await aio.search(engine, QUESTIONS[0], encoder=pair, **options)
            return many, one
        finally:
            await engine.dispose()

    many, one = asyncio.run(run())
    expected = dpr_pg.search_many(loaded, QUESTIONS, encoder=pair, **options)
    assert [_summary(h) for h in many] == [_summary(h) for h in expected]
    assert _summary(one) == _summary(expected[0]) and len(one) > 0


def test_async_ask_equals_the_sync_ask_and_checks_before_encoding(loaded: Engine, database_url: str,
                                                                  pair: EncoderPair, tiny_reader: Path) -> None:
    reader = Reader.load(str(tiny_reader))
    options = {"k": 5, "collection": "demo", "top_answers": 2, "filter": {"topic": "arte"}}
    encoded: list[list[str]] = []

    async def encode(questions: list[str]) -> np.ndarray:
        encoded.append(questions)
        return pair.question.encode(questions)

    async def run() -> tuple[dpr_pg.AskResult, list[str]]:
        engine = await aio.create_async_engine(database_url)
        refusals = []
        try:
            result = await aio.ask(engine, QUESTIONS[1], encoder=pair, reader=reader, encode=encode, **options)
            for bad in ({"top_answers": 0}, {"no_answer_threshold": 2.0}, {"filter": {"$where": "1"}}):
                try:
                    await aio.ask(engine, QUESTIONS[1], encoder=pair, reader=reader, encode=encode, **bad)
                except (ReaderError, FilterError) as e:
                    refusals.append(type(e).__name__)
            return result, refusals
        finally:
            await engine.dispose()

    result, refusals = asyncio.run(run())
    expected = dpr_pg.ask(loaded, QUESTIONS[1], encoder=pair, reader=reader, **options)
    got = result.as_dict()
    want = expected.as_dict()
    assert [(a["answer"], a["start"], a["passage"]["external_id"]) for a in got["answers"]] == \
        [(a["answer"], a["start"], a["passage"]["external_id"]) for a in want["answers"]]
    assert [a["score"] for a in got["answers"]] == pytest.approx([a["score"] for a in want["answers"]], abs=1e-5)
    assert len(got["answers"]) == 2 and got["search_path"] == want["search_path"]
    assert refusals == ["ReaderError", "ReaderError", "FilterError"]
    assert encoded == [[QUESTIONS[1]]]  # the refused requests encoded nothing


def test_async_search_takes_vectors_and_runs_in_the_callers_transaction(loaded: Engine, database_url: str,
                                                                        pair: EncoderPair) -> None:
    vector = pair.question.encode(QUESTIONS[1])

    async def run() -> tuple[dpr_pg.Hits, int]:
        engine = await aio.create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("DELETE FROM dpr_pg.passages WHERE external_id = 'guernica'"))
                hits = await aio.search(conn, vector, k=47, collection="demo")  # sees the uncommitted delete
                await conn.rollback()
            async with engine.connect() as conn:
                count = (await conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages"))).scalar_one()
            return hits, count
        finally:
            await engine.dispose()

    hits, count = asyncio.run(run())
    assert "guernica" not in [h.external_id for h in hits] and len(hits) == 46 and count == 47
    expected = [h.external_id for h in dpr_pg.search(loaded, vector, k=47, collection="demo")]
    assert "guernica" in expected  # rolled back
    assert [h.external_id for h in hits] == [i for i in expected if i != "guernica"]


def test_async_search_refuses_what_the_sync_one_refuses(loaded: Engine, database_url: str, pair: EncoderPair) -> None:
    encoded: list[list[str]] = []

    async def encode(questions: list[str]) -> np.ndarray:
        encoded.append(questions)
        return pair.question.encode(questions)

    async def run(question: str = QUESTIONS[0], **options: object) -> None:
        engine = await aio.create_async_engine(database_url)
        try:
            await aio.search(engine, question, encoder=pair, encode=encode, **options)
        finally:
            await engine.dispose()

    with pytest.raises(FilterError, match="unknown operator"):
        asyncio.run(run(filter={"topic": {"$near": 1}}))
    with pytest.raises(SearchError, match="at most 10000 characters, not 10001"):
        asyncio.run(run("x" * 10_001))
    assert encoded == []  # a bad filter or an overlong question fails before anything is encoded
    with loaded.begin() as conn:
        conn.execute(sa.text("UPDATE dpr_pg.encoders SET fingerprint = 'another pair'"))
    with pytest.raises(EncoderMismatchError):
        asyncio.run(run(collection="demo"))


def test_async_ingest_records_writes_what_the_sync_one_writes(engine: Engine, database_url: str,
                                                               pair: EncoderPair, tmp_path: Path) -> None:
    records = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    records += [{"id": "bad", "text": "a\u0000b"}, {"id": "madrid", "text": "Repetido: gana el último."}]
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")

    async def run() -> tuple[dpr_pg.IngestReport, dpr_pg.IngestReport]:
        aengine = await aio.create_async_engine(database_url)
        try:
            first = await aio.ingest_records(aengine, pair, records, collection="via_records")
            again = await aio.ingest_records(aengine, pair, records, collection="via_records")
            return first, again
        finally:
            await aengine.dispose()

    first, again = asyncio.run(run())
    from_file = ingest(engine, pair, jsonl, collection="via_file")
    assert (first.inserted, first.rejected, first.duplicate_count) == (from_file.inserted, 1, 1) == (47, 1, 1)
    assert first.rejections[0].record == "records[47]" and "NUL" in first.rejections[0].reason
    assert (again.inserted, again.updated, again.unchanged, again.encoded) == (0, 0, 47, 0)
    query = ("SELECT external_id, title, text, metadata, content_hash, embedding::text FROM dpr_pg.passages "
             "WHERE collection = :c ORDER BY external_id")
    with engine.connect() as conn:
        assert conn.execute(sa.text(query), {"c": "via_records"}).all() == \
            conn.execute(sa.text(query), {"c": "via_file"}).all()


def test_ingest_records_refuses_an_empty_list_and_a_bad_collection(engine: Engine, pair: EncoderPair) -> None:
    with pytest.raises(IngestError, match="records is empty"):
        ingest_records(engine, pair, [], collection="c")
    with pytest.raises(ConfigError, match="collection name"):
        ingest_records(engine, pair, [{"text": "x"}], collection="")
    report = ingest_records(engine, pair, [["not", "an", "object"], {"text": "Hola."}], collection="c")
    assert [r.as_dict() for r in report.rejections] == [{"record": "records[0]",
                                                         "reason": "expected a JSON object, not list"}]
    assert report.inserted == 1  # the record without an id got its record number: 2


def test_delete_passages_and_list_collections(loaded: Engine, pair: EncoderPair, cli, database_url: str) -> None:
    assert delete_passages(loaded, "demo", ["madrid", "barcelona", "nowhere"]) == 2
    assert delete_passages(loaded, "demo", []) == 0
    (demo,) = list_collections(loaded)
    assert (demo.name, demo.passages) == ("demo", 45)
    assert [e["fingerprint"] for e in demo.encoders] == [pair.fingerprint.id]
    assert list_collections(loaded, names=["other"]) == []
    result = cli("--database-url", database_url, "delete", "borges", "nowhere", "--collection", "demo", check=True)
    assert "demo: deleted 1 of 2 passage(s)" in result.stdout
    listed = json.loads(cli("--database-url", database_url, "collections", "--json", check=True).stdout)
    assert [(c["name"], c["passages"]) for c in listed] == [("demo", 44)]
