"""Benchmark: what app-table sync costs the app's writes, and the worker's per-row overhead.

In one run, on the embedded PostgreSQL, with 768-d tables:

  writes   the same statements on a plain ``articles`` table (baseline) and on one enabled with
           dpr_pg.enable_table (contender): a 10k-row INSERT, an UPDATE of an unrelated column, an
           UPDATE of the embedded text, and 500 single-row INSERT transactions (p50 latency).
  pinning  the same statements on two enabled tables whose triggers differ only in the trigger
           functions' settings: SECURITY INVOKER with no SET clause (baseline) vs what
           sql/sync.sql installs, SECURITY DEFINER with SET search_path (contender).
  worker   writing 10k precomputed embeddings back: one executemany UPDATE by primary key
           (baseline: what hand-written sync code would do) vs run_worker draining the queue
           (claim with advisory locks, read, hash check, write-back, versioned delete), with an
           encoder stub that returns precomputed vectors, so that only the queue's overhead is measured.

Each figure is the median of ``--repeat`` runs; ratios are contender / baseline.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_sync.py
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

from dpr_pg._fingerprint import EncoderFingerprint
from dpr_pg.database import embedded_url
from dpr_pg.schema import init
from dpr_pg.sync import enable_table, run_worker

DIM = 768
BODY = "Texto de un artículo de la aplicación, con algunas frases de ejemplo. " * 3


class _StubPassages:
    def __init__(self, dim: int) -> None:
        self.vector = np.random.default_rng(0).normal(size=dim).astype(np.float32)

    def encode(self, passages: list[tuple[str, str]]) -> np.ndarray:
        return np.tile(self.vector, (len(passages), 1))


class _StubPair:
    dim = DIM

    def __init__(self) -> None:
        self.passage = _StubPassages(DIM)
        self.fingerprint = EncoderFingerprint(
            question_model="bench-q", question_revision=None, passage_model="bench-p", passage_revision=None,
            tokenizer_hash="bench", dim=DIM, max_length=512, pooling="pooler_output",
        )


def _timed(engine: sa.Engine, sql: str, **params: Any) -> float:
    with engine.begin() as conn:
        start = time.perf_counter()
        conn.execute(sa.text(sql), params)
        return time.perf_counter() - start


def _reset(engine: sa.Engine, table: str, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {table}"))
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text(f"INSERT INTO {table} (id, title, body) SELECT i, 'Título ' || i, :b || i "
                             "FROM generate_series(1, :n) AS i"), {"b": BODY, "n": rows})
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))


def _unpinned_copy(engine: sa.Engine, table: str) -> None:
    """Point ``table``'s sync triggers at copies of the trigger functions without their settings."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS bench_unpinned"))
        for name in ("enqueue_sync", "enqueue_sync_rows"):
            definition = conn.execute(sa.text(f"SELECT pg_get_functiondef('dpr_pg.{name}'::regproc)")).scalar_one()
            definition = (definition.replace(f"dpr_pg.{name}()", f"bench_unpinned.{name}()")
                          .replace("SECURITY DEFINER", "SECURITY INVOKER")
                          .replace(" SET search_path TO 'pg_catalog', 'pg_temp'\n", ""))
            assert "search_path TO" not in definition, definition[:400]
            conn.execute(sa.text("CREATE OR REPLACE " + definition.removeprefix("CREATE OR REPLACE ")))
        triggers = conn.execute(sa.text(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) "
            "AND tgname LIKE 'dpr_sync_%'"), {"t": table}).all()
        for name, definition in triggers:
            conn.execute(sa.text(f"DROP TRIGGER {name} ON {table}"))
            conn.execute(sa.text(definition.replace("dpr_pg.enqueue_sync", "bench_unpinned.enqueue_sync")))


