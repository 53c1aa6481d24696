"""Filtered HNSW indexes: a partial index of the rows a hot filter matches, walked by both faces.

A search whose filter is an index's document takes path ``hnsw`` on that small graph (PostgreSQL
proves the WHERE implies the predicate); with further conditions their share is judged against the
index's rows. The hits are the exact search's, partitioned or not, in Python and in SQL.
"""

from __future__ import annotations

import json
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
from sqlalchemy.engine import Connection, Engine

from dpr_pg import (build_filtered_index, build_index, drop_collection, drop_filtered_index, filtered_indexes,
                    partition_passages, promote_key, search, set_storage, tuning)
from dpr_pg.db.filtered import (FilteredIndex, check_document, forget_filtered_indexes, index_name,
                                matching_index)
from dpr_pg.db.partitions import is_partitioned, partition_name
from dpr_pg.db.schema import init
from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.errors import ConfigError, IndexBuildError
from dpr_pg.filters import COLUMNS

DIM = 8
FINGERPRINT = EncoderFingerprint("filtered/question", None, "filtered/passage", None, "tok", DIM, 512)
SIZES = {"big": 2400, "other": 2400}
HOT = {"tag": "hot"}
QUERY = np.random.default_rng(31).normal(size=DIM).astype(np.float32)
ODD = "it's \"q\" \\ -- '); DROP TABLE dpr_pg.passages; -- ñ 😀 %s :x"


def _metadata(name: str, i: int) -> dict[str, Any]:
    return {"tag": "hot" if i % 10 == 0 else "cold", "lang": "es" if i % 2 else "en",
            **({"note": ODD} if i % 50 == 0 else {})}


def _load(engine: Engine, tmp_path: Path, sizes: dict[str, int], seed: int = 30) -> None:
    load_collections(engine, tmp_path, sizes, fingerprint=FINGERPRINT, seed=seed, metadata=_metadata)


