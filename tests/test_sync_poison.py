"""One bad queue item or one broken table never stops the sync of the others."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from _sync_app import HashPair, create_articles, queued, wrong_rows
from sqlalchemy.engine import Engine

from dpr_pg.errors import SyncError
from dpr_pg.sync.queue import discard_items, retry_items, sync_status
from dpr_pg.sync.tables import enable_table
from dpr_pg.sync.worker import run_worker


def _notes(engine: Engine, name: str = "notes") -> None:
    """A second enabled table, ``name(id, title, body)``, with two rows."""
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE TABLE "{name}" (id integer PRIMARY KEY, title text, body text)'))
        conn.execute(sa.text(f'INSERT INTO "{name}" VALUES (1, \'Nota\', \'primera nota\'), (2, \'\', \'segunda\')'))
        enable_table(conn, name, text_columns=["body"], title_column="title")


def _forge(engine: Engine, *keys: str, table: str = "articles") -> None:
    with engine.begin() as conn:
        for key in keys:
            conn.execute(sa.text("INSERT INTO dpr_pg.sync_queue (tbl, row_key) VALUES (CAST(:t AS regclass), "
                                 "CAST(:k AS jsonb))"), {"t": f'"{table}"', "k": key})


def _items(engine: Engine) -> dict[str, tuple[int, str | None, bool]]:
    """row_key -> (attempts, last_error, dead) of every queued item."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT row_key::text, attempts, last_error, dead_at IS NOT NULL FROM dpr_pg.sync_queue"
        )).all()
    return {key: (attempts, error, dead) for key, attempts, error, dead in rows}


def test_poison_items_are_retried_counted_and_dead_lettered_while_the_rest_syncs(engine: Engine) -> None:
    create_articles(engine)
    _notes(engine)
    _forge(engine, '"poison"', '{"id": "abc"}', '{"id": 1, "other": 2}', "[1, 2]")
    pair = HashPair()

    first = run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=3)

    assert wrong_rows(engine, "articles", pair) == [] and wrong_rows(engine, "notes", pair) == []
    assert first.embedded == 6
    items = _items(engine)
    assert sorted(items) == ['"poison"', "[1, 2]", '{"id": "abc"}', '{"id": 1, "other": 2}']
    assert all(attempts >= 1 for attempts, _, _ in items.values())
    assert 'the queued key "poison" is not a JSON object of the key columns (id)' in items['"poison"'][1]
    assert 'invalid input syntax for type integer: "abc"' in items['{"id": "abc"}'][1]

    for _ in range(5):  # each run retries the due failures until they are parked
        run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=3)
    items = _items(engine)
    assert {key: (attempts, dead) for key, (attempts, _, dead) in items.items()} == {
        key: (3, True) for key in items}
    [articles, notes] = sync_status(engine)
    assert (articles.table, articles.pending, articles.failed, articles.dead) == ("public.articles", 0, 0, 4)
    assert (notes.pending, notes.failed, notes.dead) == (0, 0, 0)

    # The app writes again: its items sync past the dead ones.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET body = 'nuevo' WHERE id = 2"))
        conn.execute(sa.text("UPDATE notes SET body = 'nueva' WHERE id = 1"))
    assert run_worker(engine, pair, once=True).embedded == 2
    assert wrong_rows(engine, "articles", pair) == [] and wrong_rows(engine, "notes", pair) == []


