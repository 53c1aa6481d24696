"""Benchmark: how passages' vectors are stored, side by side: a vector column, a halfvec index over
a vector column, a halfvec column (and, on request, bit re-ranked), on the same rows and queries.

Synthetic clustered 768-d vectors (not normalised, like DPR's; the clusters of bench_search.py)
are written by binary COPY (no encoder: encoding is far too slow here) into one database per
contender, all in the same embedded server (pgvector's HalfVector for the halfvec column):

  vector          vector(768) column, vector_ip_ops index (dpr-pg init)
  halfvec-index   vector(768) column, index on embedding::halfvec(768) (dpr-pg storage set halfvec)
  halfvec-column  halfvec(768) column and its index (dpr-pg init --storage halfvec)
  bit             vector(768) column, bit index, k x the default multiple re-ranked (--contenders ...,bit)

Each row carries flags that select 10 / 1 / 0.1 % of the rows, independent of the clusters; the
questions are stored points plus noise. It prints:

  sizes      the table (heap + TOAST), the vectors in it (sum of pg_column_size), the HNSW index and
             its build time (dpr_pg.build_index, after the load), and vectors + index as a ratio to vector's
  per band   (no filter, 10%, 1%, 0.1%): p50 / p95 latency (ms) and recall@10 against numpy's exact
             top 10 of the vectors as float4 (what the encoder made), with the p50 ratio to vector's

Latency is measured round-robin: for each query, every contender runs it in turn (the order
rotates), so load from other processes on a shared machine falls on all of them alike; each
contender gets one warm-up pass first. ``--ef-search`` adds unfiltered rows at other ef_search
values (the default is the planner's).

Run it alone (other benchmarks take the same lock), in its own data folder:

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_storage.py --rows 100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from _database import drop_database, fresh_database, stand_in_encoder

from dpr_pg.db.engine import embedded_url
from dpr_pg.db.index import build_index, drop_hnsw
from dpr_pg.db.schema import init
from dpr_pg.search.api import search
from dpr_pg.db.column import set_storage
from dpr_pg.tuning import HNSW_EF_CONSTRUCTION, HNSW_M

DIM = 768
K = 10
NOISE = 0.8
BANDS = [("none", None), ("10%", 10), ("1%", 100), ("0.1%", 1000)]


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors and the flag bucket of each row (row i is in 1/m of the rows when bucket % m == 0)."""
    vectors, bucket, _ = clustered(rows, seed)
    return vectors, bucket


