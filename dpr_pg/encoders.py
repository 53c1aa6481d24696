"""DPR question and passage encoders, modelled on sentence-transformers' ``encode()``.

A list goes in and a float32 array ``(n, dim)`` comes out; a single question (or a single
``(title, text)`` passage) gives a single vector ``(dim,)``. Inputs are sorted by token length,
batched with dynamic padding, and returned in input order.

torch and transformers are imported lazily: ``import dpr_pg`` stays light.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from dpr_pg import config
from dpr_pg._fingerprint import POOLING, EncoderFingerprint, check_encoder, register_encoder, vocab_hash
from dpr_pg._loading import load_parts
from dpr_pg._precision import PRECISIONS, apply_precision, forward_context, resolve_precision
from dpr_pg._tiny import make_tiny_models
from dpr_pg.errors import EncoderError

__all__ = [
    "PRECISIONS",
    "CacheInfo",
    "EncodeResult",
    "EncoderFingerprint",
    "EncoderPair",
    "PassageEncoder",
    "QuestionEncoder",
    "check_encoder",
    "make_tiny_models",
    "register_encoder",
]

CPU_BATCH_SIZE = 16  # sorted by length, small CPU batches lose nothing and pad less
GPU_BATCH_SIZE = 256
DEFAULT_CACHE_SIZE = 4096


class EncodeResult(NamedTuple):
    """Embeddings in input order, and which inputs were cut at the model's max length."""

    embeddings: np.ndarray
    truncated: list[int]


class CacheInfo(NamedTuple):
    """Question cache statistics (like :func:`functools.lru_cache`'s)."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _Encoder:
    """Shared machinery: tokenize, sort by length, batch with dynamic padding, restore order."""

    kind = ""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        revision: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
    ) -> None:
        import torch

        self.name = name
        self.revision = revision
        self.device = torch.device(device or _default_device())
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size or (GPU_BATCH_SIZE if self.device.type == "cuda" else CPU_BATCH_SIZE)
        if self.batch_size < 1:
            raise EncoderError(f"batch_size must be at least 1, not {self.batch_size}")
        model_limit = int(model.config.max_position_embeddings)
        tokenizer_limit = int(min(tokenizer.model_max_length, model_limit))
        self.max_length = int(max_length or tokenizer_limit)
        if not 2 < self.max_length <= model_limit:
            raise EncoderError(f"max_length must be between 3 and {model_limit}, not {self.max_length}")
        projection = int(getattr(model.config, "projection_dim", 0) or 0)
        self.dim = projection if projection > 0 else int(model.config.hidden_size)
        self.tokenizer = tokenizer
        self.model = apply_precision(model.eval().to(self.device), self.precision, self.device)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.last_truncated = 0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, device={self.device.type!r}, "
                f"precision={self.precision!r}, dim={self.dim})")

    # -- tokenization ---------------------------------------------------------------------------

    def _tokenize(self, first: list[str], second: list[str] | None) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """Token ids and token type ids per input, and the indices that had to be truncated."""
        full = self.tokenizer(first, second, truncation=False, padding=False,
                              return_attention_mask=False, verbose=False)
        ids, types = list(full["input_ids"]), list(full["token_type_ids"])
        truncated = [i for i, row in enumerate(ids) if len(row) > self.max_length]
        for i in truncated:
            # Keep the title, cut the end of the text (as DPR does); fall back when the title alone is too long.
            strategy = "only_second" if second is not None else "longest_first"
            pair = (first[i], second[i]) if second is not None else (first[i],)
            try:
                cut = self.tokenizer(*pair, truncation=strategy, max_length=self.max_length)
            except Exception:
                cut = self.tokenizer(*pair, truncation="longest_first", max_length=self.max_length)
            ids[i], types[i] = cut["input_ids"], cut["token_type_ids"]
        return ids, types, truncated

    # -- inference ------------------------------------------------------------------------------

    def _embed(self, ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
        import torch

        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        order = np.argsort([-len(row) for row in ids], kind="stable")  # longest first: OOM shows early
        with torch.inference_mode(), forward_context(self.precision, self.device):
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                width = len(ids[batch[0]])
                input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
                token_types = np.zeros((len(batch), width), dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, index in enumerate(batch):
                    length = len(ids[index])
                    input_ids[row, :length] = ids[index]
                    token_types[row, :length] = types[index]
                    mask[row, :length] = 1
                pooled = self.model(
                    input_ids=torch.from_numpy(input_ids).to(self.device),
                    attention_mask=torch.from_numpy(mask).to(self.device),
                    token_type_ids=torch.from_numpy(token_types).to(self.device),
                ).pooler_output
                out[batch] = pooled.float().cpu().numpy()
        return out

    def _encode(self, first: list[str], second: list[str] | None) -> EncodeResult:
        if not first:
            self.last_truncated = 0
            return EncodeResult(np.empty((0, self.dim), dtype=np.float32), [])
        ids, types, truncated = self._tokenize(first, second)
        result = EncodeResult(self._embed(ids, types), truncated)
        self.last_truncated = len(truncated)
        return result


class QuestionEncoder(_Encoder):
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


class PassageEncoder(_Encoder):
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
        items = [passages] if _is_passage(passages) else list(passages)  # type: ignore[list-item]
        for item in items:
            if not _is_passage(item):
                raise EncoderError(f"expected passages as (title, text) pairs of str, not {item!r}")
        titles = [title for title, _ in items]
        texts = [text for _, text in items]
        return self._encode(titles, texts)

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
        if self.question.dim != self.passage.dim:
            raise EncoderError(
                f"the question encoder {self.question.name!r} outputs {self.question.dim} dimensions but the "
                f"passage encoder {self.passage.name!r} outputs {self.passage.dim}; expected the same. "
                "Load the question and passage models of one DPR pair."
            )

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
    ) -> EncoderPair:
        """Load both encoders. Names: argument > ``DPR_PG_*_MODEL`` > the IIC Spanish defaults.

        ``precision`` is one of :data:`PRECISIONS`; None picks the default for the device
        (see README, "Encoders").

        Example:
            >>> pair = EncoderPair.load(precision="fp32", batch_size=16)  # doctest: +SKIP
        """
        options = {"device": device, "precision": precision, "batch_size": batch_size}
        question = QuestionEncoder.load(question_model, revision=question_revision, cache_size=cache_size, **options)
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
