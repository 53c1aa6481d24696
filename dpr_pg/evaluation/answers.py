"""Does a passage contain an answer? DPR's ``has_answer``, with a Spanish-friendly normalisation.

DPR (facebookresearch/DPR, ``dpr/data/qa_validation.py``) decides that a retrieved passage
answers a question when the token sequence of an answer occurs inside the passage's tokens, after
Unicode NFD and lower-casing. Its tokenizer keeps runs of letters, digits and combining marks,
and every other non-space character as a token of its own.

Two styles are offered:

``"dpr"``
    DPR exactly: NFD, lower case, tokens ``[\\p{L}\\p{N}\\p{M}]+`` or any single non-space
    character. Accents and punctuation must match.
``"spanish"`` (the default)
    As DPR, and also: accents are dropped (``é`` → ``e``, ``ü`` → ``u``) but ``ñ`` is kept, so
    ``año`` never matches ``ano``; punctuation, including ``¿ ¡ « »``, is dropped; and the articles
    ``el la lo los las un una unos unas`` are dropped, as the SQuAD evaluation drops English
    articles. SQuAD-ES answers were translated apart from their contexts, so an answer often differs
    from its context by an accent, an article or a comma; this style still finds it.

The match is always on whole tokens: ``"Perú"`` is found in ``"Lima, capital del Perú."`` but
``"Per"`` is not.

The reader's answers are scored like SQuAD's: exact match and token F1 against the best of the
question's answers (:func:`exact_match`, :func:`token_f1`), on the same normalised tokens. With
the ``spanish`` style that is SQuAD's normalisation (lower case, no punctuation, no articles,
whitespace collapsed) with the Spanish articles, as MLQA's Spanish evaluation does, plus the
accents folded (``ñ`` kept), for the reason above: a reader that returns the context's
"Guadalquivir" for the translated answer "el Guadalquívir" is right.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

import regex

from dpr_pg.errors import EvaluationError

AnswerStyle = Literal["spanish", "dpr"]
ANSWER_STYLES: tuple[AnswerStyle, ...] = ("spanish", "dpr")

SPANISH_ARTICLES = frozenset({"el", "la", "lo", "los", "las", "un", "una", "unos", "unas"})

# DPR's SimpleTokenizer, with the `regex` module for Unicode classes.
_DPR_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]", regex.UNICODE)
_WORD = regex.compile(r"[\p{L}\p{N}]+", regex.UNICODE)
_MARK = regex.compile(r"\p{M}+", regex.UNICODE)


def _check_style(style: str) -> None:
    if style not in ANSWER_STYLES:
        raise EvaluationError(f"expected an answer style in {ANSWER_STYLES}, not {style!r}; use 'spanish' or 'dpr'")


def answer_tokens(text: str, *, style: AnswerStyle = "spanish") -> list[str]:
    """The tokens that answer matching compares.

    >>> answer_tokens("¿Dónde está la Alhambra?")
    ['donde', 'esta', 'alhambra']
    >>> answer_tokens("¿Dónde?", style="dpr")  # doctest: +SKIP
    ['¿', 'dónde', '?']   # NFD: the accent is a combining mark inside the token
    """
    _check_style(style)
    decomposed = unicodedata.normalize("NFD", text).lower()
    if style == "dpr":
        return _DPR_TOKEN.findall(decomposed)
    # Keep ñ (n + combining tilde) as one letter before the marks go.
    decomposed = decomposed.replace("n\u0303", "ñ")
    words = _WORD.findall(_MARK.sub("", decomposed))
    return [w for w in words if w not in SPANISH_ARTICLES]


def normalize_answer(text: str, *, style: AnswerStyle = "spanish") -> str:
    """The normalised form of ``text``: its answer tokens joined by single spaces (idempotent).

    >>> normalize_answer("  El Niño, ¡en 1997!  ")
    'niño en 1997'
    """
    return " ".join(answer_tokens(text, style=style))


class AnswerMatcher:
    """The answers of one question, normalised once, tested against many passages.

    >>> AnswerMatcher(["la Alhambra"]).found_in("Visitamos  Alhambra, en Granada.")
    True
    """

    def __init__(self, answers: Iterable[str], *, style: AnswerStyle = "spanish") -> None:
        self.style = style
        # An answer with no tokens (only punctuation or articles) could match anything: drop it.
        self.normalized = tuple(dict.fromkeys(n for n in (normalize_answer(a, style=style) for a in answers) if n))

    def __bool__(self) -> bool:
        return bool(self.normalized)

    def found_in(self, text: str) -> bool:
        """True when a whole-token occurrence of one of the answers is in ``text``."""
        if not self.normalized:
            return False
        haystack = f" {normalize_answer(text, style=self.style)} "
        return any(f" {answer} " in haystack for answer in self.normalized)


def has_answer(text: str, answers: Sequence[str], *, style: AnswerStyle = "spanish") -> bool:
    """DPR's has_answer: does ``text`` contain one of ``answers`` as whole tokens after normalisation?

    >>> has_answer("Lima es la capital del Perú.", ["peru", "Bogotá"])
    True
    """
    return AnswerMatcher(answers, style=style).found_in(text)


def exact_match(prediction: str, answers: Sequence[str], *, style: AnswerStyle = "spanish") -> float:
    """1.0 when ``prediction`` normalises to one of ``answers`` (SQuAD's exact match), else 0.0.

    >>> exact_match("el río Guadalquivir", ["Río Guadalquivir."]), exact_match("Guadalquivir", ["río Guadalquivir"])
    (1.0, 0.0)
    """
    tokens = answer_tokens(prediction, style=style)
    return max((float(tokens == answer_tokens(answer, style=style)) for answer in answers), default=0.0)


def token_f1(prediction: str, answers: Sequence[str], *, style: AnswerStyle = "spanish") -> float:
    """SQuAD's F1: token overlap of ``prediction`` with the best of ``answers`` (bags of normalised tokens).

    When either side normalises to nothing (an answer made of articles, or no answer), F1 is 1.0
    if both do and 0.0 otherwise, as in SQuAD 2.0's evaluation.

    >>> round(token_f1("el río Guadalquivir", ["Guadalquivir"]), 3)
    0.667
    """
    predicted = answer_tokens(prediction, style=style)
    best = 0.0
    for answer in answers:
        expected = answer_tokens(answer, style=style)
        if not predicted or not expected:
            best = max(best, float(predicted == expected))
            continue
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
