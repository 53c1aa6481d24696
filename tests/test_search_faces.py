"""One planner under every face: Python ``search``, SQL ``dpr_pg.search`` and ``dpr_pg.search_table``.

The same 8,000 rows live in dpr_pg.passages and in an app table enabled for sync; the same filters
and query vectors go through the three faces, which must take the same path for the same reason
(estimate, bounded count, ef_search, fallback) and return the same hits. The SQL functions report
their plan as a DEBUG message.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _encoders import stand_in_encoder
from _filter_oracle import matches
from _sql_face import sql_face
from sqlalchemy.engine import Engine

from dpr_pg import tuning
from dpr_pg.search.api import search

DIM = 8
N = 8000
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _collection(i: int) -> str:
    return "big" if i % 100 < 80 else "small" if i % 100 == 80 else "other"  # 6,400, 80 and 1,520 rows


def _rows() -> tuple[np.ndarray, list[dict[str, Any]]]:
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(16, DIM))
    vectors = centers[rng.integers(0, 16, N)] + 0.5 * rng.normal(size=(N, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    rows = [{"id": i + 1, "collection": _collection(i), "external_id": f"doc-{i}", "title": f"Título {i:04d}",
             "lang": "ca" if i % 200 == 7 else "es", "created_at": START + dt.timedelta(hours=i)}
            for i in range(N)]
    return vectors, rows


VECTORS, ROWS = _rows()
QUERIES = np.random.default_rng(12).normal(size=(3, DIM)).astype(np.float32)
RECENT = (START + dt.timedelta(hours=N - 3000)).isoformat()  # the last 3,000 rows: in the count band
# Rows 3000-4999: 2,000, but PostgreSQL multiplies the two columns' shares and expects 3,125.
OVERLAP = {"created_at": {"$gte": (START + dt.timedelta(hours=3000)).isoformat()}, "title": {"$lt": "Título 5000"}}
CASES = [
    pytest.param({}, 10, "hnsw", id="no filter: HNSW"),
    pytest.param({}, tuning.MAX_EF_SEARCH + 1, "exact", id="no filter, k above ef_search's limit: exact"),
    pytest.param({"collection": "big"}, 10, "hnsw-iterative", id="broad: iterative HNSW"),
    pytest.param({"created_at": {"$gte": RECENT}}, 10, "hnsw-iterative", id="counted: more than the threshold"),
    pytest.param(OVERLAP, 10, "exact", id="counted: no more than the threshold"),
    pytest.param({"collection": "small"}, 10, "exact", id="narrow estimate: exact"),
    # The app table builds its document in a subquery, which no statistics describe: search_table
    # estimates a filter on it from a sample, so only column filters get the very same estimate.
    pytest.param({"lang": "ca", "collection": {"$ne": "small"}}, 5, "exact", id="narrow metadata filter: exact"),
    pytest.param({"lang": "es"}, 10, "hnsw-iterative", id="broad metadata filter: iterative HNSW"),
    pytest.param({"collection": "big"}, tuning.MAX_EF_SEARCH + 1, "exact", id="filtered, k above the limit: exact"),
]


@pytest.fixture(scope="module")
def engine(server: Any) -> Iterator[Engine]:
    """The rows as passages (metadata: lang) and as the app table ``docs`` (a column lang), embedded."""
    name = server.create_database(template=server.initialized_template(DIM))
    eng = sa.create_engine(server.url_for(name))
    with eng.begin() as conn:
        encoder = stand_in_encoder(conn, DIM)
        # Bulk loads build the HNSW indexes once, after the rows (as ingest's defer_index does).
        conn.execute(sa.text("DROP INDEX dpr_pg.passages_embedding_hnsw"))
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
            "encoder_id, created_at) SELECT r.collection, r.external_id, r.title, 'texto', "
            "jsonb_build_object('lang', r.lang), 'h', CAST(r.v AS vector), :enc, r.created_at "
            "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id integer, collection text, external_id text, "
            "title text, lang text, created_at timestamptz, v text) ORDER BY r.id"),
            {"enc": encoder, "rows": json.dumps([{**row, "created_at": row["created_at"].isoformat(),
                                                  "v": str(VECTORS[i].tolist())} for i, row in enumerate(ROWS)])})
        conn.execute(sa.text(
            "CREATE TABLE docs (id integer PRIMARY KEY, collection text NOT NULL, external_id text NOT NULL, "
            "title text NOT NULL, body text NOT NULL DEFAULT 'texto', lang text, created_at timestamptz NOT NULL)"))
        conn.execute(sa.text("SELECT dpr_pg.enable_table('docs', ARRAY['body'], 'title', :d)"), {"d": DIM})
        conn.execute(sa.text("DROP INDEX docs_dpr_hnsw"))
        conn.execute(sa.text(  # embedded as the worker would leave them
            "INSERT INTO docs (id, collection, external_id, title, lang, created_at, embedding, dpr_encoder_id) "
            "SELECT id, collection, external_id, title, metadata ->> 'lang', created_at, embedding, encoder_id "
            "FROM dpr_pg.passages"))
        options = f"WITH (m = {tuning.HNSW_M}, ef_construction = {tuning.HNSW_EF_CONSTRUCTION})"
        conn.execute(sa.text("CREATE INDEX passages_embedding_hnsw ON dpr_pg.passages "
                             f"USING hnsw (embedding vector_ip_ops) {options}"))
        conn.execute(sa.text(f"CREATE INDEX docs_dpr_hnsw ON docs USING hnsw (embedding vector_ip_ops) {options}"))
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))
        conn.execute(sa.text("ANALYZE docs"))
    yield eng
    eng.dispose()
    server.drop_database(name)


def _as_filtered(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the filter oracle reads it: the column fields, and lang in the metadata."""
    return {**row, "created_at": row["created_at"].isoformat(), "updated_at": None, "metadata": {"lang": row["lang"]}}


