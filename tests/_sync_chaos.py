"""Chaos run of app-table sync: the app writes at random while sync workers are killed with SIGKILL.

App threads run random transactions on an enabled ``articles`` table (inserts, upserts, text
changes that often flip back to an earlier text, deletes, unrelated updates, rollbacks). Worker
processes (a hash encoder that sleeps per batch, like a model) drain the queue, and each is killed
with SIGKILL a random moment after it connects, mostly mid-batch. At the end the app stops, one
clean worker drains what is left, and every row is checked: its embedding must be the one of its
current text (none for an empty row), with nothing left queued or dead.

tests/test_sync_chaos.py runs it for about half a minute. A longer run, by hand, on a fresh
embedded server (figures printed as JSON)::

    .venv/bin/python tests/_sync_chaos.py --seconds 300
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sync_app import HashPair, create_articles, wrong_rows  # noqa: E402

from dpr_pg.sync.worker import run_worker  # noqa: E402

TEXTS = ["texto A", "texto B", "texto C", "Madrid es la capital.", "El ADN y los genes.", "", "  "]
TITLES = ["Uno", "Dos", ""]


@dataclass
class Figures:
    """What a chaos run did and found."""

    seconds: float = 0.0
    keys: int = 0
    rows: int = 0
    app_transactions: int = 0
    app_writes: int = 0
    worker_starts: int = 0
    kills: int = 0
    kills_mid_batch: int = 0
    final_drain_embedded: int = 0
    queued_left: int = 0
    dead_left: int = 0
    wrong_rows: list[str] = field(default_factory=list)


def _app(url: str, keys: int, stop: threading.Event, seed: int, figures: Figures, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        while not stop.is_set():
            writes = 0
            try:
                for _ in range(rng.randint(1, 5)):
                    key, roll = rng.randint(1, keys), rng.random()
                    if roll < 0.25:
                        conn.execute(sa.text(
                            "INSERT INTO articles (id, title, body) VALUES (:i, :t, :b) "
                            "ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body"),
                            {"i": key, "t": rng.choice(TITLES), "b": rng.choice(TEXTS)})
                    elif roll < 0.6:
                        conn.execute(sa.text("UPDATE articles SET body = :b WHERE id = :i"),
                                     {"i": key, "b": rng.choice(TEXTS)})
                    elif roll < 0.7:
                        conn.execute(sa.text("UPDATE articles SET title = :t WHERE id = :i"),
                                     {"i": key, "t": rng.choice(TITLES)})
                    elif roll < 0.85:
                        conn.execute(sa.text("DELETE FROM articles WHERE id = :i"), {"i": key})
                    else:
                        conn.execute(sa.text("UPDATE articles SET views = views + 1 WHERE id = :i"), {"i": key})
                    writes += 1
                    if rng.random() < 0.3:
                        time.sleep(rng.random() * 0.05)  # a transaction left open across a worker's batch
                if rng.random() < 0.1:
                    conn.rollback()
                    continue
                conn.commit()
            except sa.exc.DBAPIError:  # a deadlock between the app's own threads: retried as apps do
                conn.rollback()
                continue
            with lock:
                figures.app_transactions += 1
                figures.app_writes += writes
    engine.dispose()


def _worker_process(url: str, number: int, delay: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--worker", url, "--name", f"chaos-worker-{number}",
                             "--delay", str(delay)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _connected(engine: sa.Engine, name: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT 1 FROM pg_stat_activity WHERE application_name = :n"),
                                 {"n": name}).first())


def _mid_batch(engine: sa.Engine) -> int:
    """Queue items held by some worker right now (advisory locks of the claim)."""
    from dpr_pg.sync.queries import LOCK_CLASS

    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
                                    "AND classid = CAST(:c AS oid)"), {"c": LOCK_CLASS}).scalar_one()


def run(url: str, *, seconds: float, keys: int = 300, workers: int = 2, app_threads: int = 2,
        delay: float = 0.05, seed: int = 0, min_kills: int = 0) -> Figures:
    """One chaos run against the database at ``url`` (dpr_pg initialised, no ``articles`` table).

    It lasts ``seconds``, or longer (up to four times as long) until ``min_kills`` workers were
    killed: on a loaded machine a worker takes longer to start.
    """
    rng = random.Random(seed)
    figures, lock, stop = Figures(keys=keys), threading.Lock(), threading.Event()
    engine = sa.create_engine(url)
    create_articles(engine, rows=[(rng.choice(TITLES), rng.choice(TEXTS)) for _ in range(keys // 2)])
    apps = [threading.Thread(target=_app, args=(url, keys, stop, seed * 100 + i, figures, lock))
            for i in range(app_threads)]
    started = time.monotonic()
    for thread in apps:
        thread.start()
    slots: dict[str, tuple[subprocess.Popen[bytes], float | None]] = {}  # name -> (process, when to kill it)
    try:
        while (elapsed := time.monotonic() - started) < seconds or (
                figures.kills < min_kills and elapsed < 4 * seconds):
            while len(slots) < workers:
                figures.worker_starts += 1
                name = f"chaos-worker-{figures.worker_starts}"
                slots[name] = (_worker_process(url, figures.worker_starts, delay), None)
            for name, (process, kill_at) in list(slots.items()):
                if kill_at is None and _connected(engine, name):
                    slots[name] = (process, time.monotonic() + rng.uniform(0.2, 1.5))
                elif kill_at is not None and time.monotonic() >= kill_at:
                    held = _mid_batch(engine)
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    figures.kills += 1
                    figures.kills_mid_batch += held > 0
                    del slots[name]
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in apps:
            thread.join()
        for process, _ in slots.values():
            process.send_signal(signal.SIGKILL)
            process.wait()
    figures.seconds = round(time.monotonic() - started, 1)
    pair = HashPair()
    figures.final_drain_embedded = run_worker(engine, pair, once=True, poll_interval=0.05).embedded
    with engine.connect() as conn:
        figures.rows = conn.execute(sa.text("SELECT count(*) FROM articles")).scalar_one()
        figures.queued_left = conn.execute(sa.text("SELECT count(*) FROM dpr_pg.sync_queue")).scalar_one()
        figures.dead_left = conn.execute(sa.text(
            "SELECT count(*) FROM dpr_pg.sync_queue WHERE dead_at IS NOT NULL")).scalar_one()
    figures.wrong_rows = wrong_rows(engine, "articles", pair)
    engine.dispose()
    return figures


def _serve(url: str, name: str, delay: float) -> None:
    engine = sa.create_engine(url, connect_args={"application_name": name})
    run_worker(engine, HashPair(delay=delay), batch_size=8, poll_interval=0.05, retry_base=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=0.05, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _serve(args.worker, args.name, args.delay)
        return
    from dpr_pg.db.engine import embedded_server
    from dpr_pg.db.embedded import stop_server
    from dpr_pg.db.schema import init

    with tempfile.TemporaryDirectory() as home:
        url = embedded_server(home=Path(home)).url(driver="psycopg")
        try:
            init(sa.create_engine(url, poolclass=sa.NullPool))
            figures = run(url, seconds=args.seconds, keys=args.keys, workers=args.workers, seed=args.seed)
        finally:
            stop_server(home=Path(home), force=True)
    print(json.dumps(asdict(figures), ensure_ascii=False))
    sys.exit(1 if figures.wrong_rows or figures.queued_left else 0)


if __name__ == "__main__":
    main()
