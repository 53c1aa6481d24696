"""Read replicas: searches on a real streaming replica, writes on the primary, and what happens when it lags or dies."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

import _served
from _replica import StreamingReplica

from dpr_pg import aio, create_engine, doctor, search
from dpr_pg.ingest import ingest_records
from dpr_pg.config import read_urls
from dpr_pg.db.engine import embedded_server
from dpr_pg.db.embedded import stop_server
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.errors import ConfigError
from dpr_pg.db.replicas import read_connection, read_connection_async, route_of
from dpr_pg.db.schema import init

QUESTION = "¿Dónde está la Giralda?"


@dataclass
class Cluster:
    primary_url: str
    replica: StreamingReplica

    @property
    def replica_url(self) -> str:
        return self.replica.url("app")


@pytest.fixture(scope="module")
def cluster(_isolated_environment: None) -> Iterator[Cluster]:
    """A primary of its own with database ``app`` at head, and one streaming replica of it, built once."""
    home = Path(tempfile.mkdtemp(prefix="dpr_pg_test_replica_"))
    primary = embedded_server(home=home, postgres_version=18)
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
    primary_url = primary.url(driver="psycopg", database="app")
    engine = sa.create_engine(primary_url, poolclass=sa.NullPool)
    init(engine, dim=768)
    engine.dispose()
    replica = StreamingReplica(primary, home / "replica")
    yield Cluster(primary_url, replica)
    try:
        replica.kill()
    finally:
        stop_server(home=home, postgres_version=18, force=True)
        shutil.rmtree(home, ignore_errors=True)


def _records(prefix: str, n: int) -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "text": f"La Giralda es la torre {prefix} número {i} de Sevilla."} for i in range(n)]


def _ids(hits: list) -> list[str]:
    return sorted(hit.external_id for hit in hits)


def _on_replica(engine: sa.Engine) -> bool:
    """Whether the engine's next search would run on a replica (the same routing that search uses)."""
    with read_connection(engine) as conn:
        return bool(conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar())


def test_searches_run_on_the_replica_until_it_lags_and_read_your_writes_sees_the_ingest(
        cluster: Cluster, pair: EncoderPair, tmp_path: Path, cli) -> None:
    engine = create_engine(cluster.primary_url, read_urls=[cluster.replica_url], read_your_writes=True,
                           replica_wait=60)
    ingest_records(engine, pair, _records("a", 3), collection="served")
    # Read-your-writes: the replica answers once it has replayed the ingest.
    assert _ids(search(engine, QUESTION, encoder=pair, collection="served")) == ["a0", "a1", "a2"]
    assert _on_replica(engine)

    cluster.replica.pause()
    try:
        ingest_records(engine, pair, _records("b", 1), collection="served")
        tolerant = create_engine(cluster.primary_url, read_urls=[cluster.replica_url], max_replica_lag=3600)
        # The replica answered: it has not replayed b0.
        assert _ids(search(tolerant, QUESTION, encoder=pair, collection="served")) == ["a0", "a1", "a2"]
        assert route_of(tolerant).statuses[0].state == "streaming"
        assert route_of(tolerant).statuses[0].lag_bytes > 0

        vector = tmp_path / "question.npy"
        np.save(vector, pair.question.encode([QUESTION])[0])
        found = cli("--database-url", cluster.primary_url, "--read-urls", cluster.replica_url, "search", QUESTION,
                    "--vector", str(vector), "--collection", "served", "--json",
                    env={"DPR_PG_MAX_REPLICA_LAG": "3600"}, check=True)
        assert sorted(hit["external_id"] for hit in json.loads(found.stdout)) == ["a0", "a1", "a2"]

        strict = create_engine(cluster.primary_url, read_urls=[cluster.replica_url], max_replica_lag=0)
        assert _ids(search(strict, QUESTION, encoder=pair, collection="served")) == ["a0", "a1", "a2", "b0"]
        assert route_of(strict).statuses[0].state == "lagging"

        fresh = create_engine(cluster.primary_url, read_urls=[cluster.replica_url], read_your_writes=True,
                              replica_wait=0)
        assert _ids(search(fresh, QUESTION, encoder=pair, collection="served")) == ["a0", "a1", "a2", "b0"]
        assert not _on_replica(fresh)  # it has not replayed b0, so the primary answers
    finally:
        cluster.replica.resume()
    assert _ids(search(engine, QUESTION, encoder=pair, collection="served")) == ["a0", "a1", "a2", "b0"]
    assert _on_replica(engine)