def _plans_and_hits(engine: Engine, query: np.ndarray, document: dict[str, Any], k: int) -> dict[str, Any]:
    hits = search(engine, query, k=k, filter=document)
    python = {"path": hits.plan.path, "estimated_rows": hits.plan.estimated_rows,
              "matching_rows": hits.plan.matching_rows, "ef_search": hits.plan.ef_search,
              "fell_back": hits.plan.fell_back}
    params = {"q": str(query.tolist()), "k": k, "f": json.dumps(document)}
    with engine.begin() as conn:
        passages, sql = sql_face(
            conn, "SELECT id, score FROM dpr_pg.search(CAST(:q AS vector), :k, CAST(:f AS jsonb))", params)
    with engine.begin() as conn:
        docs, table = sql_face(conn, "SELECT row_key, score FROM dpr_pg.search_table('docs', CAST(:q AS vector), :k, "
                                      "CAST(:f AS jsonb))", params)
    return {
        "plans": (python, sql, table),
        "ids": ([h.id for h in hits], [r.id for r in passages], [r.row_key["id"] for r in docs]),
        "scores": ([h.score for h in hits], [r.score for r in passages], [r.score for r in docs]),
    }


def _same_plan(a: dict[str, Any], b: dict[str, Any], document: dict[str, Any]) -> None:
    decided = ("path", "matching_rows", "ef_search", "fell_back")
    assert {key: a[key] for key in decided} == {key: b[key] for key in decided}
    if a["estimated_rows"] is None or b["estimated_rows"] is None:
        assert a["estimated_rows"] is b["estimated_rows"] is None
    elif set(document) <= {"collection", "external_id", "title", "created_at", "updated_at"}:
        assert b["estimated_rows"] == pytest.approx(a["estimated_rows"], rel=0.05)  # the columns' own statistics


@pytest.mark.parametrize(("document", "k", "path"), CASES)
def test_python_sql_and_app_table_searches_take_the_same_path_to_the_same_hits(
    engine: Engine, document: dict[str, Any], k: int, path: str
) -> None:
    for query in QUERIES[:2]:
        found = _plans_and_hits(engine, query, document, k)
        python, sql, table = found["plans"]
        assert python["path"] == path
        assert python == sql
        _same_plan(python, table, document)
        assert found["ids"][0] == found["ids"][1] == found["ids"][2]
        assert len(found["ids"][0]) == min(k, sum(1 for row in ROWS if matches(document, _as_filtered(row))))
        assert np.allclose(found["scores"][0], found["scores"][1])
        assert np.allclose(found["scores"][0], found["scores"][2])


@pytest.mark.parametrize("document", [{"lang": "ca"}, {"collection": "big"}, {}])
def test_search_table_returns_the_whole_row_whichever_columns_the_filter_reads(
    engine: Engine, document: dict[str, Any]
) -> None:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT row_data FROM dpr_pg.search_table('docs', CAST(:q AS vector), 3, "
                                    "CAST(:f AS jsonb))"), {"q": str(QUERIES[0].tolist()), "f": json.dumps(document)})
        documents = [row.row_data for row in rows]
    assert len(documents) == 3
    assert all(set(d) == {"id", "collection", "external_id", "title", "body", "lang", "created_at"} for d in documents)
    assert all(ROWS[d["id"] - 1]["title"] == d["title"] for d in documents)


