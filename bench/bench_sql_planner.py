"""Benchmark: the SQL functions before and after they shared one planner (dpr_pg._search_plan).

Baselines are the frozen SQL of the migrations that first installed them, loaded under other names
in the same database: ``dpr_pg.search`` as revision 0008 ran it (its planner inline), and
``dpr_pg.search_table`` as revision 0005 ran it (an iterative index scan for any filter, ef_search
100/200, no row estimate). Contenders are today's functions from sql/. The same rows sit in
dpr_pg.passages (flags in metadata) and in an app table enabled for sync (flags as boolean
columns); each flag selects 50 / 10 / 1 / 0.1 % of the rows, independent of the clusters.

For each filter it prints p50 latency (ms, round-robin per query, after a warm-up), recall@10
against numpy's exact top 10 of the matching rows, and the after/before p50 ratio.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_sql_planner.py --rows 20000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import sqlalchemy as sa
from _database import drop_database, fresh_database, stand_in_encoder

from dpr_pg.db.engine import embedded_url
from dpr_pg.db.schema import init, resource_dir
from dpr_pg.tuning import HNSW_EF_CONSTRUCTION, HNSW_M

K = 10
FLAGS = (2, 10, 100, 1000)
FROZEN = resource_dir("migrations") / "versions" / "sql"


def baselines() -> str:
    """0008's dpr_pg.search and 0005's dpr_pg.search_table, renamed to ..._before."""
    search = (FROZEN / "0008_search.sql").read_text(encoding="utf-8")
    search = search.replace("FUNCTION dpr_pg.search(", "FUNCTION dpr_pg.search_before(")
    table = (FROZEN / "0005_search_table.sql").read_text(encoding="utf-8")
    table = table[table.index("CREATE FUNCTION dpr_pg.search_table"):]
    table = table.replace("CREATE FUNCTION dpr_pg.search_table(", "CREATE OR REPLACE FUNCTION dpr_pg.search_table_before(")
    table = table.replace("search_table.tbl", "search_table_before.tbl")
    return search.replace("@VECTOR_SCHEMA@", "public") + "\n" + table


def load(engine: sa.Engine, vectors: np.ndarray) -> None:
    rows = len(vectors)
    options = f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    flags = {f"s{m}": [bool(i % m == 0) for i in range(rows)] for m in FLAGS}
    records = [{"id": i + 1, "v": str(vectors[i].tolist()), **{name: flags[name][i] for name in flags}}
               for i in range(rows)]
    columns = ", ".join(f"s{m} boolean" for m in FLAGS)
    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, vectors.shape[1])
        conn.execute(sa.text("DROP INDEX dpr_pg.passages_embedding_hnsw"))
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
            "encoder_id) SELECT 'bench', 'p' || r.id, '', 'texto', to_jsonb(r) - 'id' - 'v', 'h', "
            f"CAST(r.v AS vector), :enc FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id integer, v text, {columns}) "
            "ORDER BY r.id"), {"enc": encoder, "rows": json.dumps(records)})
        conn.execute(sa.text(f"CREATE TABLE docs (id integer PRIMARY KEY, body text NOT NULL DEFAULT 'texto', {columns})"))
        conn.execute(sa.text("SELECT dpr_pg.enable_table('docs', ARRAY['body'], NULL, :d)"), {"d": vectors.shape[1]})
        conn.execute(sa.text("DROP INDEX docs_dpr_hnsw"))
        names = ", ".join(f"s{m}" for m in FLAGS)
        conn.execute(sa.text(
            f"INSERT INTO docs (id, {names}, embedding, dpr_encoder_id) "
            f"SELECT p.id, {', '.join(f'(p.metadata ->> {chr(39)}s{m}{chr(39)})::boolean' for m in FLAGS)}, "
            "p.embedding, p.encoder_id FROM dpr_pg.passages p"))
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text(f"CREATE INDEX passages_embedding_hnsw ON dpr_pg.passages "
                             f"USING hnsw (embedding vector_ip_ops) {options}"))
        conn.execute(sa.text(f"CREATE INDEX docs_dpr_hnsw ON docs USING hnsw (embedding vector_ip_ops) {options}"))
        conn.connection.driver_connection.execute(baselines())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE dpr_pg.passages, docs"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--home", default=str(Path("/tmp") / "dpr_pg_bench_sql_planner"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, args.dim))
    vectors = (centers[rng.integers(0, 50, args.rows)] + 0.8 * rng.normal(size=(args.rows, args.dim))).astype(
        np.float32)
    queries = (centers[rng.integers(0, 50, args.queries)] + 0.8 * rng.normal(size=(args.queries, args.dim))).astype(
        np.float32)

    url = embedded_url(home=Path(args.home))
    name = f"bench_sql_planner_{args.rows}_{args.dim}"
    engine = sa.create_engine(fresh_database(url, name))
    started = time.perf_counter()
    init(engine, dim=args.dim)
    load(engine, vectors)
    print(f"rows {args.rows}, dim {args.dim}, queries {args.queries}, k {K}: loaded in "
          f"{time.perf_counter() - started:.1f} s")

    statements = {
        "search before": "SELECT id FROM dpr_pg.search_before(CAST(:q AS vector), :k, CAST(:f AS jsonb))",
        "search after": "SELECT id FROM dpr_pg.search(CAST(:q AS vector), :k, CAST(:f AS jsonb))",
        "table before": "SELECT (row_key ->> 'id')::integer AS id "
                        "FROM dpr_pg.search_table_before('docs', CAST(:q AS vector), :k, CAST(:f AS jsonb))",
        "table after": "SELECT (row_key ->> 'id')::integer AS id "
                       "FROM dpr_pg.search_table('docs', CAST(:q AS vector), :k, CAST(:f AS jsonb))",
    }
    print(f"{'filter':>7} {'matches':>8} | " + " | ".join(f"{label:>13} p50 recall" for label in statements)
          + " | search after/before  table after/before")
    conn = engine.connect()
    for label, m in [("none", None), *((f"{100 / m:g}%", m) for m in FLAGS)]:
        document = {} if m is None else {f"s{m}": True}
        mask = np.ones(args.rows, bool) if m is None else np.arange(args.rows) % m == 0
        scores = vectors.astype(np.float64) @ queries.astype(np.float64).T
        truth = []
        for j in range(args.queries):
            candidates = np.flatnonzero(mask)
            best = candidates[np.argsort(-scores[candidates, j], kind="stable")[:K]]
            truth.append({int(i) + 1 for i in best})

        def run(statement: str) -> Callable[[np.ndarray], list[int]]:
            def call(query: np.ndarray) -> list[int]:
                with conn.begin():
                    return [r.id for r in conn.execute(sa.text(statement), {
                        "q": str(query.tolist()), "k": K, "f": json.dumps(document)})]
            return call

        runs = {label_: run(statement) for label_, statement in statements.items()}
        for call in runs.values():  # plans, caches and buffers, not timed
            for query in queries[:10]:
                call(query)
        times: dict[str, list[float]] = {key: [] for key in runs}
        recall: dict[str, list[float]] = {key: [] for key in runs}
        for j, query in enumerate(queries):
            for key, call in runs.items():
                started = time.perf_counter()
                found = call(query)
                times[key].append((time.perf_counter() - started) * 1000)
                recall[key].append(len(set(found) & truth[j]) / max(len(truth[j]), 1))
        p50 = {key: statistics.median(values) for key, values in times.items()}
        cells = " | ".join(f"{p50[key]:>17.2f} {statistics.mean(recall[key]):>6.3f}" for key in runs)
        print(f"{label:>7} {int(mask.sum()):>8} | {cells} | {p50['search after'] / p50['search before']:>19.2f}  "
              f"{p50['table after'] / p50['table before']:>18.2f}", flush=True)
    conn.close()
    engine.dispose()
    drop_database(url, name)


if __name__ == "__main__":
    main()
