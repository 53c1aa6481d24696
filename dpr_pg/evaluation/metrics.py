"""Retrieval metrics as pure functions: ranks of gold passages, top-k accuracy, MRR, recall@k;
and the reader's exact match and F1 over the same questions (:func:`reader_metrics`).

Conventions (the DPR paper's, with ranks 0-based like the seed model's card):

- A question's *rank* is the 0-based position of its first gold passage among the retrieved hits.
  A question whose gold passage was not retrieved within ``depth`` hits gets rank ``depth``.
- top-k accuracy is the share of questions whose rank is below k; MRR averages 1/(rank+1), with 0
  for a missing gold; recall@k averages, over questions that name their gold passages, the share
  of those passages retrieved in the first k.
- Ties: two hits with the same score have no true order. ``ties="pessimistic"`` (the default)
  places a gold hit after every non-gold hit of equal score, ``"optimistic"`` before them, and
  ``"order"`` keeps the order the hits came in. Golds tied with golds keep their order.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dpr_pg.errors import EvaluationError
from dpr_pg.evaluation.answers import exact_match, token_f1

TieRule = Literal["pessimistic", "optimistic", "order"]
TIE_RULES: tuple[TieRule, ...] = ("pessimistic", "optimistic", "order")
DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 100)


def gold_ranks(scores: Sequence[float], is_gold: Sequence[bool], *, ties: TieRule = "pessimistic") -> list[int]:
    """The 0-based ranks of the gold hits, ascending, with ties broken by ``ties``.

    >>> gold_ranks([0.9, 0.8, 0.8], [False, True, False])
    [2]
    >>> gold_ranks([0.9, 0.8, 0.8], [False, True, False], ties="optimistic")
    [1]
    """
    if len(scores) != len(is_gold):
        raise EvaluationError(f"expected as many gold flags as scores, not {len(is_gold)} flags for {len(scores)} scores")
    if ties not in TIE_RULES:
        raise EvaluationError(f"expected ties in {TIE_RULES}, not {ties!r}")
    order = range(len(scores))
    if ties != "order":
        gold_last = ties == "pessimistic"
        order = sorted(order, key=lambda i: (-scores[i], bool(is_gold[i]) == gold_last, i))
    return [rank for rank, i in enumerate(order) if is_gold[i]]


def first_gold_rank(
    scores: Sequence[float], is_gold: Sequence[bool], *, depth: int, ties: TieRule = "pessimistic"
) -> int:
    """The rank of the first gold hit, or ``depth`` when no gold hit is among the first ``depth``.

    >>> first_gold_rank([0.9, 0.7], [False, False], depth=100)
    100
    """
    ranks = gold_ranks(scores, is_gold, ties=ties)
    return ranks[0] if ranks and ranks[0] < depth else depth


def recall_at(ranks: Sequence[int], gold_count: int, k: int) -> float:
    """Share of ``gold_count`` gold passages whose rank is below ``k``.

    >>> recall_at([0, 3], 4, 5)
    0.5
    """
    if gold_count <= 0:
        raise EvaluationError(f"expected at least one gold passage, not {gold_count}")
    return min(sum(1 for r in ranks if r < k), gold_count) / gold_count


@dataclass(frozen=True)
class QuestionOutcome:
    """One question's result: the rank of its first gold hit, and recall@k when golds are named."""

    rank: int
    found: bool
    recall: dict[int, float] | None = None


def question_outcome(
    scores: Sequence[float],
    is_gold: Sequence[bool],
    *,
    depth: int,
    ks: Sequence[int] = DEFAULT_KS,
    gold_count: int | None = None,
    ties: TieRule = "pessimistic",
) -> QuestionOutcome:
    """Score one question's hits. ``gold_count`` (how many gold passages exist) enables recall@k.

    >>> question_outcome([0.9, 0.8], [True, False], depth=10, ks=(1, 5), gold_count=2)
    QuestionOutcome(rank=0, found=True, recall={1: 0.5, 5: 0.5})
    """
    ranks = [r for r in gold_ranks(scores[:depth], is_gold[:depth], ties=ties) if r < depth]
    rank = ranks[0] if ranks else depth
    recall = {k: recall_at(ranks, gold_count, k) for k in ks} if gold_count else None
    return QuestionOutcome(rank=rank, found=bool(ranks), recall=recall)


