"""Benchmark: how closely each precision mode agrees with fp32, on a pair with trained weights.

Random weights say how fast a mode is (bench/bench_encoders.py), not how much it moves the
neighbours of a trained encoder. This script builds the trained all-MiniLM-L6-v2 DPR pair
(``dpr-pg trained-models``, 384-d, 6 layers) and encodes real text with every mode of the device
(CPU: bf16, int8; GPU: fp16, bf16) and with fp32 on torch, the reference:

  - English: prose paragraphs of the Python standard library's docstrings, cut into passages of
    about 100 words; the questions are the first sentences of every third passage (so each has
    a gold passage, and its other nine neighbours are close calls);
  - Spanish: dpr_pg's own sample corpus (47 passages) and its 12 sample questions.

For each mode it prints the smallest cosine to fp32 over all passage and question vectors, the
mean top-10 agreement (the share of each question's 10 inner-product neighbours that fp32 also
returns) and the passages/s of that mode on this pair. The rule for a default: the fastest mode
with cosine >= 0.999 and top-10 agreement >= 0.99.

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_precision.py --passages 600
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dpr_pg import sample_corpus, sample_questions
from dpr_pg.encoders.precision import cpu_has_native_bf16, cpu_supports_bf16
from dpr_pg.encoders.pair import EncoderPair, make_trained_models

MODULES = (
    "argparse asyncio bisect calendar collections concurrent.futures configparser contextlib copy csv dataclasses "
    "datetime decimal difflib email.message enum fractions ftplib functools gettext gzip hashlib heapq hmac "
    "http.client http.cookies imaplib inspect io ipaddress itertools json locale logging lzma mailbox mimetypes "
    "multiprocessing numbers operator os pathlib pickle pprint queue random re sched secrets selectors shelve "
    "shutil signal smtplib socket sqlite3 ssl statistics string struct subprocess tarfile tempfile textwrap "
    "threading time timeit tokenize traceback types typing unittest urllib.parse urllib.request uuid warnings "
    "weakref xml.dom.minidom xml.etree.ElementTree zipfile zlib"
).split()


def docstring_paragraphs() -> list[str]:
    """Prose paragraphs of at least 30 words from the docstrings of standard-library modules, their
    classes, functions and methods, deduplicated."""
    seen: set[str] = set()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            objects = [module] + [value for _, value in sorted(vars(module).items())
                                  if (inspect.isclass(value) or inspect.isfunction(value))
                                  and getattr(value, "__module__", None) == module.__name__]
            objects += [member for cls in objects if inspect.isclass(cls)
                        for _, member in sorted(vars(cls).items()) if inspect.isfunction(member)]
            for value in objects:
                doc = inspect.getdoc(value) or ""
                for paragraph in re.split(r"\n\s*\n", doc):
                    if ">>>" in paragraph or "::" in paragraph or re.search(r"^\s{2,}\S", paragraph, re.M):
                        continue  # examples and code blocks
                    text = " ".join(paragraph.split())
                    if len(text.split()) >= 30 and text not in seen and sum(c.isalpha() for c in text) > 0.7 * len(text):
                        seen.add(text)
                        out.append(text)
    return out


def english_corpus(count: int) -> tuple[list[tuple[str, str]], list[str]]:
    """About ``count`` passages of ~100 words and one question per three passages."""
    passages: list[tuple[str, str]] = []
    for paragraph in docstring_paragraphs():
        words = paragraph.split()
        for start in range(0, len(words), 100):
            piece = words[start:start + 100]
            if len(piece) >= 30:
                passages.append((" ".join(piece[:4]), " ".join(piece)))
    passages = passages[:count]
    questions = []
    for _, text in passages[::3]:
        first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
        questions.append(" ".join(first.split()[:20]))
    return passages, questions


def spanish_corpus() -> tuple[list[tuple[str, str]], list[str]]:
    records = [json.loads(line) for line in sample_corpus().read_text(encoding="utf-8").splitlines()]
    questions = [json.loads(line)["question"] for line in sample_questions().read_text(encoding="utf-8").splitlines()]
    return [(r["title"], r["text"]) for r in records], questions


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top10_agreement(ref_p: np.ndarray, ref_q: np.ndarray, got_p: np.ndarray, got_q: np.ndarray) -> float:
    k = min(10, len(ref_p))
    ref = np.argsort(-(ref_q @ ref_p.T), axis=1)[:, :k]
    got = np.argsort(-(got_q @ got_p.T), axis=1)[:, :k]
    return float(np.mean([len(set(r) & set(g)) / k for r, g in zip(ref, got, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=600, help="English passages")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated modes (default: bf16,int8 on CPU, fp16,bf16 on GPU)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    wanted = (args.precisions or ("fp16,bf16" if on_gpu else "bf16,int8")).split(",")
    usable = {"fp16", "bf16"} if on_gpu else {"int8"} | ({"bf16"} if cpu_supports_bf16() else set())
    modes = [m for m in wanted if m in usable]
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; native CPU bf16 (AVX512_BF16/AMX): {cpu_has_native_bf16()}")

    corpora = {"English (stdlib docstrings)": english_corpus(args.passages), "Spanish (dpr_pg sample)": spanish_corpus()}
    with tempfile.TemporaryDirectory() as tmp:
        question_dir, passage_dir = (str(p) for p in make_trained_models(Path(tmp) / "trained"))
        common = {"device": device.type, "cache_size": 0, "runtime": "torch"}
        pairs = {"fp32": EncoderPair.load(question_dir, passage_dir, precision="fp32", **common)}
        for mode in modes:
            pairs[mode] = EncoderPair.load(question_dir, passage_dir, precision=mode, **common)
        print(f"trained pair: all-MiniLM-L6-v2 as DPR, {pairs['fp32'].dim}-d; reference: fp32 on torch, {device.type}")
        for corpus_name, (passages, questions) in corpora.items():
            print(f"\n{corpus_name}: {len(passages)} passages, {len(questions)} questions")
            print(f"{'mode':<6} {'min cosine':>11} {'mean cosine':>12} {'top-10 agree':>13} {'passages/s':>11}")
            vectors = {}
            for mode, pair in pairs.items():
                pair.passage.encode(passages[:8])  # warm-up
                started = time.perf_counter()
                got_p = pair.passage.encode(passages)
                rate = len(passages) / (time.perf_counter() - started)
                vectors[mode] = (got_p, pair.question.encode(questions), rate)
            ref_p, ref_q, _ = vectors["fp32"]
            for mode, (got_p, got_q, rate) in vectors.items():
                cosines = np.concatenate([cosine_rows(ref_p, got_p), cosine_rows(ref_q, got_q)])
                print(f"{mode:<6} {cosines.min():>11.5f} {cosines.mean():>12.5f} "
                      f"{top10_agreement(ref_p, ref_q, got_p, got_q):>13.3f} {rate:>11.1f}")
    print("\nrule: the fastest mode with min cosine >= 0.999 and top-10 agreement >= 0.99 may be a default")


if __name__ == "__main__":
    main()
