"""What a search needs of an encoder pair: the question encoder and the pair's fingerprint.

A search never encodes passages, so the passage encoder's weights are not read: its config and
tokenizer give the fingerprint. And a model-loading command spends most of its start in imports:
torch and transformers' modelling code take 3-4 s on this project's CPU, before any weight is read
(bench/bench_startup.py). So on CPU in fp32, once a question encoder has been exported to ONNX (the
first time, on torch), :func:`load_question_side` encodes from the cached graph and the tokenizer
kept beside it with onnxruntime and tokenizers alone, and takes the fingerprint from its own cache.
Both caches are keyed by the models' resolved revisions, so a changed model misses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from dpr_pg import config
from dpr_pg.encoders.fingerprint import POOLING, EncoderFingerprint, vocab_hash
from dpr_pg.encoders.loading import load_light, output_dim, resolve_source, token_limit
from dpr_pg.encoders.onnx_runtime import OnnxRunner, cache_facts, cached_folder
from dpr_pg.encoders.pair import QuestionEncoder, _check_same_dim, check_options
from dpr_pg.errors import EncoderError

BATCH_SIZE = 16  # as the torch path on CPU: sorted by length, small batches pad little
_GPU_SIGNS = ("/dev/nvidiactl", "/proc/driver/nvidia/version")


class OnnxQuestionEncoder:
    """A question encoder run from its cached ONNX graph and tokenizer: no torch, no transformers.

    It encodes as :class:`dpr_pg.encoders.pair.QuestionEncoder` does on ONNX Runtime (the same graph,
    the same tokenizer), without the question cache.

    Example:
        >>> side = load_question_side("/tmp/tiny/question", "/tmp/tiny/passage")  # doctest: +SKIP
        >>> side.question.encode("¿Dónde está Sevilla?").shape                    # doctest: +SKIP
        (768,)
    """

    kind = "question"
    runtime = "onnx"
    precision = "fp32"

    def __init__(self, folder: Path, settings: dict[str, Any], threads: int | None = None) -> None:
        self.name = str(settings["name"])
        self.revision = settings["revision"]
        self.dim = int(settings["dim"])
        self.max_length = int(settings["max_length"])
        self.pad_id = int(settings["pad_id"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.runner = OnnxRunner(folder / "model.onnx", threads)

    def __repr__(self) -> str:
        return f"OnnxQuestionEncoder({self.name!r}, runtime='onnx', dim={self.dim})"

    def encode(self, questions: str | Sequence[str]) -> np.ndarray:
        """``(dim,)`` float32 for one question, ``(n, dim)`` for a list."""
        single = isinstance(questions, str)
        items = [questions] if single else list(questions)
        for item in items:
            if not isinstance(item, str):
                raise EncoderError(f"expected questions as str, not {type(item).__name__}: {item!r}")
        ids = self._token_ids(items)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        order = np.argsort([-len(row) for row in ids], kind="stable")
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            width = len(ids[batch[0]])
            input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, index in enumerate(batch):
                input_ids[row, :len(ids[index])] = ids[index]
                mask[row, :len(ids[index])] = 1
            out[batch] = self.runner.run(input_ids, mask, np.zeros_like(input_ids))  # one segment: types 0
        return out[0] if single else out

    def _token_ids(self, questions: list[str]) -> list[list[int]]:
        """Token ids as the transformers tokenizer gives them: special tokens, cut at max_length from the end."""
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(questions)]
        long = [i for i, row in enumerate(ids) if len(row) > self.max_length]
        if long:
            self.tokenizer.enable_truncation(self.max_length, strategy="longest_first", direction="right")
            try:
                for i, encoding in zip(long, self.tokenizer.encode_batch([questions[i] for i in long]), strict=True):
                    ids[i] = encoding.ids
            finally:
                self.tokenizer.no_truncation()
        return ids


@dataclass
class QuestionSide:
    """The question encoder of a pair and the pair's fingerprint: what a search needs.

    ``search(engine, "...", encoder=side)`` takes it where it takes an ``EncoderPair``.
    """

    question: Any  # QuestionEncoder, or OnnxQuestionEncoder from the cache
    fingerprint: EncoderFingerprint

    @property
    def dim(self) -> int:
        return self.fingerprint.dim


def load_question_side(
    question_model: str | None = None,
    passage_model: str | None = None,
    *,
    device: str | None = None,
    precision: str | None = None,
    runtime: str | None = None,
    question_revision: str | None = None,
    passage_revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> QuestionSide:
    """The question encoder and the pair's fingerprint, without the passage encoder's weights.

    Names and options resolve as in :meth:`EncoderPair.load`. On CPU in fp32 with onnxruntime
    (``runtime`` None or "onnx"), the question encoder runs on ONNX Runtime: from the cache without
    importing torch when it was exported before, else loaded on torch and exported now (kept for the
    next process). Otherwise it is the torch :class:`QuestionEncoder`.

    Example:
        >>> side = load_question_side()  # doctest: +SKIP
        >>> search(engine, "¿Quién pintó el Guernica?", encoder=side).plan.path  # doctest: +SKIP
        'hnsw'
    """
    q_name, p_name = config.question_model(question_model), config.passage_model(passage_model)
    folder = Path(config.cache_dir(cache_dir))
    onnx_wanted = (runtime in (None, "auto", "onnx") and precision in (None, "auto", "fp32")
                   and device in (None, "cpu") and (device == "cpu" or not _gpu_possible())
                   and all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "tokenizers")))
    if onnx_wanted:
        q_source, q_revision, *_ = resolve_source("question", q_name, question_revision)
        p_source, p_revision, *_ = resolve_source("passage", p_name, passage_revision)
        cached = _from_cache(folder, q_source, q_revision, p_source, p_revision)
        if cached is not None:
            return cached

    check_options(device=device, precision=precision, runtime=runtime)
    question = QuestionEncoder.load(q_name, revision=question_revision, device=device, precision=precision,
                                    runtime=runtime, cache_dir=folder)
    if question.runtime == "onnx":
        question.warm_up()  # exports the graph now, with its tokenizer, for the next process
    p_config, p_tokenizer, p_source, p_revision = load_light("passage", p_name, passage_revision)
    _check_same_dim(question.name, question.dim, p_source, output_dim(p_config))
    fingerprint = EncoderFingerprint(
        question_model=question.name, question_revision=question.revision, passage_model=p_source,
        passage_revision=p_revision, tokenizer_hash=vocab_hash(question.tokenizer.get_vocab(), p_tokenizer.get_vocab()),
        dim=output_dim(p_config), max_length=token_limit(p_config, p_tokenizer), pooling=POOLING)
    _remember(folder, fingerprint, question.max_length)
    return QuestionSide(question, fingerprint)


def _gpu_possible() -> bool:
    """Whether CUDA may be there (then torch decides the device); read without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path(sign).exists() for sign in _GPU_SIGNS)


