"""Span scores from one window's start and end logits, with the SQuAD 2.0 null (no-answer) score.

Within a window, start and end positions each get a softmax over the passage's tokens and the
[CLS] token, where SQuAD 2.0 models put "no answer". A span (i, j), i <= j, at most
``max_answer_tokens`` long, inside the passage, scores p_start(i) * p_end(j); the null scores
p_start(CLS) * p_end(CLS). Both are probabilities, comparable across windows and passages, as in
the question-answering pipeline of transformers.
"""

from __future__ import annotations

import numpy as np


def _softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    masked = np.where(allowed, logits.astype(np.float64), -np.inf)
    masked -= masked.max()
    weights = np.exp(masked)
    return weights / weights.sum()


def window_spans(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray, cls_index: int, *,
                 max_answer_tokens: int, top: int, word_start: np.ndarray | None = None,
                 word_end: np.ndarray | None = None) -> tuple[list[tuple[int, int, float]], float]:
    """The ``top`` best spans ``(start token, end token, score)``, best first, and the window's null score.

    ``word_start``/``word_end`` (bool per token) restrict spans to whole words; the softmax still
    covers every passage token, so scores stay the model's probabilities.

    Example:
        >>> start, end = np.array([0.0, 3.0, 0.0, 0.0]), np.array([0.0, 0.0, 3.0, 0.0])
        >>> spans, null = window_spans(start, end, np.array([False, True, True, True]), 0, max_answer_tokens=5, top=1)
        >>> spans[0][:2], round(spans[0][2], 3), round(null, 4)
        ((1, 2), 0.757, 0.0019)
    """
    allowed = context.copy()
    allowed[cls_index] = True
    p_start, p_end = _softmax(start_logits, allowed), _softmax(end_logits, allowed)
    null = float(p_start[cls_index] * p_end[cls_index])
    positions = np.flatnonzero(context)
    if positions.size == 0 or top < 1:
        return [], null
    first, last = positions[0], positions[-1] + 1  # the passage's tokens are one contiguous run
    scores = np.outer(p_start[first:last], p_end[first:last])
    length = last - first
    offsets = np.arange(length)
    valid = (offsets[None, :] >= offsets[:, None]) & (offsets[None, :] - offsets[:, None] < max_answer_tokens)
    starts = context if word_start is None else context & word_start
    ends = context if word_end is None else context & word_end
    valid &= starts[first:last][:, None] & ends[first:last][None, :]
    scores = np.where(valid, scores, -1.0).ravel()
    count = min(top, int(valid.sum()))
    if count == 0:
        return [], null
    best = np.argpartition(-scores, count - 1)[:count]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(first + i // length), int(first + i % length), float(scores[i])) for i in best], null
