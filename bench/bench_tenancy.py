"""Benchmark: a tenant's search under row-level security against the same search with security off.

The rows of bench_search.py (synthetic clustered 768-d vectors) are spread over collections: one
holds 50 % of them ("big"), ten hold 4 % each ("mid0".."mid9"), a hundred hold 0.1 % each
("small0".."small99"); a flag selects 10 % of the rows independently. Three LOGIN roles are each
granted one collection (big, mid3, small7) with dpr_pg.grant, which turns row-level security on.

For each tenant, with and without the flag filter, in one run and over the same queries:

  off   the table owner (not subject to row-level security) searching with collection=<its collection>
  on    the tenant searching with no collection argument: the policy limits it to its collection

through the Python API (dpr_pg.search) and the SQL function (dpr_pg.search), round-robin per query
(bench_search.measure), and prints p50 latency (ms), recall@10 against numpy's exact top 10 of the
collection's (matching) rows, the path, and the ratio on/off. With --bare-function-policy it also
measures "on" with the policy calling dpr_pg.allowed_collections() bare instead of as a scalar
subquery (the form migration 0014 avoids), then puts the migration's policy back.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_tenancy.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _database import fresh_database, stand_in_encoder  # noqa: E402
from bench_search import DIM, K, measure, passage_ids, queries_near, synthetic, truth  # noqa: E402

from dpr_pg.db.engine import embedded_url  # noqa: E402
from dpr_pg.db.index import HnswParameters, drop_hnsw, ensure_hnsw  # noqa: E402
from dpr_pg.search.api import search  # noqa: E402
from dpr_pg.db.tenancy import grant  # noqa: E402

TENANTS = {"bench_tenant_big": "big", "bench_tenant_mid": "mid3", "bench_tenant_small": "small7"}
FILTERS = [("none", None), ("10%", {"tenth": True})]
POLICY = "collection = ANY ((SELECT dpr_pg.allowed_collections(false))::text[])"  # as migration 0014
BARE_POLICY = "collection = ANY (dpr_pg.allowed_collections(false))"


def collections_of(rows: int, seed: int) -> np.ndarray:
    """The collection of each row: big 50 %, mid0..9 4 % each, small0..99 0.1 % each."""
    names = ["big"] * 500 + [f"mid{i}" for i in range(10) for _ in range(40)] + [f"small{i}" for i in range(100)]
    rng = np.random.default_rng(seed + 7)
    return np.array(names, dtype=object)[rng.permutation(np.arange(rows) % 1000)]


def load(engine: sa.Engine, vectors: np.ndarray, collections: np.ndarray, tenth: np.ndarray) -> float:
    """Binary COPY as the owner, then the HNSW index (m=16, ef_construction=64) and ANALYZE; returns seconds."""
    started = time.perf_counter()
    drop_hnsw(engine)
    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, DIM)
        raw = conn.connection.driver_connection
        register_vector(raw)
        with raw.cursor() as cur, cur.copy(
                "COPY dpr_pg.passages (collection, external_id, text, metadata, content_hash, embedding, encoder_id) "
                "FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "jsonb", "text", "vector", "int4"])
            for i in range(len(vectors)):
                copy.write_row((collections[i], f"p{i}", f"Texto sintético número {i}.",
                                Jsonb({"tenth": bool(tenth[i])}), "h", vectors[i], encoder))
    ensure_hnsw(engine, HnswParameters(m=16, ef_construction=64))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE dpr_pg.passages"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "dpr_pg_bench_tenancy"),
                        help="Data folder of the benchmark's own embedded PostgreSQL.")
    parser.add_argument("--reuse", action="store_true", help="Keep the database of an earlier run (skip the load).")
    parser.add_argument("--bare-function-policy", action="store_true",
                        help="Also measure a policy that calls dpr_pg.allowed_collections() for every row.")
    args = parser.parse_args()

    url = embedded_url(home=Path(args.home))
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"bench_tenancy_{args.rows}_{args.seed}"
    engine = sa.create_engine(sa.engine.make_url(url).set(database=name))
    vectors, _, centers = synthetic(args.rows, args.seed)
    queries = queries_near(centers, args.queries, args.seed)
    collections = collections_of(args.rows, args.seed)
    tenth = np.random.default_rng(args.seed + 8).random(args.rows) < 0.1
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
        for role in TENANTS:  # cluster-wide: made once, granted per database
            if not conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar():
                conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))  # names from TENANTS, not from input
    if not (args.reuse and exists):
        fresh_database(url, name, dim=DIM)
        seconds = load(engine, vectors, collections, tenth)
        for role, collection in TENANTS.items():
            grant(engine, role, collections=[collection])
        print(f"rows {args.rows}: loaded and indexed in {seconds:.1f} s")
    else:
        print(f"rows {args.rows}: reusing database {name}")

    with engine.connect() as conn:
        ids = passage_ids(conn, args.rows)
        # cold buffers after a server start would weigh on whichever runs first: walk the index once
        conn.execute(sa.text("SELECT set_config('hnsw.ef_search', '1000', false)"))
        for query in queries:
            conn.execute(sa.text("SELECT id FROM dpr_pg.passages ORDER BY embedding <#> CAST(:q AS vector) LIMIT 10"),
                         {"q": str(query.tolist())})
    sql = sa.text("SELECT id FROM dpr_pg.search(CAST(:q AS vector), :k, CAST(:f AS jsonb), :c)")
    tenant_engines = {role: sa.create_engine(sa.engine.make_url(url).set(database=name, username=role))
                      for role in TENANTS}
    forms = [("on", POLICY)] + ([("on, bare function", BARE_POLICY)] if args.bare_function_policy else [])

    print(f"k {K}, {args.queries} queries; p50 ms (recall@10) [path]")
    header = f"{'tenant':>7} {'rows':>6} {'filter':>6} {'face':>6} | {'off':>22}"
    for label, _ in forms:
        header += f" | {label:>30} {'ratio':>6}"
    print(header)
    for role, collection in TENANTS.items():
        tenant = tenant_engines[role]
        in_collection = collections == collection
        for filter_label, document in FILTERS:
            mask = in_collection & (tenth if document else True)
            expected = truth(vectors, mask, queries, ids)
            for face in ("python", "sql"):
                paths: dict[str, list[str]] = {}

                def runner(bind: sa.Engine, label: str, collection_arg: str | None, face: str = face,
                           document: Any = document) -> Any:
                    def python(q: np.ndarray) -> list[int]:
                        hits = search(bind, q, k=K, filter=document, collection=collection_arg)
                        paths.setdefault(label, []).append(hits.plan.path)
                        return [h.id for h in hits]

                    def sql_function(q: np.ndarray) -> list[int]:
                        with bind.connect() as conn:
                            return [r.id for r in conn.execute(sql, {"q": str(q.tolist()), "k": K,
                                                                     "f": json.dumps(document or {}),
                                                                     "c": collection_arg})]
                    return python if face == "python" else sql_function

                results = {}
                for label, policy in forms:
                    with engine.begin() as conn:
                        conn.execute(sa.text(f"ALTER POLICY passages_read ON dpr_pg.passages USING ({policy})"))
                    runs = {"off": runner(engine, "off", collection), label: runner(tenant, label, None)}
                    for run in runs.values():  # caches and prepared statements, not timed
                        for query in queries[:10]:
                            run(query)
                    for name in runs:
                        paths.pop(name, None)
                    results.update(measure(runs, queries, expected, int(mask.sum())))
                with engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER POLICY passages_read ON dpr_pg.passages USING ({POLICY})"))
                off = results["off"]

                def shown(label: str) -> str:
                    r = results[label]
                    path = max(set(paths[label]), key=paths[label].count) if paths.get(label) else "-"
                    return f"{r['p50']:7.2f} ({r['recall']:.3f}) [{path}]"

                line = f"{collection:>7} {int(in_collection.sum()):>6} {filter_label:>6} {face:>6} | {shown('off'):>22}"
                for label, _ in forms:
                    line += f" | {shown(label):>30} {results[label]['p50'] / off['p50']:>6.2f}"
                print(line, flush=True)
    for bind in tenant_engines.values():
        bind.dispose()
    engine.dispose()
    admin.dispose()


if __name__ == "__main__":
    main()