def test_async_searches_use_the_replica_and_see_an_async_ingest_with_read_your_writes(
        cluster: Cluster, pair: EncoderPair) -> None:
    async def run() -> tuple[list[str], bool, list[str], list[str], bool]:
        waiting = await aio.create_async_engine(cluster.primary_url, read_urls=[cluster.replica_url],
                                                read_your_writes=True, replica_wait=60)
        await aio.ingest_records(waiting, pair, _records("c", 2), collection="async")
        caught_up = _ids(await aio.search(waiting, QUESTION, encoder=pair, collection="async"))
        async with read_connection_async(waiting) as conn:
            on_replica = bool(await conn.scalar(sa.text("SELECT pg_is_in_recovery()")))
        cluster.replica.pause()
        try:
            impatient = await aio.create_async_engine(cluster.primary_url, read_urls=[cluster.replica_url],
                                                      read_your_writes=True, replica_wait=0, max_replica_lag=3600)
            await aio.ingest_records(impatient, pair, _records("d", 1), collection="async")
            fresh = _ids(await aio.search(impatient, QUESTION, encoder=pair, collection="async"))
            tolerant = await aio.create_async_engine(cluster.primary_url, read_urls=[cluster.replica_url],
                                                     max_replica_lag=3600)
            stale = _ids(await aio.search(tolerant, QUESTION, encoder=pair, collection="async"))
            async with read_connection_async(tolerant) as conn:
                tolerant_on_replica = bool(await conn.scalar(sa.text("SELECT pg_is_in_recovery()")))
        finally:
            cluster.replica.resume()
        for engine in (waiting, impatient, tolerant):
            await engine.dispose()
        return caught_up, on_replica, fresh, stale, tolerant_on_replica

    caught_up, on_replica, fresh, stale, tolerant_on_replica = asyncio.run(run())
    assert caught_up == ["c0", "c1"] and on_replica
    assert fresh == ["c0", "c1", "d0"]  # the replica had not replayed d0: the primary answered
    assert stale == ["c0", "c1"] and tolerant_on_replica  # the replica answered


def test_a_killed_replica_is_skipped_and_searches_go_on_on_the_primary(cluster: Cluster, pair: EncoderPair) -> None:
    engine = create_engine(cluster.primary_url, read_urls=[cluster.replica_url], read_your_writes=True,
                           replica_wait=60)
    ingest_records(engine, pair, _records("k", 2), collection="killed")
    assert _ids(search(engine, QUESTION, encoder=pair, collection="killed")) == ["k0", "k1"]
    assert _on_replica(engine)
    cluster.replica.kill()
    try:
        ingest_records(engine, pair, _records("m", 1), collection="killed")
        assert _ids(search(engine, QUESTION, encoder=pair, collection="killed")) == ["k0", "k1", "m0"]
        assert route_of(engine).statuses[0].state == "unreachable"
        assert not _on_replica(engine)
        report = doctor(engine)
        assert report.replicas[0]["state"] == "unreachable"
        assert any("unreachable" in warning for warning in report.warnings)
    finally:
        cluster.replica.start()


