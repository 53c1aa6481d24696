"""Ingest pipeline benchmark: the encoder alone vs ``dpr_pg.ingest`` on the same chunks.

For each encoder shape (``tiny``: dpr_pg.encoders.tiny's 2-layer pair; ``base``: a BERT-base-shaped
random DPR pair, the compute of the IIC models) and device (CUDA where torch sees a GPU, else the
CPU; ``--devices cpu,cuda`` for both), in one run:

  (a) encoder only: ``pair.passage.encode_result`` over exactly the chunks the ingest writes, in
      batches of the ingest's size (tokenization included, as the ingest pays it), on a worker
      thread as the ingest's encoder runs (see :func:`encoder_only`);
  (b) ``ingest`` into a fresh database with the HNSW index deferred (dropped, built once after);
  (c) ``ingest`` into a fresh database with the HNSW index kept (maintained row by row);
  (a) again after them (the ratios use the faster (a): the load of a shared machine drifts);

and prints chunks/s, the ratio of each ingest to (a), the report's stage times (read, lookup,
tokenize, encode, write: each stage's busy seconds), wall / the largest stage, and the write
stage's cost per row with the index deferred (COPY, the Spanish tsvector, GIN) and kept (+ HNSW). Records are
Spanish passages of 60 to 400 words, chunked at 100 words (about 150 tokens a chunk).

Run it alone (other engineers' benchmarks take the same lock):

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_pipeline.py --shapes tiny,base
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from _database import fresh_database

DIM = 768
STAGES = ("read_seconds", "lookup_seconds", "tokenize_seconds", "encode_seconds", "write_seconds")


def records(n: int, *, seed: int) -> list[dict]:
    from dpr_pg.encoders.tiny import spanish_sentences

    rng = random.Random(seed)
    words = [w for s in spanish_sentences() for w in s.split()]
    out = []
    for i in range(n):
        length = rng.randint(60, 400)
        start = rng.randrange(len(words))
        text = " ".join(words[(start + j) % len(words)] for j in range(length))
        out.append({"id": f"r{i:07d}", "title": f"Artículo {i % 997}", "text": text, "lang": "es", "n": i})
    return out


def chunks_of(rows: list[dict]) -> list[tuple[str, str]]:
    """The (title, text) of every chunk the ingest writes, in the ingest's order."""
    from dpr_pg.ingest.chunking import DEFAULT_CHUNK_WORDS, chunk_text

    return [(row["title"], piece) for row in rows for piece in chunk_text(row["text"], words=DEFAULT_CHUNK_WORDS)]


def load_pair(shape: str, device: str, folder: Path, precision: str | None):
    from dpr_pg.encoders.pair import EncoderPair, make_tiny_models

    if shape == "tiny":
        question, passage = make_tiny_models(folder / "tiny", dim=DIM)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_encoders import make_base_models

        question, passage = make_base_models(folder / "base", seed=0, init_std=0.06)
    return EncoderPair.load(str(question), str(passage), device=device, precision=precision, runtime="torch")


def encoder_only(pair, chunks: list[tuple[str, str]], batch: int) -> float:
    """Seconds to tokenize and encode ``chunks``, on a thread of its own as the ingest's encoder runs.

    Not on the main thread: there torch's CPU kernels ran 5 to 15 times slower than on a worker thread
    on a loaded 2-core machine (2 intra-op threads fighting the other jobs; measured 0.6 s against
    8.8 to 13 s for the same 768 chunks), which made the ingest look faster than its own encoder.
    """
    seconds: list[float] = []

    def run() -> None:
        started = time.perf_counter()
        for start in range(0, len(chunks), batch):
            pair.passage.encode_result(chunks[start:start + batch])
        seconds.append(time.perf_counter() - started)

    thread = threading.Thread(target=run, name="bench-encoder-only")
    thread.start()
    thread.join()
    if not seconds:
        raise RuntimeError("the encoder-only run failed (its traceback is above)")
    return seconds[0]


def run_ingest(admin_url: str, name: str, pair, source: Path, *, defer_index: bool):
    import sqlalchemy as sa

    from dpr_pg.ingest import ingest

    url = fresh_database(admin_url, name, dim=DIM)
    engine = sa.create_engine(url)
    try:
        return ingest(engine, pair, source, collection="c", defer_index=defer_index)
    finally:
        engine.dispose()


def stage_line(report) -> str:  # noqa: ANN001
    values = {key: getattr(report, key, None) for key in STAGES}
    shown = ", ".join(f"{key.removesuffix('_seconds')} {value:.1f}" for key, value in values.items()
                      if value is not None)
    if not shown:
        return "      stages: not in this version's report"
    largest = max(v for v in values.values() if v is not None)
    wall = report.seconds - (report.index_seconds or 0.0)
    writers = getattr(report, "writers", None)
    return (f"      stages (busy s): {shown}; writers {writers}; wall {wall:.1f} s "
            f"= {wall / largest:.2f} x the largest stage" + (f"; index build {report.index_seconds:.1f} s"
                                                             if report.index_seconds else ""))


