"""search(): rankings against brute-force numpy, the planner's paths, selective filters, the SQL functions.

One module-scoped database of 3000 clustered, normalised 32-d vectors; numpy computes the truth.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _encoders import stand_in_encoder
from _filter_oracle import matches
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dpr_pg import DimensionError, FilterError, SearchError
from dpr_pg.db.models import Passage
from dpr_pg.search.api import search, search_many, search_statement

DIM = 32
N = 3000


def _corpus() -> tuple[np.ndarray, list[dict[str, Any]]]:
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(20, DIM))
    vectors = centers[rng.integers(0, 20, N)] + 0.6 * rng.normal(size=(N, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    metadata = [{"half": i % 2 == 0, "tenth": i % 10 == 0, "one_pct": i % 100 == 0, "rare": i % 1000 == 7,
                 "only": i == 1234, "lang": "es" if i % 3 else "en"} for i in range(N)]
    return vectors, metadata


VECTORS, METADATA = _corpus()
QUERIES = np.random.default_rng(9).normal(size=(6, DIM)).astype(np.float32)
TEXTS = ["Madrid es la capital de España", "La insulina regula la glucosa en la sangre",
         "Sevilla está en Andalucía", "El ADN guarda la información genética"]


@pytest.fixture(scope="module")
def corpus_engine(server: Any) -> Iterator[Engine]:
    name = server.create_database(template=server.initialized_template(DIM))
    engine = sa.create_engine(server.url_for(name))
    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, DIM)
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
            "encoder_id) VALUES (:c, :e, :t, :x, CAST(:m AS jsonb), 'h', :v, :enc)"),
            [{"c": "wiki" if i % 4 else "news", "e": f"p{i}", "t": f"Título {i}", "x": TEXTS[i % len(TEXTS)] + f" {i}",
              "m": json.dumps(METADATA[i]), "v": str(VECTORS[i].tolist()), "enc": encoder} for i in range(N)])
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))
    yield engine
    engine.dispose()
    server.drop_database(name)


def truth(query: np.ndarray, k: int, document: dict[str, Any] | None = None, collection: str | None = None) -> list[int]:
    """Database ids (1-based, insertion order) of the exact top-k by inner product."""
    scores = VECTORS.astype(np.float64) @ query.astype(np.float64)
    rows = [i for i in range(N)
            if (document is None or matches(document, {"metadata": METADATA[i]}))
            and (collection is None or ("wiki" if i % 4 else "news") == collection)]
    rows.sort(key=lambda i: (-scores[i], i))
    return [i + 1 for i in rows[:k]]


def ids(hits: Any) -> list[int]:
    return [hit.id for hit in hits]


def test_exact_mode_ranks_like_brute_force_numpy(corpus_engine: Engine) -> None:
    for query in QUERIES:
        hits = search(corpus_engine, query, k=10, mode="exact")
        assert ids(hits) == truth(query, 10)
        expected = VECTORS[[h - 1 for h in ids(hits)]] @ query
        assert np.allclose([h.score for h in hits], expected, rtol=1e-4, atol=1e-5)
        assert [h.rank for h in hits] == list(range(10))
        assert hits.plan.path == "exact"


def test_ann_at_high_ef_search_ranks_like_brute_force_numpy(corpus_engine: Engine) -> None:
    for query in QUERIES:
        hits = search(corpus_engine, query, k=10, ef_search=1000)
        assert hits.plan.path == "hnsw"
        assert ids(hits) == truth(query, 10)


def test_unfiltered_ann_uses_the_hnsw_index(corpus_engine: Engine) -> None:
    # At 3000 rows PostgreSQL costs a seq scan below HNSW at ef_search 200; at 40 the index wins.
    hits = search(corpus_engine, QUERIES[0], k=5, explain=True, ef_search=40)
    assert hits.plan.path == "hnsw"
    assert "Index Scan using passages_embedding_hnsw" in hits.plan.explain
    assert hits[0].score >= hits[-1].score


SELECTIVE = [({"half": True}, 1500), ({"tenth": True}, 300), ({"one_pct": True}, 30), ({"rare": True}, 3),
             ({"only": True}, 1), ({"only": True, "lang": "en"}, 0)]


@pytest.mark.parametrize(("document", "count"), SELECTIVE, ids=[json.dumps(d) for d, _ in SELECTIVE])
def test_selective_filters_return_min_k_matches_with_the_exact_ranking(corpus_engine: Engine,
                                                                       document: dict[str, Any], count: int) -> None:
    for query in QUERIES[:3]:
        hits = search(corpus_engine, query, k=10, filter=document)
        assert len(hits) == min(10, count)
        assert ids(hits) == truth(query, 10, document)
        assert all(matches(document, {"metadata": hit.metadata}) for hit in hits)


@pytest.mark.parametrize(("document", "count"), SELECTIVE, ids=[json.dumps(d) for d, _ in SELECTIVE])
def test_iterative_index_path_never_comes_back_short(corpus_engine: Engine, document: dict[str, Any],
                                                     count: int) -> None:
    # exact_threshold=0 and exact_selectivity=0 force the iterative HNSW scan, whatever the filter's width
    for query in QUERIES[:3]:
        hits = search(corpus_engine, query, k=10, filter=document, exact_threshold=0, exact_selectivity=0)
        assert hits.plan.path in ("hnsw-iterative", "exact")
        assert len(hits) == min(10, count)
        expected = truth(query, 10, document)
        assert len(set(ids(hits)) & set(expected)) >= 0.9 * len(expected)


def test_planner_picks_exact_for_narrow_and_iterative_for_broad_filters(corpus_engine: Engine) -> None:
    narrow = search(corpus_engine, QUERIES[0], k=10, filter={"one_pct": True})
    broad = search(corpus_engine, QUERIES[0], k=10, filter={"half": True}, exact_threshold=100)
    assert narrow.plan.path == "exact"
    assert broad.plan.path == "hnsw-iterative"
    assert broad.plan.ef_search == 400
    counted = search(corpus_engine, QUERIES[0], k=10, filter={"tenth": True}, exact_threshold=150)
    assert (counted.plan.path, counted.plan.matching_rows) == ("hnsw-iterative", 151)  # counted up to 151


def test_a_filter_matching_a_small_share_of_a_large_table_goes_exact(corpus_engine: Engine) -> None:
    # 30 of 3000 rows (1%): above this exact_threshold, but within 2% of the table.
    hits = search(corpus_engine, QUERIES[0], k=10, filter={"one_pct": True}, exact_threshold=10)
    assert hits.plan.path == "exact" and "too narrow for iterative HNSW" in hits.plan.reason
    assert ids(hits) == truth(QUERIES[0], 10, {"one_pct": True})
    wider = search(corpus_engine, QUERIES[0], k=10, filter={"one_pct": True}, exact_threshold=10,
                   exact_selectivity=0.005)  # 1% is above 0.5%: a bounded count (11 > 10), then the index
    assert (wider.plan.path, wider.plan.matching_rows) == ("hnsw-iterative", 11)


def test_pgvector_before_0_8_gets_exact_search_under_a_filter(corpus_engine: Engine) -> None:
    hits = search(corpus_engine, QUERIES[1], k=10, filter={"half": True}, pgvector_version=(0, 7, 4))
    assert hits.plan.path == "exact"
    assert "pgvector 0.7.4 has no iterative index scans" in hits.plan.reason
    assert ids(hits) == truth(QUERIES[1], 10, {"half": True})


def test_collection_limits_the_search(corpus_engine: Engine) -> None:
    hits = search(corpus_engine, QUERIES[2], k=10, collection="news", filter={"tenth": True})
    assert {hit.collection for hit in hits} == {"news"}
    assert ids(hits) == truth(QUERIES[2], 10, {"tenth": True}, collection="news")


def test_search_settings_are_restored_after_the_query(corpus_engine: Engine) -> None:
    with corpus_engine.connect() as conn:
        for options in ({"exact_threshold": 0}, {}):  # the iterative index path, then the exact path
            search(conn, QUERIES[0], k=10, filter={"half": True}, **options)
            assert conn.execute(sa.text(
                "SELECT current_setting('hnsw.iterative_scan'), current_setting('hnsw.ef_search'), "
                "current_setting('plan_cache_mode')")).one() == ("off", "40", "auto")


def test_the_planners_cached_probe_estimates_each_filter_with_its_own_values(corpus_engine: Engine) -> None:
    # The EXPLAIN probe is compiled once per filter shape; its values are bound afresh on every call.
    from dpr_pg.search.planner import Explain

    def estimate(conn: sa.Connection, collection: str) -> float:
        probe = sa.select(sa.literal(1)).select_from(Passage).where(Passage.collection == collection)
        return float(conn.execute(Explain(probe)).scalar_one()[0]["Plan"]["Plan Rows"])

    with corpus_engine.connect() as conn:
        wiki, news, wiki_again = estimate(conn, "wiki"), estimate(conn, "news"), estimate(conn, "wiki")
        rows = conn.execute(sa.text("SELECT collection, count(*) FROM dpr_pg.passages GROUP BY 1")).all()
    counts = dict(rows)
    assert (wiki, news, wiki_again) == (counts["wiki"], counts["news"], counts["wiki"])  # analysed: exact per value
    explained = [search(corpus_engine, QUERIES[0], k=3, collection=name, explain=True) for name in ("wiki", "news")]
    assert ["'wiki'" in explained[0].plan.explain, "'news'" in explained[1].plan.explain] == [True, True]
    assert [{h.collection for h in hits} for hits in explained] == [{"wiki"}, {"news"}]


def test_search_many_equals_one_search_per_query(corpus_engine: Engine) -> None:
    batch = search_many(corpus_engine, QUERIES, k=5, filter={"tenth": True})
    assert [ids(h) for h in batch] == [ids(search(corpus_engine, q, k=5, filter={"tenth": True})) for q in QUERIES]


# ---- SQL functions -------------------------------------------------------------------------------


def sql_search(engine: Engine, query: np.ndarray, k: int, document: Any = None, collection: str | None = None) -> list:
    with engine.connect() as conn:
        return list(conn.execute(
            sa.text("SELECT * FROM dpr_pg.search(CAST(:q AS vector), :k, CAST(:f AS jsonb), :c)"),
            {"q": str(query.tolist()), "k": k, "f": json.dumps(document or {}), "c": collection}))


@pytest.mark.parametrize("document", [None, {"half": True}, {"one_pct": True}, {"rare": True, "lang": "en"}])
def test_sql_search_function_returns_what_python_returns(corpus_engine: Engine, document: Any) -> None:
    for query in QUERIES[:3]:
        rows = sql_search(corpus_engine, query, 10, document, "wiki")
        hits = search(corpus_engine, query, k=10, filter=document, collection="wiki")
        assert [r.id for r in rows] == ids(hits)
        assert [r._fields for r in rows[:1]] in ([], [("id", "external_id", "collection", "title", "text",
                                                        "metadata", "score")])
        assert np.allclose([r.score for r in rows], [h.score for h in hits])


def test_sql_hybrid_search_equals_python_hybrid(corpus_engine: Engine) -> None:
    for query, text in zip(QUERIES[:3], ["capital de España", "insulina glucosa", "Andalucía"]):
        with corpus_engine.connect() as conn:
            rows = list(conn.execute(sa.text(
                "SELECT id, score FROM dpr_pg.hybrid_search(CAST(:q AS vector), :t, 10, '{\"tenth\": true}', NULL, "
                "1.0, 2.0, 30)"), {"q": str(query.tolist()), "t": text}))
        hits = search(corpus_engine, query, k=10, mode="hybrid", query_text=text, filter={"tenth": True},
                      dense_weight=1.0, text_weight=2.0, rrf_k=30)
        assert hits.plan.path == "hybrid"
        assert [r.id for r in rows] == ids(hits)
        assert np.allclose([r.score for r in rows], [h.score for h in hits])


def test_hybrid_weights_select_one_side_or_the_other(corpus_engine: Engine) -> None:
    dense_only = search(corpus_engine, QUERIES[0], k=10, mode="hybrid", query_text="insulina", text_weight=0.0,
                        ef_search=1000)
    assert ids(dense_only) == truth(QUERIES[0], 10)
    text_only = search(corpus_engine, QUERIES[0], k=10, mode="hybrid", query_text="insulina", dense_weight=0.0)
    assert all("insulina" in hit.text for hit in text_only)
    assert text_only[0].score == pytest.approx(1 / 61)


def test_sql_function_runs_for_a_read_only_role_that_cannot_write(corpus_engine: Engine) -> None:
    role = f"dpr_reader_{uuid.uuid4().hex[:8]}"
    with corpus_engine.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} NOLOGIN"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA dpr_pg TO {role}"))
        conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA dpr_pg TO {role}"))
        conn.commit()
        try:
            conn.execute(sa.text(f"SET ROLE {role}"))
            rows = list(conn.execute(sa.text("SELECT id FROM dpr_pg.search(CAST(:q AS vector), 5, '{\"half\": true}')"),
                                     {"q": str(QUERIES[0].tolist())}))
            assert [r.id for r in rows] == truth(QUERIES[0], 5, {"half": True})
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text("DELETE FROM dpr_pg.passages"))
            conn.rollback()
        finally:
            conn.execute(sa.text("RESET ROLE"))
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
            conn.commit()


def test_sql_function_pins_search_path_and_runs_as_invoker(corpus_engine: Engine) -> None:
    with corpus_engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.proname, p.prosecdef, array_to_string(p.proconfig, ',') FROM pg_proc p "
            "WHERE p.pronamespace = 'dpr_pg'::regnamespace AND p.proname IN ('search', 'hybrid_search')")).all()
        assert {r[0] for r in rows} == {"search", "hybrid_search"}
        assert all(not r[1] and r[2].startswith("search_path=pg_catalog, dpr_pg, public, pg_temp") for r in rows)
        conn.execute(sa.text("SET search_path = pg_temp"))  # callers with an empty path still resolve <#>
        assert len(list(conn.execute(sa.text("SELECT * FROM dpr_pg.search(CAST(:q AS public.vector), 3)"),
                                     {"q": str(QUERIES[0].tolist())}))) == 3


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "error", "message"), [
    (None, SearchError, "not None"),
    ([], DimensionError, "32 dimensions"),
    ([0.1] * 31, DimensionError, "32 dimensions, not 31"),
    ([float("nan")] * 32, SearchError, "NaN"),
    ([float("inf")] + [0.0] * 31, SearchError, "NaN, infinity"),
    ([1e39] + [0.0] * 31, SearchError, "beyond float32"),
    (np.zeros((2, 32)), DimensionError, "use search_many"),
    ("¿Dónde está Sevilla?", SearchError, "needs an encoder"),
    ("x" * 10_001, SearchError, "at most 10000 characters, not 10001"),
])
def test_bad_query_vectors_fail_before_sql(corpus_engine: Engine, query: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        search(corpus_engine, query, k=3)


@pytest.mark.parametrize("options", [{"k": 0}, {"k": True}, {"k": 10001}, {"mode": "fuzzy"}, {"rrf_k": -1},
                                     {"mode": "hybrid"}, {"dense_weight": float("nan")},
                                     {"text_weight": float("inf")}, {"dense_weight": "1"}, {"candidates": 0},
                                     {"candidates": 10001}, {"mode": "hybrid", "query_text": "x" * 10001},
                                     {"mode": "hybrid", "query_text": "capital\x00"}])
def test_bad_options_raise_search_error(corpus_engine: Engine, options: dict[str, Any]) -> None:
    with pytest.raises(SearchError):
        search(corpus_engine, QUERIES[0], **options)


@pytest.mark.parametrize(("arguments", "message"), [
    ("dense_weight => 'NaN'", "expected finite weights, not dense_weight NaN"),
    ("text_weight => '-Infinity'", "expected finite weights"),
    ("dense_weight => NULL", "expected finite weights"),
    ("rrf_k => -1", "expected rrf_k >= 0, not -1"),
    ("candidates => 20000", "expected candidates between 1 and 10000, not 20000"),
])
def test_sql_hybrid_search_refuses_bad_weights_and_options(corpus_engine: Engine, arguments: str, message: str) -> None:
    with corpus_engine.connect() as conn, pytest.raises(sa.exc.DataError, match=message):
        conn.execute(sa.text(f"SELECT * FROM dpr_pg.hybrid_search(CAST(:q AS vector), 'insulina', 5, {arguments})"),
                     {"q": str(QUERIES[0].tolist())})


def test_an_oversize_hybrid_text_is_a_clear_error_in_python_and_sql(corpus_engine: Engine) -> None:
    huge = "insulina " * 1_800_000  # 16 MB
    with corpus_engine.connect() as conn:
        for text in (huge, "x" * 10_001):
            with pytest.raises(sa.exc.DataError, match="expected a query text of at most 10000 characters"):
                conn.execute(sa.text("SELECT * FROM dpr_pg.hybrid_search(CAST(:q AS vector), :t, 5)"),
                             {"q": str(QUERIES[0].tolist()), "t": text})
            conn.rollback()
    with pytest.raises(SearchError, match="at most 10000 characters, not 16200000"):
        search(corpus_engine, QUERIES[0], k=5, mode="hybrid", query_text=huge)


def test_a_hybrid_text_of_too_many_words_is_refused_on_both_faces(corpus_engine: Engine) -> None:
    # ts_rank_cd's cost per matching row grows with the query's terms: 1,111 words took 33 s here.
    at_limit, over = " insulina\t" * 200, "insulina " * 1111
    hybrid = sa.text("SELECT * FROM dpr_pg.hybrid_search(CAST(:q AS vector), :t, 5)")
    with corpus_engine.connect() as conn:
        assert len(conn.execute(hybrid, {"q": str(QUERIES[0].tolist()), "t": at_limit}).all()) == 5
        with pytest.raises(sa.exc.DataError, match="expected a query text of at most 200 words, not 1111"):
            conn.execute(hybrid, {"q": str(QUERIES[0].tolist()), "t": over})
    assert len(search(corpus_engine, QUERIES[0], k=5, mode="hybrid", query_text=at_limit)) == 5
    with pytest.raises(SearchError, match="expected a query text of at most 200 words, not 1111"):
        search(corpus_engine, QUERIES[0], k=5, mode="hybrid", query_text=over)
    assert len(search(corpus_engine, QUERIES[0], k=5, query_text=over, mode="dense")) == 5  # dense reads no words


def test_bad_filter_fails_before_sql(corpus_engine: Engine) -> None:
    with pytest.raises(FilterError, match="unknown operator"):
        search(corpus_engine, QUERIES[0], filter='{"a": {"$regex": "x"}}')


def test_sql_function_rejects_a_wrong_dimension_and_a_null_vector(corpus_engine: Engine) -> None:
    with corpus_engine.connect() as conn:
        with pytest.raises(sa.exc.DataError, match="expected a 32-dimension query vector, not 3"):
            conn.execute(sa.text("SELECT * FROM dpr_pg.search('[1,2,3]', 5)"))
        conn.rollback()
        with pytest.raises(sa.exc.DBAPIError, match="the query vector is NULL"):
            conn.execute(sa.text("SELECT * FROM dpr_pg.search(NULL, 5)"))


@pytest.mark.parametrize("name", ["news'; DROP TABLE dpr_pg.passages; --", "wiki' OR '1'='1", "\"news\"", "$4"])
def test_injection_in_collection_names_matches_nothing(corpus_engine: Engine, name: str) -> None:
    assert search(corpus_engine, QUERIES[0], k=5, collection=name, filter={"half": True}) == []
    assert sql_search(corpus_engine, QUERIES[0], 5, {"half": True}, name) == []
    with corpus_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar_one() == N


# ---- ORM -----------------------------------------------------------------------------------------


def test_search_statement_joins_an_application_table_in_a_session(corpus_engine: Engine) -> None:
    with Session(corpus_engine) as session:
        session.execute(sa.text("CREATE TEMP TABLE article (slug text PRIMARY KEY, published boolean)"))
        session.execute(sa.text("INSERT INTO article SELECT 'p' || i, i % 3 = 0 FROM generate_series(0, 2999) i"))
        article = sa.table("article", sa.column("slug"), sa.column("published"))
        stmt = (search_statement(QUERIES[0], k=10, filter={"half": True}, exact=True, dim=DIM)
                .join(article, article.c.slug == Passage.external_id)
                .where(article.c.published.is_(True)))
        rows = session.execute(stmt).all()
    expected = [i for i in truth(QUERIES[0], N, {"half": True}) if (i - 1) % 3 == 0][:10]
    assert [r.id for r in rows] == expected
    assert rows[0].score == pytest.approx(float(VECTORS[expected[0] - 1] @ QUERIES[0]), rel=1e-4)


def test_search_statement_checks_the_vector_before_sql() -> None:
    with pytest.raises(DimensionError, match="expected a query vector of 768 dimensions, not 3"):
        search_statement([1.0, 2.0, 3.0], dim=768)


def test_a_768d_row_keeps_metadata_and_text_inline_in_the_heap(engine: Engine) -> None:
    # Migration 0006: with the default 2 KB TOAST target, a 3 KB PLAIN embedding pushed metadata and
    # text out to the TOAST table, and every filter check read them back from there.
    rng = np.random.default_rng(3)
    vector = str(rng.normal(size=768).astype(np.float32).tolist())
    metadata = {f"k{i}": uuid.UUID(int=int(rng.integers(2**62))).hex for i in range(20)}  # ~900 B, incompressible
    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, 768)
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
            "encoder_id) VALUES ('c', 'e', 't', :x, CAST(:m AS jsonb), 'h', :v, :enc)"),
            {"x": uuid.uuid4().hex * 20, "m": json.dumps(metadata), "v": vector, "enc": encoder})
    with engine.connect() as conn:
        options, toast_bytes = conn.execute(sa.text(
            "SELECT reloptions, pg_relation_size(reltoastrelid) FROM pg_class "
            "WHERE oid = 'dpr_pg.passages'::regclass")).one()
    assert "toast_tuple_target=8160" in options
    assert toast_bytes == 0

