"""Benchmark: a collection search right after a fresh bulk ingest, before and after fresh planner statistics.

A fresh database gets --rows (20,000) synthetic 768-d passages in one collection through dpr_pg's
ingest path (precomputed vectors, the HNSW index kept), then the same queries run through the
Python ``search(vector, collection=c)`` and SQL ``dpr_pg.search(vector, k, '{}', c)``, round-robin
per query, in three states of the same database:

  before        the ingest as it was (no ANALYZE at its end) and the planner as it was (a frozen copy
                below, which took PostgreSQL's estimate at its word): the table has no statistics
  count         today's planner, still no statistics: it counts instead of trusting the guess
  after         what today's ingest does at its end (analyze_if_changed), then today's planner

Autovacuum is off on dpr_pg.passages, so "right after the ingest" stays so while it measures. The
SQL face is today's function in every state. It prints p50 (ms), the path each face took, the
Python/SQL ratio per state, and the before/after ratio of the Python face.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_planner_stats.py --rows 20000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from _database import fresh_database
from bench_search import queries_near, synthetic, write_input

from dpr_pg.ingest import pipeline
from dpr_pg.search import planner
from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.search.planner import COUNT_BAND, EXACT_MAX_ROWS, Explain, SearchPlan
from dpr_pg.search.statistics import analyze_if_changed
from dpr_pg.db.engine import embedded_url
from dpr_pg.ingest import ingest
from dpr_pg.db.models import Passage
from dpr_pg.search.api import search

DIM = 768
K = 10
COLLECTION = "bench"
TODAY_PLAN = planner.plan  # the planner as it is, which the "before" state swaps out


def planner_before(conn: Any, where: Any, *, k: int, pgvector_version: tuple[int, ...], exact: bool = False,
                   exact_threshold: int = planner.EXACT_THRESHOLD,
                   exact_selectivity: float = planner.EXACT_SELECTIVITY, ef_search: int | None = None,
                   row_security: bool = False, table: Any = None, **newer: Any) -> SearchPlan:
    """The filtered rules of dpr_pg.search.planner.plan before it checked for statistics (frozen copy).

    ``newer``: what today's planner was given since (partitions, filtered indexes); the frozen rules
    predate it, and one collection of an unpartitioned table with no filtered index gives it nothing.
    """
    if exact or where is None or row_security:
        return TODAY_PLAN(conn, where, k=k, pgvector_version=pgvector_version, exact=exact,
                          exact_threshold=exact_threshold, exact_selectivity=exact_selectivity, ef_search=ef_search,
                          row_security=row_security, table=table, **newer)
    probe = sa.select(sa.literal(1)).select_from(Passage).where(where)
    estimate = float(conn.execute(Explain(probe)).scalar_one()[0]["Plan"]["Plan Rows"])
    chosen_ef = max(k, ef_search or planner.FILTERED_EF_SEARCH)
    if estimate <= exact_threshold:
        return SearchPlan("exact", "estimate at most the threshold", estimated_rows=estimate)
    if exact_selectivity > 0 and estimate <= EXACT_MAX_ROWS:
        rows = float(conn.execute(sa.text(
            "SELECT reltuples FROM pg_class WHERE oid = 'dpr_pg.passages'::regclass")).scalar_one())
        if estimate <= exact_selectivity * rows:
            return SearchPlan("exact", "narrow share", estimated_rows=estimate)
    if estimate > COUNT_BAND * exact_threshold:
        return SearchPlan("hnsw-iterative", "broad", estimated_rows=estimate, ef_search=chosen_ef)
    bounded = sa.select(sa.func.count()).select_from(probe.limit(exact_threshold + 1).subquery())
    matches = int(conn.execute(bounded).scalar_one())
    if matches <= exact_threshold:
        return SearchPlan("exact", "counted", estimated_rows=estimate, matching_rows=matches)
    return SearchPlan("hnsw-iterative", "counted", estimated_rows=estimate, matching_rows=matches, ef_search=chosen_ef)


def measure(engine: sa.Engine, conn: sa.Connection, queries: np.ndarray) -> dict[str, Any]:
    """p50 of each face over the same queries, round-robin, after a warm-up; and the paths taken."""
    sql = sa.text("SELECT id FROM dpr_pg.search(CAST(:q AS vector), :k, '{}', :c)")
    paths: list[str] = []

    def python(q: np.ndarray) -> int:
        hits = search(engine, q, k=K, collection=COLLECTION)
        paths.append(hits.plan.path)
        return len(hits)

    def sql_function(q: np.ndarray) -> int:
        with conn.begin():
            return len(conn.execute(sql, {"q": str(q.tolist()), "k": K, "c": COLLECTION}).all())

    faces = {"python": python, "sql": sql_function}
    for face in faces.values():  # caches and prepared statements, not timed
        for q in queries[:10]:
            face(q)
    paths.clear()
    latencies: dict[str, list[float]] = {name: [] for name in faces}
    names = list(faces)
    for i, q in enumerate(queries):
        for name in names[i % 2:] + names[:i % 2]:
            started = time.perf_counter()
            assert faces[name](q) == K
            latencies[name].append((time.perf_counter() - started) * 1000)
    messages: list[str] = []

    def keep(diagnostic: Any) -> None:
        messages.append(diagnostic.message_primary or "")

    with conn.begin():  # the SQL face's plan, from its DEBUG message
        conn.execute(sa.text("SET LOCAL client_min_messages = debug1"))
        raw = conn.connection.driver_connection
        raw.add_notice_handler(keep)
        conn.execute(sql, {"q": str(queries[0].tolist()), "k": K, "c": COLLECTION}).all()
        raw.remove_notice_handler(keep)
    sql_path = next(json.loads(m.split(" plan: ", 1)[1])["path"] for m in messages if " plan: " in m)
    return {"python": statistics.median(latencies["python"]), "sql": statistics.median(latencies["sql"]),
            "python_path": max(set(paths), key=paths.count), "sql_path": sql_path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_planner_stats"),
                        help="Data folder of the benchmark's own embedded PostgreSQL.")
    args = parser.parse_args()

    url = embedded_url(home=Path(args.home))
    engine = sa.create_engine(fresh_database(url, f"bench_planner_stats_{args.rows}", dim=DIM))
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE dpr_pg.passages SET (autovacuum_enabled = off)"))
    vectors, bucket, centers = synthetic(args.rows, args.seed)
    queries = queries_near(centers, args.queries, args.seed)
    fingerprint = EncoderFingerprint("bench/question", None, "bench/passage", None, "bench", DIM, 512)

    today_analyze = pipeline.analyze_if_changed
    pipeline.analyze_if_changed = lambda *a, **kw: False  # the ingest as it was
    try:
        with tempfile.TemporaryDirectory() as folder:
            jsonl, npy = write_input(Path(folder), vectors, bucket)
            started = time.perf_counter()
            report = ingest(engine, None, jsonl, collection=COLLECTION, embeddings=npy, fingerprint=fingerprint,
                            progress=False)
            ingest_s = time.perf_counter() - started
    finally:
        pipeline.analyze_if_changed = today_analyze
    assert report.inserted == args.rows, report.as_dict()
    print(f"rows {args.rows} in one collection, queries {args.queries}, k {K}: ingest {ingest_s:.1f} s "
          "(precomputed vectors, HNSW index kept, autovacuum off)")

    conn = engine.connect()
    results = {}
    planner.plan = planner_before
    try:
        results["before"] = measure(engine, conn, queries)
    finally:
        planner.plan = TODAY_PLAN
    results["count"] = measure(engine, conn, queries)
    started = time.perf_counter()
    analyzed = analyze_if_changed(engine, changed=report.inserted, collection=COLLECTION)
    analyze_ms = (time.perf_counter() - started) * 1000
    results["after"] = measure(engine, conn, queries)
    conn.close()

    print(f"after: analyze_if_changed ran ANALYZE: {analyzed}, {analyze_ms:.0f} ms")
    print(f"{'state':>7} | {'python p50':>10} {'path':>14} | {'sql p50':>7} {'path':>14} | {'python/sql':>10}")
    for state, r in results.items():
        print(f"{state:>7} | {r['python']:>10.2f} {r['python_path']:>14} | {r['sql']:>7.2f} {r['sql_path']:>14} | "
              f"{r['python'] / r['sql']:>10.2f}")
    print(f"python p50 before/after: {results['before']['python'] / results['after']['python']:.1f}x")
    engine.dispose()


if __name__ == "__main__":
    main()
