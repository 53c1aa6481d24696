"""Evaluate retrieval on your own questions, inside your own database, with your own filters.

For each question, :func:`evaluate` retrieves ``depth`` passages with :func:`dpr_pg.search.api.search_many`
(the same code path as ``dpr-pg search``) and decides which hits are gold:

- with ``gold="auto"`` (the default) a question's gold passages are its ``gold_ids`` when at least one
  of them is stored in the collection, and otherwise the hits whose text contains one of its answers
  (DPR's has_answer, see :mod:`dpr_pg.evaluation.answers`); ``"ids"`` and ``"answers"`` force one or the other.
- the metrics (see :mod:`dpr_pg.evaluation.metrics`) follow the DPR paper: top-k accuracy, MRR, the 0-based rank of
  the first gold (``depth`` when missing), recall@k for questions with stored gold ids.
- the seed card's view (see :mod:`dpr_pg.evaluation.classification`): each question's gold passages are positives
  and its best ``hard_negatives`` retrieved non-gold passages are hard negatives, all scored by the inner
  product with the question, and classified at a threshold.
- with a ``reader``, the extractive reader reads each question's first ``reader_passages`` hits and its best
  span is scored against the question's answer strings: SQuAD's exact match and F1, normalised as
  ``answer_style`` says (see :mod:`dpr_pg.evaluation.answers`), over the questions that have answers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.engine import Connection, Engine

from dpr_pg.evaluation.answers import AnswerMatcher, AnswerStyle
from dpr_pg.evaluation.classification import ClassificationReport, classify
from dpr_pg.errors import EvaluationError
from dpr_pg.evaluation.metrics import (
    DEFAULT_KS,
    QuestionOutcome,
    ReaderMetrics,
    RetrievalMetrics,
    TieRule,
    aggregate,
    first_gold_rank,
    question_outcome,
    reader_metrics,
)
from dpr_pg.evaluation.qa import QAItem, as_items, read_questions
from dpr_pg.db.replicas import read_connection
from dpr_pg.db.revision import require_schema
from dpr_pg.ingest.squad import passage_id
from dpr_pg.search.api import search_many
from dpr_pg.search.no_hits import explain_no_hits

if TYPE_CHECKING:
    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.encoders.question_side import QuestionSide
    from dpr_pg.filters import Filter
    from dpr_pg.reader import Reader
    from dpr_pg.search.api import Hit, Mode

GoldRule = Literal["auto", "ids", "answers"]
BATCH = 64  # questions per search transaction


@dataclass(frozen=True)
class CardView:
    """Positive vs hard-negative classification, and the positive's mean rank among its candidates."""

    questions: int
    hard_negatives: int
    mean_positive_rank: float
    report: ClassificationReport

    def as_dict(self) -> dict[str, Any]:
        return {"questions": self.questions, "hard_negatives": self.hard_negatives,
                "mean_positive_rank": self.mean_positive_rank, **self.report.as_dict()}


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate` measured. ``as_dict()`` is what ``dpr-pg eval --json`` prints."""

    metrics: RetrievalMetrics
    seconds: float
    collection: str | None
    mode: str
    judged_by_ids: int
    judged_by_answers: int
    unknown_gold_ids: int
    card: CardView | None
    paths: dict[str, int] = field(default_factory=dict)
    reader: ReaderMetrics | None = None

    def as_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "questions": m.questions,
            "top_k_accuracy": {str(k): v for k, v in m.top_k_accuracy.items()},
            "mrr": m.mrr,
            "mean_rank": m.mean_rank,
            "median_rank": m.median_rank,
            "recall_at_k": None if m.recall_at_k is None else {str(k): v for k, v in m.recall_at_k.items()},
            "recall_questions": m.recall_questions,
            "depth": m.depth,
            "seconds": self.seconds,
            "collection": self.collection,
            "mode": self.mode,
            "judged_by_ids": self.judged_by_ids,
            "judged_by_answers": self.judged_by_answers,
            "unknown_gold_ids": self.unknown_gold_ids,
            "search_paths": self.paths,
            "card": None if self.card is None else self.card.as_dict(),
            "reader": None if self.reader is None else self.reader.as_dict(),
        }


def load_questions(questions: str | Path | Sequence[QAItem | dict[str, Any]], *, limit: int | None = None) -> list[QAItem]:
    """Questions from a file path (SQuAD JSON or JSONL) or a list, cut to the first ``limit``.

    >>> load_questions([{"question": "¿Quién pintó el Guernica?", "answers": ["Picasso"]}])[0].answers
    ('Picasso',)
    """
    if isinstance(questions, (str, Path)):
        items = read_questions(questions, gold_id=lambda title, _index, context: passage_id(title, context))
    else:
        items = as_items(questions)
    if limit is not None:
        if limit < 1:
            raise EvaluationError(f"expected limit >= 1, not {limit}")
        items = items[:limit]
    if not items:
        raise EvaluationError("expected at least one question to evaluate, not none")
    return items


def question_vectors(encoder: EncoderPair | QuestionSide | None, items: Sequence[QAItem], query_vectors: Any = None) -> np.ndarray:
    """The questions' vectors: the first ``len(items)`` rows of ``query_vectors``, else encoded by ``encoder``.

    >>> question_vectors(None, items, np.ones((len(items), 768))).shape  # doctest: +SKIP
    (12, 768)
    """
    if query_vectors is None:
        if encoder is None:
            raise EvaluationError("expected an encoder pair to encode the questions, or query_vectors=, not neither")
        return encoder.question.encode([item.question for item in items])
    vectors = np.asarray(query_vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) < len(items):
        raise EvaluationError(f"expected query_vectors of shape ({len(items)}, dim), one row per question in order, "
                              f"not {vectors.shape}")
    return vectors[:len(items)]


def check_collection(conn: Connection, collection: str | None, filter: Filter = None) -> None:
    """Fail early when the schema is missing, or no passage of the collection matches the filter (nothing to evaluate).

    The CLI calls it before loading the encoders.
    """
    require_schema(conn)
    nothing = explain_no_hits(conn, collection=collection, filter=filter)
    if nothing is not None:
        raise EvaluationError(f"expected passages to search, but {nothing.message} (dpr-pg doctor lists the "
                              "collections)")


def _stored_ids(conn: Connection, collection: str | None, ids: set[str]) -> set[str]:
    if not ids:
        return set()
    stmt = sa.text("SELECT DISTINCT external_id FROM dpr_pg.passages WHERE external_id = ANY(:ids)"
                   " AND (CAST(:collection AS text) IS NULL OR collection = :collection)")
    return set(conn.execute(stmt, {"ids": sorted(ids), "collection": collection}).scalars())


def _inner_products(conn: Connection, vector: np.ndarray, collection: str | None,
                    external_ids: Sequence[str]) -> dict[str, float]:
    """The inner product of the question with each stored passage (the best one across collections)."""
    if not external_ids:
        return {}
    stmt = sa.text(
        "SELECT external_id, max(inner_product(embedding, :q)) FROM dpr_pg.passages "
        "WHERE external_id = ANY(:ids) AND (CAST(:collection AS text) IS NULL OR collection = :collection) "
        "GROUP BY external_id"
    ).bindparams(sa.bindparam("q", type_=Vector(vector.size)))
    rows = conn.execute(stmt, {"q": vector, "ids": list(external_ids), "collection": collection})
    return {eid: float(score) for eid, score in rows}


def _check_options(ks: Sequence[int], depth: int, gold: str, hard_negatives: int) -> None:
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise EvaluationError(f"expected ks to be positive integers like 1,5,10,20,100, not {list(ks)!r}")
    if depth < max(ks):
        raise EvaluationError(f"expected depth >= the largest k ({max(ks)}), not {depth}; raise --depth or drop that k")
    if gold not in ("auto", "ids", "answers"):
        raise EvaluationError(f"expected gold to be 'auto', 'ids' or 'answers', not {gold!r}")
    if hard_negatives < 0:
        raise EvaluationError(f"expected hard_negatives >= 0, not {hard_negatives}")


def evaluate(
    engine: Engine,
    encoder: EncoderPair | QuestionSide | None,
    questions: str | Path | Sequence[QAItem | dict[str, Any]],
    *,
    collection: str | None = None,
    filter: Filter = None,
    mode: Mode = "dense",
    ks: Sequence[int] = DEFAULT_KS,
    depth: int | None = None,
    ties: TieRule = "pessimistic",
    gold: GoldRule = "auto",
    answer_style: AnswerStyle = "spanish",
    limit: int | None = None,
    hard_negatives: int = 10,
    threshold: float | None = None,
    query_vectors: Any = None,
    reader: Reader | None = None,
    reader_passages: int = 10,
    no_answer_threshold: float | None = None,
) -> EvaluationReport:
    """Retrieve for each question and measure top-k accuracy, MRR, ranks, recall@k and the card's view.

    ``questions`` is a SQuAD JSON or JSONL path, or a list of :class:`QAItem` / dicts. ``depth`` (default:
    the largest k) is how many hits are retrieved per question. ``threshold`` fixes the card view's
    score threshold; by default the one with the best positive F1 on these questions is chosen.
    ``query_vectors`` (one row per question, in order) replaces encoding: ``encoder`` may then be None,
    which also skips the check that the collection was encoded by the same pair. ``reader`` adds the
    reader's exact match and F1 (``report.reader``): it reads each question's first ``reader_passages``
    hits, with ``no_answer_threshold`` as in :func:`dpr_pg.ask`.

    >>> report = evaluate(engine, pair, "dev.questions.jsonl", collection="squad_es")  # doctest: +SKIP
    >>> report.metrics.top_k_accuracy[20], report.as_dict()["mrr"]  # doctest: +SKIP
    (0.71, 0.48)
    """
    ks = tuple(sorted(set(ks)))
    depth = depth or max(ks)
    _check_options(ks, depth, gold, hard_negatives)
    if reader is not None and not 1 <= reader_passages <= depth:
        raise EvaluationError(f"expected reader_passages between 1 and the depth ({depth}), not {reader_passages}")
    items = load_questions(questions, limit=limit)
    started = time.perf_counter()
    with engine.connect() as conn:
        check_collection(conn, collection, filter)
        stored = _stored_ids(conn, collection, {g for item in items for g in item.gold_ids})
    vectors = question_vectors(encoder, items, query_vectors)
    outcomes: list[QuestionOutcome] = []
    cand_scores: list[float] = []
    cand_labels: list[bool] = []
    positive_ranks: list[int] = []
    by_ids = by_answers = unknown = 0
    paths: dict[str, int] = {}
    predictions: list[str | None] = []
    expected: list[tuple[str, ...]] = []
    reading_seconds = 0.0
    for start in range(0, len(items), BATCH):
        batch = items[start:start + BATCH]
        batch_vectors = vectors[start:start + BATCH]
        with read_connection(engine) as conn:
            results = search_many(conn, list(batch_vectors), encoder=encoder, k=depth, filter=filter,
                                  collection=collection, mode=mode, query_texts=[i.question for i in batch])
            for item, vector, hits in zip(batch, batch_vectors, results):
                paths[hits.plan.path] = paths.get(hits.plan.path, 0) + 1
                golds = [g for g in item.gold_ids if g in stored] if gold != "answers" else []
                unknown += gold != "answers" and bool(item.gold_ids) and not golds
                judge_by_ids = bool(golds) or gold == "ids"
                by_ids += judge_by_ids
                by_answers += not judge_by_ids
                is_gold = _judge(item, hits, golds if judge_by_ids else None, answer_style)
                gold_count = len(golds) if judge_by_ids and golds else None
                scores = [h.score for h in hits]
                outcomes.append(question_outcome(scores, is_gold, depth=depth, ks=ks, gold_count=gold_count, ties=ties))
                candidate = _card_candidates(conn, vector, collection, hits, is_gold, golds, hard_negatives)
                if candidate is not None:
                    c_scores, c_labels = candidate
                    cand_scores += c_scores
                    cand_labels += c_labels
                    positive_ranks.append(first_gold_rank(c_scores, c_labels, depth=len(c_scores), ties=ties))
        if reader is not None:  # outside the transaction: reading holds no connection
            read_started = time.perf_counter()
            answered = [(item, hits) for item, hits in zip(batch, results) if item.answers]
            readings = reader.read_many([item.question for item, _ in answered],
                                        [[hit.text for hit in hits[:reader_passages]] for _, hits in answered],
                                        no_answer_threshold=no_answer_threshold) if answered else []
            predictions += [r.answers[0].text if r.answers else None for r in readings]
            expected += [item.answers for item, _ in answered]
            reading_seconds += time.perf_counter() - read_started
    seconds = time.perf_counter() - started
    card = None
    if positive_ranks and any(cand_labels):
        card = CardView(questions=len(positive_ranks), hard_negatives=hard_negatives,
                        mean_positive_rank=statistics.fmean(positive_ranks),
                        report=classify(cand_scores, cand_labels, threshold=threshold))
    reading = None
    if reader is not None and predictions:
        reading = reader_metrics(predictions, expected, style=answer_style, passages=reader_passages,
                                 seconds=reading_seconds)
    return EvaluationReport(aggregate(outcomes, depth=depth, ks=ks), seconds, collection, mode,
                            by_ids, by_answers, unknown, card, paths, reading)


def _judge(item: QAItem, hits: Sequence[Hit], golds: Sequence[str] | None, style: AnswerStyle) -> list[bool]:
    """Which hits are gold: those in ``golds``, or (``golds`` None) those whose text holds an answer."""
    if golds is not None:
        gold_set = set(golds)
        return [h.external_id in gold_set for h in hits]
    matcher = AnswerMatcher(item.answers, style=style)
    return [matcher.found_in(h.text) for h in hits]


def _card_candidates(conn: Connection, vector: np.ndarray, collection: str | None, hits: Sequence[Hit],
                     is_gold: Sequence[bool], golds: Sequence[str],
                     hard_negatives: int) -> tuple[list[float], list[bool]] | None:
    """Inner-product scores of a question's positives and hard negatives; None without a positive."""
    positives = list(dict.fromkeys([*golds, *(h.external_id for h, g in zip(hits, is_gold) if g)]))
    if not positives:
        return None
    negatives = [h.external_id for h, g in zip(hits, is_gold) if not g][:hard_negatives]
    scores = _inner_products(conn, vector, collection, positives + negatives)
    c_scores = [scores[e] for e in positives if e in scores] + [scores[e] for e in negatives if e in scores]
    c_labels = [True] * sum(e in scores for e in positives) + [False] * sum(e in scores for e in negatives)
    return (c_scores, c_labels) if any(c_labels) else None
