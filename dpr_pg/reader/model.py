"""The extractive reader: windows of (question, passage) pairs, batched through a question-answering model.

Windows of all pairs are sorted by length and batched with padding to the longest of each batch
(16 windows on CPU, 64 on GPU), on the model's device; the logits come back as float32 and each
window's spans are scored by :mod:`dpr_pg.reader.spans`. The GPU path (fp16 weights by default, as
for the encoders) is written with care but was not run here: no GPU was available.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpr_pg import config
from dpr_pg.encoders.batching import _default_device
from dpr_pg.encoders.loading import token_limit
from dpr_pg.encoders.precision import apply_precision, forward_context, resolve_precision
from dpr_pg.errors import ReaderError
from dpr_pg.reader.loading import load_reader_parts
from dpr_pg.reader.spans import window_spans
from dpr_pg.reader.windows import Window, cut_question, make_windows
from dpr_pg.validation import check_top_answers

CPU_BATCH_SIZE = 16
GPU_BATCH_SIZE = 64
MAX_LENGTH = 384  # question + passage window, in tokens (the SQuAD fine-tuning length)
STRIDE = 128  # tokens shared by consecutive windows of one passage
MAX_QUESTION_TOKENS = 64
MAX_ANSWER_TOKENS = 30


def check_threshold(no_answer_threshold: float | None) -> None:
    """Refuse a no-answer threshold outside [0, 1] (None is fine: no threshold)."""
    if no_answer_threshold is not None and not 0 <= no_answer_threshold <= 1:
        raise ReaderError(f"expected no_answer_threshold between 0 and 1 (span scores are probabilities), "
                          f"not {no_answer_threshold}")


@dataclass(frozen=True)
class Span:
    """An answer span: ``text == passages[passage][start:end]``; ``score`` in [0, 1] (see :mod:`.spans`)."""

    passage: int
    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class Reading:
    """What the reader found for one question: its best spans (best first) and the no-answer verdict.

    ``no_answer_score`` is the lowest null score among the windows read (the window most sure that it
    holds an answer); ``no_answer`` is True when a threshold was given and no span passed it.
    """

    answers: list[Span] = field(default_factory=list)
    no_answer: bool = False
    no_answer_score: float | None = None
    windows: int = 0


class Reader:
    """An extractive question-answering model over passages, loaded like the encoders.

    Example:
        >>> reader = Reader.load("/tmp/tiny/reader")                                       # doctest: +SKIP
        >>> reading = reader.read("¿Dónde está Sevilla?", ["Sevilla está en Andalucía."])  # doctest: +SKIP
        >>> reading.answers[0].text                                                        # doctest: +SKIP
        'Andalucía'
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str, revision: str | None = None,
                 device: str | None = None, precision: str | None = None, batch_size: int | None = None,
                 max_length: int = MAX_LENGTH, stride: int = STRIDE, max_question_tokens: int = MAX_QUESTION_TOKENS,
                 max_answer_tokens: int = MAX_ANSWER_TOKENS) -> None:
        import torch


        self.name, self.revision = name, revision
        self.device = torch.device(device or _default_device())
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size or (GPU_BATCH_SIZE if self.device.type == "cuda" else CPU_BATCH_SIZE)
        limit = token_limit(model.config, tokenizer)
        self.max_length = min(max_length, limit)
        if self.batch_size < 1 or max_answer_tokens < 1 or max_question_tokens < 1 or stride < 1:
            raise ReaderError("expected batch_size, max_answer_tokens, max_question_tokens and stride >= 1")
        if max_question_tokens + stride + 4 > self.max_length:
            raise ReaderError(f"expected max_question_tokens + stride + 4 <= max_length ({self.max_length}), not "
                              f"{max_question_tokens} + {stride} + 4: a window must hold the question, the stride "
                              "and some new passage tokens")
        self.stride, self.max_question_tokens, self.max_answer_tokens = stride, max_question_tokens, max_answer_tokens
        self.tokenizer = tokenizer
        self.model = apply_precision(model.eval().to(self.device), self.precision, self.device)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self._token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())

    @classmethod
    def load(cls, name: str | None = None, *, revision: str | None = None, **options: Any) -> Reader:
        """Load by Hub id or folder: ``name`` > ``DPR_PG_READER_MODEL`` > the Spanish SQuAD2-es default.

        Options: ``device`` (default cuda when there is one), ``precision`` (as the encoders'),
        ``batch_size`` (windows per forward pass), ``max_length``, ``stride``,
        ``max_question_tokens``, ``max_answer_tokens``.

        Example:
            >>> Reader.load("/tmp/tiny/reader", max_length=256, stride=64)  # doctest: +SKIP
        """
        model, tokenizer, source, resolved = load_reader_parts(config.reader_model(name), revision)
        return cls(model, tokenizer, name=source, revision=resolved, **options)

    def __repr__(self) -> str:
        return f"Reader({self.name!r}, device={self.device.type!r}, precision={self.precision!r})"

    def read(self, question: str, passages: Sequence[str], *, top_answers: int = 1,
             no_answer_threshold: float | None = None) -> Reading:
        """The best spans of ``passages`` for ``question`` (see :meth:`read_many`).

        Example:
            >>> reader.read("¿Quién pintó el Guernica?", ["Picasso pintó el Guernica en 1937."]).answers[0].start  # doctest: +SKIP
            0
        """
        return self.read_many([question], [passages], top_answers=top_answers,
                              no_answer_threshold=no_answer_threshold)[0]

    def read_many(self, questions: Sequence[str], passages: Sequence[Sequence[str]], *, top_answers: int = 1,
                  no_answer_threshold: float | None = None) -> list[Reading]:
        """One :class:`Reading` per question, reading its own passages; all windows batched together.

        ``no_answer_threshold``: None returns the best spans whatever they score. A number returns
        "no answer" (``no_answer=True``, no spans) when the best span scores below it, or below the
        null score, as a SQuAD 2.0 model that prefers "no answer" does; spans under it are dropped.
        """
        if len(questions) != len(passages):
            raise ReaderError(f"expected one list of passages per question, not {len(passages)} lists for "
                              f"{len(questions)} questions")
        check_top_answers(top_answers)
        check_threshold(no_answer_threshold)
        pairs, owners = [], []
        for q, (question, texts) in enumerate(zip(questions, passages, strict=True)):
            if not isinstance(question, str) or not question.strip():
                raise ReaderError(f"expected a question with some text, not {question!r}")
            asked = cut_question(self.tokenizer, question, self.max_question_tokens)
            for p, text in enumerate(texts):
                if isinstance(text, str) and text.strip():
                    pairs.append((asked, text))
                    owners.append((q, p))
        windows = make_windows(self.tokenizer, pairs, max_length=self.max_length, stride=self.stride)
        logits = self._logits(windows)
        found: list[dict[tuple[int, int, int], float]] = [{} for _ in questions]
        nulls: list[list[float]] = [[] for _ in questions]
        counts = [0] * len(questions)
        for window, (start_logits, end_logits) in zip(windows, logits, strict=True):
            q, p = owners[window.pair]
            counts[q] += 1
            spans, null = window_spans(start_logits, end_logits, window.context, window.cls_index,
                                       max_answer_tokens=self.max_answer_tokens, top=top_answers,
                                       word_start=window.word_start, word_end=window.word_end)
            nulls[q].append(null)
            for i, j, score in spans:
                key = (p, window.offsets[i][0], window.offsets[j][1])
                if score > found[q].get(key, -1.0):  # the same span seen by two overlapping windows: keep the best
                    found[q][key] = score
        readings = []
        for q, texts in enumerate(passages):
            ranked = sorted(found[q].items(), key=lambda item: (-item[1], item[0]))
            spans = [Span(p, start, end, texts[p][start:end], score) for (p, start, end), score in ranked]
            null = min(nulls[q]) if nulls[q] else None
            no_answer = False
            if no_answer_threshold is not None:
                spans = [s for s in spans if s.score >= no_answer_threshold and (null is None or s.score >= null)]
                no_answer = not spans
            readings.append(Reading(spans[:top_answers], no_answer, null, counts[q]))
        return readings

    def _logits(self, windows: list[Window]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Start and end logits of each window (float32, unpadded), in window order."""
        import torch


        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i].input_ids))  # longest first: OOM shows early
        with torch.inference_mode(), forward_context(self.precision, self.device):
            for begin in range(0, len(order), self.batch_size):
                batch = order[begin:begin + self.batch_size]
                width = len(windows[batch[0]].input_ids)
                ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                types = np.zeros((len(batch), width), dtype=np.int64)
                for row, index in enumerate(batch):
                    window = windows[index]
                    length = len(window.input_ids)
                    ids[row, :length] = window.input_ids
                    mask[row, :length] = 1
                    if window.token_type_ids is not None:
                        types[row, :length] = window.token_type_ids
                inputs = {"input_ids": torch.from_numpy(ids).to(self.device),
                          "attention_mask": torch.from_numpy(mask).to(self.device)}
                if self._token_types:
                    inputs["token_type_ids"] = torch.from_numpy(types).to(self.device)
                result = self.model(**inputs)
                starts = result.start_logits.float().cpu().numpy()
                ends = result.end_logits.float().cpu().numpy()
                for row, index in enumerate(batch):
                    length = len(windows[index].input_ids)
                    out[index] = (starts[row, :length], ends[row, :length])
        return out
