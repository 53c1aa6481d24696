"""`dpr-pg worker` and `dpr-pg status` as real processes: concurrent workers, a killed worker, the CLI flow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _sync_app import create_articles, queued
from sqlalchemy.engine import Engine

from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.sync.worker import run_worker


@pytest.fixture
def model_env(tiny_models: tuple[Path, Path]) -> dict[str, str]:
    question_dir, passage_dir = tiny_models
    return {"DPR_PG_QUESTION_MODEL": str(question_dir), "DPR_PG_PASSAGE_MODEL": str(passage_dir)}


def _start_worker(database_url: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dpr_pg.cli", "--database-url", database_url, "worker", "--once", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )


def _wait_for(condition, what: str, limit: float = 120.0) -> None:  # noqa: ANN001
    """Poll ``condition`` until true; the limit only turns a hang into a failure."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def _waiting_on_articles(engine: Engine) -> list[int]:
    """Backends waiting for a lock on the articles table."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT pid FROM pg_locks WHERE relation = 'articles'::regclass AND NOT granted ORDER BY pid"
        )).scalars())


def _claimed_items(engine: Engine) -> int:
    """Queue items that some worker holds (its claim's advisory locks)."""
    from dpr_pg.sync.queries import LOCK_CLASS

    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
            "AND classid = CAST(:c AS oid) AND granted"
        ), {"c": LOCK_CLASS}).scalar_one()


@pytest.fixture
def articles_lock(engine: Engine) -> Iterator[sa.Connection]:
    """A connection that will hold ACCESS EXCLUSIVE on articles: workers that claimed items block reading."""
    with engine.connect() as conn:
        yield conn


def test_two_concurrent_workers_process_each_item_exactly_once(
    engine: Engine, database_url: str, model_env: dict[str, str], articles_lock: sa.Connection
) -> None:
    create_articles(engine, rows=[(f"Artículo {i}", f"Texto número {i} sobre España.") for i in range(40)])
    with engine.begin() as conn:  # every write of an embedding is recorded
        conn.execute(sa.text("CREATE TABLE embedding_writes (id integer, pid integer DEFAULT pg_backend_pid())"))
        conn.execute(sa.text(
            "CREATE FUNCTION record_write() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO embedding_writes (id) VALUES (NEW.id); RETURN NULL; END $$"
        ))
        conn.execute(sa.text(
            "CREATE TRIGGER record_write AFTER UPDATE OF embedding ON articles FOR EACH ROW "
            "WHEN (NEW.embedding IS NOT NULL) EXECUTE FUNCTION record_write()"
        ))
    # Both workers claim a first batch and then wait on this lock: their claims overlap in time.
    articles_lock.execute(sa.text("LOCK TABLE articles IN ACCESS EXCLUSIVE MODE"))
    workers = [_start_worker(database_url, model_env, "--batch-size", "4") for _ in range(2)]
    _wait_for(lambda: len(_waiting_on_articles(engine)) == 2, "both workers to claim a batch")
    assert _claimed_items(engine) == 8  # two disjoint batches of 4 are held
    articles_lock.commit()

    reports = []
    for process in workers:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        reports.append(json.loads(stdout.strip().splitlines()[-1]))

    assert sum(report["embedded"] for report in reports) == 40
    assert all(report["embedded"] >= 4 for report in reports)
    with engine.connect() as conn:
        writes = conn.execute(sa.text("SELECT id, count(*) FROM embedding_writes GROUP BY id")).all()
        missing = conn.execute(sa.text("SELECT count(*) FROM articles WHERE embedding IS NULL")).scalar()
    assert len(writes) == 40 and {count for _, count in writes} == {1}
    assert missing == 0
    assert queued(engine) == []


def test_worker_killed_mid_batch_leaves_its_items_to_be_retried(
    engine: Engine, database_url: str, model_env: dict[str, str], articles_lock: sa.Connection,
    pair: EncoderPair,
) -> None:
    create_articles(engine)
    articles_lock.execute(sa.text("LOCK TABLE articles IN ACCESS EXCLUSIVE MODE"))
    worker = _start_worker(database_url, model_env)
    _wait_for(lambda: len(_waiting_on_articles(engine)) == 1, "the worker to claim its batch")
    [backend] = _waiting_on_articles(engine)
    assert _claimed_items(engine) == 4  # the whole batch is claimed by the worker

    worker.kill()  # SIGKILL: no cleanup of any kind
    worker.wait(timeout=60)
    articles_lock.commit()

    def backend_gone() -> bool:
        with engine.connect() as conn:
            return not conn.execute(sa.text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend}).first()

    _wait_for(backend_gone, "the dead worker's session to end")
    assert queued(engine) == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]
    assert _claimed_items(engine) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM articles WHERE embedding IS NOT NULL")).scalar() == 0

    report = run_worker(engine, pair, once=True)

    assert report.embedded == 4
    assert queued(engine) == []


def test_cli_flow_insert_update_delete_worker_once_status(
    engine: Engine, database_url: str, model_env: dict[str, str], cli
) -> None:
    create_articles(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (5, 'Lorca', 'Poeta granadino.')"))
        conn.execute(sa.text("UPDATE articles SET body = 'Bilbao está en el País Vasco.' WHERE id = 1"))
        conn.execute(sa.text("DELETE FROM articles WHERE id = 2"))

    before = cli("--database-url", database_url, "status", "--json", check=True)
    assert json.loads(before.stdout) == [{"table": "public.articles", "pending": 5, "failed": 0, "dead": 0,
                                          "last_error": None, "problem": None, "encoder": None}]

    result = cli("--database-url", database_url, "worker", "--once", env=model_env, check=True)
    assert "embedded 4" in result.stdout and "removed 1" in result.stdout

    after = cli("--database-url", database_url, "status", check=True)
    assert "public.articles" in after.stdout
    assert json.loads(cli("--database-url", database_url, "status", "--json", check=True).stdout)[0]["pending"] == 0
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT id FROM articles WHERE embedding IS NOT NULL ORDER BY id")).scalars().all()
    assert ids == [1, 3, 4, 5]


def test_worker_on_the_embedded_server_prints_only_its_own_lines(
    model_env: dict[str, str], cli
) -> None:
    home = Path(tempfile.mkdtemp(prefix="dpr_pg_w_"))  # short: the server's socket lives in it
    env = {**model_env, "DPR_PG_HOME": str(home)}
    try:
        cli("init", env=env, check=True)
        result = cli("worker", "--once", env=env, check=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    others = [line for line in result.stderr.splitlines() if " dpr_pg" not in line]
    assert others == []  # neither the embedded server's nor Alembic's INFO lines
    assert result.stdout.startswith("batches 0, embedded 0")
