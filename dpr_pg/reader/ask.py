"""``ask()``: retrieve the top passages for a question, then read the answer span out of them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import ReaderError
from dpr_pg.reader.model import check_threshold
from dpr_pg.search.api import search
from dpr_pg.tuning import MAX_ASK_K
from dpr_pg.validation import check_k, check_top_answers

if TYPE_CHECKING:
    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.filters import Filter
    from dpr_pg.reader.model import Reader
    from dpr_pg.search.api import Hit, Hits, Mode


@dataclass(frozen=True)
class Answer:
    """An answer: the span's text and score, its character offsets in ``passage.text``, and the passage.

    ``passage.text[start:end] == text``; ``score`` is the reader's (a probability, see
    :mod:`dpr_pg.reader.spans`), ``passage.score`` the retrieval's inner product.
    """

    text: str
    score: float
    start: int
    end: int
    passage: Hit

    def as_dict(self) -> dict[str, Any]:
        p = self.passage
        return {"answer": self.text, "score": self.score, "start": self.start, "end": self.end,
                "passage": {"id": p.id, "external_id": p.external_id, "collection": p.collection, "title": p.title,
                            "metadata": p.metadata, "score": p.score, "rank": p.rank, "text": p.text}}


@dataclass(frozen=True)
class AskResult:
    """What :func:`ask` found: the answers (best first; none when ``no_answer``) and the passages read."""

    question: str
    answers: list[Answer]
    no_answer: bool
    no_answer_score: float | None
    passages: Hits
    seconds: float

    @property
    def answer(self) -> Answer | None:
        """The best answer, or None."""
        return self.answers[0] if self.answers else None

    def as_dict(self) -> dict[str, Any]:
        """What ``dpr-pg ask --json`` prints and ``POST /v1/ask`` returns."""
        return {"question": self.question, "answers": [a.as_dict() for a in self.answers],
                "no_answer": self.no_answer, "no_answer_score": self.no_answer_score,
                "passages_read": len(self.passages), "search_path": self.passages.plan.path,
                "seconds": round(self.seconds, 3)}


def ask(
    bind: Engine | Connection,
    question: str,
    *,
    encoder: EncoderPair,
    reader: Reader,
    k: int = 10,
    collection: str | None = None,
    filter: Filter = None,
    mode: Mode = "dense",
    top_answers: int = 1,
    no_answer_threshold: float | None = None,
    ef_search: int | None = None,
) -> AskResult:
    """Answer ``question`` from the collection: retrieve ``k`` passages (1 to 100), read the best spans out of them.

    Retrieval is :func:`dpr_pg.search.api.search` (same filters, modes and encoder check). ``top_answers``
    spans come back, best first; with ``no_answer_threshold`` the result is "no answer" when no span
    scores that much, or when the reader's null score beats every span (SQuAD 2.0 style).

    Example:
        >>> result = ask(engine, "¿Dónde está la Giralda?", encoder=pair, reader=reader, collection="docs")  # doctest: +SKIP
        >>> result.answer.text, result.answer.passage.metadata["source"]                                     # doctest: +SKIP
        ('Sevilla', 'guias/sevilla.pdf')
    """
    check_ask(question, k=k, top_answers=top_answers, no_answer_threshold=no_answer_threshold)
    started = time.perf_counter()
    hits = search(bind, question, encoder=encoder, k=k, filter=filter, collection=collection, mode=mode,
                  query_text=question, ef_search=ef_search)
    return read_hits(reader, question, hits, top_answers=top_answers, no_answer_threshold=no_answer_threshold,
                     started=started)


def check_ask(question: Any, *, k: int, top_answers: int, no_answer_threshold: float | None) -> None:
    """Refuse a question without text, k outside 1..MAX_ASK_K (:func:`dpr_pg.validation.check_k`'s
    InvalidKError), ``top_answers`` outside 1..MAX_ANSWERS (:func:`dpr_pg.validation.check_top_answers`'s
    ReaderError) or a threshold outside [0, 1], before any search."""
    if not isinstance(question, str) or not question.strip():
        raise ReaderError(f"expected a question with some text, not {question!r}")
    check_k(k, limit=MAX_ASK_K)
    check_top_answers(top_answers)
    check_threshold(no_answer_threshold)


def read_hits(reader: Reader, question: str, hits: Hits, *, top_answers: int, no_answer_threshold: float | None,
              started: float) -> AskResult:
    """The second half of :func:`ask` (and of :func:`dpr_pg.aio.ask`): read the retrieved passages.

    ``started`` is the ``time.perf_counter()`` of the request, for ``seconds``.
    """
    reading = reader.read(question, [hit.text for hit in hits], top_answers=top_answers,
                          no_answer_threshold=no_answer_threshold)
    answers = [Answer(span.text, span.score, span.start, span.end, hits[span.passage]) for span in reading.answers]
    return AskResult(question, answers, reading.no_answer or not answers, reading.no_answer_score, hits,
                     time.perf_counter() - started)
