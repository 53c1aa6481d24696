"""One planner under every face on a table partitioned by collection.

A search of one collection of a partitioned dpr_pg.passages reads that collection's partition,
which has an HNSW index of its own: Python ``search`` and SQL ``dpr_pg.search`` (and the dense side
of both hybrid searches) must take the same path for the same reason (estimate, bounded count,
ef_search, fallback) and return the same hits, and an unpartitioned table with the same rows keeps
the table-wide rules. The SQL functions report their plan as a DEBUG message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpr_pg import ingest, search, tuning
from dpr_pg.db.partitions import is_partitioned
from dpr_pg.db.schema import init
from dpr_pg.encoders.fingerprint import EncoderFingerprint

DIM = 8
FINGERPRINT = EncoderFingerprint("plans/question", None, "plans/passage", None, "tok", DIM, 512)
# "big" and "other" are each larger than the exact threshold, "small" is not; the table is 5,100 rows.
SIZES = {"big": 2400, "other": 2400, "small": 300}
QUERY = np.random.default_rng(21).normal(size=DIM).astype(np.float32)


def _load(engine: Engine, tmp_path: Path) -> None:
    rng = np.random.default_rng(20)
    for name, n in SIZES.items():
        rows = tmp_path / f"{uuid.uuid4().hex}.jsonl"
        rows.write_text("".join(json.dumps({"id": f"{name}:{i}", "title": f"{name} {i}", "text": f"texto {name} {i}",
                                            "even": i % 2 == 0}) + "\n" for i in range(n)))
        vectors = rows.with_suffix(".npy")
        np.save(vectors, rng.normal(size=(n, DIM)).astype(np.float32))
        ingest(engine, None, rows, collection=name, embeddings=vectors, fingerprint=FINGERPRINT, progress=False)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))


@pytest.fixture(scope="module", params=[True, False], ids=["partitioned", "unpartitioned"])
def engine(request: pytest.FixtureRequest, server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    name = server.create_database()
    eng = sa.create_engine(server.url_for(name))
    init(eng, dim=DIM, partition_by_collection=request.param)
    _load(eng, tmp_path_factory.mktemp("rows"))
    assert is_partitioned(eng) is request.param
    yield eng
    eng.dispose()
    server.drop_database(name)


def _sql_face(conn: Connection, statement: str, params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The rows of a SQL search function, and the plan dpr_pg.search reported as a DEBUG message."""
    messages: list[str] = []

    def keep(diagnostic: Any) -> None:
        messages.append(diagnostic.message_primary or "")

    raw = conn.connection.driver_connection
    raw.add_notice_handler(keep)
    try:
        conn.execute(sa.text("SET LOCAL client_min_messages = debug1"))
        found = list(conn.execute(sa.text(statement), params))
    finally:
        raw.remove_notice_handler(keep)
    (plan,) = [json.loads(m.split(" plan: ", 1)[1]) for m in messages if m.startswith("dpr_pg.search")]
    return found, plan


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
        rows, sql = _sql_face(conn, "SELECT id, score FROM dpr_pg.search(CAST(:q AS vector), 10, CAST(:f AS jsonb), "
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
        rows, sql = _sql_face(conn, "SELECT id FROM dpr_pg.hybrid_search(CAST(:q AS vector), 'texto big', 10, "
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
