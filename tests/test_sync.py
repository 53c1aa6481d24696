"""Sync of an app table: what the triggers enqueue, what the worker writes, and what it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
from _sync_app import ARTICLES, create_articles, queued
from sqlalchemy.engine import Engine

from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.errors import SchemaError, SyncError
from dpr_pg.sync.queue import sync_status
from dpr_pg.sync.tables import disable_table, enable_table
from dpr_pg.sync.worker import run_worker


def _embeddings(engine: Engine) -> dict[int, np.ndarray | None]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, embedding::text FROM articles ORDER BY id")).all()
    return {i: None if e is None else np.array(json.loads(e), dtype=np.float32) for i, e in rows}


def test_enable_queues_existing_rows_and_adds_columns_index_triggers(engine: Engine) -> None:
    create_articles(engine)

    assert queued(engine) == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]
    with engine.connect() as conn:
        columns = dict(conn.execute(sa.text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) || ' ' || a.attstorage::text FROM pg_attribute a "
            "WHERE a.attrelid = 'articles'::regclass AND a.attname IN ('embedding', 'dpr_encoder_id', 'dpr_content_hash')"
        )).all())
        index = conn.execute(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'articles' AND indexname = 'articles_dpr_hnsw'"
        )).scalar_one()
        triggers = sorted(conn.execute(sa.text(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'articles'::regclass AND NOT tgisinternal"
        )).scalars())
    assert columns == {"embedding": "vector(768) p", "dpr_encoder_id": "integer p", "dpr_content_hash": "text x"}
    assert "USING hnsw (embedding vector_ip_ops)" in index
    assert triggers == ["dpr_sync_delete", "dpr_sync_insert", "dpr_sync_update"]


def test_insert_update_delete_enqueue_their_keys_once(engine: Engine) -> None:
    create_articles(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (5, 'Lorca', 'Poeta granadino.')"))
        conn.execute(sa.text("UPDATE articles SET body = 'Madrid, capital.' WHERE id = 1"))
        conn.execute(sa.text("UPDATE articles SET body = 'Madrid, capital de verdad.' WHERE id = 1"))  # coalesced
        conn.execute(sa.text("DELETE FROM articles WHERE id = 2"))

    assert queued(engine) == [{"id": 1}, {"id": 2}, {"id": 5}]


def test_unrelated_or_same_value_update_enqueues_nothing(engine: Engine) -> None:
    create_articles(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text("UPDATE articles SET views = views + 1, lang = 'en'"))
        conn.execute(sa.text("UPDATE articles SET body = body, title = title"))

    assert queued(engine) == []

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET title = 'ADN y ARN' WHERE id = 3"))
    assert queued(engine) == [{"id": 3}]


def test_worker_writes_each_rows_own_embedding_and_search_sees_the_new_state(
    engine: Engine, fp32_pair: EncoderPair
) -> None:
    create_articles(engine)
    run_worker(engine, fp32_pair, once=True)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (5, 'Lorca', 'Poeta granadino.')"))
        conn.execute(sa.text("UPDATE articles SET body = 'Bilbao está en el País Vasco.' WHERE id = 1"))
        conn.execute(sa.text("DELETE FROM articles WHERE id = 2"))

    report = run_worker(engine, fp32_pair, once=True)

    assert (report.embedded, report.removed, report.failed) == (2, 1, 0)
    assert queued(engine) == []
    stored = _embeddings(engine)
    expected = {1: ("Madrid", "Bilbao está en el País Vasco."), 3: ARTICLES[2], 4: ARTICLES[3],
                5: ("Lorca", "Poeta granadino.")}
    assert sorted(stored) == sorted(expected)
    for row_id, passage in expected.items():
        np.testing.assert_allclose(stored[row_id], fp32_pair.passage.encode(passage), rtol=1e-4, atol=1e-5)
    with engine.connect() as conn:
        keys = conn.execute(sa.text(
            "SELECT row_key FROM dpr_pg.search_table('articles', CAST(:q AS vector), 10)"
        ), {"q": str(fp32_pair.question.encode("¿Dónde está Bilbao?").tolist())}).scalars().all()
    assert sorted(key["id"] for key in keys) == [1, 3, 4, 5]


def test_worker_skips_rows_whose_text_is_unchanged_and_clears_empty_rows(engine: Engine,
                                                                         fp32_pair: EncoderPair) -> None:
    create_articles(engine)
    run_worker(engine, fp32_pair, once=True)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.sync_queue (tbl, row_key) VALUES ('articles', '{\"id\": 3}')"
        ))
        conn.execute(sa.text("UPDATE articles SET title = '', body = '   ' WHERE id = 4"))

    report = run_worker(engine, fp32_pair, once=True)

    assert (report.unchanged, report.cleared, report.embedded) == (1, 1, 0)
    assert _embeddings(engine)[4] is None


class _FailingPassages:
    """Passage encoder that fails on one text, to exercise the retry path (the database is real)."""

    def __init__(self, real: EncoderPair) -> None:
        self.real = real

    def encode(self, passages: list[tuple[str, str]]) -> np.ndarray:
        if any("boom" in text for _, text in passages):
            raise RuntimeError("model exploded on purpose")
        return self.real.passage.encode(passages)


class _PairWithFailingPassages:
    def __init__(self, real: EncoderPair) -> None:
        self.passage = _FailingPassages(real)
        self.fingerprint = real.fingerprint
        self.dim = real.dim


def test_failed_item_records_last_error_backs_off_and_others_complete(engine: Engine, fp32_pair: EncoderPair) -> None:
    create_articles(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET body = 'boom' WHERE id = 2"))

    report = run_worker(engine, _PairWithFailingPassages(fp32_pair), once=True, retry_base=60.0)

    assert (report.embedded, report.failed) == (3, 1)
    with engine.connect() as conn:
        item = conn.execute(sa.text(
            "SELECT row_key, attempts, last_error, next_attempt_at > clock_timestamp() + interval '50 seconds' "
            "FROM dpr_pg.sync_queue"
        )).one()
    assert item[0] == {"id": 2} and item[1] == 1 and "model exploded on purpose" in item[2] and item[3]
    [status] = sync_status(engine)
    assert (status.table, status.pending, status.failed) == ("public.articles", 0, 1)
    assert "model exploded" in (status.last_error or "")
    # Not due yet: another --once run leaves it alone.
    assert run_worker(engine, fp32_pair, once=True).failed == 0

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE dpr_pg.sync_queue SET next_attempt_at = clock_timestamp()"))
    assert run_worker(engine, fp32_pair, once=True).embedded == 1
    assert sync_status(engine)[0].failed == 0


def test_worker_with_another_dimension_leaves_the_table_to_another_worker_and_says_why(
    engine: Engine, fp32_pair: EncoderPair
) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE notes (id bigint PRIMARY KEY, body text)"))
        conn.execute(sa.text("INSERT INTO notes VALUES (1, 'hola')"))
        enable_table(conn, "notes", text_columns=["body"], dim=8)

    report = run_worker(engine, fp32_pair, once=True)

    assert (report.batches, report.failed) == (0, 0)
    assert "outputs 768 dimensions but public.notes.embedding is vector(8)" in report.refused["public.notes"]
    [status] = sync_status(engine)
    assert (status.pending, status.failed, status.dead) == (1, 0, 0)  # untouched, for an 8-d worker


def test_app_write_does_not_wait_for_a_worker_holding_its_item(engine: Engine) -> None:
    from psycopg import RawCursor

    from dpr_pg.sync.queries import CLAIM, LOCK_CLASS

    create_articles(engine)
    with engine.connect() as worker_conn, engine.connect() as app_conn:
        # What a worker holds while it encodes: its claim (advisory locks), in an open transaction.
        cursor = RawCursor(worker_conn.connection.driver_connection)
        held = cursor.execute(CLAIM, [[], 100, LOCK_CLASS, 32]).fetchall()
        assert len(held) == 4
        app_conn.execute(sa.text("SET lock_timeout = '2s'"))  # waiting would raise LockNotAvailable
        app_conn.execute(sa.text("UPDATE articles SET body = 'Texto nuevo.' WHERE id = 1"))
        app_conn.execute(sa.text("DELETE FROM articles WHERE id = 2"))
        app_conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (9, 'Nuevo', 'Otro texto.')"))
        app_conn.commit()
        worker_conn.rollback()

    assert queued(engine) == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}, {"id": 9}]


@pytest.mark.parametrize(
    ("table", "options", "message"),
    [
        ('articles"; DROP TABLE articles; --', {"text_columns": ["body"]}, "does not exist"),
        ("articles", {"text_columns": ["nope"]}, 'expected a text column nope in table public.articles; text_columns and title_column must name'),
        ("articles", {"text_columns": ["views"]}, "expected a text column views"),
        ("articles", {"text_columns": ["body"], "dim": 0}, "expected dim between 1 and 16000"),
        ("keyless", {"text_columns": ["body"]}, "has no primary key"),
    ],
)
def test_enable_refuses_bad_requests_and_changes_nothing(
    engine: Engine, table: str, options: dict, message: str
) -> None:
    create_articles(engine, enable=False)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE keyless (body text)"))

    with engine.begin() as conn, pytest.raises(SyncError, match=message):
        enable_table(conn, table, **options)

    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.synced_tables")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM articles")).scalar() == 4


def test_enable_twice_and_disable_unknown_are_clear_errors(engine: Engine) -> None:
    create_articles(engine)
    with engine.begin() as conn, pytest.raises(SyncError, match="already enabled"):
        enable_table(conn, "articles", text_columns=["body"])
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE other (id int PRIMARY KEY, body text)"))
    with engine.begin() as conn, pytest.raises(SyncError, match="not enabled for DPR search"):
        disable_table(conn, "other")


def test_status_and_worker_before_init_say_to_run_init(empty_url: str, fp32_pair: EncoderPair) -> None:
    engine = sa.create_engine(empty_url)
    try:
        with pytest.raises(SchemaError, match="run dpr-pg init"):
            sync_status(engine)
        with pytest.raises(SchemaError, match="run dpr-pg init"):
            run_worker(engine, fp32_pair, once=True)
    finally:
        engine.dispose()


def test_trigger_works_under_any_search_path_of_the_app(engine: Engine) -> None:
    create_articles(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text("SET LOCAL search_path = ''"))
        conn.execute(sa.text("INSERT INTO public.articles (id, title, body) VALUES (7, 'Goya', 'Pintor aragonés.')"))
        conn.execute(sa.text("UPDATE public.articles SET body = 'Cambio.' WHERE id = 1"))

    assert queued(engine) == [{"id": 1}, {"id": 7}]


def test_downgrading_dpr_pg_refuses_while_an_app_table_is_enabled(engine: Engine) -> None:
    from dpr_pg.db.schema import downgrade

    create_articles(engine)

    with pytest.raises(SchemaError, match="while app tables use them: articles; run op.disable_dpr"):
        downgrade(engine, "0002")

    with engine.begin() as conn:
        disable_table(conn, "articles")
    downgrade(engine, "0002")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('dpr_pg.sync_queue')")).scalar() is None
        assert conn.execute(sa.text("SELECT count(*) FROM articles")).scalar() == 4


def test_worker_reconnects_when_its_connection_is_dropped(
    engine: Engine, fp32_pair: EncoderPair, caplog: pytest.LogCaptureFixture
) -> None:
    create_articles(engine)
    run_worker(engine, fp32_pair, once=True)  # the pool now holds the worker's connection
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET body = 'Nuevo texto.' WHERE id = 1"))
    with sa.create_engine(engine.url).connect() as admin:  # the server drops every other session
        admin.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ))

    with caplog.at_level("WARNING", logger="dpr_pg.sync"):
        report = run_worker(engine, fp32_pair, once=True)

    assert "database connection lost" in caplog.text
    assert report.embedded == 1
    assert queued(engine) == []
