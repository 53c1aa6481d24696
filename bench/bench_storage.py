"""Benchmark: the index storages vector, halfvec and bit (re-ranked), on the same rows and queries.

Synthetic clustered 768-d vectors (not normalised, like DPR's; the clusters of bench_search.py)
are written straight into dpr_pg.passages by binary COPY (no encoder: encoding is far too slow
here). Each row carries flags that select 10 / 1 / 0.1 % of the rows, independent of the clusters.
The questions are stored points plus noise. For each storage in turn, the index is switched with
dpr_pg's own path (dpr_pg.set_storage: CREATE INDEX CONCURRENTLY, then the swap), then searched
with dpr_pg.search after one warm-up pass; it prints:

  table      the heap + TOAST of dpr_pg.passages (the vector column is vector(768) for every storage)
  vectors    the bytes of the embedding column; for halfvec and bit, also what a column of that type
             would take (pg_column_size of the cast), for the column-type design
  index      passages_embedding_hnsw, and its build time
  per band   (no filter, 10%, 1%, 0.1%): p50 / p95 latency (ms) and recall@10 against numpy's exact top 10

and the ratios to vector. bit is measured at the default re-rank multiple and at a larger one.
Storages run one after the other (one index at a time, as in production), so load from other
processes on a shared machine can fall on one more than another: read p50 ratios near 1 as equal.

Run it alone (other benchmarks take the same lock), in its own data folder:

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_storage.py --rows 100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from dpr_pg.db.engine import embedded_url
from dpr_pg.ingest.index import drop_hnsw
from dpr_pg.db.schema import init
from dpr_pg.search.api import search
from dpr_pg.db.storage import DEFAULT_RERANK_MULTIPLE, set_storage

DIM = 768
K = 10
NOISE = 0.8
BANDS = [("none", None), ("10%", 10), ("1%", 100), ("0.1%", 1000)]


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors and the flag bucket of each row (row i is in 1/m of the rows when bucket % m == 0)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(10, rows // 1000), DIM)).astype(np.float32)
    vectors = np.empty((rows, DIM), dtype=np.float32)
    for start in range(0, rows, 50_000):
        n = min(50_000, rows - start)
        vectors[start:start + n] = centers[rng.integers(0, len(centers), n)] + rng.normal(scale=NOISE, size=(n, DIM))
    return vectors, rng.permutation(rows)


def load(engine: sa.Engine, vectors: np.ndarray, bucket: np.ndarray) -> float:
    """COPY the rows in binary, without an index (built per storage afterwards); returns seconds."""
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    with engine.begin() as conn:
        encoder = conn.execute(sa.text(
            "INSERT INTO dpr_pg.encoders (fingerprint, question_model, passage_model, tokenizer_hash, dim, max_length) "
            "VALUES ('bench', 'bench/q', 'bench/p', 'bench', :d, 512) RETURNING id"), {"d": DIM}).scalar_one()
    drop_hnsw(engine)
    started = time.perf_counter()
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        register_vector(raw)
        with raw.cursor().copy(
                "COPY dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
                "encoder_id) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "text", "jsonb", "text", "vector", "integer"])
            for i in range(len(vectors)):
                flags = {f"s{m}": bool(bucket[i] % m == 0) for _, m in BANDS if m}
                copy.write_row(("bench", f"p{i}", f"Pasaje {i}", f"Texto sintético número {i}.", Jsonb(flags),
                                f"h{i}", vectors[i], encoder))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE dpr_pg.passages"))
    return time.perf_counter() - started


def truth(vectors: np.ndarray, mask: np.ndarray | None, queries: np.ndarray, ids: np.ndarray) -> list[list[int]]:
    rows = np.arange(len(vectors)) if mask is None else np.flatnonzero(mask)
    scores = queries @ vectors[rows].T
    out = []
    for s in scores:
        top = np.argpartition(-s, K)[:K] if len(rows) > K else np.arange(len(rows))
        top = top[np.argsort(-s[top], kind="stable")]
        out.append([int(ids[rows[t]]) for t in top])
    return out


def sizes(engine: sa.Engine, kind: str) -> dict[str, float]:
    cast = {"vector": "embedding", "halfvec": f"embedding::halfvec({DIM})",
            "bit": f"binary_quantize(embedding)::bit({DIM})"}[kind]
    with engine.connect() as conn:
        table, index, column, as_type = conn.execute(sa.text(
            "SELECT pg_table_size('dpr_pg.passages'), pg_relation_size('dpr_pg.passages_embedding_hnsw'), "
            f"sum(pg_column_size(embedding)), sum(pg_column_size({cast})) FROM dpr_pg.passages")).one()
    mb = 2.0**20
    return {"table_mb": table / mb, "index_mb": index / mb, "vectors_mb": column / mb, "typed_vectors_mb": as_type / mb}


def measure(engine: sa.Engine, queries: np.ndarray, expected: dict[str, list[list[int]]]) -> dict[str, Any]:
    out = {}
    for band, m in BANDS:
        document = {f"s{m}": True} if m else None
        for query in queries[:20]:  # warm-up: walk the index and the heap once
            search(engine, query, k=K, filter=document)
        latencies, recalls, paths = [], [], set()
        for query, want in zip(queries, expected[band]):
            started = time.perf_counter()
            hits = search(engine, query, k=K, filter=document)
            latencies.append((time.perf_counter() - started) * 1000)
            recalls.append(len({h.id for h in hits} & set(want)) / len(want))
            paths.add(hits.plan.path)
        latencies.sort()
        out[band] = {"p50": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))],
                     "recall": statistics.mean(recalls), "paths": "/".join(sorted(paths))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rerank-multiples", default=f"{DEFAULT_RERANK_MULTIPLE},10",
                        help="bit's re-rank multiples to measure, the default first")
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_storage"))
    args = parser.parse_args()

    url = embedded_url(home=Path(args.home))
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"bench_storage_{args.rows}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = sa.create_engine(sa.engine.make_url(url).set(database=name))
    try:
        init(engine, dim=DIM)
        vectors, bucket = synthetic(args.rows, args.seed)
        load_s = load(engine, vectors, bucket)
        with engine.connect() as conn:
            ids = np.array(conn.execute(sa.text(
                "SELECT id FROM dpr_pg.passages ORDER BY substr(external_id, 2)::integer")).scalars().all())
        rng = np.random.default_rng(args.seed + 1)
        queries = (vectors[rng.integers(0, args.rows, args.queries)]
                   + rng.normal(scale=NOISE / 2, size=(args.queries, DIM))).astype(np.float32)
        expected = {band: truth(vectors, None if m is None else bucket % m == 0, queries, ids) for band, m in BANDS}
        print(f"{args.rows} rows x {DIM} dims loaded by binary COPY in {load_s:.1f} s; {args.queries} queries, k={K}")

        runs: list[tuple[str, dict[str, Any]]] = []
        multiples = [int(x) for x in args.rerank_multiples.split(",")]
        for kind in ("vector", "halfvec", "bit", "vector"):  # vector again: the drift of a shared machine
            started = time.perf_counter()
            change = set_storage(engine, kind, rerank_multiple=multiples[0] if kind == "bit" else None)
            build_s = change.seconds if change.rebuilt else time.perf_counter() - started
            if not change.rebuilt:  # vector at first: the load dropped the index, build it the same way
                from dpr_pg.ingest.index import build_index

                build_s = build_index(engine).seconds
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("ANALYZE dpr_pg.passages"))
            facts = {**sizes(engine, kind), "build_s": build_s}
            label = kind if kind != "bit" else f"bit x{multiples[0]}"
            label = label if all(label != seen for seen, _ in runs) else f"{label} again"
            runs.append((label, {**facts, **measure(engine, queries, expected)}))
            if kind == "bit":
                for multiple in multiples[1:]:
                    set_storage(engine, "bit", rerank_multiple=multiple)
                    runs.append((f"bit x{multiple}", {**facts, **measure(engine, queries, expected)}))
        report(runs)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(runs: list[tuple[str, dict[str, Any]]]) -> None:
    """Ratios are to vector: its sizes, and the mean of its two p50s per band."""
    base = runs[0][1]
    again = dict(runs).get("vector again", base)
    base_p50 = {band: (base[band]["p50"] + again[band]["p50"]) / 2 for band, _ in BANDS}
    print("\nsizes (MB) and index build; ratios to vector in parentheses")
    print(f"{'storage':<10} {'table':>8} {'vectors':>8} {'as type':>8} {'index':>8} {'build s':>8} "
          f"{'vec+idx':>16} {'typed+idx':>16}")
    for label, r in runs:
        if (label.startswith("bit x") and label != runs[2][0]) or label == "vector again":
            continue
        both = r["vectors_mb"] + r["index_mb"]
        typed = r["typed_vectors_mb"] + r["index_mb"]
        base_both = base["vectors_mb"] + base["index_mb"]
        print(f"{label:<10} {r['table_mb']:>8.1f} {r['vectors_mb']:>8.1f} {r['typed_vectors_mb']:>8.1f} "
              f"{r['index_mb']:>8.1f} {r['build_s']:>8.1f} {both:>8.1f} ({both / base_both:.2f}) "
              f"{typed:>8.1f} ({typed / base_both:.2f})")
    print("\nsearch (dpr_pg.search): p50 / p95 ms, recall@10; p50 ratio to vector's (mean of its two runs)")
    print(f"{'storage':<10} {'band':<6} {'path':<22} {'p50':>7} {'p95':>7} {'recall':>7} {'p50/vector':>11}")
    for label, r in runs:
        for band, _ in BANDS:
            b = r[band]
            print(f"{label:<10} {band:<6} {b['paths']:<22} {b['p50']:>7.2f} {b['p95']:>7.2f} {b['recall']:>7.3f} "
                  f"{b['p50'] / base_p50[band]:>11.2f}")


if __name__ == "__main__":
    main()
