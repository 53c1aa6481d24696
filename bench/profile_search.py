"""Where one search's time goes, on bench_search.py's database (run bench_search.py first, same --rows/--seed).

Prints medians (ms) over the queries of:

  python     query validation + building and compiling the statement (no database)
  roundtrip  one ``SELECT 1`` on a held connection (what each extra round trip costs)
  server     EXPLAIN ANALYZE execution time of the unfiltered HNSW query, per ef_search
  recall     recall@10 of the unfiltered HNSW query per ef_search (the ef_search sweep)
  search     dpr_pg.search() end to end, and the SQL function dpr_pg.search via one statement

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/profile_search.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import DIM, K, passage_ids, queries_near, synthetic, truth  # noqa: E402

from dpr_pg.db.engine import embedded_url  # noqa: E402
from dpr_pg.search.api import query_vector, search, search_statement  # noqa: E402


def median_ms(run: Callable[[np.ndarray], Any], queries: np.ndarray) -> float:
    times = []
    for q in queries:
        started = time.perf_counter()
        run(q)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_search"))
    parser.add_argument("--ef", default="40,60,80,100,120,160,200")
    parser.add_argument("--filter", default=None, help="a filter document (JSON) for the search timings")
    args = parser.parse_args()

    url = embedded_url(home=Path(args.home))
    engine = sa.create_engine(sa.engine.make_url(url).set(database=f"bench_search_{args.rows}_{args.seed}"))
    vectors, bucket, centers = synthetic(args.rows, args.seed)
    queries = queries_near(centers, args.queries, args.seed)
    document = json.loads(args.filter) if args.filter else None
    conn = engine.connect()
    ids = passage_ids(conn, args.rows)
    conn.rollback()
    expected = truth(vectors, None, queries, ids)
    dialect = postgresql.dialect()

    def python(q: np.ndarray) -> None:
        search_statement(query_vector(q, DIM), k=K, filter=document).compile(dialect=dialect)

    raw = conn.connection.driver_connection
    raw.autocommit = True

    def roundtrip(q: np.ndarray) -> None:
        raw.execute("SELECT 1").fetchall()

    print(f"rows {args.rows}, queries {args.queries}")
    print(f"python    {median_ms(python, queries):7.3f} ms (validate + build + compile the Select)")
    print(f"roundtrip {median_ms(roundtrip, queries):7.3f} ms (SELECT 1)")
    ann = ("SELECT id FROM dpr_pg.passages ORDER BY embedding <#> %s::vector LIMIT 10")
    for ef in [int(e) for e in args.ef.split(",")]:
        raw.execute(f"SET hnsw.ef_search = {ef}")
        server, recalls = [], []
        for q, want in zip(queries, expected):
            literal = str(q.tolist())
            plan = raw.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + ann, (literal,)).fetchone()[0]
            server.append(plan[0]["Execution Time"])
            got = [r[0] for r in raw.execute(ann, (literal,)).fetchall()]
            recalls.append(len(set(got) & set(want)) / K)
        timed = median_ms(lambda q: raw.execute(ann, (str(q.tolist()),)).fetchall(), queries)
        print(f"ef_search {ef:4d}: server {statistics.median(server):6.3f} ms, client {timed:6.3f} ms, "
              f"recall@10 {statistics.mean(recalls):.3f}")
    raw.execute("RESET hnsw.ef_search")
    for q in queries[:10]:
        search(engine, q, k=K, filter=document)
    print(f"search()  {median_ms(lambda q: search(engine, q, k=K, filter=document), queries):7.3f} ms")
    fn = "SELECT id FROM dpr_pg.search(%s::vector, 10, %s::jsonb)"
    print(f"SQL fn    {median_ms(lambda q: raw.execute(fn, (str(q.tolist()), json.dumps(document or {}))).fetchall(), queries):7.3f} ms")
    conn.close()
    engine.dispose()


if __name__ == "__main__":
    main()
