"""The seed model card's view: gold passage (positive) vs retrieved non-gold (hard negative).

The card of IIC/dpr-spanish-*-allqa-base scores each question's candidates (the positive passage
and hard negatives) and reports accuracy, precision/recall/F1 per class, and the average rank of
the positive. Here a candidate is predicted positive when its score (inner product) is at least a
threshold. :func:`best_threshold` picks the threshold that maximises the positive class's F1 on the
same data, which flatters the numbers a little: pass a threshold chosen on other questions to avoid
that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dpr_pg.errors import EvaluationError

POSITIVE = "positive"
HARD_NEGATIVE = "hard_negative"


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class, and how many candidates truly belong to it."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """Positive vs hard-negative scores at one threshold."""

    threshold: float
    chosen_on_data: bool
    accuracy: float
    classes: dict[str, ClassScores]

    def as_dict(self) -> dict[str, object]:
        return {
            "threshold": self.threshold,
            "chosen_on_data": self.chosen_on_data,
            "accuracy": self.accuracy,
            "classes": {name: vars(c).copy() for name, c in self.classes.items()},
        }


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _class_scores(true_pos: int, predicted: int, actual: int) -> ClassScores:
    precision = true_pos / predicted if predicted else 0.0
    recall = true_pos / actual if actual else 0.0
    return ClassScores(precision, recall, _f1(precision, recall), actual)


def _check(scores: Sequence[float], is_positive: Sequence[bool]) -> None:
    if len(scores) != len(is_positive):
        raise EvaluationError(f"expected one label per score, not {len(is_positive)} labels for {len(scores)} scores")
    if not scores:
        raise EvaluationError("expected at least one candidate score, not none")


def best_threshold(scores: Sequence[float], is_positive: Sequence[bool]) -> float:
    """The score threshold (predict positive when score >= threshold) with the best positive F1.

    Among thresholds with equal F1, the highest wins.

    >>> best_threshold([0.9, 0.8, 0.3, 0.1], [True, True, False, False])
    0.8
    """
    _check(scores, is_positive)
    positives = sum(1 for p in is_positive if p)
    pairs = sorted(zip(scores, is_positive), key=lambda pair: -pair[0])
    best, best_f1 = pairs[0][0], -1.0
    true_pos = 0
    for i, (score, positive) in enumerate(pairs):
        true_pos += bool(positive)
        if i + 1 < len(pairs) and pairs[i + 1][0] == score:
            continue  # a threshold cannot split equal scores
        f1 = _class_scores(true_pos, i + 1, positives).f1
        if f1 > best_f1:
            best, best_f1 = score, f1
    return best


def classify(
    scores: Sequence[float], is_positive: Sequence[bool], *, threshold: float | None = None
) -> ClassificationReport:
    """Precision/recall/F1 per class at ``threshold`` (chosen by :func:`best_threshold` when None).

    >>> r = classify([0.9, 0.8, 0.3], [True, False, False], threshold=0.5)
    >>> (r.accuracy, r.classes["positive"].precision)
    (0.6666666666666666, 0.5)
    """
    _check(scores, is_positive)
    chosen = threshold is None
    cut = best_threshold(scores, is_positive) if threshold is None else threshold
    predicted = [s >= cut for s in scores]
    tp = sum(1 for p, y in zip(predicted, is_positive) if p and y)
    tn = sum(1 for p, y in zip(predicted, is_positive) if not p and not y)
    n_pos = sum(1 for y in is_positive if y)
    n_pred = sum(predicted)
    n = len(scores)
    return ClassificationReport(
        threshold=float(cut),
        chosen_on_data=chosen,
        accuracy=(tp + tn) / n,
        classes={
            POSITIVE: _class_scores(tp, n_pred, n_pos),
            HARD_NEGATIVE: _class_scores(tn, n - n_pred, n - n_pos),
        },
    )
