"""The app writes while a worker holds a batch: every row still ends with the embedding of its current text."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from _sync_app import HashPair, create_articles, queued, wrong_rows
from sqlalchemy.engine import Engine

from dpr_pg.sync.worker import run_worker


def _articles_with_row_100(engine: Engine) -> None:
    create_articles(engine, rows=[("Uno", "texto A"), ("Dos", "texto 2")])
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (100, 'Cien', 'texto 100')"))


def test_writes_landing_while_the_worker_encodes_are_never_swallowed(engine: Engine) -> None:
    _articles_with_row_100(engine)
    run_worker(engine, HashPair(), once=True)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM articles WHERE id = 100"))
        conn.execute(sa.text("UPDATE articles SET body = 'texto B' WHERE id = 1"))
        conn.execute(sa.text("UPDATE articles SET body = 'texto A' WHERE id = 1"))  # A -> B -> A: unchanged
        conn.execute(sa.text("UPDATE articles SET body = 'texto 2, cambiado' WHERE id = 2"))
    assert queued(engine) == [{"id": 1}, {"id": 2}, {"id": 100}]

    def app_writes() -> None:  # committed while the worker's batch (rows 1, 2 and 100) is open
        with engine.begin() as app:
            app.execute(sa.text("SET LOCAL lock_timeout = '5s'"))  # the app must not wait for the worker
            app.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (100, 'Cien', 'texto 100, otra vez')"))
            app.execute(sa.text("UPDATE articles SET body = 'texto C' WHERE id = 1"))

    slow = HashPair(during_encode=app_writes)
    report = run_worker(engine, slow, once=True)

    assert wrong_rows(engine, "articles", slow) == []
    assert queued(engine) == []
    assert report.failed == 0 and report.embedded == 3  # row 2, then rows 1 and 100 in the next round


def test_an_app_transaction_open_across_the_batch_keeps_its_item(engine: Engine) -> None:
    _articles_with_row_100(engine)
    run_worker(engine, HashPair(), once=True)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET body = 'texto 2, cambiado' WHERE id = 2"))
        conn.execute(sa.text("DELETE FROM articles WHERE id = 100"))
    app = engine.connect()
    started = threading.Event()

    def app_begins() -> None:  # writes rows 1 and 100 (queueing both) but commits only after the batch
        app.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
        app.execute(sa.text("UPDATE articles SET body = 'texto D' WHERE id = 1"))
        app.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (100, 'Cien', 'texto 100, de nuevo')"))
        started.set()

    try:
        first = run_worker(engine, HashPair(during_encode=app_begins), once=True)
        assert started.is_set()
        # Row 100 is gone as far as the worker can see, but its item is held by the app: it stays.
        assert first.removed == 0 and first.deferred >= 1
        app.commit()
    finally:
        app.close()

    run_worker(engine, HashPair(), once=True)

    assert wrong_rows(engine, "articles", HashPair()) == []
    assert queued(engine) == []
