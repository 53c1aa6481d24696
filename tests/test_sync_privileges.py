"""Who may write the sync queue, and what nothing on a writer's search_path can do to the triggers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from _sync_app import HashPair, create_articles, queued, wrong_rows
from sqlalchemy.engine import Engine

from dpr_pg.sync.queue import sync_status

# Operators with the signatures the trigger functions use, each recording that it ran.
from dpr_pg.sync.worker import run_worker
_PLANTED = {
    "-": ("integer", "integer", "integer"),
    "=": ("text", "text", "boolean"),
    "||": ("jsonb", "jsonb", "jsonb"),
    "->": ("jsonb", "text", "jsonb"),
    ">": ("integer", "integer", "boolean"),
}


@pytest.fixture
def new_role(engine: Engine) -> Iterator[Callable[[str], str]]:
    """``new_role("app")`` creates a role with a unique name (roles are server-wide) and drops it after."""
    made: list[str] = []

    def make(purpose: str) -> str:
        name = f"sync_{purpose}_{uuid.uuid4().hex[:8]}"
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE ROLE {name}"))
        made.append(name)
        return name

    yield make
    with engine.begin() as conn:
        for name in made:
            conn.execute(sa.text(f"DROP OWNED BY {name}"))
            conn.execute(sa.text(f"DROP ROLE {name}"))


def test_an_operator_planted_on_the_writers_search_path_never_runs(engine: Engine) -> None:
    create_articles(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text("CREATE SCHEMA trap"))
        conn.execute(sa.text("CREATE TABLE trap.ran (operator text)"))
        for number, (symbol, (left, right, result)) in enumerate(_PLANTED.items()):
            conn.execute(sa.text(
                f"CREATE FUNCTION trap.op{number}(a {left}, b {right}) RETURNS {result} LANGUAGE plpgsql AS "
                f"$$ BEGIN INSERT INTO trap.ran VALUES ('{symbol}'); "
                f"RETURN a OPERATOR(pg_catalog.{symbol}) b; END $$"
            ))
            conn.execute(sa.text(
                f"CREATE OPERATOR trap.{symbol} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = trap.op{number})"
            ))

    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL search_path = trap, pg_catalog, public"))
        conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (7, 'Goya', 'Pintor aragonés.')"))
        conn.execute(sa.text("UPDATE articles SET body = 'Otro texto.' WHERE id = 1"))
        conn.execute(sa.text("DELETE FROM articles WHERE id = 2"))

    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT operator FROM trap.ran")).scalars().all() == []
        settings = dict(conn.execute(sa.text(
            "SELECT proname, array_to_string(proconfig, ',') FROM pg_proc "
            "WHERE pronamespace = 'dpr_pg'::regnamespace AND proname IN ('enqueue_sync', 'enqueue_sync_rows')"
        )).all())
    assert settings == {"enqueue_sync": "search_path=pg_catalog, pg_temp",
                        "enqueue_sync_rows": "search_path=pg_catalog, pg_temp"}
    assert queued(engine) == [{"id": 1}, {"id": 2}, {"id": 7}]


def test_the_app_role_needs_no_privilege_on_dpr_pg_and_cannot_write_the_queue(engine: Engine, new_role) -> None:
    create_articles(engine)
    writer = new_role("app")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON articles TO {writer}"))

    with engine.begin() as conn:
        conn.execute(sa.text(f"SET LOCAL ROLE {writer}"))
        conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (7, 'Goya', 'Pintor aragonés.')"))
        conn.execute(sa.text("UPDATE articles SET body = 'Otro texto.' WHERE id = 1"))
        conn.execute(sa.text("DELETE FROM articles WHERE id = 2"))
    with engine.begin() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission denied for schema dpr_pg"):
        conn.execute(sa.text(f"SET LOCAL ROLE {writer}"))
        conn.execute(sa.text("INSERT INTO dpr_pg.sync_queue (tbl, row_key) VALUES ('articles', '{\"id\": 3}')"))

    assert queued(engine) == [{"id": 1}, {"id": 2}, {"id": 7}]


@pytest.mark.parametrize("forged", [
    "last_error, attempts) VALUES ('articles', '{\"id\": 1}', 'FAKE: everything is fine', 1)",
    "dead_at) VALUES ('articles', '{\"id\": 1}', now())",
    "next_attempt_at) VALUES ('articles', '{\"id\": 1}', 'infinity')",
])
def test_a_role_that_may_still_insert_into_the_queue_cannot_forge_worker_state(engine: Engine, new_role, forged: str) -> None:
    create_articles(engine)
    legacy = new_role("legacy")  # the grant an older README gave the app's role
    with engine.begin() as conn:
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA dpr_pg TO {legacy}"))
        conn.execute(sa.text(f"GRANT INSERT ON dpr_pg.sync_queue TO {legacy}"))

    with engine.begin() as conn, pytest.raises(sa.exc.ProgrammingError, match="violates row-level security policy"):
        conn.execute(sa.text(f"SET LOCAL ROLE {legacy}"))
        conn.execute(sa.text("INSERT INTO dpr_pg.sync_queue (tbl, row_key, " + forged))


def test_forged_fresh_items_neither_stop_the_worker_nor_speak_for_it(engine: Engine, new_role) -> None:
    create_articles(engine)
    legacy = new_role("legacy")  # the grant an older README gave the app's role
    with engine.begin() as conn:
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA dpr_pg TO {legacy}"))
        conn.execute(sa.text(f"GRANT INSERT ON dpr_pg.sync_queue TO {legacy}"))
    with engine.begin() as conn:
        conn.execute(sa.text(f"SET LOCAL ROLE {legacy}"))
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.sync_queue (tbl, row_key) VALUES ('articles', '\"FAKE: all is well\"'), "
            "('articles', '{\"id\": \"[red]FAKE[/red]\"}'), ('pg_class', '{\"oid\": 1}')"
        ))
    pair = HashPair()

    report = run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=2)
    run_worker(engine, pair, once=True, retry_base=0.0, max_attempts=2)

    assert report.embedded == 4 and wrong_rows(engine, "articles", pair) == []
    [status] = sync_status(engine)
    assert status.dead == 2
    assert status.last_error is not None and status.last_error.startswith(("the queued key", "could not read"))
    with engine.connect() as conn:  # the item of a table that is not enabled was dropped as removed
        assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.sync_queue WHERE tbl = 'pg_class'::regclass")
                            ).scalar() == 0


# The grants docs/sync.md gives the worker's role, for an app table `articles`.
WORKER_GRANTS = """
GRANT USAGE ON SCHEMA dpr_pg TO {role};
GRANT SELECT, UPDATE, DELETE ON dpr_pg.sync_queue TO {role};
GRANT SELECT, UPDATE (encoder_id) ON dpr_pg.synced_tables TO {role};
GRANT SELECT, INSERT ON dpr_pg.encoders TO {role};
GRANT USAGE ON SEQUENCE dpr_pg.encoders_id_seq TO {role};
GRANT EXECUTE ON FUNCTION dpr_pg.bind_table_encoder(regclass, integer) TO {role};
GRANT SELECT, UPDATE (embedding, dpr_encoder_id, dpr_content_hash) ON articles TO {role};
"""


def test_a_worker_role_with_the_readmes_grants_drains_the_queue(engine: Engine, database_url: str, new_role) -> None:
    create_articles(engine)
    worker = new_role("worker")
    with engine.begin() as conn:
        for grant in WORKER_GRANTS.format(role=worker).strip().splitlines():
            conn.execute(sa.text(grant))
        conn.execute(sa.text("UPDATE articles SET body = 'texto nuevo' WHERE id = 1"))
        conn.execute(sa.text("INSERT INTO dpr_pg.sync_queue (tbl, row_key) VALUES ('articles', '\"poison\"')"))
    as_worker = sa.create_engine(database_url, connect_args={"options": f"-c role={worker}"})
    try:
        with as_worker.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar() == worker
        pair = HashPair()

        report = run_worker(as_worker, pair, once=True)
    finally:
        as_worker.dispose()

    assert (report.embedded, report.failed) == (4, 1)
    assert wrong_rows(engine, "articles", pair) == []
