"""What one HTTP request asks of the database: the key check outside a transaction, the search in one
transaction that ends with its query, and connections that are kept, not opened anew, under bursts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import Engine

import dpr_pg
from dpr_pg import aio
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.ingest import ingest
from dpr_pg.service.app import POOL_SIZE, create_app
from dpr_pg.service.settings import ServiceSettings

SAMPLE = Path(dpr_pg.__file__).parent / "data" / "sample_es.jsonl"
QUESTION = "¿Cuál es la capital de España?"


@pytest.fixture
def loaded(engine: Engine, pair: EncoderPair) -> Engine:
    ingest(engine, pair, SAMPLE, collection="demo")
    return engine


@asynccontextmanager
async def running(database_url: str, pair: EncoderPair) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The application in this process (started and stopped as uvicorn would), and a client of it."""
    app = create_app(ServiceSettings(database_url=database_url), pair=pair)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield app, client


def _run(scenario: Callable[[FastAPI, httpx.AsyncClient], Awaitable[Any]], database_url: str,
         pair: EncoderPair) -> Any:
    async def main() -> Any:
        async with running(database_url, pair) as (app, client):
            return await scenario(app, client)

    return asyncio.run(main())


@pytest.mark.parametrize("body", [
    {"question": QUESTION, "k": 3, "collection": "demo"},
    {"question": QUESTION, "k": 3, "filter": {"topic": "geografía"}},
    {"question": QUESTION, "k": 3},
], ids=["collection", "filter", "unfiltered"])
def test_a_search_checks_the_key_in_autocommit_then_searches_in_one_transaction(
        loaded: Engine, database_url: str, pair: EncoderPair, body: dict[str, Any]) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> tuple[list[tuple[int, bool, str]], dict[str, Any]]:
        assert (await client.post("/v1/search", json=body)).status_code == 200  # warm: read-once facts are read
        sent: list[tuple[int, bool, str]] = []

        def record(conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
            driver = conn.connection.driver_connection
            sent.append((id(driver), bool(driver.autocommit), " ".join(statement.split())))

        sa.event.listen(app.state.service.engine.sync_engine, "before_cursor_execute", record)
        response = await client.post("/v1/search", json=body)
        assert response.status_code == 200
        return sent, response.json()

    sent, found = _run(scenario, database_url, pair)
    keys = [s for s in sent if "dpr_pg.api_keys" in s[2]]
    search = [s for s in sent if "dpr_pg.api_keys" not in s[2]]
    assert len(keys) == 1 and keys[0][1] is True  # one statement, no BEGIN or COMMIT around it
    assert search and all(not autocommit for _, autocommit, _ in search)  # in a transaction...
    assert len({connection for connection, _, _ in search}) == 1  # ...on one connection
    assert "ORDER BY" in search[-1][2] and "LIMIT" in search[-1][2]  # the hits' query ends it: nothing restored after
    # The encoder pair is checked once: on its own without a filter, else with the planner's settings.
    checks = [statement for _, _, statement in search if "FROM dpr_pg.encoders" in statement]
    assert len(checks) == 1 and ("plan_cache_mode" in checks[0]) == ("collection" in body or "filter" in body)
    options = {k: v for k, v in body.items() if k != "question"}
    expected = dpr_pg.search(loaded, QUESTION, encoder=pair, **options)
    assert [h["external_id"] for h in found["hits"]] == [h.external_id for h in expected]
    assert found["plan"]["path"] == expected.plan.path


def test_async_search_in_the_callers_transaction_still_restores_its_settings(loaded: Engine, database_url: str,
                                                                             pair: EncoderPair) -> None:
    async def run() -> tuple[int, tuple[str, str, str]]:
        engine = await aio.create_async_engine(database_url)
        try:
            async with engine.begin() as conn:
                hits = await aio.search(conn, QUESTION, encoder=pair, k=3, filter={"topic": "geografía"},
                                        exact_threshold=0, exact_selectivity=0)
                settings = (await conn.execute(sa.text(
                    "SELECT current_setting('hnsw.iterative_scan'), current_setting('hnsw.ef_search'), "
                    "current_setting('plan_cache_mode')"))).one()
            return len(hits), tuple(settings)
        finally:
            await engine.dispose()

    count, settings = asyncio.run(run())
    assert count == 3 and settings == ("off", "40", "auto")


def test_bursts_of_concurrent_requests_reuse_the_pools_connections(loaded: Engine, database_url: str,
                                                                   pair: EncoderPair) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> tuple[int, int, list[int]]:
        pool = app.state.service.engine.sync_engine.pool
        opened, closed = [0], [0]
        sa.event.listen(pool, "connect", lambda *args: opened.__setitem__(0, opened[0] + 1))
        sa.event.listen(pool, "close", lambda *args: closed.__setitem__(0, closed[0] + 1))
        statuses: list[int] = []
        for burst in range(3):
            responses = await asyncio.gather(*(
                client.post("/v1/search", json={"question": f"{QUESTION} ({burst}, {i})", "k": 2})
                for i in range(2 * POOL_SIZE)))
            statuses += [r.status_code for r in responses]
        return opened[0], closed[0], statuses

    opened, closed, statuses = _run(scenario, database_url, pair)
    assert statuses == [200] * (6 * POOL_SIZE)
    assert closed == 0  # no connection was closed on its return to the pool...
    assert opened <= POOL_SIZE  # ...so the pool never opened more than it holds


def test_after_a_burst_one_client_at_a_time_is_served_by_one_connection(loaded: Engine, database_url: str,
                                                                        pair: EncoderPair) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> tuple[int, set[int]]:
        await asyncio.gather(*(client.post("/v1/search", json={"question": f"{QUESTION} ({i})", "k": 2})
                               for i in range(POOL_SIZE)))
        backends: set[int] = set()

        def record(conn: sa.Connection, *args: Any) -> None:
            backends.add(conn.connection.driver_connection.info.backend_pid)

        sa.event.listen(app.state.service.engine.sync_engine, "before_cursor_execute", record)
        for i in range(8):
            assert (await client.post("/v1/search", json={"question": f"{QUESTION} [{i}]", "k": 2})).status_code == 200
        return app.state.service.engine.sync_engine.pool.checkedin(), backends

    idle, backends = _run(scenario, database_url, pair)
    assert idle > 1  # the burst left several connections open...
    assert len(backends) == 1  # ...and the last one returned serves each next request (its caches are warm)


def test_when_the_storage_expires_one_search_of_a_burst_reads_it_again(loaded: Engine, database_url: str,
                                                                       pair: EncoderPair,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from dpr_pg.search import api

    monkeypatch.setattr(api, "STORAGE_TTL", 3600.0)  # only the entries aged below expire during the test

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> tuple[list[str], list[int]]:
        body = {"question": QUESTION, "k": 2, "collection": "demo"}
        assert (await client.post("/v1/search", json=body)).status_code == 200
        engine = app.state.service.engine.sync_engine
        for cache in (api._STORAGE, api._PARTITIONED):  # as if STORAGE_TTL had passed
            stamp, value = cache[engine]
            cache[engine] = (stamp - 7200.0, value)
        sent: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *args: sent.append(statement))
        responses = await asyncio.gather(*(client.post("/v1/search", json={**body, "question": f"{QUESTION} ({i})"})
                                           for i in range(16)))
        return sent, [r.status_code for r in responses]

    sent, statuses = _run(scenario, database_url, pair)
    assert statuses == [200] * 16
    assert sum("FROM dpr_pg.settings" in statement for statement in sent) == 1  # the storage, read once
    assert sum("relkind = 'p'" in statement for statement in sent) == 1  # whether the table is partitioned, once
