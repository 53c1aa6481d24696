"""Where a narrow filter's time goes, on bench_search.py's database (run bench_search.py first, same --rows).

For one selectivity (default 1%: ``{"s100": true}``), over the same queries, it prints p50/p95 (ms)
and recall@10 against numpy's exact top 10 of the matching rows for:

  count        ``count(*)`` of the matching rows: the GIN bitmap and the heap pages, no vector math
  exact        the exact path (inner product over every matching row, top 10), serially
  exact par.   the same with a parallel bitmap heap scan (costs zeroed so PostgreSQL plans one)
  iterative    pgvector's iterative HNSW scan (relaxed order, then sorted), per ef_search,
               hnsw.max_scan_tuples and work_mem

So it shows whether any path can be both exact enough and fast enough at that selectivity.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/profile_filtered.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import queries_near, synthetic, truth  # noqa: E402

from dpr_pg.db.engine import embedded_url  # noqa: E402

EXACT = ("SELECT id FROM dpr_pg.passages WHERE metadata @> %(f)s::jsonb "
         "ORDER BY inner_product(embedding, %(q)s::vector) DESC LIMIT 10")
COUNT = "SELECT count(*) FROM dpr_pg.passages WHERE metadata @> %(f)s::jsonb"
ITERATIVE = ("SELECT id FROM (SELECT id, embedding <#> %(q)s::vector AS d FROM dpr_pg.passages "
             "WHERE metadata @> %(f)s::jsonb ORDER BY d LIMIT {limit}) ann ORDER BY d LIMIT 10")
PARALLEL = ["SET LOCAL parallel_setup_cost = 0", "SET LOCAL parallel_tuple_cost = 0",
            "SET LOCAL min_parallel_table_scan_size = 0", "SET LOCAL random_page_cost = 0.01",
            "SET LOCAL seq_page_cost = 0.01", "SET LOCAL enable_seqscan = off"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=100, help="the filter matches 1/EVERY of the rows (100: 1%%)")
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_search"))
    args = parser.parse_args()

    url = embedded_url(home=Path(args.home))
    engine = sa.create_engine(sa.engine.make_url(url).set(database=f"bench_search_{args.rows}_{args.seed}"))
    vectors, bucket, centers = synthetic(args.rows, args.seed)
    queries = queries_near(centers, args.queries, args.seed)
    raw = engine.connect().connection.driver_connection
    raw.autocommit = True
    ids = np.zeros(args.rows, dtype=np.int64)
    for pid, external_id in raw.execute("SELECT id, external_id FROM dpr_pg.passages"):
        ids[int(external_id[1:])] = pid
    expected = truth(vectors, bucket % args.every == 0, queries, ids)
    del vectors
    document = json.dumps({f"s{args.every}": True})
    # Walk the heap pages and the index (as the widest iterative scan does) once with every query:
    # a fresh server starts with cold buffers, which would weigh on whichever path ran first.
    for query in queries:
        params = {"f": document, "q": str(query.tolist())}
        raw.execute(EXACT, params).fetchall()
        with raw.transaction():
            raw.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            raw.execute("SET LOCAL hnsw.ef_search = 400")
            raw.execute(ITERATIVE.format(limit=40), params).fetchall()

    def run(label: str, sql: str, settings: list[str], with_recall: bool = True) -> None:
        latencies, recalls = [], []
        for query, want in zip(queries, expected, strict=True):
            params = {"f": document, "q": str(query.tolist())}
            started = time.perf_counter()
            with raw.transaction():
                for setting in settings:
                    raw.execute(setting)
                got = [row[0] for row in raw.execute(sql, params).fetchall()]
            latencies.append((time.perf_counter() - started) * 1000)
            recalls.append(len(set(got) & set(want)) / len(want))
        latencies.sort()
        recall = f"  recall@10 {statistics.mean(recalls):.3f}" if with_recall else ""
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(f"{label:<44} p50 {statistics.median(latencies):6.2f}  p95 {p95:6.2f}{recall}", flush=True)

    print(f"rows {args.rows}, filter {document} ({int((bucket % args.every == 0).sum())} rows), "
          f"{args.queries} queries; ms")
    run("count(*) of the matching rows", COUNT, [], with_recall=False)
    run("exact", EXACT, [])
    run("exact, parallel bitmap heap scan", EXACT, PARALLEL)
    for ef_search in (100, 400):
        for max_scan_tuples in (20_000, 100_000):
            for work_mem in ("4MB", "64MB"):
                settings = ["SET LOCAL hnsw.iterative_scan = relaxed_order", f"SET LOCAL hnsw.ef_search = {ef_search}",
                            f"SET LOCAL hnsw.max_scan_tuples = {max_scan_tuples}", f"SET LOCAL work_mem = '{work_mem}'"]
                run(f"iterative ef {ef_search}, max_scan {max_scan_tuples}, {work_mem}",
                    ITERATIVE.format(limit=40), settings)


if __name__ == "__main__":
    main()
