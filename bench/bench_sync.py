"""Benchmark: what app-table sync costs the app's writes, and the worker's per-row overhead.

In one run, on the embedded PostgreSQL, with 768-d tables:

  writes   the same statements on a plain ``articles`` table (baseline) and on one enabled with
           dpr_pg.enable_table (contender): a 10k-row INSERT, an UPDATE of an unrelated column, an
           UPDATE of the embedded text, and 500 single-row INSERT transactions (p50 latency).
  triggers the same statements on enabled tables whose triggers differ only in their functions:
           the previous ones (revision 0011 and before: ON CONFLICT DO NOTHING, SECURITY INVOKER, no SET
           clause; frozen in migration 0012) or today's bodies without their settings (unpinned)
           as baselines, vs what sql/sync.sql installs (a versioned upsert, SECURITY DEFINER,
           SET search_path) as the contender.
  worker   writing 10k precomputed embeddings back: one executemany UPDATE by primary key
           (baseline: what hand-written sync code would do) vs run_worker draining the queue
           (claim with advisory locks, read, hash check, write-back, versioned delete), with an
           encoder stub that returns precomputed vectors, so that only the queue's overhead is measured.

Each figure is the median of ``--repeat`` runs, baseline and contender taking turns; ratios are
contender / baseline.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_sync.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.db.engine import embedded_url
from dpr_pg.db.embedded import stop_server
from dpr_pg.db.schema import init
from dpr_pg.sync.tables import enable_table
from dpr_pg.sync.worker import run_worker

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


def _retarget_triggers(engine: sa.Engine, table: str, schema: str, definitions: list[str]) -> None:
    """Create the trigger functions ``definitions`` (for dpr_pg.*) in ``schema``; point ``table``'s triggers there."""
    with engine.begin() as conn:
        raw = conn.connection.driver_connection  # function bodies hold % and :name: no parameter parsing
        raw.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for definition in definitions:
            raw.execute(definition.replace("dpr_pg.enqueue_sync", f"{schema}.enqueue_sync"))
        triggers = conn.execute(sa.text(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) "
            "AND tgname LIKE 'dpr_sync_%'"), {"t": table}).all()
        for name, definition in triggers:
            raw.execute(f"DROP TRIGGER {name} ON {table}")
            raw.execute(definition.replace("dpr_pg.enqueue_sync", f"{schema}.enqueue_sync"))


def _unpinned(engine: sa.Engine) -> list[str]:
    """Today's trigger functions without SECURITY DEFINER and SET search_path."""
    with engine.connect() as conn:
        definitions = [conn.execute(sa.text(f"SELECT pg_get_functiondef('dpr_pg.{name}'::regproc)")).scalar_one()
                       for name in ("enqueue_sync", "enqueue_sync_rows")]
    stripped = [d.replace("SECURITY DEFINER", "SECURITY INVOKER").replace(" SET search_path TO 'pg_catalog', "
                                                                          "'pg_temp'\n", "") for d in definitions]
    assert not any("search_path TO" in d for d in stripped), stripped
    return stripped


def _previous() -> list[str]:
    """The trigger functions before revision 0012, as migration 0012 keeps them for its downgrade."""
    path = Path(__file__).resolve().parent.parent / "migrations" / "versions" / "0012_sync_versions_dead_letters.py"
    spec = importlib.util.spec_from_file_location("migration_0012", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    blocks = module.DOWNGRADE.split("CREATE OR REPLACE FUNCTION")[1:3]
    return ["CREATE OR REPLACE FUNCTION" + block.split("$fn$;")[0] + "$fn$;" for block in blocks]


def bench_writes(engine: sa.Engine, rows: int, repeat: int, tables: tuple[str, str] = ("plain", "synced")) -> None:
    cases = {
        f"INSERT {rows} rows (ms)": ("TRUNCATE {t}", "INSERT INTO {t} (id, title, body) SELECT i, 'Título ' || i, "
                                     ":b || i FROM generate_series(1, :n) AS i"),
        f"UPDATE unrelated column, {rows} rows (ms)": (None, "UPDATE {t} SET views = views + 1"),
        f"UPDATE embedded text, {rows} rows (ms)": (None, "UPDATE {t} SET body = body || '.'"),
    }
    baseline, contender = tables
    for label, (prepare, statement) in cases.items():
        runs: dict[str, list[float]] = {table: [] for table in tables}
        for _ in range(repeat):
            for table in tables:  # taking turns, so that a busy moment of the machine hits both
                _reset(engine, table, rows)
                if prepare:
                    with engine.begin() as conn:
                        conn.execute(sa.text(prepare.format(t=table)))
                runs[table].append(_timed(engine, statement.format(t=table), b=BODY, n=rows) * 1000)
        figures = {table: statistics.median(times) for table, times in runs.items()}
        print(f"{label:45s} {baseline} {figures[baseline]:9.1f}   {contender} {figures[contender]:9.1f}   "
              f"ratio {figures[contender] / figures[baseline]:.2f}")

    latencies: dict[str, list[float]] = {table: [] for table in tables}
    for table in tables:
        _reset(engine, table, 0)
    with engine.connect() as conn:
        for i in range(500):
            for table in tables:
                start = time.perf_counter()
                conn.execute(sa.text(f"INSERT INTO {table} (id, title, body) VALUES (:i, 'T', :b)"),
                             {"i": i + 1, "b": BODY})
                conn.commit()
                latencies[table].append((time.perf_counter() - start) * 1000)
    figures = {table: statistics.median(times) for table, times in latencies.items()}
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
        try:
            _run(engine, args.rows, args.repeat)
        finally:
            engine.dispose()
            # Before the folder goes: the server would outlive it, as nothing could stop it later.
            stop_server(home=Path(home), force=True)


def _run(engine: sa.Engine, rows: int, repeat: int) -> None:
    init(engine, dim=DIM)
    with engine.begin() as conn:
        for table in ("plain", "synced", "previous", "unpinned"):
            conn.execute(sa.text(f"CREATE TABLE {table} (id integer PRIMARY KEY, title text NOT NULL, "
                                 "body text NOT NULL, views integer NOT NULL DEFAULT 0)"))
        for table in ("synced", "previous", "unpinned"):
            enable_table(conn, table, text_columns=["body"], title_column="title", dim=DIM)
    _retarget_triggers(engine, "previous", "bench_previous", _previous())
    _retarget_triggers(engine, "unpinned", "bench_unpinned", _unpinned(engine))
    print(f"PostgreSQL {engine.connect().execute(sa.text('SHOW server_version')).scalar()}, "
          f"{rows} rows, median of {repeat}")
    bench_writes(engine, rows, repeat)
    print("trigger functions before revision 0012 (previous) vs today's (synced)")
    bench_writes(engine, rows, repeat, tables=("previous", "synced"))
    print("today's trigger functions without SECURITY DEFINER and SET search_path (unpinned) vs with (synced)")
    bench_writes(engine, rows, repeat, tables=("unpinned", "synced"))
    bench_worker(engine, rows, repeat)


if __name__ == "__main__":
    main()