@pytest.fixture(scope="module", params=[True, False], ids=["partitioned", "unpartitioned"])
def engine(request: pytest.FixtureRequest, server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """4,800 rows in two collections, 10% tagged hot, with the filtered index of {"tag": "hot"}."""
    rows = tmp_path_factory.mktemp("rows")
    with collections_database(server, partitioned=request.param, dim=DIM,
                              load=lambda eng: _load(eng, rows, SIZES)) as eng:
        build = build_filtered_index(eng, HOT)
        assert build.built and build.index.rows == 480
        yield eng


def _ids(hits: Any) -> list[int]:
    return [h.id for h in hits]


def _exact(engine: Engine, document: dict[str, Any], collection: str | None, k: int = 10) -> list[int]:
    return _ids(search(engine, QUERY, k=k, filter=document, collection=collection, mode="exact"))


def _index_scans(conn: Connection, name: str) -> int:
    """Scans of index ``name`` (and of its partitions' indexes) in this transaction so far."""
    return int(conn.execute(sa.text(
        "SELECT coalesce(sum(pg_stat_get_xact_numscans(r)), 0) FROM (SELECT to_regclass(:n) AS r "
        "UNION SELECT p.relid FROM pg_partition_tree(to_regclass(:n)) p) AS tree"),
        {"n": f"dpr_pg.{name}"}).scalar_one())


@pytest.mark.parametrize("collection", [None, "big"])
def test_the_filter_of_the_index_walks_it_unfiltered_with_the_exact_hits(engine: Engine,
                                                                        collection: str | None) -> None:
    hits = search(engine, QUERY, k=10, filter=HOT, collection=collection, explain=True)
    unfiltered = collection is None or is_partitioned(engine)  # a plain table's collection filters within it
    assert hits.plan.filtered_index == index_name(HOT)
    assert index_name(HOT) in hits.plan.reason
    assert hits.plan.path == ("hnsw" if unfiltered else "hnsw-iterative") and not hits.plan.fell_back
    assert hits.plan.ef_search == max(10, tuning.UNFILTERED_EF_SEARCH)
    assert "where_" + index_name(HOT)[-12:] in hits.plan.explain
    assert _ids(hits) == _exact(engine, HOT, collection)


def test_further_conditions_are_judged_against_the_index_rows(engine: Engine) -> None:
    document = {"tag": "hot", "lang": "en"}
    hits = search(engine, QUERY, k=10, filter=document, explain=True)
    assert hits.plan.path == "exact"  # about 240 rows: below the exact threshold
    assert f"within the filtered HNSW index {index_name(HOT)} (about 480 rows)" in hits.plan.reason
    forced = search(engine, QUERY, k=10, filter=document, exact_threshold=0, exact_selectivity=0, explain=True)
    assert forced.plan.path == "hnsw-iterative" and forced.plan.filtered_index == index_name(HOT)
    assert "where_" + index_name(HOT)[-12:] in forced.plan.explain  # PostgreSQL proves the predicate
    assert _ids(forced) == _ids(hits) == _exact(engine, document, None)


def test_a_callers_ef_search_and_exact_mode_are_honoured(engine: Engine) -> None:
    assert search(engine, QUERY, k=10, filter=HOT, ef_search=77).plan.ef_search == 77
    assert search(engine, QUERY, k=100, filter=HOT, ef_search=77).plan.ef_search == 100
    exact = search(engine, QUERY, k=10, filter=HOT, mode="exact")
    assert exact.plan.path == "exact" and exact.plan.filtered_index is None


@pytest.mark.parametrize(("k", "collection"), [(500, None), (300, "big")])
def test_an_index_with_fewer_rows_than_k_is_left_aside_by_both_faces(engine: Engine, k: int,
                                                                     collection: str | None) -> None:
    # 480 hot rows, 240 of them in "big": a partition's part of the index holds only those
    aside = collection is None or is_partitioned(engine)
    python = search(engine, QUERY, k=k, filter=HOT, collection=collection)
    with engine.begin() as conn:
        rows, plan = sql_face(conn, "SELECT id FROM dpr_pg.search(CAST(:q AS vector), :k, CAST(:f AS jsonb), :c)",
                              {"q": str(QUERY.tolist()), "k": k, "f": json.dumps(HOT), "c": collection})
    assert python.plan.filtered_index == plan.get("filtered_index") == (None if aside else index_name(HOT))
    assert (python.plan.path, python.plan.ef_search) == (plan["path"], plan["ef_search"])
    assert python.plan.fell_back is not aside  # a plain table's 480 rows, of which the collection keeps 240 < k
    assert _ids(python) == [r.id for r in rows] == _exact(engine, HOT, collection, k=k)

@pytest.mark.parametrize(("document", "collection"), [
    (HOT, None), (HOT, "big"), ({"tag": "hot", "lang": "es"}, None), ({"lang": "es", "tag": {"$eq": "hot"}}, "other"),
])
def test_the_sql_face_returns_the_same_hits_through_the_index(engine: Engine, document: dict[str, Any],
                                                             collection: str | None) -> None:
    expected = _exact(engine, document, collection)
    with engine.begin() as conn:
        before = _index_scans(conn, index_name(HOT))
        rows, plan = sql_face(conn, "SELECT id FROM dpr_pg.search(CAST(:q AS vector), 10, CAST(:f AS jsonb), :c)",
                              {"q": str(QUERY.tolist()), "f": json.dumps(document), "c": collection})
        scans = _index_scans(conn, index_name(HOT)) - before
    assert [r.id for r in rows] == expected
    if plan["path"] != "exact":
        assert scans > 0  # PostgreSQL chose the filtered index for the SQL face's query too


@pytest.mark.parametrize(("document", "collection"), [
    (HOT, None), (HOT, "big"), ({"tag": "hot", "lang": "es"}, None), ({"tag": "hot", "lang": "es"}, "big"),
])
def test_the_sql_face_plans_the_index_as_python_does(engine: Engine, document: dict[str, Any],
                                                     collection: str | None) -> None:
    with engine.begin() as conn:
        _, plan = sql_face(conn, "SELECT id FROM dpr_pg.search(CAST(:q AS vector), 10, CAST(:f AS jsonb), :c)",
                           {"q": str(QUERY.tolist()), "f": json.dumps(document), "c": collection})
    python = search(engine, QUERY, k=10, filter=document, collection=collection).plan
    assert (plan["path"], plan["ef_search"], plan["filtered_index"]) == (
        python.path, python.ef_search, python.filtered_index)
    assert python.filtered_index == index_name(HOT)
    if document == HOT:
        assert python.ef_search == tuning.UNFILTERED_EF_SEARCH


def test_a_new_collection_is_covered_by_the_index(engine: Engine, tmp_path: Path) -> None:
    _load(engine, tmp_path, {"late": 300}, seed=33)  # partitioned: a new partition, which inherits the index
    forget_filtered_indexes(engine)  # what a search reads of the indexes is a few seconds old: the new part's rows
    try:
        (index,) = filtered_indexes(engine)
        assert index.rows == 510
        if is_partitioned(engine):
            assert index.partitions[partition_name("late")] == 30
        hits = search(engine, QUERY, k=5, filter=HOT, collection="late", explain=True)
        assert hits.plan.filtered_index == index.name
        assert hits.plan.path == ("hnsw" if is_partitioned(engine) else "hnsw-iterative")
        assert _ids(hits) == _exact(engine, HOT, "late", k=5)
    finally:
        drop_collection(engine, "late")  # partitioned: its partition goes, and its part of the index with it
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE dpr_pg.passages"))
    (index,) = filtered_indexes(engine)
    assert index.valid and index.rows == 480 and partition_name("late") not in index.partitions
    assert search(engine, QUERY, k=10, filter=HOT).plan.path == "hnsw"


def test_values_with_quotes_backslashes_and_unicode_match_exactly(engine: Engine) -> None:
    document = {"note": ODD}
    build = build_filtered_index(engine, document)
    try:
        assert build.index.document == document and build.index.rows == 96
        assert {tuple(i.document.items()) for i in filtered_indexes(engine)} >= {(("note", ODD),)}
        hits = search(engine, QUERY, k=10, filter=document, explain=True)
        assert hits.plan.path == "hnsw" and hits.plan.filtered_index == index_name(document)
        assert all(h.metadata["note"] == ODD for h in hits)
        assert _ids(hits) == _exact(engine, document, None)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar_one() >= 4800
    finally:
        assert drop_filtered_index(engine, document) is True
    assert drop_filtered_index(engine, document) is False
    assert [i.document for i in filtered_indexes(engine)] == [HOT]


def test_building_it_again_keeps_the_index(engine: Engine) -> None:
    again = build_filtered_index(engine, '{"tag": "hot"}')
    assert not again.built and again.index.name == index_name(HOT)


# --- documents: accepted ⇔ 1..4 flat metadata keys with plain values ------------------------------------------

_KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(lambda k: k not in (*COLUMNS, "metadata"))
_PLAIN = st.one_of(st.text(max_size=12).filter(lambda s: "\x00" not in s), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=False, allow_infinity=False, width=32), st.booleans())
_BAD_VALUES = st.one_of(st.none(), st.just(float("nan")), st.just(float("inf")), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.just("$gt"), st.integers(), min_size=1), st.just("a\x00b"))
_BAD_KEYS = st.one_of(st.sampled_from([*COLUMNS, "metadata", "$and", "a.b", "1a", "", "a-b", "x" * 51]), st.integers())