def _record(folder: Path, q_source: str, q_revision: str | None, p_source: str, p_revision: str | None) -> Path:
    key = hashlib.sha256(json.dumps([q_source, q_revision, p_source, p_revision]).encode("utf-8")).hexdigest()[:32]
    return folder / "fingerprints" / f"{key}.json"


def _remember(folder: Path, fingerprint: EncoderFingerprint, question_max_length: int) -> None:
    if fingerprint.question_revision is None or fingerprint.passage_revision is None:
        return  # nothing names these weights: never reuse them
    record = _record(folder, fingerprint.question_model, fingerprint.question_revision, fingerprint.passage_model,
                     fingerprint.passage_revision)
    with contextlib.suppress(OSError):  # a read-only cache only costs the slow path next time
        record.parent.mkdir(parents=True, exist_ok=True)
        staging = record.with_name(f".{record.name}.{os.getpid()}")
        staging.write_text(json.dumps({"fingerprint": asdict(fingerprint), "question_max_length": question_max_length},
                                      sort_keys=True, indent=1), encoding="utf-8")
        os.replace(staging, record)


def _from_cache(folder: Path, q_source: str, q_revision: str | None, p_source: str,
                p_revision: str | None) -> QuestionSide | None:
    """The side from the caches, or None when either is missing (or unreadable)."""
    if q_revision is None or p_revision is None:
        return None
    try:
        kept = json.loads(_record(folder, q_source, q_revision, p_source, p_revision).read_text(encoding="utf-8"))
        fingerprint = EncoderFingerprint(**kept["fingerprint"])
        facts = cache_facts(kind="question", source=q_source, revision=q_revision,
                            max_length=int(kept["question_max_length"]))
        graph = cached_folder(folder, facts) if facts else None
        if graph is None or not all((graph / name).is_file() for name in ("model.onnx", "tokenizer.json",
                                                                           "encoder.json")):
            return None
        settings = json.loads((graph / "encoder.json").read_text(encoding="utf-8"))
        if (settings["name"], settings["revision"]) != (q_source, q_revision):
            return None
        return QuestionSide(OnnxQuestionEncoder(graph, settings), fingerprint)
    except Exception:  # unreadable records, or a graph onnxruntime cannot read: the slow path rebuilds them
        return None
