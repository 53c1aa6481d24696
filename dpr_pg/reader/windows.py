"""Question + passage token windows: a passage longer than the model reads is cut into overlapping windows.

The fast tokenizer does the cutting (``truncation="only_second"``, ``stride``,
``return_overflowing_tokens``), as the question-answering pipeline of transformers does: each
window holds the whole question and a slice of the passage, consecutive slices sharing ``stride``
tokens, so an answer cut by one window's edge is whole in the next. Offsets map every passage
token back to its characters, and word ids say where words start and end: an answer is a run of
whole words, never a piece of one (``##lucía`` of ``Andalucía``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Window:
    """One model input: which (question, passage) pair it reads, its tokens, and their passage offsets."""

    pair: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    offsets: list[tuple[int, int]]
    context: np.ndarray  # bool per token: a passage token
    cls_index: int
    word_start: np.ndarray  # bool per token: the first token of a word (an answer may start there)
    word_end: np.ndarray  # bool per token: the last token of a word (an answer may end there)


def cut_question(tokenizer: Any, question: str, max_tokens: int) -> str:
    """The question, cut after ``max_tokens`` tokens (at a token's end, so never inside a word piece's characters).

    Example:
        >>> cut_question(tokenizer, "¿Cuál es la capital de España?", 3)  # doctest: +SKIP
        '¿Cuál es'
    """
    encoded = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= max_tokens:
        return question
    return question[: offsets[max_tokens - 1][1]]


def make_windows(tokenizer: Any, pairs: Sequence[tuple[str, str]], *, max_length: int, stride: int) -> list[Window]:
    """The windows of each (question, passage) pair, in pair order.

    Example:
        >>> windows = make_windows(tokenizer, [("¿Dónde?", "Sevilla está en Andalucía.")], max_length=384, stride=128)  # doctest: +SKIP
        >>> len(windows), windows[0].pair                                                                           # doctest: +SKIP
        (1, 0)
    """
    if not pairs:
        return []
    encoded = tokenizer([q for q, _ in pairs], [p for _, p in pairs], truncation="only_second",
                        max_length=max_length, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, padding=False)
    types = encoded.get("token_type_ids")
    cls_id = tokenizer.cls_token_id
    windows = []
    for index, input_ids in enumerate(encoded["input_ids"]):
        sequence = encoded.sequence_ids(index)
        context = np.array([s == 1 for s in sequence], dtype=bool)
        cls_index = input_ids.index(cls_id) if cls_id is not None and cls_id in input_ids else 0
        words = encoded.word_ids(index)
        before, after = [None, *words[:-1]], [*words[1:], None]
        word_start = np.array([w is not None and w != b for w, b in zip(words, before)], dtype=bool)
        word_end = np.array([w is not None and w != a for w, a in zip(words, after)], dtype=bool)
        windows.append(Window(int(encoded["overflow_to_sample_mapping"][index]), list(input_ids),
                              list(types[index]) if types is not None else None,
                              [tuple(o) for o in encoded["offset_mapping"][index]], context, cls_index,
                              word_start, word_end))
    return windows
