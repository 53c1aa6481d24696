"""One planner under every face on a table partitioned by collection.

A search of one collection of a partitioned dpr_pg.passages reads that collection's partition,
which has an HNSW index of its own: Python ``search`` and SQL ``dpr_pg.search`` (and the dense side
of both hybrid searches) must take the same path for the same reason (estimate, bounded count,
ef_search, fallback) and return the same hits, and an unpartitioned table with the same rows keeps
the table-wide rules. A search of every collection walks each partition's index at the partitions'
share of ef_search, in both faces. The SQL functions report their plan as a DEBUG message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _collection_rows import collections_database, load_collections
from _sql_face import sql_face
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from dpr_pg import search, tuning
from dpr_pg.db.partitions import is_partitioned, partition_name
from dpr_pg.db.schema import init
from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.search.api import forget_database_facts
from dpr_pg.search.planner import PartitionSpread, spread_ef_search

DIM = 8
FINGERPRINT = EncoderFingerprint("plans/question", None, "plans/passage", None, "tok", DIM, 512)
# "big" and "other" are each larger than the exact threshold, "small" is not; the table is 5,100 rows.
SIZES = {"big": 2400, "other": 2400, "small": 300}
QUERY = np.random.default_rng(21).normal(size=DIM).astype(np.float32)


def _load(engine: Engine, tmp_path: Path) -> None:
    load_collections(engine, tmp_path, SIZES, fingerprint=FINGERPRINT, seed=20,
                     metadata=lambda name, i: {"even": i % 2 == 0})


@pytest.fixture(scope="module", params=[True, False], ids=["partitioned", "unpartitioned"])
def engine(request: pytest.FixtureRequest, server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    rows = tmp_path_factory.mktemp("rows")
    with collections_database(server, partitioned=request.param, dim=DIM, load=lambda eng: _load(eng, rows)) as eng:
        yield eng


PARTITION = f"is a partition of about {SIZES['big']} rows with its own HNSW index"
# (collection, filter) → (path, estimated rows, matching rows, ef_search) on each table, None: not checked
CASES = [
    pytest.param("big", {}, {True: ("hnsw-iterative", SIZES["big"], None, tuning.UNFILTERED_EF_SEARCH),
                             False: ("hnsw-iterative", None, tuning.EXACT_THRESHOLD + 1, tuning.FILTERED_EF_SEARCH)},
                 id="a big collection: its partition's index"),
    pytest.param("small", {}, {True: ("exact", None, None, None), False: ("exact", None, None, None)},
                 id="a small collection: exact"),
    pytest.param("big", {"even": True}, {True: ("exact", None, None, None), False: ("exact", None, None, None)},
                 id="a big collection and a metadata filter"),
]


@pytest.mark.parametrize(("collection", "document", "expected"), CASES)
def test_python_and_sql_search_take_the_same_plan_and_hits(
    engine: Engine, collection: str, document: dict[str, Any], expected: dict[bool, tuple[Any, ...]]
) -> None:
    partitioned = is_partitioned(engine)
    hits = search(engine, QUERY, k=10, collection=collection, filter=document)
    with engine.begin() as conn:
        rows, sql = sql_face(conn, "SELECT id, score FROM dpr_pg.search(CAST(:q AS vector), 10, CAST(:f AS jsonb), "
                                    ":c)", {"q": str(QUERY.tolist()), "f": json.dumps(document), "c": collection})
    python = hits.plan
    path, estimated, matching, ef = expected[partitioned]
    assert python.path == path and not python.fell_back
    if estimated is not None:
        assert python.estimated_rows == pytest.approx(estimated)
    if matching is not None:
        assert python.matching_rows == matching
    if ef is not None:
        assert python.ef_search == ef
    assert (PARTITION in python.reason) == (partitioned and collection == "big" and not document)
    assert (sql["path"], sql["matching_rows"], sql["ef_search"], sql["fell_back"]) == (
        python.path, python.matching_rows, python.ef_search, python.fell_back)
    assert sql["estimated_rows"] == pytest.approx(python.estimated_rows)
    assert [h.id for h in hits] == [r.id for r in rows] and len(hits) == 10
    assert [h.score for h in hits] == pytest.approx([r.score for r in rows], rel=1e-5)
    assert all(h.collection == collection for h in hits)


def test_python_and_sql_hybrid_search_plan_their_dense_side_alike(engine: Engine) -> None:
    hits = search(engine, QUERY, k=10, collection="big", mode="hybrid", query_text="texto big", candidates=50)
    with engine.begin() as conn:
        rows, sql = sql_face(conn, "SELECT id FROM dpr_pg.hybrid_search(CAST(:q AS vector), 'texto big', 10, "
                                    "collection => 'big', candidates => 50)", {"q": str(QUERY.tolist())})
    assert hits.plan.path == "hybrid"
    assert f"({sql['path']}: " in hits.plan.reason
    assert (PARTITION in hits.plan.reason) == is_partitioned(engine)
    assert (sql["matching_rows"], sql["ef_search"]) == (hits.plan.matching_rows, hits.plan.ef_search)
    assert [h.id for h in hits] == [r.id for r in rows] and len(hits) == 10


# With thresholds that reach the selectivity rule: about 1,200 even rows of "big" are 50% of its
# partition but 24% of the table, so at exact_selectivity 0.3 the unpartitioned table goes exact and
# the partition iterates; "small" (300 rows, 6% of the table) is above a threshold of 100: its
# partition's index, where the unpartitioned table finds it narrow enough for exact.
@pytest.mark.parametrize(("collection", "document", "paths"), [
    ("big", {"even": True}, {True: "hnsw-iterative", False: "exact"}),
    ("small", {}, {True: "hnsw-iterative", False: "exact"}),
])
def test_the_sql_planner_judges_a_collection_by_its_partition_like_the_python_planner(
    engine: Engine, collection: str, document: dict[str, Any], paths: dict[bool, str]
) -> None:
    threshold, selectivity = 100, 0.3
    hits = search(engine, QUERY, k=10, collection=collection, filter=document, exact_threshold=threshold,
                  exact_selectivity=selectivity)
    with engine.begin() as conn:
        sql = conn.execute(sa.text(
            "SELECT p.* FROM dpr_pg.compile_filter(CAST(:f AS jsonb)) AS c, "
            "dpr_pg._search_plan('dpr_pg.passages', 'dpr_pg.passages', c.clause || ' AND collection = $4', c.params, "
            "10, :c, :t, :s) AS p"),
            {"f": json.dumps(document), "c": collection, "t": threshold, "s": selectivity}).one()
    assert hits.plan.path == paths[is_partitioned(engine)]
    assert (sql.path, sql.matching_rows, sql.ef_search) == (hits.plan.path, hits.plan.matching_rows,
                                                             hits.plan.ef_search)
    assert sql.estimated_rows == pytest.approx(hits.plan.estimated_rows)


# A search of every collection walks each partition's HNSW index, merged: the largest partition ("big",
# 2,400 of 5,100 rows) keeps its share of the one index's ef_search, at least tuning.PARTITIONS_MIN_EF_SEARCH:
# 250 x 47% is 118, under the floor (160); 400 x 47% is 189, above it.
SHARE = max(SIZES.values()) / sum(SIZES.values())
ACROSS = [
    pytest.param({}, "hnsw", {True: tuning.PARTITIONS_MIN_EF_SEARCH, False: tuning.UNFILTERED_EF_SEARCH},
                 id="no filter"),
    pytest.param({"even": True}, "hnsw-iterative", {True: math.ceil(tuning.FILTERED_EF_SEARCH * SHARE),
                                                    False: tuning.FILTERED_EF_SEARCH}, id="a broad metadata filter"),
]


def test_the_fixture_spans_both_terms_of_the_partitions_rule() -> None:
    assert math.ceil(tuning.UNFILTERED_EF_SEARCH * SHARE) < tuning.PARTITIONS_MIN_EF_SEARCH \
        < math.ceil(tuning.FILTERED_EF_SEARCH * SHARE)


@pytest.mark.parametrize(("document", "path", "ef_search"), ACROSS)
def test_a_search_of_every_collection_takes_the_partitions_share_of_ef_search_in_both_faces(
    engine: Engine, document: dict[str, Any], path: str, ef_search: dict[bool, int]
) -> None:
    partitioned = is_partitioned(engine)
    hits = search(engine, QUERY, k=10, filter=document)
    with engine.begin() as conn:
        rows, sql = sql_face(conn, "SELECT id, score FROM dpr_pg.search(CAST(:q AS vector), 10, CAST(:f AS jsonb))",
                              {"q": str(QUERY.tolist()), "f": json.dumps(document)})
    assert (hits.plan.path, hits.plan.ef_search) == (path, ef_search[partitioned])
    assert (sql["path"], sql["ef_search"], sql["fell_back"]) == (path, ef_search[partitioned], False)
    assert ("the HNSW indexes of 4 partitions, merged: the largest holds 47% of the rows" in hits.plan.reason) \
        == partitioned
    assert [h.id for h in hits] == [r.id for r in rows] and len(hits) == 10


def test_an_explicit_ef_search_is_honoured_across_partitions(engine: Engine) -> None:
    assert search(engine, QUERY, k=10, ef_search=300).plan.ef_search == 300
    assert search(engine, QUERY, k=10, ef_search=5).plan.ef_search == 10  # never below k
    assert search(engine, QUERY, k=10, filter={"even": True}, ef_search=20).plan.ef_search == 20


@settings(max_examples=25)
@given(k=st.integers(min_value=1, max_value=tuning.MAX_EF_SEARCH + 5), filtered=st.booleans())
def test_both_planners_choose_the_same_ef_search_for_any_k(engine: Engine, k: int, filtered: bool) -> None:
    document = {"even": True} if filtered else {}
    python = search(engine, QUERY, k=k, filter=document, mode="dense").plan
    with engine.begin() as conn:
        sql = conn.execute(sa.text(
            "SELECT p.* FROM dpr_pg.compile_filter(CAST(:f AS jsonb)) AS c, "
            "dpr_pg._search_plan('dpr_pg.passages', 'dpr_pg.passages', c.clause, c.params, :k) AS p"),
            {"f": json.dumps(document), "k": k}).one()
    assert sql.ef_search == python.ef_search
    assert sql.path == python.path or python.fell_back  # an index scan short of k rows: exact after planning
    if python.ef_search is not None:
        base = tuning.FILTERED_EF_SEARCH if filtered else tuning.UNFILTERED_EF_SEARCH
        assert k <= python.ef_search <= max(k, base)


def test_a_partition_never_analysed_keeps_the_one_index_ef_search(server: Any, tmp_path: Path) -> None:
    name = server.create_database()
    eng = sa.create_engine(server.url_for(name))
    try:
        init(eng, dim=DIM, partition_by_collection=True)
        _load(eng, tmp_path)
        with eng.begin() as conn:
            conn.execute(sa.text("SELECT dpr_pg.ensure_collection_partition('new')"))
            assert conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"),
                                {"t": f"dpr_pg.{partition_name('new')}"}).scalar() < 0
        hits = search(eng, QUERY, k=10)
        with eng.begin() as conn:
            _, sql = sql_face(conn, "SELECT id FROM dpr_pg.search(CAST(:q AS vector), 10)", {"q": str(QUERY.tolist())})
        assert hits.plan.ef_search == sql["ef_search"] == tuning.UNFILTERED_EF_SEARCH
        with eng.begin() as conn:
            conn.execute(sa.text("ANALYZE dpr_pg.passages"))
        forget_database_facts(eng)
        hits = search(eng, QUERY, k=10)
        assert hits.plan.ef_search == tuning.PARTITIONS_MIN_EF_SEARCH < tuning.UNFILTERED_EF_SEARCH
    finally:
        eng.dispose()
        server.drop_database(name)


@given(base=st.integers(1, tuning.MAX_EF_SEARCH), k=st.integers(1, tuning.MAX_EF_SEARCH),
       partitions=st.integers(1, 50), largest=st.floats(0, 1e9), rest=st.floats(0, 1e9), analyzed=st.booleans())
def test_the_partitions_ef_search_is_never_below_k_nor_above_the_one_index_choice(
    base: int, k: int, partitions: int, largest: float, rest: float, analyzed: bool
) -> None:
    spread = PartitionSpread(partitions, largest, largest + rest, analyzed)
    ef = spread_ef_search(base, k, spread)
    assert k <= ef <= max(k, base)
    assert ef >= min(max(k, tuning.PARTITIONS_MIN_EF_SEARCH), max(k, base))
    if not analyzed or largest + rest == 0:
        assert ef == max(k, base)
    # a larger share of the rows in the largest partition never lowers it
    assert spread_ef_search(base, k, PartitionSpread(partitions, largest + rest, largest + rest, analyzed)) >= ef