@dataclass(frozen=True)
class RetrievalMetrics:
    """Aggregate retrieval metrics over a set of questions."""

    questions: int
    depth: int
    top_k_accuracy: dict[int, float]
    mrr: float
    mean_rank: float
    median_rank: float
    recall_at_k: dict[int, float] | None
    recall_questions: int


def aggregate(outcomes: Sequence[QuestionOutcome], *, depth: int, ks: Sequence[int] = DEFAULT_KS) -> RetrievalMetrics:
    """Average per-question outcomes into top-k accuracy, MRR, mean/median rank and recall@k.

    >>> m = aggregate([QuestionOutcome(0, True), QuestionOutcome(10, False)], depth=10, ks=(1, 10))
    >>> (m.top_k_accuracy, m.mrr, m.mean_rank)
    ({1: 0.5, 10: 0.5}, 0.5, 5.0)
    """
    if not outcomes:
        raise EvaluationError("expected at least one question to aggregate, not none")
    bad = [k for k in ks if k < 1 or k > depth]
    if bad:
        raise EvaluationError(f"expected every k between 1 and the depth {depth}, not {bad}")
    n = len(outcomes)
    ranks = [o.rank if o.found else depth for o in outcomes]
    with_recall = [o.recall for o in outcomes if o.recall is not None]
    recall = {k: sum(r[k] for r in with_recall) / len(with_recall) for k in ks} if with_recall else None
    return RetrievalMetrics(
        questions=n,
        depth=depth,
        top_k_accuracy={k: sum(1 for o, r in zip(outcomes, ranks) if o.found and r < k) / n for k in ks},
        mrr=sum(1.0 / (r + 1) for o, r in zip(outcomes, ranks) if o.found) / n,
        mean_rank=sum(ranks) / n,
        median_rank=float(statistics.median(ranks)),
        recall_at_k=recall,
        recall_questions=len(with_recall),
    )


@dataclass(frozen=True)
class ReaderMetrics:
    """The reader's SQuAD metrics over the questions that have answer strings, in [0, 1].

    ``no_answer`` counts the questions the reader answered "no answer" (they score 0).
    """

    questions: int
    exact_match: float
    f1: float
    no_answer: int
    passages: int
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return {"questions": self.questions, "exact_match": self.exact_match, "f1": self.f1,
                "no_answer": self.no_answer, "passages": self.passages, "seconds": round(self.seconds, 3)}


def reader_metrics(predictions: Sequence[str | None], answers: Sequence[Sequence[str]], *, style: str = "spanish",
                   passages: int, seconds: float = 0.0) -> ReaderMetrics:
    """Average exact match and F1 of ``predictions`` (None: no answer) against each question's ``answers``.

    >>> m = reader_metrics(["el Guadalquivir", "Sevilla", None], [["Guadalquivir"], ["Córdoba"], ["Madrid"]], passages=10)
    >>> m.exact_match, round(m.f1, 3), m.no_answer
    (0.3333333333333333, 0.333, 1)
    """
    if len(predictions) != len(answers) or not predictions:
        raise EvaluationError(f"expected one prediction per question and at least one, not {len(predictions)} "
                         f"predictions for {len(answers)} questions")
    em = [exact_match(p, a, style=style) if p is not None else 0.0 for p, a in zip(predictions, answers)]  # type: ignore[arg-type]
    f1 = [token_f1(p, a, style=style) if p is not None else 0.0 for p, a in zip(predictions, answers)]  # type: ignore[arg-type]
    n = len(predictions)
    return ReaderMetrics(n, sum(em) / n, sum(f1) / n, sum(p is None for p in predictions), passages, seconds)