@st.composite
def _documents(draw: Any) -> tuple[Any, bool]:
    good = draw(st.dictionaries(_KEYS, _PLAIN, min_size=1, max_size=4))
    kind = draw(st.sampled_from(["good", "bad value", "bad key", "too many", "empty", "not an object"]))
    if kind == "good":
        return good, True
    if kind == "bad value":
        return {**good, draw(_KEYS): draw(_BAD_VALUES)}, False
    if kind == "bad key":
        return {**good, draw(_BAD_KEYS): "v"}, False
    if kind == "too many":
        return {f"k{i}": i for i in range(5)}, False
    if kind == "empty":
        return {}, False
    return draw(st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.none())), False


@settings(max_examples=300, deadline=None)
@given(case=_documents())
def test_a_document_is_accepted_exactly_when_it_is_flat_plain_metadata(case: tuple[Any, bool]) -> None:
    document, good = case
    if good:
        assert check_document(document) == dict(sorted(document.items()))
        assert matching_index(document, []) is None
    else:
        with pytest.raises(ConfigError, match="1 to 4 top-level metadata keys"):
            check_document(document)


def test_the_index_with_fewest_rows_in_the_searched_partition_is_chosen() -> None:
    tag = FilteredIndex({"tag": "hot"}, "passages_hnsw_where_b", 500.0, partitions={"p_big": 450.0, "p_small": 50.0})
    lang = FilteredIndex({"lang": "es"}, "passages_hnsw_where_a", 600.0, partitions={"p_big": 100.0, "p_small": 500.0})
    stale = FilteredIndex({"tag": "hot", "lang": "es"}, "passages_hnsw_where_c", 1.0, valid=False)
    both = {"tag": "hot", "lang": {"$eq": "es"}}
    assert matching_index(both, [tag, lang, stale]).index is tag  # type: ignore[union-attr]
    assert matching_index(both, [tag, lang, stale], partition="p_big").index is lang  # type: ignore[union-attr]
    assert matching_index(both, [tag, lang], partition="p_small").index is tag  # type: ignore[union-attr]
    assert matching_index(both, [tag, lang], partition="p_new").index is lang  # type: ignore[union-attr]  # 0 = 0: by name
    assert not matching_index(both, [tag]).exact  # type: ignore[union-attr]
    assert matching_index({"tag": "hot", "lang": "en"}, [lang]) is None
    assert matching_index({"tag": 1.0}, [FilteredIndex({"tag": 1}, "i", 5.0)]) is None  # 1 and 1.0 differ in JSON


