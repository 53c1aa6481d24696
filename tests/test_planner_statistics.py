"""Statistics the planner can trust: right after a bulk load, a collection search takes the index.

A table that was never analysed has no statistics, and PostgreSQL's estimate of ``collection = c``
is then a fixed guess (0.5 % of the table), far below the exact threshold for a collection of
20,000 rows. Two guards, both tested here: the planner of every face counts instead of trusting a
small estimate from a table without statistics, and the writes that change a large share of a
collection (ingest, delete, a sync batch) ANALYZE the table. Autovacuum is switched off on the
tables of these tests, so that "right after the load" stays so while they look.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _encoders import stand_in_encoder
from _sync_app import HashPair, create_articles
from sqlalchemy.engine import Connection, Engine

from dpr_pg import tuning
from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.search.statistics import analyze_if_changed, large_change
from dpr_pg.ingest import ingest
from dpr_pg.ingest.delete import delete_passages
from dpr_pg.search.api import search
from dpr_pg.sync.worker import run_worker

DIM = 8  # the path does not depend on the dimension; 8-d rows load and index in a few seconds
ROWS = 20_000
SMALL = 50
FINGERPRINT = EncoderFingerprint("stats/question", None, "stats/passage", None, "stats", DIM, 512)
QUERY = np.random.default_rng(7).normal(size=DIM).astype(np.float32)


@pytest.fixture
def engine8(server: Any) -> Iterator[Engine]:
    """A fresh database with the dpr_pg schema for 8-d vectors, autovacuum off on passages."""
    name = server.create_database(template=server.initialized_template(DIM))
    eng = sa.create_engine(server.url_for(name))
    with eng.begin() as conn:
        conn.execute(sa.text("ALTER TABLE dpr_pg.passages SET (autovacuum_enabled = off)"))
    yield eng
    eng.dispose()
    server.drop_database(name)


def _vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)


def _estimate(conn: Connection, table: str, collection: str) -> float:
    """PostgreSQL's estimate of ``table``'s rows in ``collection`` (a test's own table name)."""
    plan = conn.execute(sa.text(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE collection = :c"),
                        {"c": collection}).scalar_one()
    return float(plan[0]["Plan"]["Plan Rows"])


def _has_statistics(conn: Connection, table: str) -> bool:
    schema, _, name = table.rpartition(".")
    return bool(conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_stats WHERE schemaname = :s AND tablename = :t)"),
                             {"s": schema or "public", "t": name}).scalar_one())


