"""Benchmark: evaluation through the HNSW path (dpr_pg's default) vs exact search, and the ef_search audit.

Synthetic clustered 768-d vectors (not normalised, like DPR's) are loaded through dpr_pg's ingest
path with precomputed vectors, and the HNSW index (m=16, ef_construction=64, as migration 0002
makes it) is rebuilt after the load. Each question is one stored passage's vector plus noise, and
that passage is its gold: the metrics then say how well the search recovers the source passage.

In one run, over the same questions:

  exact    evaluate(mode="exact"): inner product over every row (the baseline)
  dense    evaluate(mode="dense"): the planner's path, iterative HNSW at ef_search 200 here
  audit    audit_ann(): recall@10 of the HNSW path against exact per hnsw.ef_search, and the
           median ms per question of each against exact search

It prints top-k accuracy, MRR, mean rank and seconds for exact and dense with their ratios, then the
audit table and its recommendation, once per noise level: little noise keeps a question near its
passage (an easy query, on the data's manifold), much noise makes it nearly a random direction (the
hard case for an inner-product HNSW graph).

Run it alone (other engineers' benchmarks take the same lock), in its own data folder:

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_evaluate.py --rows 50000 --questions 200 --noise 2 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from _database import drop_database, fresh_database

from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.evaluation.audit import audit_ann
from dpr_pg.db.engine import embedded_url
from dpr_pg.evaluation.evaluate import evaluate
from dpr_pg.ingest import ingest
from dpr_pg.db.schema import HNSW_INDEX

DIM = 768


def synthetic(rows: int, seed: int) -> np.ndarray:
    """Clustered passage vectors."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(10, rows // 1000), DIM)).astype(np.float32)
    vectors = centers[rng.integers(0, len(centers), rows)] + rng.normal(scale=0.8, size=(rows, DIM)).astype(np.float32)
    return vectors.astype(np.float32)


def questions_for(vectors: np.ndarray, count: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The gold row of each question, and the question vectors: the gold vector plus noise."""
    rng = np.random.default_rng(seed + 1)
    gold = rng.choice(len(vectors), size=count, replace=False)
    return gold, (vectors[gold] + rng.normal(scale=noise, size=(count, DIM))).astype(np.float32)


def load(engine: sa.Engine, folder: Path, vectors: np.ndarray) -> float:
    jsonl, npy = folder / "passages.jsonl", folder / "passages.npy"
    with jsonl.open("w", encoding="utf-8") as out:
        for i in range(len(vectors)):
            out.write(json.dumps({"id": f"p{i}", "title": f"Pasaje {i}", "text": f"Texto sintético número {i}."}) + "\n")
    np.save(npy, vectors)
    fingerprint = EncoderFingerprint("bench/question", None, "bench/passage", None, "bench", DIM, 512)
    with engine.begin() as conn:
        index_sql = conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                                 {"n": HNSW_INDEX}).scalar_one()
        conn.execute(sa.text(f"DROP INDEX dpr_pg.{HNSW_INDEX}"))  # a bulk load then one build is faster
    started = time.perf_counter()
    ingest(engine, None, jsonl, collection="bench", embeddings=npy, fingerprint=fingerprint, progress=False)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SET maintenance_work_mem = '2GB'"))
        conn.execute(sa.text("SET max_parallel_maintenance_workers = 1"))
        conn.execute(sa.text(index_sql))
        conn.execute(sa.text("VACUUM ANALYZE dpr_pg.passages"))
    return time.perf_counter() - started


def run_round(engine: sa.Engine, questions: list[dict], queries: np.ndarray, noise: float, sample: int) -> None:
    print(f"\n== questions = gold vector + noise of std {noise} ==")
    reports = {mode: evaluate(engine, None, questions, collection="bench", mode=mode, query_vectors=queries)
               for mode in ("exact", "dense")}
    print(f"{'':10}{'top-1':>8}{'top-10':>8}{'top-100':>9}{'MRR':>8}{'mean rank':>11}{'seconds':>9}  path")
    for mode, report in reports.items():
        m = report.metrics
        print(f"{mode:10}{m.top_k_accuracy[1]:8.3f}{m.top_k_accuracy[10]:8.3f}{m.top_k_accuracy[100]:9.3f}"
              f"{m.mrr:8.3f}{m.mean_rank:11.2f}{report.seconds:9.2f}  {report.paths}")
    exact, dense = reports["exact"], reports["dense"]
    print(f"exact/dense seconds: {exact.seconds / dense.seconds:.1f}x; "
          f"top-10 accuracy dense/exact: {dense.metrics.top_k_accuracy[10] / exact.metrics.top_k_accuracy[10]:.3f}")

    audit = audit_ann(engine, None, questions, collection="bench", k=10, sample=sample, query_vectors=queries)
    print(f"audit over {audit.questions} questions, k=10; exact search: {audit.exact_median_ms:.1f} ms median; "
          f"current settings recall {audit.current_recall:.3f} ({audit.current_paths})")
    print(f"{'ef_search':>10}{'recall@10':>11}{'worst':>8}{'median ms':>11}{'exact/this':>12}")
    for row in audit.sweep:
        print(f"{row.ef_search:>10}{row.recall:11.3f}{row.min_recall:8.2f}{row.median_ms:11.1f}"
              f"{audit.exact_median_ms / row.median_ms:11.1f}x")
    print(f"recommended hnsw.ef_search for recall@10 >= {audit.target_recall}: {audit.recommended_ef_search}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--noise", type=float, nargs="+", default=[2.0, 8.0],
                        help="Std of the noise added to a gold vector; one round per value.")
    parser.add_argument("--audit-sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_evaluate"),
                        help="Data folder of the benchmark's own embedded PostgreSQL.")
    args = parser.parse_args()

    url = embedded_url(home=Path(args.home))
    name = f"bench_evaluate_{args.rows}"
    engine = sa.create_engine(fresh_database(url, name, dim=DIM))
    vectors = synthetic(args.rows, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        load_s = load(engine, Path(folder), vectors)
    print(f"{args.rows} passages x {DIM}, {args.questions} questions; load + index {load_s:.1f} s")
    for noise in args.noise:
        gold, queries = questions_for(vectors, args.questions, noise, args.seed)
        questions = [{"question": f"pregunta {i}", "gold_ids": [f"p{g}"]} for i, g in enumerate(gold)]
        run_round(engine, questions, queries, noise, args.audit_sample)
    engine.dispose()
    drop_database(url, name)


if __name__ == "__main__":
    main()
