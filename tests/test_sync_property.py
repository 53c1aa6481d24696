"""Property: whatever the app writes, the queue holds exactly the touched keys, and after the worker
every row carries the embedding of its current text (and nothing else is embedded)."""

from __future__ import annotations

import json

import numpy as np
import sqlalchemy as sa
from _sync_app import create_articles, queued
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.sync.worker import run_worker

TEXTS = ["Madrid es la capital.", "Sevilla y el Guadalquivir.", "El ADN y los genes.", ""]
TITLES = ["Madrid", "Sevilla", ""]

operation = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 6), st.sampled_from(TITLES), st.sampled_from(TEXTS)),
    st.tuples(st.just("body"), st.integers(1, 6), st.sampled_from(TEXTS)),
    st.tuples(st.just("title"), st.integers(1, 6), st.sampled_from(TITLES)),
    st.tuples(st.just("views"), st.integers(1, 6)),
    st.tuples(st.just("delete"), st.integers(1, 6)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, max_size=12))
def test_queue_and_embeddings_follow_the_app_writes(engine: Engine, fp32_pair: EncoderPair, operations: list) -> None:
    if not sa.inspect(engine).has_table("articles"):
        create_articles(engine, rows=[])
    with engine.begin() as conn:  # a clean slate for each example; TRUNCATE fires no triggers
        conn.execute(sa.text("TRUNCATE articles"))
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))

    rows: dict[int, tuple[str, str]] = {}
    touched: set[int] = set()
    with engine.begin() as conn:
        for op, row_id, *args in operations:
            if op == "insert" and row_id not in rows:
                conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (:i, :t, :b)"),
                             {"i": row_id, "t": args[0], "b": args[1]})
                rows[row_id] = (args[0], args[1])
                touched.add(row_id)
            elif op in ("body", "title") and row_id in rows:
                conn.execute(sa.text(f"UPDATE articles SET {op} = :v WHERE id = :i"), {"v": args[0], "i": row_id})
                before = rows[row_id]
                rows[row_id] = (args[0], before[1]) if op == "title" else (before[0], args[0])
                if rows[row_id] != before:
                    touched.add(row_id)
            elif op == "views" and row_id in rows:
                conn.execute(sa.text("UPDATE articles SET views = views + 1 WHERE id = :i"), {"i": row_id})
            elif op == "delete" and row_id in rows:
                conn.execute(sa.text("DELETE FROM articles WHERE id = :i"), {"i": row_id})
                del rows[row_id]
                touched.add(row_id)

    assert queued(engine) == [{"id": i} for i in sorted(touched)]

    report = run_worker(engine, fp32_pair, once=True)

    assert report.failed == 0 and queued(engine) == []
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT id, embedding::text FROM articles")).all())
    assert sorted(stored) == sorted(rows)
    for row_id, (title, body) in rows.items():
        if not title.strip() and not body.strip():
            assert stored[row_id] is None  # nothing to embed
        else:
            np.testing.assert_allclose(np.array(json.loads(stored[row_id])), fp32_pair.passage.encode((title, body)),
                                       rtol=1e-4, atol=1e-5)
