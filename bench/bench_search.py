"""Benchmark: dpr_pg.search vs the naive ``WHERE filter ORDER BY embedding <#> q LIMIT k``, per selectivity.

Synthetic clustered 768-d vectors (not normalised, like DPR's) are written to JSONL + .npy and
loaded through dpr_pg's ingest path with precomputed vectors; the HNSW index (m=16,
ef_construction=64 as migration 0002 makes it, or --m / --ef-construction) is built after the
load. Each row carries flags that select 50 / 10 / 1 / 0.1 / 0.01 % of the rows, independent of
the clusters.

In one run, for each selectivity and for no filter, it measures over the same queries:

  naive      search_statement() run as is, at pgvector's defaults (ef_search 40, no iterative scan)
  dpr_pg     dpr_pg.search() (planner: HNSW / iterative HNSW / exact, fallback when short)
  sql        SELECT * FROM dpr_pg.search(...) (the PL/pgSQL function, same planner)

round-robin per query (see measure), after walking the index once with every query (cold buffers
after a server start would otherwise weigh on whichever runs first), and prints p50/p95 latency (ms), recall@10 against numpy's exact top 10 of the matching rows, the
share of queries that came back short (fewer than min(k, matches) rows), and naive/dpr_pg ratios.

Run it alone (other engineers' benchmarks take the same lock), in its own data folder:

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_search.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from _database import fresh_database

from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.db.engine import embedded_url
from dpr_pg.ingest import ingest
from dpr_pg.db.index import HnswParameters, build_index, drop_hnsw, ensure_hnsw, hnsw_parameters
from dpr_pg.search.api import search, search_statement

DIM = 768
K = 10
NOISE = 0.8  # per-dimension spread around a cluster centre (centres are N(0, 1) per dimension)
SELECTIVITIES = [("none", None), ("50%", 2), ("10%", 10), ("1%", 100), ("0.1%", 1000), ("0.01%", 10000)]


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered vectors, the flag bucket of each row, and queries drawn near the same clusters."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(10, rows // 1000), DIM)).astype(np.float32)
    vectors = np.empty((rows, DIM), dtype=np.float32)
    step = 50_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        vectors[start:start + n] = centers[rng.integers(0, len(centers), n)] + rng.normal(scale=NOISE, size=(n, DIM))
    bucket = rng.permutation(rows)  # row i matches 1/m of the rows when bucket[i] % m == 0
    return vectors, bucket, centers


def queries_near(centers: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` questions drawn near the clusters' centres (the same for every script at one seed)."""
    rng = np.random.default_rng(seed + 1)
    return (centers[rng.integers(0, len(centers), count)]
            + rng.normal(scale=NOISE, size=(count, DIM))).astype(np.float32)


def write_input(folder: Path, vectors: np.ndarray, bucket: np.ndarray) -> tuple[Path, Path]:
    jsonl, npy = folder / "passages.jsonl", folder / "passages.npy"
    with jsonl.open("w", encoding="utf-8") as out:
        for i in range(len(vectors)):
            flags = {f"s{m}": bool(bucket[i] % m == 0) for _, m in SELECTIVITIES if m}
            out.write(json.dumps({"id": f"p{i}", "title": f"Pasaje {i}", "text": f"Texto sintético número {i}.",
                                  **flags}) + "\n")
    np.save(npy, vectors)
    return jsonl, npy


def load(engine: sa.Engine, jsonl: Path, npy: Path, parameters: HnswParameters) -> dict[str, float]:
    fingerprint = EncoderFingerprint("bench/question", None, "bench/passage", None, "bench", DIM, 512)
    drop_hnsw(engine)  # a bulk load then one build is faster
    started = time.perf_counter()
    report = ingest(engine, None, jsonl, collection="bench", embeddings=npy, fingerprint=fingerprint, progress=False)
    ingest_s = time.perf_counter() - started
    assert report.inserted == report.read, report.as_dict()
    started = time.perf_counter()
    ensure_hnsw(engine, parameters, progress=None)  # maintenance_work_mem: what the graph needs; a bar on a terminal
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE dpr_pg.passages"))
    return {"ingest_s": ingest_s, "ingest_rows_per_s": report.read / ingest_s, "index_s": time.perf_counter() - started}


