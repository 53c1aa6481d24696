"""Index storage: vector, halfvec and bit (re-ranked) under every search face.

The same 10,000 clustered rows live in dpr_pg.passages and in an app table; each storage is switched
to on the populated database (the path an existing database takes), then searched through Python
``search``, SQL ``dpr_pg.search`` / ``hybrid_search``, ``search_statement`` in a Session, and
``search_table`` / the ORM helper of the app table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _clustered import DIM, clustered_vectors, lang_of, load_clustered
from _encoders import stand_in_encoder
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dpr_pg import ConfigError, SchemaError, current_storage, set_storage
from dpr_pg.cli import main
from dpr_pg.db.index import drop_hnsw, ensure_hnsw
from dpr_pg.db.schema import downgrade, init, upgrade
from dpr_pg.search.api import ann_settings, search, search_statement

K = 10

VECTORS, QUERIES = clustered_vectors(seed=5, clusters=20, queries=6)
BROAD = {"lang": "es"}  # 90%: iterative HNSW
NARROW = {"lang": "ca"}  # 1%: exact


def truth(query: np.ndarray, k: int = K, lang: str | None = None) -> list[int]:
    scores = VECTORS @ query
    order = [int(i) for i in np.argsort(-scores, kind="stable") if lang is None or lang_of(int(i)) == lang]
    return [i + 1 for i in order[:k]]


@pytest.fixture(scope="module")
def populated(server: Any) -> Iterator[str]:
    """The name of a database with the rows loaded and analyzed, on the default storage: each storage's copy."""
    name = server.create_database(template=server.initialized_template(DIM))
    engine = sa.create_engine(server.url_for(name), poolclass=sa.NullPool)  # no connection left: a template
    load_clustered(engine, VECTORS)
    engine.dispose()
    yield name
    server.drop_database(name)


@pytest.fixture(scope="module", params=["vector", "halfvec", "bit"])
def stored(request: pytest.FixtureRequest, server: Any, populated: str) -> Iterator[tuple[Engine, str]]:
    """A copy of the populated database whose index was switched to the storage (bit re-ranks 25 x k candidates)."""
    name = server.create_database(template=populated)
    engine = sa.create_engine(server.url_for(name))
    set_storage(engine, request.param, rerank_multiple=25)
    yield engine, request.param
    engine.dispose()
    server.drop_database(name)


OPCLASS = {"vector": "vector_ip_ops", "halfvec": "halfvec_ip_ops", "bit": "bit_hamming_ops"}


def _index_definitions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'dpr_pg' AND tablename = 'passages' "
            "AND indexdef LIKE '%hnsw%'")).scalars())


def test_switching_storage_builds_the_index_on_that_type_and_records_it(stored: tuple[Engine, str]) -> None:
    engine, kind = stored
    (definition,) = _index_definitions(engine)
    assert "passages_embedding_hnsw " in definition and OPCLASS[kind] in definition
    assert current_storage(engine).kind == kind
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT storage FROM dpr_pg._storage()")).scalar_one() == kind


def _recall(found: list[int], expected: list[int]) -> float:
    return len(set(found) & set(expected)) / len(expected)


# Mean recall@10 over QUERIES that each storage must reach (bit: 25 x k candidates re-ranked;
MIN_RECALL = {"vector": 0.98, "halfvec": 0.98, "bit": 0.8}  # 32 sign bits tell little apart


def test_unfiltered_search_reads_the_storage_index_and_scores_by_the_full_inner_product(
        stored: tuple[Engine, str]) -> None:
    engine, kind = stored
    recalls = []
    for query in QUERIES:
        hits = search(engine, query, k=K, explain=True)
        assert hits.plan.path == "hnsw" and hits.plan.storage == kind
        assert "Index Scan using passages_embedding_hnsw" in (hits.plan.explain or "")
        found = [h.id for h in hits]
        recalls.append(_recall(found, truth(query)))
        assert [h.score for h in hits] == pytest.approx([float(VECTORS[i - 1] @ query) for i in found], rel=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert np.mean(recalls) >= MIN_RECALL[kind]


@pytest.mark.parametrize(("document", "path"), [({}, "hnsw"), (BROAD, "hnsw-iterative"), (NARROW, "exact")])
def test_sql_function_returns_what_python_returns(stored: tuple[Engine, str], document: dict[str, Any],
                                                  path: str) -> None:
    engine, kind = stored
    lang = document.get("lang")
    recalls = []
    for query in QUERIES:
        hits = search(engine, query, k=K, filter=document)
        assert hits.plan.path == path
        assert all(h.metadata["lang"] == lang for h in hits) if lang else len(hits) == K
        with engine.begin() as conn:
            rows = conn.execute(sa.text("SELECT id, score FROM dpr_pg.search(CAST(:q AS vector), :k, CAST(:f AS jsonb))"),
                                {"q": str(query.tolist()), "k": K, "f": json.dumps(document)}).all()
        assert [r.id for r in rows] == [h.id for h in hits]
        recalls.append(_recall([h.id for h in hits], truth(query, lang=lang)))
    assert np.mean(recalls) >= (1.0 if path == "exact" else MIN_RECALL[kind])


def test_hybrid_search_runs_on_the_storage_in_python_and_sql(stored: tuple[Engine, str]) -> None:
    engine, _ = stored
    query = QUERIES[0]
    hits = search(engine, query, k=K, mode="hybrid", query_text="texto número 7")
    assert hits.plan.path == "hybrid" and len(hits) == K
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT id FROM dpr_pg.hybrid_search(CAST(:q AS vector), 'texto número 7', :k)"),
                            {"q": str(query.tolist()), "k": K}).scalars().all()
    assert rows == [h.id for h in hits]