def clustered(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """synthetic()'s vectors and buckets (the same draws), and each row's cluster: max(10, rows // 1000) of them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(10, rows // 1000), DIM)).astype(np.float32)
    vectors = np.empty((rows, DIM), dtype=np.float32)
    cluster = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, 50_000):
        n = min(50_000, rows - start)
        cluster[start:start + n] = rng.integers(0, len(centers), n)
        vectors[start:start + n] = centers[cluster[start:start + n]] + rng.normal(scale=NOISE, size=(n, DIM))
    return vectors, rng.permutation(rows), cluster


def copy_passages(engine: sa.Engine, rows: Iterable[tuple[str, dict[str, Any], np.ndarray]], *,
                  half: bool = False) -> float:
    """COPY (collection, metadata, vector) rows in binary into dpr_pg.passages, with the HNSW index
    dropped (built afterwards), then VACUUM ANALYZE; returns seconds. Row i is ``p{i}``."""
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, DIM)
    drop_hnsw(engine)
    started = time.perf_counter()
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        register_vector(raw)
        with raw.cursor().copy(
                "COPY dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
                "encoder_id) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "text", "jsonb", "text", "halfvec" if half else "vector",
                            "integer"])
            for i, (collection, metadata, vector) in enumerate(rows):
                copy.write_row((collection, f"p{i}", f"Pasaje {i}", f"Texto sintético número {i}.", Jsonb(metadata),
                                f"h{i}", HalfVector(vector) if half else vector, encoder))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE dpr_pg.passages"))
    return time.perf_counter() - started


def load(engine: sa.Engine, vectors: np.ndarray, bucket: np.ndarray, *, half: bool) -> float:
    """The rows of one collection, each with the flags of every band; returns seconds."""
    return copy_passages(engine, (("bench", {f"s{m}": bool(bucket[i] % m == 0) for _, m in BANDS if m}, vectors[i])
                                  for i in range(len(vectors))), half=half)


def truth(vectors: np.ndarray, mask: np.ndarray | None, queries: np.ndarray, ids: np.ndarray) -> list[list[int]]:
    rows = np.arange(len(vectors)) if mask is None else np.flatnonzero(mask)
    scores = queries @ vectors[rows].T
    out = []
    for s in scores:
        top = np.argpartition(-s, K)[:K] if len(rows) > K else np.arange(len(rows))
        top = top[np.argsort(-s[top], kind="stable")]
        out.append([int(ids[rows[t]]) for t in top])
    return out


def sizes(engine: sa.Engine) -> dict[str, float]:
    with engine.connect() as conn:
        table, index, column = conn.execute(sa.text(
            "SELECT pg_table_size('dpr_pg.passages'), pg_relation_size('dpr_pg.passages_embedding_hnsw'), "
            "sum(pg_column_size(embedding)) FROM dpr_pg.passages")).one()
    mb = 2.0**20
    return {"table_mb": table / mb, "index_mb": index / mb, "vectors_mb": column / mb}


# contender -> (init's storage, the index's storage set afterwards)
CONTENDERS = {"vector": ("vector", "vector"), "halfvec-index": ("vector", "halfvec"),
              "halfvec-column": ("halfvec", "halfvec"), "bit": ("vector", "bit")}


def prepare(url: str, label: str, rows: int, vectors: np.ndarray, bucket: np.ndarray,
            *, m: int, ef_construction: int) -> tuple[sa.Engine, dict[str, float]]:
    """A database for one contender: schema, rows, index; returns its engine and sizes/timings."""
    engine = sa.create_engine(fresh_database(url, f"bench_storage_{label.replace('-', '_')}_{rows}"))
    column, index = CONTENDERS[label]
    init(engine, dim=DIM, storage=column)
    if index != column:
        set_storage(engine, index)  # on the empty table: recorded; the index is built below like the others'
    load_s = load(engine, vectors, bucket, half=column == "halfvec")
    build_s = build_index(engine, m=m, ef_construction=ef_construction).seconds
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))
    return engine, {**sizes(engine), "load_s": load_s, "build_s": build_s}


def measure(engines: dict[str, sa.Engine], queries: np.ndarray, expected: dict[str, list[list[int]]],
            ef_searches: list[int]) -> dict[str, dict[str, dict[str, Any]]]:
    """Round-robin latency and recall per contender and band (and unfiltered at each extra ef_search)."""
    labels = list(engines)
    cases = [(band, m, None) for band, m in BANDS] + [(f"ef{ef}", None, ef) for ef in ef_searches]
    out: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in labels}
    for band, m, ef in cases:
        document = {f"s{m}": True} if m else None
        want_band = band if ef is None else "none"
        for label in labels:  # warm-up: walk each index and heap once
            for query in queries[:20]:
                search(engines[label], query, k=K, filter=document, ef_search=ef)
        latencies: dict[str, list[float]] = {label: [] for label in labels}
        recalls: dict[str, list[float]] = {label: [] for label in labels}
        paths: dict[str, set[str]] = {label: set() for label in labels}
        for i, (query, want) in enumerate(zip(queries, expected[want_band])):
            for label in labels[i % len(labels):] + labels[:i % len(labels)]:
                started = time.perf_counter()
                hits = search(engines[label], query, k=K, filter=document, ef_search=ef)
                latencies[label].append((time.perf_counter() - started) * 1000)
                recalls[label].append(len({h.id for h in hits} & set(want)) / len(want))
                paths[label].add(hits.plan.path)
        for label in labels:
            values = sorted(latencies[label])
            out[label][band] = {"p50": statistics.median(values), "p95": values[int(0.95 * (len(values) - 1))],
                                "recall": statistics.mean(recalls[label]), "paths": "/".join(sorted(paths[label]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--contenders", default="vector,halfvec-index,halfvec-column",
                        help=f"comma-separated, vector first: {', '.join(CONTENDERS)}")
    parser.add_argument("--ef-search", default="400",
                        help="extra unfiltered rows at these hnsw.ef_search values (comma-separated; '' for none)")
    parser.add_argument("--m", type=int, default=HNSW_M, help="the HNSW graph's links per node (every contender)")
    parser.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION,
                        help="the HNSW build's candidate list (every contender)")
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_storage"))
    args = parser.parse_args()
    labels = [label.strip() for label in args.contenders.split(",")]
    if labels[0] != "vector" or any(label not in CONTENDERS for label in labels):
        parser.error(f"expected --contenders from {', '.join(CONTENDERS)}, vector first, not {args.contenders!r}")
    ef_searches = [int(x) for x in args.ef_search.split(",") if x.strip()]

    url = embedded_url(home=Path(args.home))
    engines: dict[str, sa.Engine] = {}
    try:
        vectors, bucket = synthetic(args.rows, args.seed)
        facts = {}
        for label in labels:
            engines[label], facts[label] = prepare(url, label, args.rows, vectors, bucket,
                                                   m=args.m, ef_construction=args.ef_construction)
        with engines["vector"].connect() as conn:
            ids = np.array(conn.execute(sa.text(
                "SELECT id FROM dpr_pg.passages ORDER BY substr(external_id, 2)::integer")).scalars().all())
        for label in labels[1:]:  # the same ids in every database: one truth for all
            with engines[label].connect() as conn:
                assert conn.execute(sa.text("SELECT max(id) FROM dpr_pg.passages")).scalar() == ids.max()
        rng = np.random.default_rng(args.seed + 1)
        queries = (vectors[rng.integers(0, args.rows, args.queries)]
                   + rng.normal(scale=NOISE / 2, size=(args.queries, DIM))).astype(np.float32)
        expected = {band: truth(vectors, None if m is None else bucket % m == 0, queries, ids) for band, m in BANDS}
        print(f"{args.rows} rows x {DIM} dims per contender, loaded by binary COPY; HNSW m {args.m}, ef_construction "
              f"{args.ef_construction}; {args.queries} queries, k={K}, "
              f"latency round-robin over {', '.join(labels)}")
        report(labels, facts, measure(engines, queries, expected, ef_searches), ef_searches)
    finally:
        for label, engine in engines.items():
            name = engine.url.database
            engine.dispose()
            drop_database(url, name)


def report(labels: list[str], facts: dict[str, dict[str, float]], runs: dict[str, dict[str, dict[str, Any]]],
           ef_searches: list[int]) -> None:
    """Ratios are to vector's: sizes, and p50 measured in the same rounds."""
    base = facts["vector"]
    base_both = base["vectors_mb"] + base["index_mb"]
    print("\nsizes (MB), load and index build (s); vectors + index as a ratio to vector's")
    print(f"{'contender':<15} {'table':>8} {'vectors':>8} {'index':>8} {'load s':>7} {'build s':>8} {'vec+idx':>16}")
    for label in labels:
        f = facts[label]
        both = f["vectors_mb"] + f["index_mb"]
        print(f"{label:<15} {f['table_mb']:>8.1f} {f['vectors_mb']:>8.1f} {f['index_mb']:>8.1f} {f['load_s']:>7.1f} "
              f"{f['build_s']:>8.1f} {both:>8.1f} ({both / base_both:.2f})")
    print("\nsearch (dpr_pg.search), round-robin: p50 / p95 ms, recall@10; p50 ratio to vector's")
    print(f"{'contender':<15} {'band':<6} {'path':<22} {'p50':>7} {'p95':>7} {'recall':>7} {'p50/vector':>11}")
    for band in [b for b, _ in BANDS] + [f"ef{ef}" for ef in ef_searches]:
        for label in labels:
            b = runs[label][band]
            print(f"{label:<15} {band:<6} {b['paths']:<22} {b['p50']:>7.2f} {b['p95']:>7.2f} {b['recall']:>7.3f} "
                  f"{b['p50'] / runs['vector'][band]['p50']:>11.2f}")


if __name__ == "__main__":
    main()