def _sql_plan(engine: Engine, statement: str, params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The rows of a SQL search function, and the plan it reported as a DEBUG message."""
    messages: list[str] = []
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        raw.add_notice_handler(lambda diagnostic: messages.append(diagnostic.message_primary or ""))
        conn.execute(sa.text("SET LOCAL client_min_messages = debug1"))
        rows = list(conn.execute(sa.text(statement), params))
    (plan,) = [json.loads(m.split(" plan: ", 1)[1]) for m in messages if m.startswith("dpr_pg.search")]
    return rows, plan


def _faces(engine: Engine, collection: str) -> dict[str, dict[str, Any]]:
    """The plan of a top-10 search of ``collection`` through the Python API and dpr_pg.search."""
    hits = search(engine, QUERY, k=10, collection=collection)
    python = {"path": hits.plan.path, "estimated_rows": hits.plan.estimated_rows,
              "matching_rows": hits.plan.matching_rows, "hits": len(hits),
              "collections": {h.collection for h in hits}}
    rows, sql = _sql_plan(engine, "SELECT collection FROM dpr_pg.search(CAST(:q AS vector), 10, '{}', :c)",
                          {"q": str(QUERY.tolist()), "c": collection})
    sql = {"path": sql["path"], "estimated_rows": sql["estimated_rows"], "matching_rows": sql["matching_rows"],
           "hits": len(rows), "collections": {r.collection for r in rows}}
    return {"python": python, "sql": sql}


def test_a_fresh_bulk_ingest_is_analyzed_and_a_collection_search_takes_the_index(
    engine8: Engine, tmp_path: Path
) -> None:
    jsonl, npy = tmp_path / "passages.jsonl", tmp_path / "passages.npy"
    jsonl.write_text("".join(json.dumps({"id": f"p{i}", "text": f"Texto {i}."}) + "\n" for i in range(ROWS)),
                     encoding="utf-8")
    np.save(npy, _vectors(ROWS, 1))

    report = ingest(engine8, None, jsonl, collection="c", embeddings=npy, fingerprint=FINGERPRINT, progress=False)

    assert report.inserted == ROWS
    with engine8.connect() as conn:
        assert _has_statistics(conn, "dpr_pg.passages")
        assert _estimate(conn, "dpr_pg.passages", "c") == ROWS
    faces = _faces(engine8, "c")
    expected = {"path": "hnsw-iterative", "estimated_rows": float(ROWS), "matching_rows": None, "hits": 10,
                "collections": {"c"}}
    assert faces == {"python": expected, "sql": expected}


@pytest.fixture
def unanalyzed(engine8: Engine) -> Engine:
    """20,000 rows in collection c and 50 in collection small, in dpr_pg.passages and in the app
    table docs, loaded by plain SQL (each HNSW index built once, after the rows) and never analysed."""
    vectors = _vectors(ROWS + SMALL, 2)
    records = [{"i": i, "c": "c" if i < ROWS else "small", "v": str(vectors[i].tolist())} for i in range(len(vectors))]
    with engine8.begin() as conn:
        encoder = stand_in_encoder(conn, DIM, fingerprint="stats")
        conn.execute(sa.text("DROP INDEX dpr_pg.passages_embedding_hnsw"))
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
            "encoder_id) SELECT r.c, 'p' || r.i, '', 'texto', '{}', 'h', CAST(r.v AS vector), :enc "
            "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(i integer, c text, v text)"),
            {"enc": encoder, "rows": json.dumps(records)})
        conn.execute(sa.text("CREATE TABLE docs (id integer PRIMARY KEY, collection text NOT NULL, "
                             "body text NOT NULL DEFAULT 'texto') WITH (autovacuum_enabled = off)"))
        conn.execute(sa.text("SELECT dpr_pg.enable_table('docs', ARRAY['body'], NULL, :d)"), {"d": DIM})
        conn.execute(sa.text("DROP INDEX docs_dpr_hnsw"))
        conn.execute(sa.text(  # embedded as the worker would leave them
            "INSERT INTO docs (id, collection, embedding, dpr_encoder_id) "
            "SELECT id, collection, embedding, encoder_id FROM dpr_pg.passages"))
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        options = "WITH (m = 8, ef_construction = 16)"  # a small graph builds fast: the path is under test here
        conn.execute(sa.text("CREATE INDEX passages_embedding_hnsw ON dpr_pg.passages "
                             f"USING hnsw (embedding vector_ip_ops) {options}"))
        conn.execute(sa.text(f"CREATE INDEX docs_dpr_hnsw ON docs USING hnsw (embedding vector_ip_ops) {options}"))
    return engine8


def test_without_statistics_a_small_estimate_is_counted_not_trusted_in_every_face(unanalyzed: Engine) -> None:
    with unanalyzed.connect() as conn:
        # What made the planner scan the whole collection exactly: no statistics, and a guess far
        # below the threshold.
        assert not _has_statistics(conn, "dpr_pg.passages") and not _has_statistics(conn, "docs")
        assert _estimate(conn, "dpr_pg.passages", "c") <= tuning.EXACT_THRESHOLD
        assert _estimate(conn, "docs", "c") <= tuning.EXACT_THRESHOLD

    faces = _faces(unanalyzed, "c")
    rows, table = _sql_plan(unanalyzed, "SELECT row_data FROM dpr_pg.search_table('docs', CAST(:q AS vector), 10, "
                                        "'{\"collection\": \"c\"}')", {"q": str(QUERY.tolist())})
    small = _faces(unanalyzed, "small")

    counted = tuning.EXACT_THRESHOLD + 1
    for face in ("python", "sql"):
        assert faces[face]["path"] == "hnsw-iterative"
        assert faces[face]["matching_rows"] == counted
        assert (faces[face]["hits"], faces[face]["collections"]) == (10, {"c"})
        assert (small[face]["path"], small[face]["matching_rows"]) == ("exact", SMALL)
    assert (table["path"], table["matching_rows"]) == ("hnsw-iterative", counted)
    assert len(rows) == 10 and {r.row_data["collection"] for r in rows} == {"c"}
    with unanalyzed.connect() as conn:
        assert not _has_statistics(conn, "dpr_pg.passages")  # searching never writes statistics


def test_analyze_runs_when_a_write_changed_a_large_share_of_the_collection(engine8: Engine) -> None:
    with engine8.begin() as conn:
        encoder = stand_in_encoder(conn, DIM, fingerprint="stats")

    def insert(collection: str, first: int, count: int) -> None:
        with engine8.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, "
                "embedding, encoder_id) SELECT :c, 'p' || g, '', 'texto', '{}', 'h', "
                "CAST(ARRAY[1, 0, 0, 0, 0, 0, 0, g] AS vector), :enc "
                "FROM generate_series(CAST(:a AS integer), CAST(:b AS integer)) AS g"),
                {"c": collection, "a": first, "b": first + count - 1, "enc": encoder})

    insert("a", 1, 30)
    first = analyze_if_changed(engine8, changed=30, collection="a")  # no statistics at all: any change
    insert("a", 31, 5)
    small = analyze_if_changed(engine8, changed=5, collection="a")
    insert("b", 1, 1500)  # a collection the statistics have never seen: estimated near 0
    with engine8.connect() as conn:
        before = _estimate(conn, "dpr_pg.passages", "b")
    new = analyze_if_changed(engine8, changed=1500, collection="b")
    with engine8.connect() as conn:
        after = _estimate(conn, "dpr_pg.passages", "b")

    deleted = delete_passages(engine8, "b", [f"p{g}" for g in range(1, 1201)])  # 80 % of b
    with engine8.connect() as conn:
        after_delete = _estimate(conn, "dpr_pg.passages", "b")

    assert (first, small, new) == (True, False, True)
    assert before < tuning.ANALYZE_MIN_ROWS and after == 1500
    assert deleted == 1200 and after_delete == 300
    assert analyze_if_changed(engine8, changed=0, collection="b") is False


def test_a_large_change_is_a_share_of_the_estimate_and_at_least_the_minimum() -> None:
    minimum, share = tuning.ANALYZE_MIN_ROWS, tuning.ANALYZE_CHANGED_SHARE
    assert large_change(minimum, 0) and large_change(minimum, minimum / share)
    assert not large_change(minimum - 1, 0)  # a few rows cannot move the plan: autovacuum's turn
    assert not large_change(minimum, minimum / share + 1)


def test_a_role_that_may_not_analyze_the_table_is_left_alone(engine8: Engine) -> None:
    role = "stats_reader_" + engine8.url.database[-12:]
    with engine8.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role}"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA dpr_pg TO {role}"))
        conn.execute(sa.text(f"GRANT SELECT ON dpr_pg.passages TO {role}"))
    reader = sa.create_engine(engine8.url, connect_args={"options": f"-c role={role}"})
    try:
        assert analyze_if_changed(reader, changed=100_000, collection="a") is False
    finally:
        reader.dispose()
        with engine8.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
    with engine8.connect() as conn:
        assert not _has_statistics(conn, "dpr_pg.passages")


def test_a_sync_batch_analyzes_the_app_table_it_embedded(engine: Engine) -> None:
    create_articles(engine)
    with engine.connect() as conn:
        assert not _has_statistics(conn, "articles")

    report = run_worker(engine, HashPair(), once=True)

    assert report.embedded == 4
    with engine.connect() as conn:
        assert _has_statistics(conn, "articles")
        assert conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = 'articles'::regclass")).scalar() == 4