def test_retry_and_discard_act_on_dead_items(engine: Engine, cli, database_url: str) -> None:
    create_articles(engine)
    _notes(engine)
    _forge(engine, '"poison"')
    _forge(engine, '{"id": "x"}', table="notes")
    pair = HashPair()
    for _ in range(2):
        run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=1)
    status = json.loads(cli("--database-url", database_url, "status", "--json", check=True).stdout)
    assert [(t["table"], t["dead"]) for t in status] == [("public.articles", 1), ("public.notes", 1)]
    assert "is not a JSON object" in status[0]["last_error"]
    shown = cli("--database-url", database_url, "status", check=True).stdout
    assert "public.articles" in shown and "dead" in shown

    assert cli("--database-url", database_url, "sync", "retry", "articles", check=True).stdout.strip() == \
        "1 items due again"
    assert _items(engine)['"poison"'] == (0, None, False)
    assert run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=1).dead == 1

    assert retry_items(engine) == 2
    assert run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=1).dead == 2
    with engine.begin() as conn:  # the same core in SQL
        assert conn.execute(sa.text("SELECT dpr_pg.sync_retry('notes')")).scalar() == 1
    assert run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=1).dead == 1
    assert discard_items(engine, "notes") == 1
    assert cli("--database-url", database_url, "sync", "discard", check=True).stdout.strip() == \
        "1 dead items discarded"
    assert _items(engine) == {}
    with pytest.raises(SyncError, match="expected an existing table, not \"nope\""):
        retry_items(engine, "nope")
    missing = cli("--database-url", database_url, "sync", "discard", "nope")
    assert missing.returncode == 1 and "expected an existing table" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_renamed_text_column_pauses_its_table_only_and_resumes_when_fixed(engine: Engine) -> None:
    create_articles(engine)
    _notes(engine)
    pair = HashPair()
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE articles RENAME COLUMN body TO contenido"))
        conn.execute(sa.text("UPDATE articles SET contenido = 'otro texto' WHERE id = 1"))

    report = run_worker(engine, pair, once=True)

    assert report.embedded == 2 and wrong_rows(engine, "notes", pair) == []
    assert "column body of public.articles is gone (renamed or dropped)" in report.refused["public.articles"]
    articles = sync_status(engine)[0]
    assert (articles.pending, articles.failed, articles.dead) == (4, 0, 0)
    assert "sync is paused: column body of public.articles is gone" in (articles.problem or "")
    assert all(attempts == 0 for attempts, _, _ in _items(engine).values())

    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE articles RENAME COLUMN contenido TO body"))
    assert run_worker(engine, pair, once=True).refused == {}
    assert wrong_rows(engine, "articles", pair) == [] and queued(engine) == []
    assert sync_status(engine)[0].problem is None


def test_a_dropped_text_column_or_trigger_pauses_its_table_with_a_clear_status(engine: Engine) -> None:
    create_articles(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE articles DROP COLUMN title CASCADE"))
    assert "column title of public.articles is gone" in (sync_status(engine)[0].problem or "")

    with engine.begin() as conn:  # CASCADE took the update trigger (it watched the column) with it
        conn.execute(sa.text("ALTER TABLE articles ADD COLUMN title text"))
    assert "trigger dpr_sync_update on public.articles is gone or disabled" in (sync_status(engine)[0].problem or "")

    _notes(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE notes DISABLE TRIGGER dpr_sync_insert"))
    assert "trigger dpr_sync_insert on public.notes is gone or disabled" in (sync_status(engine)[1].problem or "")


@pytest.mark.parametrize("name", ["ofertas_50%", "50%s de %(descuento)s", "{precio}"])
def test_a_table_name_with_percent_or_braces_syncs_like_any_other(engine: Engine, name: str) -> None:
    _notes(engine, name)
    pair = HashPair()
    _forge(engine, '{"id": "bad"}', table=name)

    report = run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=1)

    assert report.embedded == 2 and report.dead == 1
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, embedding::text FROM " + f'"{name}"' + " ORDER BY id")).all()
        keys = conn.execute(sa.text(
            "SELECT row_key FROM dpr_pg.search_table(CAST(:t AS regclass), CAST(:q AS vector), 5)"
        ), {"t": f'"{name}"', "q": rows[0][1]}).scalars().all()
    assert all(embedding is not None for _, embedding in rows)
    assert keys[0] == {"id": 1}
    assert "could not read" in (sync_status(engine)[0].last_error or "")


def test_the_cli_worker_exits_0_past_a_poison_item(engine: Engine, cli, database_url: str, tiny_models) -> None:
    question_dir, passage_dir = tiny_models
    create_articles(engine)
    _forge(engine, '"poison"', '{"id": "abc"}')

    result = cli("--database-url", database_url, "worker", "--once", "--json",
                 env={"DPR_PG_QUESTION_MODEL": str(question_dir), "DPR_PG_PASSAGE_MODEL": str(passage_dir)})

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["embedded"], report["failed"]) == (4, 2)