def bench_writes(engine: sa.Engine, rows: int, repeat: int, tables: tuple[str, str] = ("plain", "synced")) -> None:
    cases = {
        f"INSERT {rows} rows (ms)": ("TRUNCATE {t}", "INSERT INTO {t} (id, title, body) SELECT i, 'Título ' || i, "
                                     ":b || i FROM generate_series(1, :n) AS i"),
        f"UPDATE unrelated column, {rows} rows (ms)": (None, "UPDATE {t} SET views = views + 1"),
        f"UPDATE embedded text, {rows} rows (ms)": (None, "UPDATE {t} SET body = body || '.'"),
    }
    baseline, contender = tables
    for label, (prepare, statement) in cases.items():
        figures = {}
        for table in tables:
            runs = []
            for _ in range(repeat):
                _reset(engine, table, rows)
                if prepare:
                    with engine.begin() as conn:
                        conn.execute(sa.text(prepare.format(t=table)))
                runs.append(_timed(engine, statement.format(t=table), b=BODY, n=rows) * 1000)
            figures[table] = statistics.median(runs)
        print(f"{label:45s} {baseline} {figures[baseline]:9.1f}   {contender} {figures[contender]:9.1f}   "
              f"ratio {figures[contender] / figures[baseline]:.2f}")

    figures = {}
    for table in tables:
        _reset(engine, table, 0)
        latencies = []
        with engine.connect() as conn:
            for i in range(500):
                start = time.perf_counter()
                conn.execute(sa.text(f"INSERT INTO {table} (id, title, body) VALUES (:i, 'T', :b)"),
                             {"i": i + 1, "b": BODY})
                conn.commit()
                latencies.append((time.perf_counter() - start) * 1000)
        figures[table] = statistics.median(latencies)
    print(f"{'single-row INSERT + COMMIT, p50 (ms)':45s} {baseline} {figures[baseline]:9.3f}   {contender} "
          f"{figures[contender]:9.3f}   ratio {figures[contender] / figures[baseline]:.2f}")


def bench_worker(engine: sa.Engine, rows: int, repeat: int) -> None:
    pair = _StubPair()
    vector = str(pair.passage.vector.tolist())
    baseline, contender = [], []
    for _ in range(repeat):
        _reset(engine, "synced", rows)
        with engine.begin() as conn:
            start = time.perf_counter()
            conn.execute(sa.text("UPDATE synced SET embedding = CAST(:e AS vector) WHERE id = :id"),
                         [{"e": vector, "id": i} for i in range(1, rows + 1)])
            baseline.append(rows / (time.perf_counter() - start))
        _reset(engine, "synced", rows)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE synced SET embedding = NULL, dpr_content_hash = NULL"))
            conn.execute(sa.text("INSERT INTO dpr_pg.sync_queue (tbl, row_key) SELECT 'synced', "
                                 "jsonb_build_object('id', id) FROM synced"))
        start = time.perf_counter()
        report = run_worker(engine, pair, once=True, batch_size=64)
        contender.append(report.embedded / (time.perf_counter() - start))
        assert report.embedded == rows, report
    b, c = statistics.median(baseline), statistics.median(contender)
    print(f"{'write-back of precomputed vectors (rows/s)':45s} plain {b:9.0f}   worker {c:9.0f}   ratio {c / b:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        engine = sa.create_engine(embedded_url(home=Path(home)))
        init(engine, dim=DIM)
        with engine.begin() as conn:
            for table in ("plain", "synced", "unpinned"):
                conn.execute(sa.text(f"CREATE TABLE {table} (id integer PRIMARY KEY, title text NOT NULL, "
                                     "body text NOT NULL, views integer NOT NULL DEFAULT 0)"))
            for table in ("synced", "unpinned"):
                enable_table(conn, table, text_columns=["body"], title_column="title", dim=DIM)
        _unpinned_copy(engine, "unpinned")
        print(f"PostgreSQL {engine.connect().execute(sa.text('SHOW server_version')).scalar()}, "
              f"{args.rows} rows, median of {args.repeat}")
        bench_writes(engine, args.rows, args.repeat)
        print("trigger functions: no settings (unpinned) vs SECURITY DEFINER + SET search_path (synced)")
        bench_writes(engine, args.rows, args.repeat, tables=("unpinned", "synced"))
        bench_worker(engine, args.rows, args.repeat)
        engine.dispose()


if __name__ == "__main__":
    main()