@pytest.fixture(scope="module")
def small(server: Any) -> Iterator[Engine]:
    name = server.create_database(template=server.initialized_template(DIM))
    eng = sa.create_engine(server.url_for(name))
    yield eng
    eng.dispose()
    server.drop_database(name)


@settings(max_examples=12, deadline=None)
@given(document=st.dictionaries(_KEYS, _PLAIN, min_size=1, max_size=4))
def test_an_accepted_document_round_trips_through_the_list(small: Engine, document: dict[str, Any]) -> None:
    build = build_filtered_index(small, document)
    try:
        (listed,) = filtered_indexes(small)
        assert listed.document == document and listed.name == index_name(document) and listed.valid
        assert json.dumps(listed.document, sort_keys=True) == json.dumps(document, sort_keys=True)
        assert matching_index(document, [listed]).exact  # type: ignore[union-attr]
    finally:
        assert drop_filtered_index(small, build.index.document)
    assert filtered_indexes(small) == []


def test_a_promoted_key_and_a_filtered_index_exclude_each_other(small: Engine) -> None:
    build_filtered_index(small, {"tag": "hot", "n": 1})
    try:
        with pytest.raises(ConfigError, match=r"passages_hnsw_where_.*dpr-pg index --drop-where '\{\"n\":1,"):
            promote_key(small, "tag")
        promote_key(small, "lang")
        with pytest.raises(ConfigError, match="dpr-pg index --drop-column lang"):
            build_filtered_index(small, {"lang": "es"})
    finally:
        drop_filtered_index(small, {"tag": "hot", "n": 1})
    promote_key(small, "tag", kind="text")


def test_a_storage_switch_is_refused_and_a_rebuild_keeps_the_index(engine: Engine) -> None:
    with pytest.raises(ConfigError, match=f"{index_name(HOT)} for {{\"tag\":\"hot\"}}.*--drop-where"):
        set_storage(engine, "halfvec")
    build_index(engine)  # the same parameters: other ones change PostgreSQL's costs of the two indexes
    (index,) = filtered_indexes(engine)
    assert index.valid and index.document == HOT
    assert search(engine, QUERY, k=10, filter=HOT).plan.path == "hnsw"


