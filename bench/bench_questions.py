"""Benchmark: question latency, one at a time and from many concurrent callers.

A BERT-base-shaped DPR question encoder with random weights (the IIC models' compute) on the CPU
or a CUDA GPU (``--device``, default: cuda when there is one). In one run:

  (1) one question per call, the cache off, contenders round-robin: p50 and p99 per contender.
      GPU: fp32 / fp16 / bf16 eager against fp16 / bf16 with CUDA graphs (dpr_pg's default: fp16
      with graphs); CPU: fp32 on torch and on ONNX Runtime, bf16, and the default for this CPU.
  (2) ``--callers`` concurrent callers, each asking ``--per-caller`` distinct questions one after
      the other, through the HTTP service's micro-batcher (dpr_pg.service.batching.QuestionBatcher,
      batches of at most 32) against the same callers each calling the encoder alone (batches
      of 1, serialised on one encoder thread as in the service): questions/s and per-question
      p50/p99.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_questions.py
    .venv/bin/python bench/bench_questions.py --device cuda --questions 500 --callers 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoders import make_base_models, make_questions  # noqa: E402

from dpr_pg.encoders.onnx_runtime import onnx_available  # noqa: E402
from dpr_pg.encoders.precision import cpu_supports_bf16  # noqa: E402
from dpr_pg.encoders.pair import QuestionEncoder  # noqa: E402
from dpr_pg.service.batching import QuestionBatcher  # noqa: E402


def percentiles(ms: list[float]) -> tuple[float, float]:
    return statistics.median(ms), float(np.percentile(ms, 99))


async def callers(encoder: QuestionEncoder, questions: list[str], *, count: int, per_caller: int,
                  max_batch: int) -> tuple[float, list[float], list[int]]:
    """Seconds for ``count`` callers to get ``per_caller`` questions each; per-question ms; batch sizes."""
    sizes: list[int] = []
    batcher = QuestionBatcher(encoder, max_batch=max_batch, max_wait=0.002,
                              on_batch=lambda size, _seconds: sizes.append(size))
    latencies: list[float] = []

    async def caller(index: int) -> None:
        for j in range(per_caller):
            question = questions[(index * per_caller + j) % len(questions)]
            started = time.perf_counter()
            await batcher.encode([question])
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(count)))
    elapsed = time.perf_counter() - started
    await batcher.close()
    return elapsed, latencies, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--questions", type=int, default=None, help="timed single questions per contender")
    parser.add_argument("--callers", type=int, default=None, help="concurrent callers in (2)")
    parser.add_argument("--per-caller", type=int, default=None, help="questions each caller asks in (2)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    count = args.questions or (500 if on_gpu else 20)
    n_callers = args.callers or (32 if on_gpu else 8)
    per_caller = args.per_caller or (16 if on_gpu else 2)
    # Distinct questions everywhere: the cache is off, but distinct texts also vary the lengths.
    questions = make_questions(max(count, n_callers * per_caller), seed=3)
    questions = [f"{q[:-1]} {i}?" for i, q in enumerate(questions)]
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")

    with tempfile.TemporaryDirectory() as tmp:
        question_dir, _ = make_base_models(Path(tmp), seed=0, init_std=0.06)
        common = {"device": device.type, "cache_size": 0, "cache_dir": tmp}
        if on_gpu:
            variants = {f"{p} eager": {"precision": p, "cuda_graphs": False} for p in ("fp32", "fp16", "bf16")}
            variants |= {f"{p} CUDA graphs": {"precision": p} for p in ("fp16", "bf16")}
        else:
            variants = {"fp32 torch": {"precision": "fp32", "runtime": "torch"}}
            if onnx_available():
                variants["fp32 onnx"] = {"precision": "fp32", "runtime": "onnx"}
            if cpu_supports_bf16():
                variants["bf16 torch"] = {"precision": "bf16"}
        started = time.perf_counter()
        default = QuestionEncoder.load(question_dir, **common)
        load_seconds = time.perf_counter() - started
        encoders = {name: QuestionEncoder.load(question_dir, **common, **options) for name, options in variants.items()}
        encoders["dpr_pg default"] = default
        print(f"default: {default!r}; load {load_seconds:.1f} s (CUDA graphs captured at load: "
              f"{default._graphs.captured if default.cuda_graphs else 0})")
        for encoder in encoders.values():
            encoder.warm_up()
            for question in questions[:5]:
                encoder.encode(question)

        # (1) one question per call, round-robin
        ms: dict[str, list[float]] = {name: [] for name in encoders}
        for question in questions[:count]:
            for name, encoder in encoders.items():
                started = time.perf_counter()
                encoder.encode(question)
                ms[name].append((time.perf_counter() - started) * 1000)
        tokens = [len(ids) for ids in default.tokenizer(questions[:count])["input_ids"]]
        print(f"\n(1) one question per call: {count} questions of {min(tokens)}-{max(tokens)} tokens, "
              f"contenders round-robin")
        baseline = next(iter(encoders))
        base_p50 = percentiles(ms[baseline])[0]
        print(f"{'contender':<20} {'p50 ms':>8} {'p99 ms':>8} {'x ' + baseline:>16}")
        for name in encoders:
            p50, p99 = percentiles(ms[name])
            print(f"{name:<20} {p50:>8.2f} {p99:>8.2f} {base_p50 / p50:>16.2f}")

        # (2) concurrent callers: micro-batched against one at a time
        total = n_callers * per_caller
        print(f"\n(2) {n_callers} concurrent callers x {per_caller} questions each ({total} questions), "
              f"the default encoder")
        print(f"{'mode':<28} {'questions/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>11}")
        rates = {}
        for name, max_batch in (("one at a time (batch 1)", 1), ("micro-batched (at most 32)", 32)):
            elapsed, latencies, sizes = asyncio.run(callers(default, questions, count=n_callers,
                                                            per_caller=per_caller, max_batch=max_batch))
            rates[name] = total / elapsed
            p50, p99 = percentiles(latencies)
            print(f"{name:<28} {rates[name]:>12.1f} {p50:>8.2f} {p99:>8.2f} {statistics.fmean(sizes):>11.1f}")
        one, many = rates.values()
        print(f"micro-batching: {many / one:.2f}x the questions/s of one at a time")


if __name__ == "__main__":
    main()
