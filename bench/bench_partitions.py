"""Benchmark: collections as partitions, and promoted metadata keys, on the 1% filter band.

Synthetic clustered 768-d vectors (bench_storage.py's) are written by binary COPY into one
unpartitioned dpr_pg.passages: 1% of the rows form collection ``small``, the rest nine
collections ``big0``..``big8`` of about 11% each. Metadata: ``tag = "hot"`` on about 9% of
``big0`` (1% of the table), and a flag ``f1`` on 1% of the rows, scattered over every collection.
The same rows and questions are then searched with dpr_pg.search (after a warm-up pass) in four
states of the same database, one after the other:

  plain                  unpartitioned, HNSW built by dpr_pg.build_index (the baseline)
  plain+promoted         tag (text) and f1 (boolean) promoted: dpr-pg index --column
  partitioned+promoted   converted by dpr_pg's own path (dpr-pg storage partition)
  partitioned            the promoted columns dropped again
  partitioned+filtered   a filtered HNSW index for {"tag": "hot"} (dpr-pg index --where): each
                         partition's small graph of its hot rows

and, right after plain, ``plain+filtered``: the same filtered index on the unpartitioned table
(dropped again before the conversion). Their build times are printed with the others.

Bands: no filter; collection='small' (1% is a collection); collection='big0' + {"tag": "hot"}
(1% is a metadata filter inside a collection); {"tag": "hot"} alone (the same rows, without naming
their collection); {"f1": true} (1% scattered, for reference);
collection='big1' (11%); {"f1": false} (99% scattered: an iterative scan of every partition).
Printed per state and band: p50 / p95 (ms), recall@10 against numpy's exact top 10, the paths,
the planner's ef_search, and the p50 ratio to plain; also the HNSW build, promotion and conversion
times. ``--ef-curve 10,20,40`` adds, in the plain and partitioned states, the two bands that span
every partition (no filter, 99% scattered), and collection='big1' for reference, at each of those
hnsw.ef_search values (the caller's ef_search), next to the planner's own choice; "min" is the
lowest recall@10 of one question.

The collections are drawn at random, independently of the vectors' clusters, so each partition
holds about 1/11 of a question's true top 10. ``--topical`` makes them follow the clusters instead
(one collection = one subject): 1% of the clusters form ``small``, the rest are dealt round-robin
to big0..big8 (11 clusters each at 100k rows), so a question's true top 10 sits in one partition,
whose own index must find all of it at the ef_search of a search of every collection.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_partitions.py --rows 100000
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from bench_storage import DIM, K, NOISE, clustered, copy_passages, truth

from dpr_pg.db.engine import embedded_url
from dpr_pg.db.filtered import build_filtered_index, drop_filtered_index
from dpr_pg.db.partition_ops import partition_passages
from dpr_pg.db.promoted import drop_promoted, promote_key
from dpr_pg.db.schema import init
from dpr_pg.db.index import build_index
from dpr_pg.search.api import search

BANDS = [("none", None, None), ("1% = collection", "small", None),
         ("1% in a collection", "big0", {"tag": "hot"}), ("1% tag (no collection)", None, {"tag": "hot"}),
         ("1% scattered", None, {"f1": True}),
         ("11% = collection", "big1", None),  # 11k rows: the size of a 1% collection at 1M rows
         ("99% scattered", None, {"f1": False})]
HOT = {"tag": "hot"}
# measured at each --ef-curve value: the bands that span every partition, and one collection's for reference
CURVE_BANDS = ("none", "99% scattered", "11% = collection")


def layout(rows: int, seed: int, cluster: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's collection (0: small, 1..9: big0..big8), hot tag, and f1 flag.

    The collection is drawn at random, or, given each row's cluster, follows it: the first 1% of the
    clusters (at least one) are ``small``, the others go round-robin to big0..big8.
    """
    rng = np.random.default_rng(seed + 2)
    collection = np.where(rng.random(rows) < 0.01, 0, 1 + rng.integers(0, 9, rows))
    if cluster is not None:
        small = max(1, (int(cluster.max()) + 1) // 100)
        collection = np.where(cluster < small, 0, 1 + (cluster - small) % 9)
    hot = (collection == 1) & (rng.random(rows) < 1 / 11)
    flag = rng.random(rows) < 0.01
    return collection, hot, flag


def name_of(c: int) -> str:
    return "small" if c == 0 else f"big{c - 1}"


def load(engine: sa.Engine, vectors: np.ndarray, collection: np.ndarray, hot: np.ndarray, flag: np.ndarray) -> float:
    def metadata(i: int) -> dict[str, Any]:
        tag = {"tag": "hot"} if hot[i] else {"tag": "cold"} if collection[i] == 1 else {}
        return {"f1": bool(flag[i]), **tag}

    return copy_passages(engine, ((name_of(int(collection[i])), metadata(i), vectors[i]) for i in range(len(vectors))))


def measure(engine: sa.Engine, queries: np.ndarray, expected: dict[str, list[list[int]]],
            ef_curve: Sequence[int] = ()) -> dict[str, Any]:
    """Each band at the planner's choices; then the CURVE_BANDS at each ef_search of ``ef_curve``."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))
    out = {}
    runs = [(band, collection, document, None) for band, collection, document in BANDS]
    runs += [(f"{band}, ef_search {ef}", collection, document, ef) for band, collection, document in BANDS
             if band in CURVE_BANDS for ef in ef_curve]
    for band, collection, document, ef_search in runs:
        truth_of = band.split(",")[0]
        for query in queries[:20]:  # warm-up: walk the index and the heap once
            search(engine, query, k=K, filter=document, collection=collection, ef_search=ef_search)
        latencies, recalls, paths, efs = [], [], set(), set()
        for query, want in zip(queries, expected[truth_of]):
            started = time.perf_counter()
            hits = search(engine, query, k=K, filter=document, collection=collection, ef_search=ef_search)
            latencies.append((time.perf_counter() - started) * 1000)
            recalls.append(len({h.id for h in hits} & set(want)) / len(want))
            paths.add(hits.plan.path)
            efs.add(str(hits.plan.ef_search or "-"))
        latencies.sort()
        out[band] = {"p50": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))],
                     "recall": statistics.mean(recalls), "min": min(recalls), "paths": "/".join(sorted(paths)),
                     "ef_search": "/".join(sorted(efs))}
    return out


def indexes_read(engine: sa.Engine, query: np.ndarray) -> str:
    """Which indexes PostgreSQL reads for the tag's bands (one question): the filtered one, or the main graph."""
    found = []
    for band, collection, document in BANDS:
        if document == HOT:
            hits = search(engine, query, k=K, filter=document, collection=collection, explain=True)
            used = sorted(set(re.findall(r"Index Scan using (\S+)", hits.plan.explain or ""))) or ["none"]
            shown = ", ".join(used) if len(used) <= 2 else f"{len(used)} indexes ({used[0]}, ...)"
            found.append(f"{band}: {hits.plan.path} reads {shown}")
    return "; ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-promote", action="store_true",
                        help="leave out the promoted-column states (each promotion rewrites the table)")
    parser.add_argument("--ef-curve", default="",
                        help="hnsw.ef_search values (comma-separated) at which to measure the bands that span every "
                             "partition too, in the plain and partitioned states")
    parser.add_argument("--topical", action="store_true",
                        help="collections follow the vectors' clusters (a question's neighbours share a partition) "
                             "instead of being drawn at random")
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_partitions"))
    args = parser.parse_args()
    ef_curve = [int(ef) for ef in args.ef_curve.split(",") if ef]

    url = embedded_url(home=Path(args.home))
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"bench_partitions_{args.rows}{'_topical' if args.topical else ''}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = sa.create_engine(sa.engine.make_url(url).set(database=name))
    try:
        init(engine, dim=DIM)
        vectors, _, cluster = clustered(args.rows, args.seed)
        collection, hot, flag = layout(args.rows, args.seed, cluster if args.topical else None)
        load_s = load(engine, vectors, collection, hot, flag)
        with engine.connect() as conn:
            ids = np.array(conn.execute(sa.text(
                "SELECT id FROM dpr_pg.passages ORDER BY substr(external_id, 2)::integer")).scalars().all())
        rng = np.random.default_rng(args.seed + 1)
        queries = (vectors[rng.integers(0, args.rows, args.queries)]
                   + rng.normal(scale=NOISE / 2, size=(args.queries, DIM))).astype(np.float32)
        masks = {"none": None, "1% = collection": collection == 0, "1% in a collection": hot,
                 "1% tag (no collection)": hot,
                 "1% scattered": flag, "11% = collection": collection == 2, "99% scattered": ~flag}
        expected = {band: truth(vectors, masks[band], queries, ids) for band in masks}
        shares = {band: (1.0 if m is None else float(m.mean())) for band, m in masks.items()}
        print(f"{args.rows} rows x {DIM} dims loaded by binary COPY in {load_s:.1f} s; {args.queries} queries, k={K}; "
              + ", ".join(f"{band}: {share:.2%} of rows" for band, share in shares.items() if band != "none"))
        row_of = {int(i): r for r, i in enumerate(ids)}
        together = [np.bincount(collection[[row_of[i] for i in want]]).max() / len(want) for want in expected["none"]]
        print(f"collections {'follow the clusters' if args.topical else 'at random'}: the largest holds "
              f"{np.bincount(collection).max() / args.rows:.1%} of the rows; a question's true top {K} (no filter) "
              f"has on average {statistics.mean(together):.0%} in one collection (at least {min(together):.0%})")
        steps: dict[str, float] = {}
        runs: list[tuple[str, dict[str, Any]]] = []
        steps["HNSW build (plain)"] = build_index(engine).seconds
        runs.append(("plain", measure(engine, queries, expected, ef_curve)))
        steps["filtered index {\"tag\": \"hot\"} (plain)"] = build_filtered_index(engine, HOT).seconds
        print("plain+filtered: " + indexes_read(engine, queries[0]))
        runs.append(("plain+filtered", measure(engine, queries, expected)))
        drop_filtered_index(engine, HOT)
        if not args.skip_promote:
            started = time.perf_counter()
            promote_key(engine, "tag", kind="text")
            promote_key(engine, "f1", kind="boolean")
            steps["promote tag + f1 (table rewrite)"] = time.perf_counter() - started
            runs.append(("plain+promoted", measure(engine, queries, expected)))
        conversion = partition_passages(engine)
        steps["storage partition (copy + indexes + swap)"] = conversion.seconds
        if not args.skip_promote:
            runs.append(("partitioned+promoted", measure(engine, queries, expected)))
            drop_promoted(engine, "tag")
            drop_promoted(engine, "f1")
        runs.append(("partitioned", measure(engine, queries, expected, ef_curve)))
        steps["filtered index {\"tag\": \"hot\"} (partitioned)"] = build_filtered_index(engine, HOT).seconds
        print("partitioned+filtered: " + indexes_read(engine, queries[0]))
        runs.append(("partitioned+filtered", measure(engine, queries, expected)))
        report(runs, steps)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(runs: list[tuple[str, dict[str, Any]]], steps: dict[str, float]) -> None:
    for step, seconds in steps.items():
        print(f"{step}: {seconds:.1f} s")
    baseline = runs[0][1]
    print(f"\n{'state':<22} {'band':<30} {'p50 ms':>8} {'p95 ms':>8} {'recall':>7} {'min':>5} {'p50/plain':>10}  "
          "paths (ef_search)")
    for label, result in runs:
        for band, r in result.items():
            ratio = r["p50"] / baseline[band]["p50"] if band in baseline else float("nan")
            print(f"{label:<22} {band:<30} {r['p50']:8.2f} {r['p95']:8.2f} {r['recall']:7.3f} {r['min']:5.1f} "
                  f"{ratio:10.2f}  "
                  f"{r['paths']} ({r['ef_search']})")


if __name__ == "__main__":
    main()