def test_search_statement_with_the_storage_uses_its_index_in_a_session(stored: tuple[Engine, str]) -> None:
    engine, kind = stored
    query = QUERIES[1]
    stmt = search_statement(query, k=K, storage=current_storage(engine))
    with Session(engine) as session, ann_settings(session.connection(), ef_search=250, iterative=False):
        plan = "\n".join(session.execute(sa.text("EXPLAIN " + str(stmt.compile(
            dialect=engine.dialect, compile_kwargs={"literal_binds": True})))).scalars())
        rows = session.execute(stmt).all()
    assert "passages_embedding_hnsw" in plan
    assert [r.id for r in rows] == [h.id for h in search(engine, query, k=K)]
    assert [r.score for r in rows] == pytest.approx([float(VECTORS[r.id - 1] @ query) for r in rows], rel=1e-5)


def test_app_table_search_table_and_orm_helper_keep_working_under_the_storage(stored: tuple[Engine, str]) -> None:
    engine, _ = stored
    query = QUERIES[2]
    with engine.begin() as conn:
        keys = conn.execute(sa.text("SELECT row_key FROM dpr_pg.search_table('docs', CAST(:q AS vector), :k, "
                                    "CAST(:f AS jsonb))"),
                            {"q": str(query.tolist()), "k": K, "f": json.dumps(BROAD)}).scalars().all()
    assert [key["id"] for key in keys] == truth(query, lang="es")


def test_a_rebuild_and_a_deferred_index_keep_the_storage(stored: tuple[Engine, str]) -> None:
    engine, kind = stored
    assert drop_hnsw(engine) is not None and _index_definitions(engine) == []
    assert ensure_hnsw(engine)
    (definition,) = _index_definitions(engine)
    assert OPCLASS[kind] in definition
    assert search(engine, QUERIES[3], k=K).plan.storage == kind


def test_switching_back_and_forth_on_a_populated_database_keeps_every_row(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, 768)
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, text, content_hash, embedding, encoder_id) "
            "SELECT 'c', g::text, 'texto', 'h', array_fill(g::real, ARRAY[768])::vector, :enc "
            "FROM generate_series(1, 50) AS g"), {"enc": encoder})
    first = set_storage(engine, "halfvec")
    assert (first.previous.kind, first.storage.kind, first.rebuilt, first.rows) == ("vector", "halfvec", True, 50)
    assert search(engine, np.ones(768, np.float32), k=3).plan.storage == "halfvec"  # this process sees it at once
    multiple = set_storage(engine, "halfvec", rerank_multiple=9)
    assert not multiple.rebuilt and multiple.storage.rerank_multiple == 9
    back = set_storage(engine, "vector")
    assert back.rebuilt and current_storage(engine).kind == "vector"
    (definition,) = _index_definitions(engine)
    assert "vector_ip_ops" in definition
    assert [h.external_id for h in search(engine, np.ones(768, np.float32), k=3)] == ["50", "49", "48"]
    engine.dispose()


def test_init_with_a_storage_builds_its_index_and_refuses_another_later(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    result = init(engine, dim=DIM, storage="halfvec")
    assert result.storage == "halfvec" and current_storage(engine).kind == "halfvec"
    assert init(engine).storage == "halfvec"  # None keeps it
    with pytest.raises(SchemaError, match="dpr-pg storage set vector"):
        init(engine, storage="vector")
    engine.dispose()


def test_unknown_storage_is_refused_with_the_list(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with pytest.raises(ConfigError, match="one of vector, halfvec, bit, not 'float8'"):
        set_storage(engine, "float8")
    result = CliRunner().invoke(main, ["--database-url", database_url, "storage", "set", "float8"])
    assert result.exit_code == 64 and "'vector', 'halfvec'" in result.output
    assert current_storage(engine).kind == "vector"
    engine.dispose()


def test_cli_init_and_storage_commands(empty_url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(main, ["--database-url", empty_url, "init", "--dim", str(DIM)])
    assert created.exit_code == 0, created.output
    online = runner.invoke(main, ["--database-url", empty_url, "storage", "set", "halfvec"])
    assert online.exit_code == 0, online.output
    assert "the table still holds float4 vectors" in online.stderr and "--rewrite-column" in online.stderr
    shown = runner.invoke(main, ["--database-url", empty_url, "storage", "show", "--json"])
    assert json.loads(shown.output) == {"storage": "halfvec", "column": "vector", "rerank_multiple": 4, "rows": 0,
                                        "table_bytes": json.loads(shown.output)["table_bytes"], "vector_bytes": 0,
                                        "index_bytes": json.loads(shown.output)["index_bytes"]}
    switched = runner.invoke(main, ["--database-url", empty_url, "storage", "set", "vector", "--json"])
    assert switched.exit_code == 0, switched.output
    assert json.loads(switched.output)["previous"] == "halfvec" and json.loads(switched.output)["storage"] == "vector"
    shown_build = runner.invoke(main, ["--database-url", empty_url, "storage", "set", "halfvec", "--progress"])
    assert shown_build.exit_code == 0, shown_build.output
    assert "storage vector -> halfvec" in shown_build.stdout and "HNSW index" in shown_build.stderr
    doctor = runner.invoke(main, ["--database-url", empty_url, "doctor", "--json"])
    assert json.loads(doctor.stdout)["hnsw"]["storage"] == "halfvec"


def test_downgrade_below_the_settings_puts_the_vector_index_back(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    init(engine, dim=DIM, storage="halfvec")
    downgrade(engine, "0014")
    (definition,) = _index_definitions(engine)
    assert "vector_ip_ops" in definition
    assert current_storage(engine).kind == "vector"  # no settings table: the vector index
    upgrade(engine, dim=DIM)
    assert current_storage(engine).kind == "vector"
    engine.dispose()
