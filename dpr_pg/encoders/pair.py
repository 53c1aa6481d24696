"""DPR question and passage encoders, modelled on sentence-transformers' ``encode()``.

A list goes in and a float32 array ``(n, dim)`` comes out; a single question (or a single
``(title, text)`` passage) gives a single vector ``(dim,)``. Inputs are sorted by token length,
batched with dynamic padding, and returned in input order.

torch and transformers are imported lazily: ``import dpr_pg`` stays light.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dpr_pg import config
from dpr_pg.encoders.fingerprint import (
    POOLING,
    EncoderFingerprint,
    check_encoder,
    check_table_encoder,
    register_encoder,
    vocab_hash,
)
from dpr_pg.encoders.files import folder_parts
from dpr_pg.encoders.loading import load_light, load_parts, output_dim, resolve_source, token_limit
from dpr_pg.encoders.batching import EncodeResult, BatchingEncoder, _default_device
from dpr_pg.encoders.onnx_runtime import resolve_runtime
from dpr_pg.encoders.precision import PRECISIONS, resolve_precision
from dpr_pg.encoders.tiny import make_tiny_models
from dpr_pg.encoders.trained import make_trained_models
from dpr_pg.errors import EncoderError

__all__ = [
    "PRECISIONS",
    "CacheInfo",
    "EncodeResult",
    "EncoderFingerprint",
    "EncoderPair",
    "PassageEncoder",
    "PassageTokens",
    "QuestionEncoder",
    "check_encoder",
    "check_options",
    "check_table_encoder",
    "fingerprint_of",
    "make_tiny_models",
    "make_trained_models",
    "register_encoder",
]

DEFAULT_CACHE_SIZE = 4096


class CacheInfo(NamedTuple):
    """Question cache statistics (like :func:`functools.lru_cache`'s)."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class QuestionEncoder(BatchingEncoder):
    """Encodes questions; repeated questions come from an LRU cache.

    Example:
        >>> encoder = QuestionEncoder.load("/tmp/tiny/question")          # doctest: +SKIP
        >>> encoder.encode("¿Quién pintó el Guernica?").shape             # doctest: +SKIP
        (768,)
    """

    kind = "question"

    def __init__(self, model: Any, tokenizer: Any, *, cache_size: int = DEFAULT_CACHE_SIZE, **options: Any) -> None:
        super().__init__(model, tokenizer, **options)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @classmethod
    def load(cls, name: str | None = None, *, revision: str | None = None, **options: Any) -> QuestionEncoder:
        """Load by Hub id or folder: ``name`` > ``DPR_PG_QUESTION_MODEL`` > the IIC default.

        Example:
            >>> QuestionEncoder.load("/tmp/tiny/question", precision="fp32")  # doctest: +SKIP
        """
        chosen = config.question_model(name)
        model, tokenizer, source, resolved = load_parts("question", chosen, revision)
        return cls(model, tokenizer, name=source, revision=resolved, **options)

    def encode(self, questions: str | Sequence[str]) -> np.ndarray:
        """``(dim,)`` float32 for one question, ``(n, dim)`` for a list.

        Example:
            >>> encoder.encode(["¿Qué es la insulina?", "¿Dónde está Sevilla?"]).shape  # doctest: +SKIP
            (2, 768)
        """
        single = isinstance(questions, str)
        items = [questions] if single else list(questions)
        for item in items:
            if not isinstance(item, str):
                raise EncoderError(f"expected questions as str, not {type(item).__name__}: {item!r}")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, question in enumerate(items):
                cached = self._cache.get(question) if self.cache_size else None
                if cached is None:
                    missing.setdefault(question, []).append(i)
                else:
                    self._cache.move_to_end(question)
                    self._hits += 1
                    out[i] = cached
            self._misses += len(missing)
        if missing:
            texts = list(missing)
            fresh = self._encode(texts, None).embeddings
            with self._lock:
                for question, vector in zip(texts, fresh, strict=True):
                    out[missing[question]] = vector
                    if self.cache_size:
                        self._cache[question] = vector
                        self._cache.move_to_end(question)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out[0] if single else out

    def cached(self, question: str) -> np.ndarray | None:
        """The cached vector of ``question`` (counted as a hit), or None without encoding anything.

        A server answers cached questions at once instead of queueing them for an encoder batch.

        Example:
            >>> encoder.cached("¿Dónde está Sevilla?") is None  # doctest: +SKIP
            True
        """
        if not self.cache_size or not isinstance(question, str):
            return None
        with self._lock:
            vector = self._cache.get(question)
            if vector is not None:
                self._cache.move_to_end(question)
                self._hits += 1
            return vector

    def cache_info(self) -> CacheInfo:
        """Hits, misses, max size and current size of the question cache."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, self.cache_size, len(self._cache))

    def cache_clear(self) -> None:
        """Forget every cached question and reset the statistics."""
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0


Passage = tuple[str, str]


class PassageTokens(NamedTuple):
    """Token ids and token type ids per passage, and the indices of the passages cut at ``max_length``."""

    ids: list[list[int]]
    types: list[list[int]]
    truncated: list[int]


class PassageEncoder(BatchingEncoder):
    """Encodes ``(title, text)`` passages the way DPR's context encoder expects.

    Passages longer than ``max_length`` tokens are cut (the title is kept) and counted in
    :attr:`last_truncated`; :meth:`encode_result` also says which ones.

    Example:
        >>> encoder = PassageEncoder.load("/tmp/tiny/passage")                      # doctest: +SKIP
        >>> encoder.encode([("Sevilla", "Sevilla está a orillas del Guadalquivir.")]).shape  # doctest: +SKIP
        (1, 768)
    """

    kind = "passage"

    @classmethod
    def load(cls, name: str | None = None, *, revision: str | None = None, **options: Any) -> PassageEncoder:
        """Load by Hub id or folder: ``name`` > ``DPR_PG_PASSAGE_MODEL`` > the IIC default.

        Example:
            >>> PassageEncoder.load("/tmp/tiny/passage", precision="int8")  # doctest: +SKIP
        """
        chosen = config.passage_model(name)
        model, tokenizer, source, resolved = load_parts("passage", chosen, revision)
        return cls(model, tokenizer, name=source, revision=resolved, **options)

    def encode_result(self, passages: Sequence[Passage] | Passage) -> EncodeResult:
        """Embeddings ``(n, dim)`` in input order and the indices of truncated passages.

        Example:
            >>> encoder.encode_result([("", "texto " * 2000)]).truncated  # doctest: +SKIP
            [0]
        """
        return self.embed(self.tokenize(passages))

    def tokenize(self, passages: Sequence[Passage] | Passage) -> PassageTokens:
        """Token ids of ``(title, text)`` passages, cut at ``max_length``: the CPU half of :meth:`encode_result`.

        The ingest tokenizes on one thread while :meth:`embed` keeps the device busy on another.

        Example:
            >>> encoder.embed(encoder.tokenize([("Sevilla", "Está en Andalucía.")])).embeddings.shape  # doctest: +SKIP
            (1, 768)
        """
        items = [passages] if _is_passage(passages) else list(passages)  # type: ignore[list-item]
        for item in items:
            if not _is_passage(item):
                raise EncoderError(f"expected passages as (title, text) pairs of str, not {item!r}")
        if not items:
            return PassageTokens([], [], [])
        ids, types, truncated = self._tokenize([title for title, _ in items], [text for _, text in items])
        return PassageTokens(ids, types, truncated)

    def embed(self, tokens: PassageTokens) -> EncodeResult:
        """Embeddings ``(n, dim)`` of tokenized passages, in their order: the device half of :meth:`encode_result`.

        A batch that runs out of device memory is halved and encoded again; no passage is dropped.
        """
        result = EncodeResult(self._embed(tokens.ids, tokens.types), list(tokens.truncated))
        self.last_truncated = len(result.truncated)
        return result

    def encode(self, passages: Sequence[Passage] | Passage) -> np.ndarray:
        """``(n, dim)`` float32 for a list of ``(title, text)``, ``(dim,)`` for one pair.

        Example:
            >>> encoder.encode(("Sevilla", "Está en Andalucía.")).shape  # doctest: +SKIP
            (768,)
        """
        result = self.encode_result(passages)
        return result.embeddings[0] if _is_passage(passages) else result.embeddings


def _is_passage(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(part, str) for part in value)


@dataclass
class EncoderPair:
    """A question encoder and a passage encoder that belong together, with their fingerprint.

    Example:
        >>> pair = EncoderPair.load("/tmp/tiny/question", "/tmp/tiny/passage")  # doctest: +SKIP
        >>> pair.question.encode("¿Qué es el ADN?") @ pair.passage.encode(("ADN", "..."))  # doctest: +SKIP
    """

    question: QuestionEncoder
    passage: PassageEncoder

    def __post_init__(self) -> None:
        _check_same_dim(self.question.name, self.question.dim, self.passage.name, self.passage.dim)

    @classmethod
    def load(
        cls,
        question_model: str | None = None,
        passage_model: str | None = None,
        *,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        question_revision: str | None = None,
        passage_revision: str | None = None,
        runtime: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cuda_graphs: bool | None = None,
    ) -> EncoderPair:
        """Load both encoders. Names: argument > ``DPR_PG_*_MODEL`` > the IIC Spanish defaults.

        ``precision`` is one of :data:`PRECISIONS`; None picks the default for the device
        (see docs/encoders.md). ``runtime`` is ``"torch"`` or ``"onnx"`` for both sides; None
        runs the question encoder on ONNX Runtime on CPU in fp32 when onnxruntime is installed
        (same vectors, 2.4x faster per question) and everything else on torch. The exported
        graph is cached in ``cache_dir`` (default ``DPR_PG_CACHE_DIR``, else the per-user cache).
        ``cuda_graphs`` replays the question encoder's short batches as CUDA graphs, captured at
        load; None turns them on for a CUDA device on torch.

        Example:
            >>> pair = EncoderPair.load(precision="fp32", batch_size=16)  # doctest: +SKIP
        """
        options = {"device": device, "precision": precision, "batch_size": batch_size, "runtime": runtime,
                   "cache_dir": cache_dir}
        check_options(device=device, precision=precision, runtime=runtime)  # before any weights are read
        question = QuestionEncoder.load(question_model, revision=question_revision, cache_size=cache_size,
                                        cuda_graphs=cuda_graphs, **options)
        passage = PassageEncoder.load(passage_model, revision=passage_revision, **options)
        return cls(question, passage)

    @property
    def dim(self) -> int:
        """Output dimension of both encoders."""
        return self.passage.dim

    @functools.cached_property
    def fingerprint(self) -> EncoderFingerprint:
        """The pair's :class:`EncoderFingerprint` (the passage side's max length); computed once."""
        return EncoderFingerprint(
            question_model=self.question.name,
            question_revision=self.question.revision,
            passage_model=self.passage.name,
            passage_revision=self.passage.revision,
            tokenizer_hash=vocab_hash(self.question.tokenizer.get_vocab(), self.passage.tokenizer.get_vocab()),
            dim=self.dim,
            max_length=self.passage.max_length,
            pooling=POOLING,
        )


def check_options(*, device: str | None = None, precision: str | None = None, runtime: str | None = None) -> None:
    """Raise :class:`EncoderError` for a precision or runtime this device cannot run, before any model loads.

    Example:
        >>> check_options(precision="fp16", device="cpu")  # doctest: +SKIP
        Traceback (most recent call last):
        dpr_pg.errors.EncoderError: precision 'fp16' needs a GPU; on CPU use 'bf16', 'int8' or 'fp32'
    """
    import torch


    chosen = torch.device(device or _default_device(precision, runtime))
    resolved = resolve_precision(precision, chosen)
    for kind in ("question", "passage"):
        resolve_runtime(runtime, kind=kind, device=chosen, precision=resolved)


def fingerprint_of(
    question_model: str | None = None,
    passage_model: str | None = None,
    *,
    question_revision: str | None = None,
    passage_revision: str | None = None,
) -> EncoderFingerprint:
    """The fingerprint ``EncoderPair.load(...)`` would have, from the configs and tokenizers alone.

    For precomputed vectors, which only need the pair named: no weights are loaded (a local
    folder's files are still hashed for its revision). Names resolve as in ``EncoderPair.load``.
    Two local folders whose files say everything (:func:`dpr_pg.encoders.files.folder_parts`) are
    read without importing transformers or torch; otherwise transformers loads the configs and tokenizers.

    Example:
        >>> fingerprint_of("/tmp/tiny/question", "/tmp/tiny/passage").dim  # doctest: +SKIP
        768
    """
    question_name, passage_name = config.question_model(question_model), config.passage_model(passage_model)
    light = _from_files(question_name, question_revision, passage_name, passage_revision)
    return light if light is not None else _from_transformers(question_name, question_revision, passage_name,
                                                              passage_revision)


def _from_transformers(question_name: str, question_revision: str | None, passage_name: str,
                       passage_revision: str | None) -> EncoderFingerprint:
    """:func:`fingerprint_of` from the configs and tokenizers transformers loads."""
    q_config, q_tokenizer, q_source, q_revision = load_light("question", question_name, question_revision)
    p_config, p_tokenizer, p_source, p_revision = load_light("passage", passage_name, passage_revision)
    _check_same_dim(q_source, output_dim(q_config), p_source, output_dim(p_config))
    return EncoderFingerprint(
        question_model=q_source,
        question_revision=q_revision,
        passage_model=p_source,
        passage_revision=p_revision,
        tokenizer_hash=vocab_hash(q_tokenizer.get_vocab(), p_tokenizer.get_vocab()),
        dim=output_dim(p_config),
        max_length=token_limit(p_config, p_tokenizer),
        pooling=POOLING,
    )


def _from_files(question_name: str, question_revision: str | None, passage_name: str,
                passage_revision: str | None) -> EncoderFingerprint | None:
    """:func:`fingerprint_of` for two local folders whose files say everything; None otherwise."""
    if not (Path(question_name).expanduser().is_dir() and Path(passage_name).expanduser().is_dir()):
        return None
    question, passage = (folder_parts(Path(name).expanduser()) for name in (question_name, passage_name))
    if question is None or passage is None:
        return None
    q_source, q_revision = resolve_source("question", question_name, question_revision)[:2]
    p_source, p_revision = resolve_source("passage", passage_name, passage_revision)[:2]
    _check_same_dim(q_source, question.dim, p_source, passage.dim)
    return EncoderFingerprint(
        question_model=q_source,
        question_revision=q_revision,
        passage_model=p_source,
        passage_revision=p_revision,
        tokenizer_hash=vocab_hash(question.vocabulary, passage.vocabulary),
        dim=passage.dim,
        max_length=passage.max_length,
        pooling=POOLING,
    )


def _check_same_dim(question_name: str, question_dim: int, passage_name: str, passage_dim: int) -> None:
    if question_dim != passage_dim:
        raise EncoderError(
            f"the question encoder {question_name!r} outputs {question_dim} dimensions but the "
            f"passage encoder {passage_name!r} outputs {passage_dim}; expected the same. "
            "Load the question and passage models of one DPR pair."
        )