def test_search_table_restores_the_settings_it_changes(engine: Engine) -> None:
    settings = ("SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan'), "
                "current_setting('enable_seqscan')")
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT set_config('hnsw.ef_search', '40', true)"))  # pgvector loaded, at its default
        before = conn.execute(sa.text(settings)).one()
        sql_face(conn, "SELECT row_key FROM dpr_pg.search_table('docs', CAST(:q AS vector), 10, CAST(:f AS jsonb))",
                  {"q": str(QUERIES[0].tolist()), "f": json.dumps({"collection": "big"})})
        assert conn.execute(sa.text(settings)).one() == before == ("40", "off", "on")


@pytest.mark.parametrize(("document", "threshold", "selectivity", "path"), [
    ({"collection": "small"}, 10, tuning.EXACT_SELECTIVITY, "exact"),  # 1% of the table: too narrow to iterate
    ({"collection": "small"}, 30, 0.005, "hnsw-iterative"),  # above 0.5%, counted: 31 > 30
    ({"collection": "small"}, 100, 0.0, "exact"),  # estimated 80 <= 100
    ({"collection": "other"}, 1000, 0.0, "hnsw-iterative"),  # counted: more than 1,000
    ({**OVERLAP, "created_at": {"$gte": RECENT}}, 1000, 0.0, "exact"),  # estimated 1,875, counted 0
])
def test_sql_planner_applies_every_rule_like_the_python_planner(
    engine: Engine, document: dict[str, Any], threshold: int, selectivity: float, path: str
) -> None:
    hits = search(engine, QUERIES[0], k=10, filter=document, exact_threshold=threshold, exact_selectivity=selectivity)
    with engine.begin() as conn:
        sql = conn.execute(sa.text(
            "SELECT p.* FROM dpr_pg.compile_filter(CAST(:f AS jsonb)) AS c, "
            "dpr_pg._search_plan('dpr_pg.passages', 'dpr_pg.passages', c.clause, c.params, 10, NULL, :t, :s) AS p"),
            {"f": json.dumps(document), "t": threshold, "s": selectivity}).one()
    assert hits.plan.path == path
    assert (sql.path, sql.matching_rows, sql.ef_search) == (hits.plan.path, hits.plan.matching_rows,
                                                             hits.plan.ef_search)
    assert sql.estimated_rows == pytest.approx(hits.plan.estimated_rows)


def test_an_index_scan_that_comes_back_short_falls_back_to_exact_in_every_face(engine: Engine) -> None:
    # Statistics that say "big" is 80% of the table while, in this transaction, 7 rows are left:
    # every face plans an iterative index scan, finds fewer than k rows, and answers exactly.
    document = {"collection": "big"}
    params = {"q": str(QUERIES[0].tolist()), "f": json.dumps(document)}
    with engine.connect() as conn, conn.begin() as transaction:
        for table in ("dpr_pg.passages", "docs"):
            conn.execute(sa.text(f"UPDATE {table} SET collection = 'moved' WHERE collection = 'big' AND id > 7"))
        hits = search(conn, QUERIES[0], k=10, filter=document)
        passages, sql = sql_face(conn, "SELECT id FROM dpr_pg.search(CAST(:q AS vector), 10, CAST(:f AS jsonb))",
                                  params)
        docs, table = sql_face(conn, "SELECT row_key FROM dpr_pg.search_table('docs', CAST(:q AS vector), 10, "
                                      "CAST(:f AS jsonb))", params)
        transaction.rollback()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE dpr_pg.passages, docs"))  # the aborted rows would skew estimates
    assert (hits.plan.path, hits.plan.fell_back, hits.plan.ef_search) == ("exact", True, tuning.FILTERED_EF_SEARCH)
    assert (sql["path"], sql["fell_back"], sql["ef_search"]) == ("exact", True, tuning.FILTERED_EF_SEARCH)
    assert (table["path"], table["fell_back"], table["ef_search"]) == ("exact", True, tuning.FILTERED_EF_SEARCH)
    assert [h.id for h in hits] == [r.id for r in passages] == [r.row_key["id"] for r in docs]
    assert len(hits) == sum(1 for row in ROWS[:7] if row["collection"] == "big") == 7
