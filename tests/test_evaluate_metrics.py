"""The metric math on hand-made cases whose answers are known."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpr_pg.evaluation.classification import HARD_NEGATIVE, POSITIVE, best_threshold, classify
from dpr_pg.evaluation.metrics import QuestionOutcome, aggregate, first_gold_rank, gold_ranks, question_outcome, recall_at

KS = (1, 5, 10, 20, 100)


def test_gold_at_rank_zero_counts_for_every_k():
    outcome = question_outcome([0.9, 0.5, 0.1], [True, False, False], depth=100, ks=KS)
    metrics = aggregate([outcome], depth=100, ks=KS)
    assert outcome.rank == 0
    assert metrics.top_k_accuracy == {1: 1.0, 5: 1.0, 10: 1.0, 20: 1.0, 100: 1.0}
    assert metrics.mrr == 1.0
    assert metrics.mean_rank == 0.0 and metrics.median_rank == 0.0


def test_missing_gold_counts_as_rank_depth_and_zero_reciprocal():
    outcome = question_outcome([0.9, 0.5], [False, False], depth=100, ks=KS, gold_count=1)
    metrics = aggregate([outcome], depth=100, ks=KS)
    assert outcome == QuestionOutcome(rank=100, found=False, recall={k: 0.0 for k in KS})
    assert metrics.top_k_accuracy == {k: 0.0 for k in KS}
    assert metrics.mrr == 0.0
    assert metrics.mean_rank == 100.0


def test_gold_beyond_depth_is_missing():
    scores = [1.0 - i / 10 for i in range(6)]
    outcome = question_outcome(scores, [False] * 5 + [True], depth=5, ks=(1, 5))
    assert (outcome.rank, outcome.found) == (5, False)


def test_several_golds_rank_is_the_first_and_recall_counts_all():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    gold = [False, True, False, False, False, True]
    outcome = question_outcome(scores, gold, depth=100, ks=(1, 5, 10), gold_count=3)
    assert outcome.rank == 1
    assert outcome.recall == {1: 0.0, 5: pytest.approx(1 / 3), 10: pytest.approx(2 / 3)}


def test_mixed_questions_mean_median_mrr():
    outcomes = [
        question_outcome([1.0, 0.5], [True, False], depth=10, ks=(1, 10)),  # rank 0
        question_outcome([1.0, 0.5, 0.2], [False, False, True], depth=10, ks=(1, 10)),  # rank 2
        question_outcome([1.0], [False], depth=10, ks=(1, 10)),  # missing -> 10
    ]
    metrics = aggregate(outcomes, depth=10, ks=(1, 10))
    assert metrics.top_k_accuracy == {1: pytest.approx(1 / 3), 10: pytest.approx(2 / 3)}
    assert metrics.mrr == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert metrics.mean_rank == pytest.approx(4.0)
    assert metrics.median_rank == 2.0
    assert metrics.recall_at_k is None and metrics.recall_questions == 0


def test_ties_are_broken_by_the_rule():
    scores, gold = [0.9, 0.7, 0.7, 0.7], [False, False, True, False]
    assert first_gold_rank(scores, gold, depth=10, ties="pessimistic") == 3
    assert first_gold_rank(scores, gold, depth=10, ties="optimistic") == 1
    assert first_gold_rank(scores, gold, depth=10, ties="order") == 2


def test_golds_tied_with_each_other_take_distinct_ranks():
    assert gold_ranks([0.5, 0.5, 0.5], [True, True, False], ties="optimistic") == [0, 1]
    assert gold_ranks([0.5, 0.5, 0.5], [True, True, False], ties="pessimistic") == [1, 2]
    assert recall_at([0, 1], 2, 1) == 0.5


def test_unsorted_hits_are_ranked_by_score_unless_order_is_asked():
    assert gold_ranks([0.1, 0.9], [True, False]) == [1]
    assert gold_ranks([0.1, 0.9], [True, False], ties="order") == [0]


def test_aggregate_refuses_k_above_depth_and_empty_input():
    with pytest.raises(ValueError, match="between 1 and the depth 10"):
        aggregate([QuestionOutcome(0, True)], depth=10, ks=(1, 20))
    with pytest.raises(ValueError, match="at least one question"):
        aggregate([], depth=10)


@given(st.lists(st.tuples(st.floats(-10, 10), st.booleans()), min_size=1, max_size=30),
       st.sampled_from(["pessimistic", "optimistic", "order"]))
def test_first_gold_rank_is_below_depth_exactly_when_a_gold_is_retrieved(hits, ties):
    scores = [s for s, _ in hits]
    gold = [g for _, g in hits]
    rank = first_gold_rank(scores, gold, depth=len(hits), ties=ties)
    assert (rank < len(hits)) == any(gold)
    assert first_gold_rank(scores, gold, depth=len(hits), ties="optimistic") <= first_gold_rank(
        scores, gold, depth=len(hits), ties="pessimistic")


@given(st.lists(st.integers(0, 100), min_size=1, max_size=50))
def test_top_k_accuracy_grows_with_k_and_mrr_is_a_probability(ranks):
    outcomes = [QuestionOutcome(r, r < 100) for r in ranks]
    metrics = aggregate(outcomes, depth=100, ks=KS)
    values = [metrics.top_k_accuracy[k] for k in KS]
    assert values == sorted(values)
    assert 0.0 <= metrics.mrr <= metrics.top_k_accuracy[100] <= 1.0


def test_best_threshold_separates_perfectly_separable_scores():
    scores = [0.9, 0.85, 0.4, 0.3, 0.2]
    labels = [True, True, False, False, False]
    report = classify(scores, labels)
    assert best_threshold(scores, labels) == 0.85
    assert report.accuracy == 1.0 and report.chosen_on_data
    assert report.classes[POSITIVE].f1 == 1.0 and report.classes[HARD_NEGATIVE].support == 3


def test_classify_at_a_given_threshold():
    report = classify([0.9, 0.6, 0.6, 0.1], [True, False, True, False], threshold=0.5)
    positive = report.classes[POSITIVE]
    negative = report.classes[HARD_NEGATIVE]
    assert (positive.precision, positive.recall, positive.support) == (pytest.approx(2 / 3), 1.0, 2)
    assert (negative.precision, negative.recall) == (1.0, 0.5)
    assert report.accuracy == 0.75 and not report.chosen_on_data


def test_threshold_never_splits_equal_scores():
    assert best_threshold([0.5, 0.5, 0.1], [True, False, False]) == 0.5


@given(st.lists(st.tuples(st.floats(-5, 5, allow_nan=False), st.booleans()), min_size=1, max_size=25))
def test_best_threshold_beats_every_other_cut(candidates):
    scores = [s for s, _ in candidates]
    labels = [y for _, y in candidates]
    best = classify(scores, labels).classes[POSITIVE].f1
    for cut in set(scores):
        assert classify(scores, labels, threshold=cut).classes[POSITIVE].f1 <= best + 1e-12


@pytest.mark.parametrize("module", ["dpr_pg.evaluation.metrics", "dpr_pg.evaluation.classification",
                                    "dpr_pg.evaluation.answers", "dpr_pg.evaluation.qa", "dpr_pg.evaluation.audit"])
def test_docstring_examples_hold(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