def test_partition_conversion_keeps_the_index(server: Any, tmp_path: Path) -> None:
    name = server.create_database()
    eng = sa.create_engine(server.url_for(name))
    try:
        init(eng, dim=DIM)
        _load(eng, tmp_path, {"big": 600, "other": 600}, seed=34)
        build_filtered_index(eng, HOT)
        partition_passages(eng)
        (index,) = filtered_indexes(eng)
        assert index.document == HOT and index.valid and index.rows == 120
        assert set(index.partitions) >= {partition_name("big"), partition_name("other")}
        hits = search(eng, QUERY, k=10, filter=HOT, explain=True)
        assert hits.plan.path == "hnsw" and _ids(hits) == _exact(eng, HOT, None)
        assert drop_filtered_index(eng, HOT) and filtered_indexes(eng) == []
    finally:
        eng.dispose()
        server.drop_database(name)


def test_the_cli_builds_lists_and_drops(cli: Any, server: Any) -> None:
    name = server.create_database(template=server.initialized_template(DIM))
    url = server.url_for(name)
    try:
        made = cli("index", "--where", '{"tag": "hot"}', "--json", env={"DPR_PG_DATABASE_URL": url}, check=True)
        assert json.loads(made.stdout)["index"] == index_name(HOT)
        listed = cli("index", "--list-where", "--json", env={"DPR_PG_DATABASE_URL": url}, check=True)
        assert [(i["filter"], i["valid"]) for i in json.loads(listed.stdout)] == [(HOT, True)]
        bad = cli("index", "--where", '{"tag": {"$in": ["a"]}}', env={"DPR_PG_DATABASE_URL": url})
        assert bad.returncode == 1 and "1 to 4 top-level metadata keys" in bad.stderr
        dropped = cli("index", "--drop-where", '{"tag":"hot"}', "--json", env={"DPR_PG_DATABASE_URL": url}, check=True)
        assert json.loads(dropped.stdout) == {"dropped": True}
    finally:
        server.drop_database(name)


@pytest.mark.parametrize("collection", [None, "big"])
def test_postgresql_proves_the_predicate_from_the_sql_face_compilers_where(engine: Engine,
                                                                         collection: str | None) -> None:
    """dpr_pg.search runs its WHERE through EXECUTE ... USING: the parameters are constants when it is planned."""
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        lines: list[str] = []
        raw.add_notice_handler(lambda d: lines.append(d.message_primary or ""))
        conn.execute(sa.text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
        conn.execute(sa.text(
            "DO $$ DECLARE c record; line text; BEGIN "
            "c := dpr_pg.compile_filter('{\"lang\": \"es\", \"tag\": \"hot\"}'); "
            "FOR line IN EXECUTE 'EXPLAIN SELECT id FROM dpr_pg.passages WHERE ' || c.clause || "
            f"{'' if collection is None else repr(' AND collection = $4') + ' || '}"
            "' ORDER BY embedding <#> $2 LIMIT 10' USING c.params, "
            f"'{json.dumps(QUERY.tolist())}'::vector, 10, {'NULL::text' if collection is None else repr(collection)} "
            "LOOP RAISE NOTICE '%', line; END LOOP; END $$"))
    assert any("where_" + index_name(HOT)[-12:] in line for line in lines), lines


def test_a_failed_build_leaves_no_index_behind(engine: Engine) -> None:
    """A build that fails on its last step (a partition's index, or the plain table's) drops what it built."""
    document = {"lang": "es"}
    failing = "passages_default_where_" if is_partitioned(engine) else "passages_hnsw_where_"
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE FUNCTION public.refuse_filtered_index() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c WHERE c.object_identity LIKE "
            f"'dpr_pg.{failing}%') THEN RAISE EXCEPTION 'refused for the test'; END IF; END $$"))
        conn.execute(sa.text("CREATE EVENT TRIGGER refuse_filtered_index ON ddl_command_end "
                             "EXECUTE FUNCTION public.refuse_filtered_index()"))
    try:
        with pytest.raises(IndexBuildError, match="was not built: refused for the test"):
            build_filtered_index(engine, document)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP EVENT TRIGGER refuse_filtered_index"))
            conn.execute(sa.text("DROP FUNCTION public.refuse_filtered_index()"))
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT relname FROM pg_class WHERE relname LIKE :n"),
                            {"n": f"%where_{index_name(document)[-12:]}"}).scalars().all()
    assert left == []
    assert [i.document for i in filtered_indexes(engine)] == [HOT]