def passage_ids(conn: sa.Connection, rows: int) -> np.ndarray:
    """The dpr_pg.passages id of each synthetic row: ``ids[i]`` is the id of external id ``p{i}``."""
    ids = np.zeros(rows, dtype=np.int64)
    for pid, external_id in conn.execute(sa.text("SELECT id, external_id FROM dpr_pg.passages")):
        ids[int(external_id[1:])] = pid
    return ids


def truth(vectors: np.ndarray, mask: np.ndarray | None, queries: np.ndarray, ids: np.ndarray) -> list[list[int]]:
    """Database ids (``ids[row]``) of the exact top k per query."""
    rows = np.arange(len(vectors)) if mask is None else np.flatnonzero(mask)
    scores = queries @ vectors[rows].T
    out = []
    for s in scores:
        top = np.argpartition(-s, min(K, len(rows) - 1))[:K] if len(rows) > K else np.arange(len(rows))
        top = top[np.argsort(-s[top], kind="stable")]
        out.append([int(ids[rows[t]]) for t in top])
    return out


def measure(runs: dict[str, Any], queries: np.ndarray, expected: list[list[int]],
            matches: int) -> dict[str, dict[str, float]]:
    """Latency and recall of each method over the same queries, round-robin: query i runs every
    method before query i + 1, starting with a different one each time, so load from other
    processes on a shared machine falls on all methods alike."""
    names = list(runs)
    latencies: dict[str, list[float]] = {n: [] for n in names}
    recalls: dict[str, list[float]] = {n: [] for n in names}
    short = dict.fromkeys(names, 0)
    for i, (query, want) in enumerate(zip(queries, expected)):
        for name in names[i % len(names):] + names[:i % len(names)]:
            started = time.perf_counter()
            got = runs[name](query)
            latencies[name].append((time.perf_counter() - started) * 1000)
            short[name] += len(got) < min(K, matches)
            recalls[name].append(len(set(got) & set(want)) / len(want) if want else 1.0)
    out = {}
    for name in names:
        ordered = sorted(latencies[name])
        out[name] = {"p50": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))],
                     "recall": statistics.mean(recalls[name]), "short": short[name] / len(queries)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_search"),
                        help="Data folder of the benchmark's own embedded PostgreSQL.")
    parser.add_argument("--reuse", action="store_true",
                        help="Keep the database of an earlier run with the same --rows and --seed (skip the load).")
    parser.add_argument("--only", nargs="*", help="Selectivities to measure, e.g. none 1%% (default: all).")
    parser.add_argument("--m", type=int, default=16, help="HNSW m (with --reuse, a different one rebuilds the index).")
    parser.add_argument("--ef-construction", type=int, default=64, help="HNSW ef_construction (as --m).")
    parser.add_argument("--shared-buffers", default=None,
                        help="ALTER SYSTEM SET shared_buffers on the benchmark's own server, e.g. 1GB (the "
                             "embedded default, 128MB, holds a third of the 100k index); applies from the next run.")
    args = parser.parse_args()

    url = embedded_url(home=Path(args.home))
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        buffers = conn.execute(sa.text("SHOW shared_buffers")).scalar_one()
        if args.shared_buffers:  # a utility statement takes no parameters: the value passes an allow-list
            if not re.fullmatch(r"[0-9]{1,6}(kB|MB|GB)", args.shared_buffers):
                parser.error(f"--shared-buffers expects a size like 1GB or 512MB, not {args.shared_buffers!r}")
            conn.execute(sa.text(f"ALTER SYSTEM SET shared_buffers = '{args.shared_buffers}'"))
    print(f"shared_buffers {buffers}" + (f" (set to {args.shared_buffers} from the next run)"
                                          if args.shared_buffers and args.shared_buffers != buffers else ""))
    name = f"bench_search_{args.rows}_{args.seed}"
    engine = sa.create_engine(sa.engine.make_url(url).set(database=name))
    vectors, bucket, centers = synthetic(args.rows, args.seed)
    queries = queries_near(centers, args.queries, args.seed)
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
    parameters = HnswParameters(m=args.m, ef_construction=args.ef_construction)
    if args.reuse and exists:
        print(f"rows {args.rows}, queries {args.queries}, k {K}: reusing database {name}")
        if hnsw_parameters(engine) != parameters:
            build = build_index(engine, m=args.m, ef_construction=args.ef_construction, progress=None)
            print(f"HNSW index rebuilt with {parameters.sql()}: {build.seconds:.1f} s")
    else:
        fresh_database(url, name, dim=DIM)
        with tempfile.TemporaryDirectory() as folder:
            jsonl, npy = write_input(Path(folder), vectors, bucket)
            timings = load(engine, jsonl, npy, parameters)
        print(f"rows {args.rows}, queries {args.queries}, k {K}: ingest {timings['ingest_s']:.1f} s "
              f"({timings['ingest_rows_per_s']:.0f} rows/s, precomputed vectors), "
              f"HNSW build {timings['index_s']:.1f} s")
    print(f"HNSW index: {hnsw_parameters(engine).sql()}")

    conn = engine.connect()
    ids = passage_ids(conn, args.rows)
    conn.rollback()
    sql = sa.text("SELECT id FROM dpr_pg.search(CAST(:q AS vector), :k, CAST(:f AS jsonb))")
    # After a server start the buffers are cold: walk the index (and the rows it reaches) first.
    with conn.begin():
        conn.execute(sa.text("SELECT set_config('hnsw.ef_search', '1000', true)"))
        for query in queries:
            conn.execute(sa.text("SELECT id FROM dpr_pg.passages ORDER BY embedding <#> CAST(:q AS vector) LIMIT 10"),
                         {"q": str(query.tolist())})
    print(f"{'filter':>7} {'matches':>8} | {'naive p50':>9} {'p95':>6} {'recall':>6} {'short':>5} | "
          f"{'dpr_pg p50':>10} {'p95':>6} {'recall':>6} {'short':>5} {'path':>14} | "
          f"{'sql p50':>7} {'recall':>6} | {'p50 ratio':>9} {'recall ratio':>12}")
    for label, m in SELECTIVITIES:
        if args.only and label not in args.only:
            continue
        document = None if m is None else {f"s{m}": True}
        mask = None if m is None else (bucket % m == 0)
        matches = args.rows if mask is None else int(mask.sum())
        expected = truth(vectors, mask, queries, ids)
        naive_stmt = lambda q: search_statement(q, k=K, filter=document)  # noqa: E731

        def naive(q: np.ndarray) -> list[int]:
            with conn.begin():
                return [r.id for r in conn.execute(naive_stmt(q))]

        paths: list[str] = []

        def contender(q: np.ndarray) -> list[int]:
            hits = search(engine, q, k=K, filter=document)
            paths.append(hits.plan.path)
            return [h.id for h in hits]

        def sql_function(q: np.ndarray) -> list[int]:
            with conn.begin():
                return [r.id for r in conn.execute(sql, {"q": str(q.tolist()), "k": K,
                                                         "f": json.dumps(document or {})})]

        for warm in (naive, contender, sql_function):  # caches and prepared statements, not timed
            for query in queries[:20]:
                warm(query)
        paths.clear()
        measured = measure({"naive": naive, "dpr_pg": contender, "sql": sql_function}, queries, expected, matches)
        base, ours, func = measured["naive"], measured["dpr_pg"], measured["sql"]
        path = max(set(paths), key=paths.count)
        print(f"{label:>7} {matches:>8} | {base['p50']:>9.2f} {base['p95']:>6.2f} {base['recall']:>6.3f} "
              f"{base['short']:>5.0%} | {ours['p50']:>10.2f} {ours['p95']:>6.2f} {ours['recall']:>6.3f} "
              f"{ours['short']:>5.0%} {path:>14} | {func['p50']:>7.2f} {func['recall']:>6.3f} | "
              f"{base['p50'] / ours['p50']:>9.2f} {ours['recall'] / max(base['recall'], 1e-9):>12.2f}",
              flush=True)
    conn.close()
    engine.dispose()
    admin.dispose()


if __name__ == "__main__":
    main()