def bench(shape: str, device: str, n: int, admin_url: str, folder: Path, precision: str | None, batch: int,
          kept: bool) -> None:
    pair = load_pair(shape, device, folder, precision)
    rows = records(n, seed=7)
    chunks = chunks_of(rows)
    source = folder / f"{shape}-{n}.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    lengths = [len(ids) for ids in pair.passage.tokenizer([t for t, _ in chunks[:2000]],
                                                          [x for _, x in chunks[:2000]])["input_ids"]]
    print(f"\n{shape} pair on {device} ({pair.passage.precision}), {n} records -> {len(chunks)} chunks "
          f"(median {sorted(lengths)[len(lengths) // 2]} tokens), ingest batches of {batch}", flush=True)
    encoder_only(pair, chunks[:batch], batch)  # warm-up
    seconds = encoder_only(pair, chunks, batch)
    base_rate = len(chunks) / seconds
    print(f"  (a) encoder only                {base_rate:9.1f} chunks/s  ({seconds:.1f} s)", flush=True)
    runs = [("deferred", True)] + ([("kept", False)] if kept else [])
    reports = {}
    write_ms = {}
    for label, defer in runs:
        report = run_ingest(admin_url, f"bench_pipeline_{shape}_{device}_{label}", pair, source, defer_index=defer)
        assert report.inserted == len(chunks), report.as_dict()
        reports[label] = report
    # (a) again: on a shared machine the load drifts; the ratios are taken against the faster of the two.
    again = len(chunks) / encoder_only(pair, chunks, batch)
    print(f"  (a) encoder only, again         {again:9.1f} chunks/s; ratios below against "
          f"{max(base_rate, again):.1f}", flush=True)
    base_rate = max(base_rate, again)
    for label, report in reports.items():
        defer = label == "deferred"
        wall = report.seconds - (report.index_seconds or 0.0)
        rate, rate_all = report.passages / wall, report.passages / report.seconds
        letter = "b" if defer else "c"
        print(f"  ({letter}) ingest, index {label:9s} {rate:9.1f} chunks/s  = {rate / base_rate:.2f} x (a)"
              + (f"; with the index build {rate_all:.1f}/s = {rate_all / base_rate:.2f} x (a)" if defer else ""),
              flush=True)
        print(stage_line(report), flush=True)
        write_ms[label] = 1000 * report.write_seconds / report.inserted
    if len(write_ms) == 2:
        # The write stage with the index deferred is COPY + the Spanish tsvector + the GIN indexes; kept
        # adds the HNSW inserts. Per row, in writer wall time (several writers overlap).
        print(f"      write stage per row: {write_ms['deferred']:.2f} ms with the index deferred (tsvector, GIN, "
              f"COPY), {write_ms['kept']:.2f} ms kept: HNSW inserts add {write_ms['kept'] - write_ms['deferred']:.2f}"
              " ms a row", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,base")
    parser.add_argument("--tiny-n", type=int, default=4000, help="records for the tiny pair")
    parser.add_argument("--base-n", type=int, default=120, help="records for the BERT-base pair on the CPU")
    parser.add_argument("--cuda-n", type=int, default=8000,
                        help="records for the BERT-base pair on CUDA (8000: about 22k chunks, within the 120 s "
                             "that bench/gpu_check.sh gives this step)")
    parser.add_argument("--devices", default=None,
                        help="cpu, cuda or cpu,cuda (default: cuda where torch sees a GPU, else cpu)")
    parser.add_argument("--precision", default=None, help="encoder precision (default: the device's)")
    parser.add_argument("--no-kept", action="store_true", help="skip the index-kept ingest")
    args = parser.parse_args()

    import torch

    folder = Path(tempfile.mkdtemp(prefix="dpr_bench_pipeline_"))
    os.environ.setdefault("DPR_PG_HOME", str(folder / "home"))
    from dpr_pg.db.engine import embedded_url
    from dpr_pg.ingest.pipeline import ENCODER_BATCH

    admin_url = embedded_url()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); cuda: {torch.cuda.is_available()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    devices = (args.devices or ("cuda" if torch.cuda.is_available() else "cpu")).split(",")
    for device in devices:
        for shape in args.shapes.split(","):
            if device == "cuda" and shape == "tiny":
                continue
            n = args.tiny_n if shape == "tiny" else (args.cuda_n if device == "cuda" else args.base_n)
            bench(shape, device, n, admin_url, folder, args.precision, ENCODER_BATCH, not args.no_kept)


if __name__ == "__main__":
    main()