def test_doctor_lists_each_replica_with_its_lag_and_reports_a_primary_and_a_dead_url(
        cluster: Cluster, pair: EncoderPair, database_url: str, cli) -> None:
    engine = create_engine(cluster.primary_url, read_urls=[cluster.replica_url], read_your_writes=True,
                           replica_wait=60)
    ingest_records(engine, pair, _records("x", 1), collection="doctor")
    assert _on_replica(engine)  # it is streaming, and has replayed a commit of a moment ago
    dead = cluster.replica.url("app", password="s3cret").replace("port=5433", "port=1")
    urls = ",".join([cluster.replica.url("app", password="s3cret"), database_url, dead])
    lag = {"DPR_PG_MAX_REPLICA_LAG": "3600"}  # however slow this machine is, it is not lagging by that much
    result = cli("--database-url", cluster.primary_url, "--read-urls", urls, "doctor", "--json", env=lag, check=True)
    report = json.loads(result.stdout)
    streaming, primary, unreachable = report["replicas"]
    assert streaming["state"] == "streaming" and streaming["lag_seconds"] >= 0 and streaming["lag_bytes"] >= 0
    assert ":***@" in streaming["url"]
    assert primary["state"] == "primary"
    assert unreachable["state"] == "unreachable" and unreachable["error"]
    assert any("is a primary" in warning for warning in report["warnings"])
    table = cli("--database-url", cluster.primary_url, "--read-urls", urls, "doctor", env=lag, check=True)
    assert "replica" in table.stdout and "streaming, lag" in table.stdout
    assert "s3cret" not in result.stdout + result.stderr + table.stdout + table.stderr


def test_a_primary_given_as_a_read_url_is_never_searched_nor_written(cluster: Cluster, pair: EncoderPair,
                                                                       database_url: str) -> None:
    engine = create_engine(cluster.primary_url, read_urls=[database_url])
    ingest_records(engine, pair, _records("p", 2), collection="wrong")
    assert _ids(search(engine, QUESTION, encoder=pair, collection="wrong")) == ["p0", "p1"]
    assert route_of(engine).statuses[0].state == "primary"
    other = sa.create_engine(database_url, poolclass=sa.NullPool)
    with other.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar() == 0
    other.dispose()


def test_read_urls_come_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPR_PG_READ_URLS", "postgresql://r1/app, postgresql://r2/app,")
    assert read_urls() == ["postgresql://r1/app", "postgresql://r2/app"]
    assert read_urls([]) == []
    assert read_urls("postgresql://r3/app") == ["postgresql://r3/app"]


def test_bad_replica_settings_are_refused_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="expected a PostgreSQL URL") as caught:
        create_engine("postgresql://nobody@127.0.0.1:1/app", read_urls=["mysql://app:s3cret@replica/app"])
    assert "s3cret" not in str(caught.value)
    monkeypatch.setenv("DPR_PG_MAX_REPLICA_LAG", "soon")
    with pytest.raises(ConfigError, match="DPR_PG_MAX_REPLICA_LAG"):
        create_engine("postgresql://nobody@127.0.0.1:1/app", read_urls=["postgresql://replica/app"])
    monkeypatch.setenv("DPR_PG_MAX_REPLICA_LAG", "2")
    monkeypatch.setenv("DPR_PG_READ_YOUR_WRITES", "maybe")
    with pytest.raises(ConfigError, match="DPR_PG_READ_YOUR_WRITES"):
        create_engine("postgresql://nobody@127.0.0.1:1/app", read_urls=["postgresql://replica/app"])


def test_the_http_service_searches_on_the_replica_and_writes_on_the_primary(
        cluster: Cluster, pair: EncoderPair, tiny_models: tuple[Path, Path]) -> None:
    engine = create_engine(cluster.primary_url, read_urls=[cluster.replica_url], read_your_writes=True,
                           replica_wait=60)
    ingest_records(engine, pair, _records("h", 2), collection="http")
    assert _on_replica(engine)  # it has replayed h0 and h1
    served = _served.start(cluster.primary_url, tiny_models,
                           env={"DPR_PG_READ_URLS": cluster.replica_url, "DPR_PG_MAX_REPLICA_LAG": "3600"})
    cluster.replica.pause()
    try:
        with httpx.Client(base_url=served.url, timeout=120) as client:
            written = client.put("/v1/collections/http/passages", json={"records": _records("w", 1)})
            assert written.status_code == 200 and written.json()["inserted"] == 1, written.text
            found = client.post("/v1/search", json={"question": QUESTION, "collection": "http"})
            assert found.status_code == 200, found.text
            # The replica answered (it has not replayed w0); the primary has w0.
            assert sorted(hit["external_id"] for hit in found.json()["hits"]) == ["h0", "h1"]
    finally:
        cluster.replica.resume()
        served.stop()
    primary_only = create_engine(cluster.primary_url, read_urls=[])
    assert _ids(search(primary_only, QUESTION, encoder=pair, collection="http")) == ["h0", "h1", "w0"]
