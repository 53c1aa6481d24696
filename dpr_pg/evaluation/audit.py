"""ANN-vs-exact audit: how much of the exact top-k does the HNSW path find, and at which ef_search?

:func:`audit_ann` encodes a sample of questions once, takes the exact top-k (inner product over every
matching row) as the truth, and measures recall@k of:

- the search path the planner picks at the current settings (``current``), which may itself be exact
  when the collection or the filter's match is small;
- the HNSW index path forced (``exact_threshold=0``) at each ``hnsw.ef_search`` in ``ef_search_values``.

The recommendation is the smallest ef_search whose mean recall@k reaches ``target_recall``. Hits the
index found with a score equal to the k-th exact score count as found, so ties at the cut-off are not
held against the index.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpr_pg.errors import EvaluationError
from dpr_pg.evaluation.evaluate import check_collection, load_questions, question_vectors
from dpr_pg.evaluation.qa import QAItem
from dpr_pg.search.api import search_many

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.encoders.question_side import QuestionSide
    from dpr_pg.filters import Filter
    from dpr_pg.search.api import Hits

DEFAULT_EF_SEARCH_VALUES: tuple[int, ...] = (10, 20, 40, 64, 100, 200, 400, 800, 1000)


@dataclass(frozen=True)
class EfSearchRecall:
    """Recall@k of the index path at one hnsw.ef_search, and the median milliseconds per question.

    ``fell_back`` counts questions the index path could not answer with k rows, so that search/api.py
    answered them exactly (a selective filter, or a collection smaller than k).
    """

    ef_search: int
    recall: float
    min_recall: float
    median_ms: float
    fell_back: int


@dataclass(frozen=True)
class AuditReport:
    """What :func:`audit_ann` measured; ``recommended_ef_search`` is None when no value reached the target."""

    questions: int
    k: int
    target_recall: float
    current_recall: float
    current_paths: dict[str, int]
    sweep: list[EfSearchRecall]
    recommended_ef_search: int | None
    exact_median_ms: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "questions": self.questions,
            "k": self.k,
            "target_recall": self.target_recall,
            "current_recall": self.current_recall,
            "current_paths": self.current_paths,
            "sweep": [vars(row).copy() for row in self.sweep],
            "recommended_ef_search": self.recommended_ef_search,
            "exact_median_ms": self.exact_median_ms,
            "seconds": self.seconds,
        }


def recall_against_exact(found: Sequence[tuple[str, float]], exact: Sequence[tuple[str, float]]) -> float:
    """Share of the exact top-k that ``found`` holds; a found score tied with the k-th exact one counts.

    >>> recall_against_exact([("a", 0.9), ("c", 0.5)], [("a", 0.9), ("b", 0.5)])
    1.0
    >>> recall_against_exact([("a", 0.9), ("c", 0.1)], [("a", 0.9), ("b", 0.5)])
    0.5
    """
    if not exact:
        return 1.0
    truth = {eid for eid, _ in exact}
    cutoff = min(score for _, score in exact)
    hits = sum(1 for eid, score in found if eid in truth or score >= cutoff - 1e-6 * max(1.0, abs(cutoff)))
    return min(hits, len(exact)) / len(exact)


def _pairs(hits: Hits) -> list[tuple[str, float]]:
    return [(f"{h.collection}\x00{h.external_id}", h.score) for h in hits]


def audit_ann(
    engine: Engine,
    encoder: EncoderPair | QuestionSide | None,
    questions: str | Path | Sequence[QAItem | dict[str, Any]],
    *,
    collection: str | None = None,
    filter: Filter = None,
    k: int = 10,
    sample: int = 100,
    target_recall: float = 0.95,
    ef_search_values: Sequence[int] = DEFAULT_EF_SEARCH_VALUES,
    query_vectors: Any = None,
) -> AuditReport:
    """Recall@k of the HNSW path against exact search, and the smallest ef_search reaching ``target_recall``.

    Values of ``ef_search_values`` below k are raised to k (pgvector returns at most ef_search rows).
    ``query_vectors`` (one row per question, in order) replaces encoding, as in :func:`evaluate`.

    >>> report = audit_ann(engine, pair, "dev.questions.jsonl", collection="squad_es", k=10)  # doctest: +SKIP
    >>> report.recommended_ef_search  # doctest: +SKIP
    64
    """
    if not 0.0 < target_recall <= 1.0:
        raise EvaluationError(f"expected a target recall in (0, 1], not {target_recall}")
    if not isinstance(sample, int) or sample < 1:
        raise EvaluationError(f"expected a sample of at least 1 question, not {sample!r}")
    values = sorted({max(k, int(v)) for v in ef_search_values})
    if not values or values[-1] > 1000:
        raise EvaluationError(f"expected ef_search values between 1 and 1000 (pgvector's limit), not {list(ef_search_values)}")
    items = load_questions(questions, limit=sample)
    with engine.connect() as conn:
        check_collection(conn, collection, filter)
    started = time.perf_counter()
    vectors = list(question_vectors(encoder, items, query_vectors))
    options = {"encoder": encoder, "k": k, "filter": filter, "collection": collection}
    exact, exact_millis = [], []
    for vector in vectors:
        t0 = time.perf_counter()
        exact.append(_pairs(search_many(engine, [vector], mode="exact", **options)[0]))
        exact_millis.append((time.perf_counter() - t0) * 1000)
    current = search_many(engine, vectors, mode="dense", **options)
    paths: dict[str, int] = {}
    for hits in current:
        label = hits.plan.path + (f" (ef_search {hits.plan.ef_search})" if hits.plan.ef_search else "")
        paths[label] = paths.get(label, 0) + 1
    current_recall = statistics.fmean(recall_against_exact(_pairs(h), e) for h, e in zip(current, exact))
    sweep = []
    for ef in values:
        recalls, millis, fell_back = [], [], 0
        for vector, truth in zip(vectors, exact):
            t0 = time.perf_counter()
            hits = search_many(engine, [vector], mode="dense", ef_search=ef, exact_threshold=0, **options)[0]
            millis.append((time.perf_counter() - t0) * 1000)
            fell_back += hits.plan.fell_back or hits.plan.path == "exact"
            recalls.append(recall_against_exact(_pairs(hits), truth))
        sweep.append(EfSearchRecall(ef, statistics.fmean(recalls), min(recalls), statistics.median(millis), fell_back))
    recommended = next((row.ef_search for row in sweep if row.recall >= target_recall), None)
    return AuditReport(len(items), k, target_recall, current_recall, paths, sweep, recommended,
                       statistics.median(exact_millis), time.perf_counter() - started)
