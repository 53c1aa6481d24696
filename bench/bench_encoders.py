"""Benchmark: dpr_pg's passage/question encoding vs the model card's naive loop, per precision mode.

A BERT-base-shaped DPR pair with random weights (the same compute as the IIC models) encodes
Spanish passages of 30 to 300 words, on the CPU or a CUDA GPU (``--device``, default: cuda when
there is one). In one run it measures:

  (a) the naive loop from the model card: batches of 32 in input order, padded to the longest,
      fp32, on the same device;
  (b) dpr_pg's encoders (length-sorted dynamic batches) in each precision mode on torch (CPU:
      fp32, bf16, int8; GPU: fp32, fp16, bf16), in fp32 on CPU also on ONNX Runtime, and on a
      GPU the question side also without CUDA graphs ("eager");
  (c) dpr_pg's default for the device, loaded without options (what users get);

and prints passages/s, question-encode p50 and p99, the ratios to (a), and the agreement of
each mode with dpr_pg's fp32 on torch (cosine, and top-10 inner-product neighbours of the
questions among the passages). Random weights judge speed, not agreement: for that see
bench/bench_precision.py, which uses a trained pair.

Run it alone (other engineers' benchmarks take the same lock):

    flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_encoders.py --precisions fp32,bf16,int8
    .venv/bin/python bench/bench_encoders.py --device cuda --passages 4096 --questions 200
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    DPRConfig,
    DPRContextEncoder,
    DPRContextEncoderTokenizerFast,
    DPRQuestionEncoder,
    DPRQuestionEncoderTokenizerFast,
)

from dpr_pg.encoders.loading import quiet_progress
from dpr_pg.encoders.onnx_runtime import onnx_available
from dpr_pg.encoders.precision import cpu_has_native_bf16, cpu_supports_bf16
from dpr_pg.encoders.tiny import spanish_sentences, tiny_vocab
from dpr_pg.encoders.pair import EncoderPair


def make_base_models(directory: Path, *, seed: int, init_std: float) -> tuple[str, str]:
    """BERT-base-shaped DPR pair (12 layers, hidden 768) with random weights, Spanish tokenizer.

    BERT's own init (std 0.02) maps all passages to nearly one vector (mean pairwise cosine
    0.994), so any rounding reorders the neighbours; std 0.06 spreads them (about 0.93) as a
    trained encoder does. The compute is the same either way.
    """
    vocab = tiny_vocab()
    config = DPRConfig(vocab_size=len(vocab), pad_token_id=vocab["[PAD]"], initializer_range=init_std)
    torch.manual_seed(seed)
    paths = []
    with quiet_progress():
        for name, model_class, tokenizer_class in (
            ("question", DPRQuestionEncoder, DPRQuestionEncoderTokenizerFast),
            ("passage", DPRContextEncoder, DPRContextEncoderTokenizerFast),
        ):
            target = directory / name
            model_class(config).save_pretrained(target)
            tokenizer_class(vocab=dict(vocab), do_lower_case=True, strip_accents=False,
                            model_max_length=512).save_pretrained(target)
            paths.append(str(target))
    return paths[0], paths[1]


def make_passages(count: int, *, seed: int) -> list[tuple[str, str]]:
    """Spanish passages whose lengths spread uniformly from 30 to 300 words, in random order."""
    rng = random.Random(seed)
    words = [w for s in spanish_sentences() if not s.startswith("¿") for w in s.split()]
    passages = []
    for i in range(count):
        length = rng.randint(30, 300)
        start = rng.randrange(len(words))
        body = [words[(start + j) % len(words)] for j in range(length)]
        passages.append((f"Documento {i}", " ".join(body)))
    return passages


def make_questions(count: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    stems = [s for s in spanish_sentences() if s.startswith("¿")]
    words = [w for s in spanish_sentences() for w in s.split() if w.isalpha()]
    return [f"{rng.choice(stems)[:-1]} {rng.choice(words)} {rng.choice(words)}?" for _ in range(count)]


def naive_passages(model, tokenizer, passages: list[tuple[str, str]]) -> np.ndarray:
    """The model card's loop: input order, batches of 32, padding to the longest, fp32, on the model's device."""
    out = []
    with torch.no_grad():
        for start in range(0, len(passages), 32):
            chunk = passages[start:start + 32]
            features = tokenizer([t for t, _ in chunk], [x for _, x in chunk], padding=True, truncation=True,
                                 max_length=512, return_tensors="pt").to(model.device)
            out.append(model(**features).pooler_output.cpu().numpy())
    return np.concatenate(out)


def naive_question(model, tokenizer, question: str) -> np.ndarray:
    with torch.no_grad():
        return model(**tokenizer(question, return_tensors="pt").to(model.device)).pooler_output[0].cpu().numpy()


def timed(func, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = func(*args)
    return time.perf_counter() - start, result


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top10_agreement(ref_p: np.ndarray, ref_q: np.ndarray, got_p: np.ndarray, got_q: np.ndarray) -> float:
    ref = np.argsort(-(ref_q @ ref_p.T), axis=1)[:, :10]
    got = np.argsort(-(got_q @ got_p.T), axis=1)[:, :10]
    return float(np.mean([len(set(r) & set(g)) / 10 for r, g in zip(ref, got, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=64)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="passage runs per contender (median)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated modes (default: fp32,bf16,int8 on CPU, fp32,fp16,bf16 on GPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-std", type=float, default=0.06, help="std of the random weights")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    passages = make_passages(args.passages, seed=args.seed)
    questions = make_questions(args.questions, seed=args.seed + 1)
    wanted = (args.precisions or ("fp32,fp16,bf16" if on_gpu else "fp32,bf16,int8")).split(",")
    usable = {"fp32", "fp16", "bf16"} if on_gpu else {"fp32", "int8"} | ({"bf16"} if cpu_supports_bf16() else set())
    precisions = ["fp32"] + [p for p in wanted if p != "fp32" and p in usable]
    where = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; CPU bf16: oneDNN {cpu_supports_bf16()}, native "
          f"(AVX512_BF16/AMX) {cpu_has_native_bf16()}")

    with tempfile.TemporaryDirectory() as tmp:
        question_dir, passage_dir = make_base_models(Path(tmp), seed=args.seed, init_std=args.init_std)
        common = {"device": device.type, "cache_size": 0, "batch_size": args.batch_size, "cache_dir": tmp}
        reference = EncoderPair.load(question_dir, passage_dir, precision="fp32", runtime="torch",
                                     cuda_graphs=False, **common)
        lengths = [len(ids) for ids in reference.passage.tokenizer(
            [t for t, _ in passages], [x for _, x in passages])["input_ids"]]
        print(f"{len(passages)} passages, {min(lengths)}-{max(lengths)} tokens (median {int(np.median(lengths))}), "
              f"{len(questions)} timed questions, {args.repeats} repeats, contenders interleaved (medians)")

        # (a) the naive loop runs on the very weights of dpr_pg's fp32 model, on the same device.
        contenders = {"naive loop (fp32)": (
            lambda ps: naive_passages(reference.passage.model, reference.passage.tokenizer, ps),
            lambda q: naive_question(reference.question.model, reference.question.tokenizer, q),
        )}
        variants = [("fp32", "torch", False)] + [("fp32", "onnx", False)] * (onnx_available() and not on_gpu) + [
            (precision, "torch", None) for precision in precisions if precision != "fp32"]
        if on_gpu:
            variants.append((None, "torch", False))  # the default without CUDA graphs: what they save
        for precision, runtime, graphs in variants:
            if (precision, runtime, graphs) == ("fp32", "torch", False):
                pair, name = reference, "dpr_pg fp32 torch"
            else:
                pair = EncoderPair.load(question_dir, passage_dir, precision=precision, runtime=runtime,
                                        cuda_graphs=graphs, **common)
                name = (f"dpr_pg {pair.passage.precision} {runtime}" if precision else "dpr_pg default")
                name += " eager" if graphs is False and on_gpu else ""
            contenders[name] = (pair.passage.encode, pair.question.encode)
        default = EncoderPair.load(question_dir, passage_dir, **{**common, "batch_size": None})
        contenders["dpr_pg default"] = (default.passage.encode, default.question.encode)
        print(f"default: passages {default.passage.precision} on {default.passage.runtime} "
              f"(batch {default.passage.batch_size}), questions {default.question.precision} on "
              f"{default.question.runtime}{' with CUDA graphs' if default.question.cuda_graphs else ''}")
        for encode_passages, encode_question in contenders.values():  # warm-up
            encode_passages(passages[:4])
            encode_question(questions[0])

        # Round-robin, so that load from other processes on a shared machine hits every contender alike.
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        question_ms: dict[str, list[float]] = {name: [] for name in contenders}
        vectors_p: dict[str, np.ndarray] = {}
        vectors_q: dict[str, list[np.ndarray]] = {name: [] for name in contenders}
        for repeat in range(args.repeats):
            for name, (encode_passages, _) in contenders.items():
                elapsed, vectors = timed(encode_passages, passages)
                seconds[name].append(elapsed)
                vectors_p.setdefault(name, vectors)
            print(f"repeat {repeat + 1}: " + ", ".join(
                f"{name} {len(passages) / seconds[name][-1]:.2f}/s" for name in contenders), flush=True)
        for question in questions:
            for name, (_, encode_question) in contenders.items():
                elapsed, vector = timed(encode_question, question)
                question_ms[name].append(elapsed * 1000)
                vectors_q[name].append(vector)

    ref_p, ref_q = vectors_p["dpr_pg fp32 torch"], np.stack(vectors_q["dpr_pg fp32 torch"])
    unit = ref_p / np.linalg.norm(ref_p, axis=1, keepdims=True)
    print(f"mean pairwise cosine of the fp32 passage vectors: "
          f"{(unit @ unit.T)[np.triu_indices(len(unit), 1)].mean():.3f} (agreement is measured against dpr_pg fp32; "
          "the naive row is the floor: same weights, other padding)")
    naive_rate = len(passages) / statistics.median(seconds["naive loop (fp32)"])
    naive_p50 = statistics.median(question_ms["naive loop (fp32)"])
    print()
    print(f"{'contender':<26} {'passages/s':>10} {'x naive':>8} {'question p50 ms':>16} {'x naive':>8} "
          f"{'p99 ms':>8} {'min cosine':>11} {'top-10 agree':>13}")
    for name in contenders:
        rate = len(passages) / statistics.median(seconds[name])
        p50 = statistics.median(question_ms[name])
        p99 = float(np.percentile(question_ms[name], 99))
        got_p, got_q = vectors_p[name], np.stack(vectors_q[name])
        cos = min(cosine_rows(ref_p, got_p).min(), cosine_rows(ref_q, got_q).min())
        agree = top10_agreement(ref_p, ref_q, got_p, got_q)
        print(f"{name:<26} {rate:>10.2f} {rate / naive_rate:>8.2f} {p50:>16.2f} {naive_p50 / p50:>8.2f} "
              f"{p99:>8.2f} {cos:>11.5f} {agree:>13.3f}")


if __name__ == "__main__":
    main()
