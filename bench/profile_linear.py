"""Why a question costs what it costs: a BERT-base pass at batch 1 is bound by reading its weights.

Cycles through 24 BERT-base feed-forward matrices (768 x 3072 fp32, 226 MB: more than any cache)
with 16 token rows, as one short question does, and prints the weight bytes read per second by:

  read       ``W.sum()``: how fast this machine streams the weights at all (the floor of any fp32 path)
  F.linear   what transformers' BERT runs on torch (MKL packs the weight matrix on every call)
  mkl packed torch's MKL linear on weights packed once (what inference compilers do)

A BERT-base encoder reads about 340 MB of fp32 weights per pass, so 340 MB divided by these rates
bounds a question's latency from below.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/profile_linear.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

BERT_BASE_WEIGHT_BYTES = 340e6


def rate(calls: list[Callable[[], object]], repeats: int) -> float:
    """Median weight bytes read per second over ``repeats`` rounds of all ``calls``."""
    for call in calls[:3]:
        call()
    rounds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for call in calls:
            call()
        rounds.append((time.perf_counter() - started) / len(calls))
    return 768 * 3072 * 4 / statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = [torch.randn(3072, 768) * 0.02 for _ in range(24)]
    bias = torch.zeros(3072)
    x = torch.randn(args.tokens, 768)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} token rows")
    with torch.inference_mode():
        figures = {
            "read": rate([lambda w=w: w.sum() for w in weights], args.repeats),
            "F.linear": rate([lambda w=w: torch.nn.functional.linear(x, w, bias) for w in weights], args.repeats),
        }
        packed = [torch.ops.mkl._mkl_reorder_linear_weight(w, args.tokens) for w in weights]
        figures["mkl packed"] = rate([lambda p=p, w=w: torch.ops.mkl._mkl_linear(x, p, w, bias, args.tokens)
                                      for p, w in zip(packed, weights, strict=True)], args.repeats)
    for name, bytes_per_s in figures.items():
        print(f"{name:<11} {bytes_per_s / 1e9:5.1f} GB/s  -> a BERT-base pass reads its weights in "
              f"{BERT_BASE_WEIGHT_BYTES / bytes_per_s * 1000:5.1f} ms")
    print(f"F.linear / read: {figures['F.linear'] / figures['read']:.2f}, "
          f"mkl packed / F.linear: {figures['mkl packed'] / figures['F.linear']:.2f}")


if __name__ == "__main__":
    main()
