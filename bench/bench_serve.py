"""Benchmark: `dpr-pg serve` under 1, 8 and 32 concurrent clients (micro-batching of questions).

A BERT-base-shaped DPR pair with random weights (the compute of the IIC models, as in
bench_encoders.py) serves searches over N passages (precomputed random vectors, HNSW index) in an
embedded PostgreSQL, or the database of DPR_PG_DATABASE_URL. A bounded asyncio/httpx load
generator on 127.0.0.1 keeps C clients busy for --seconds each (every question distinct, so the
question cache never answers), after a warm-up, round-robin over the levels --rounds times, and
prints p50/p99 latency and the median questions/s per level, and the ratio of each level's
throughput to one client's (the baseline). With
--compare-unbatched it also runs 32 clients against a server with --batch-max 1.

The load generator runs on the same CPU as the server, PostgreSQL and the encoder: its own cost
is part of every figure. Run it alone:

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_serve.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoders import make_base_models, make_questions  # noqa: E402


def prepare_database(url: str, models: tuple[str, str], passages: int) -> None:
    import dpr_pg
    from dpr_pg.encoders.pair import fingerprint_of
    from dpr_pg.ingest import ingest

    engine = dpr_pg.create_engine(url)
    dpr_pg.init(engine, dim=768)
    folder = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((passages, 768)).astype(np.float32)
    np.save(folder / "vectors.npy", vectors)
    with open(folder / "passages.jsonl", "w", encoding="utf-8") as out:
        for i in range(passages):
            out.write(f'{{"id": "p{i}", "title": "Documento {i}", "text": "Texto número {i} del corpus.", '
                      f'"topic": "t{i % 10}"}}\n')
    report = ingest(engine, None, folder / "passages.jsonl", collection="bench", embeddings=folder / "vectors.npy",
                    fingerprint=fingerprint_of(*models), progress=False)
    print(f"corpus: {report.inserted + report.unchanged} passages in collection 'bench'", flush=True)
    engine.dispose()


class Server:
    def __init__(self, url: str, models: tuple[str, str], batch_max: int, extra: list[str]) -> None:
        env = {**os.environ, "DPR_PG_QUESTION_MODEL": models[0], "DPR_PG_PASSAGE_MODEL": models[1],
               "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dpr_pg.cli", "--database-url", url, "serve", "--port", "0",
             "--batch-max", str(batch_max), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env)
        self.url: str | None = None
        self.lines: list[str] = []
        found = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line)
                match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
                if match:
                    self.url = match.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(600)
        if self.url is None:
            raise SystemExit("the server did not start:\n" + "".join(self.lines))
        for _ in range(6000):
            if httpx.get(f"{self.url}/readyz", timeout=60).status_code == 200:
                return
            time.sleep(0.1)
        raise SystemExit("the server never became ready:\n" + "".join(self.lines))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=60).text
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


async def load(url: str, clients: int, seconds: float, questions: Iterator[str], k: int,
               max_requests: int) -> tuple[list[float], float]:
    """Each client asks the next unused question until time or requests run out; (latencies, elapsed)."""
    latencies: list[float] = []
    cursor = questions
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(session: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and len(latencies) < max_requests:
            question = next(cursor, None)
            if question is None:
                return
            started = time.perf_counter()
            response = await session.post("/v1/search", json={"question": question, "k": k, "collection": "bench"})
            if response.status_code != 200:
                raise SystemExit(f"search failed: {response.status_code} {response.text}")
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,32", help="Concurrency levels; the first is the baseline.")
    parser.add_argument("--seconds", type=float, default=15.0, help="Measured seconds per level and round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds over the levels; the table gives medians.")
    parser.add_argument("--warmup", type=float, default=4.0, help="Unmeasured seconds before each level.")
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-max", type=int, default=32)
    parser.add_argument("--compare-unbatched", action="store_true",
                        help="Also run the largest level against a server with --batch-max 1.")
    parser.add_argument("--serve-option", action="append", default=[], help="Extra option for dpr-pg serve.")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    os.environ.setdefault("DPR_PG_HOME", str(work / "home"))
    os.environ.setdefault("DPR_PG_CACHE_DIR", str(work / "cache"))
    models = make_base_models(work / "models", seed=0, init_std=0.06)
    from dpr_pg.db.engine import resolve_url

    url = resolve_url(None)
    prepare_database(url, models, args.passages)
    stems = make_questions(1000, seed=1)
    questions = (f"{stems[i % len(stems)]} ({i})" for i in itertools.count())  # every question distinct
    import torch

    print(f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; k={args.k}, "
          f"{args.seconds:.0f} s per level after {args.warmup:.0f} s of warm-up", flush=True)

    def run_levels(batch_max: int, chosen: list[int]) -> dict[int, list[tuple[list[float], float, float]]]:
        """Round-robin over the levels, --rounds times: a load change hits every level alike."""
        server = Server(url, models, batch_max, args.serve_option)
        runs: dict[int, list[tuple[list[float], float, float]]] = {c: [] for c in chosen}
        try:
            for round_ in range(args.rounds):
                for clients in chosen:
                    asyncio.run(load(server.url, clients, args.warmup, questions, args.k, 10**6))
                    batches_before = server.metric("dpr_pg_encoder_batch_size_count")
                    encoded_before = server.metric("dpr_pg_encoder_batch_size_sum")
                    latencies, elapsed = asyncio.run(load(server.url, clients, args.seconds, questions, args.k,
                                                          10**6))
                    batches = server.metric("dpr_pg_encoder_batch_size_count") - batches_before
                    mean_batch = (server.metric("dpr_pg_encoder_batch_size_sum") - encoded_before) / max(batches, 1)
                    runs[clients].append((latencies, elapsed, mean_batch))
                    print(f"  round {round_ + 1}: {clients} client(s), batch max {batch_max}: "
                          f"{len(latencies) / elapsed:.1f} questions/s", flush=True)
        finally:
            server.stop()
        return runs

    table = [(args.batch_max, c, r) for c, r in run_levels(args.batch_max, levels).items()]
    if args.compare_unbatched:
        table += [(1, c, r) for c, r in run_levels(1, [max(levels)]).items()]
    base = statistics.median(len(lat) / el for lat, el, _ in table[0][2])
    print()
    print(f"Medians of {args.rounds} rounds of {args.seconds:.0f} s; p50/p99 over every request of the level.")
    print("| clients | batch max | questions | p50 ms | p99 ms | questions/s | x 1 client | mean encoder batch |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for batch_max, clients, runs in table:
        ordered = sorted(x for lat, _, _ in runs for x in lat)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
        rate = statistics.median(len(lat) / el for lat, el, _ in runs)
        mean_batch = statistics.median(b for _, _, b in runs)
        print(f"| {clients} | {batch_max} | {len(ordered)} | {p50:.1f} | {p99:.1f} | {rate:.1f} | "
              f"{rate / base:.2f} | {mean_batch:.1f} |")

if __name__ == "__main__":
    main()
