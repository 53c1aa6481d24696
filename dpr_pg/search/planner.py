"""Which path a dense search takes: HNSW, iterative HNSW over a filter, or exact over the filtered rows.

Plain HNSW with a WHERE clause comes back short or with poor recall when the filter is selective
(pgvector #259, #480). The planner looks at the planner's row estimate first (cheap): at or below
``exact_threshold`` rows it picks exact search (right at any size, so a low estimate only costs
time), and also up to ``EXACT_MAX_ROWS`` rows when they are at most ``exact_selectivity`` of the
table (iterative scans lose recall that narrow); up to ``COUNT_BAND`` times ``exact_threshold`` it
counts at most ``exact_threshold + 1`` matching rows to decide. A table without statistics (never
analysed: see :mod:`dpr_pg.search.statistics`) makes the estimate a guess, so a small one is never taken
at its word: the bounded count decides. Otherwise it runs pgvector 0.8's
iterative index scan; if that still returns fewer than k rows, search/api.py answers exactly.
The numbers come from :mod:`dpr_pg.tuning`; ``dpr_pg._search_plan`` in sql/search.sql applies the
same rules for the SQL functions, and tests/test_search.py runs both over the same rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from dpr_pg.search.statistics import TABLE_FACTS
from dpr_pg.db.models import Passage
# The numbers live in dpr_pg.tuning, shared with the SQL functions; re-exported here for callers.
from dpr_pg.tuning import (COUNT_BAND, EXACT_MAX_ROWS, EXACT_SELECTIVITY, EXACT_THRESHOLD, FILTERED_EF_SEARCH,
                           ITERATIVE_SCAN_VERSION, MAX_EF_SEARCH, PARTITIONS_MIN_EF_SEARCH, UNFILTERED_EF_SEARCH)


@dataclass(frozen=True)
class SearchPlan:
    """The path a search took, and why.

    ``path`` is ``"hnsw"`` (index, no filter), ``"hnsw-iterative"`` (index with pgvector 0.8's
    iterative scan under a filter), ``"exact"`` (inner product over every matching row) or
    ``"hybrid"``. ``estimated_rows`` is PostgreSQL's estimate of the matching rows and
    ``matching_rows`` a count bounded at the threshold + 1 (None when not needed).
    ``explain`` holds PostgreSQL's EXPLAIN of the query that ran when ``explain=True``.
    ``row_security``: row-level security limited the rows this role sees (see :mod:`dpr_pg.db.tenancy`).
    ``storage``: what the HNSW index compares (see :mod:`dpr_pg.db.storage`).
    ``filtered_index``: the filtered HNSW index whose rows the filter covers (see :mod:`dpr_pg.db.filtered`).
    """

    path: str
    reason: str
    estimated_rows: float | None = None
    matching_rows: int | None = None
    ef_search: int | None = None
    fell_back: bool = False
    explain: str | None = None
    row_security: bool = False
    storage: str = "vector"
    filtered_index: str | None = None

    def with_(self, **changes: Any) -> SearchPlan:
        return replace(self, **changes)


class Explain(sa.sql.expression.Executable, sa.sql.expression.ClauseElement):
    """``EXPLAIN (options) <statement>`` with the statement's bound parameters (SQLAlchemy recipe).

    Cacheable: the planner sends one per filtered search, and compiling it afresh each time cost more
    Python than the rest of the plan. Its cache key is the statement's own (whose bound values are
    extracted per execution, as for any cached statement) and the options.
    """

    inherit_cache = True
    _traverse_internals = [("statement", InternalTraversal.dp_clauseelement),
                           ("options", InternalTraversal.dp_string)]
    # Its rows (the plan) are read by position: no column of the statement maps onto them.
    _all_selected_columns: list[Any] = []

    def __init__(self, statement: sa.sql.expression.ClauseElement, options: str = "FORMAT JSON") -> None:
        self.statement = statement
        self.options = options


@compiles(Explain)
def _compile_explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return f"EXPLAIN ({element.options}) " + compiler.process(element.statement, **kw)


@dataclass(frozen=True)
class CollectionPartition:
    """The partition a search of one collection reads: its rows as of the last ANALYZE, and whether
    the search reads the whole collection (no filter beyond the collection)."""

    collection: str
    rows: float
    whole: bool


@dataclass(frozen=True)
class FilteredRows:
    """The filtered HNSW index a search's filter covers (see :mod:`dpr_pg.db.filtered`): its name, its rows
    (those of the searched collection's partition, when the table is partitioned and one is searched),
    whether the filter is exactly its document, and ``collection``: the collection searched on an
    unpartitioned table, a condition within the index's rows."""

    name: str
    rows: float
    exact: bool
    collection: str | None = None


@dataclass(frozen=True)
class PartitionSpread:
    """How a table partitioned by collection spreads its rows, for a search of every collection: the
    number of partitions, the largest one's rows and all of theirs (as of their last ANALYZE), and
    whether every partition was analysed (else the sizes are unknown)."""

    partitions: int
    largest: float
    rows: float
    analyzed: bool


def spread_ef_search(base: int, k: int, spread: PartitionSpread | None) -> int:
    """``hnsw.ef_search`` for a search that walks every partition's HNSW index, where one index would take ``base``.

    PostgreSQL merges the partitions' index scans, and each makes its whole first search at this
    ef_search before the first row comes: each keeps the largest partition's share of ``base``
    candidates, rounded up, and at least ``PARTITIONS_MIN_EF_SEARCH`` (so that one partition that holds
    a question's whole top k, as when collections follow topics, still finds it), but never more than
    ``base``, nor fewer than ``k``. Without a spread, or with a partition never analysed: ``max(k, base)``.
    sql/search.sql's ``dpr_pg._search_plan`` computes the same, in the same order of operations.

    >>> spread_ef_search(250, 10, PartitionSpread(11, 11_111, 100_000, True))
    160
    >>> spread_ef_search(400, 10, PartitionSpread(2, 60_000, 100_000, True))
    240
    >>> spread_ef_search(250, 200, PartitionSpread(11, 11_111, 100_000, True))
    200
    """
    if spread is None or not spread.analyzed or spread.rows <= 0:
        return max(k, base)
    return max(k, min(base, max(PARTITIONS_MIN_EF_SEARCH, math.ceil(base * spread.largest / spread.rows))))


def _spread_reason(spread: PartitionSpread | None, base: int, ef_search: int) -> str:
    if spread is None or ef_search == base:
        return ""
    share = spread.largest / spread.rows
    return (f"; the HNSW indexes of {spread.partitions} partitions, merged: the largest holds {share:.0%} of the "
            f"rows: hnsw.ef_search {ef_search} in each (its share of one index's {base}, at least "
            f"{PARTITIONS_MIN_EF_SEARCH} and k)")


def version_tuple(version: str | None) -> tuple[int, ...]:
    """``"0.8.5"`` → ``(0, 8, 5)``."""
    if not version:
        return (0,)
    return tuple(int(part) for part in version.split("-")[0].split(".") if part.isdigit())


def plan(
    conn: Connection,
    where: sa.ColumnElement[bool] | None,
    *,
    k: int,
    pgvector_version: tuple[int, ...],
    exact: bool = False,
    exact_threshold: int = EXACT_THRESHOLD,
    exact_selectivity: float = EXACT_SELECTIVITY,
    ef_search: int | None = None,
    row_security: bool = False,
    table: tuple[float, bool] | None = None,
    partition: CollectionPartition | None = None,
    partitions: PartitionSpread | None = None,
    filtered: FilteredRows | None = None,
) -> SearchPlan:
    """Choose the path for a top-``k`` dense search over the rows matching ``where`` (None: all rows).

    ``row_security``: row-level security hides rows from this role (see :mod:`dpr_pg.db.tenancy`).
    PostgreSQL then estimates non-leakproof conditions (a metadata filter's ``@>``) without its
    statistics, and every search is filtered by the policy: the planner counts the visible matches
    instead, bounded at ``exact_threshold + 1``.
    ``table`` is dpr_pg.passages' (reltuples, has statistics) when the caller has read them
    (:data:`dpr_pg.search.statistics.TABLE_FACTS`); else the planner reads them when it needs them.
    ``partition``: the search names one collection of a table partitioned by collection (see
    :mod:`dpr_pg.db.partitions`). Its partition has an HNSW index of its own, so a search of the
    whole collection walks that index unfiltered, and a filter's share is judged against the
    partition's rows rather than the table's.
    ``partitions``: the search spans every partition of a table partitioned by collection (no
    ``collection``); unless ``ef_search`` is given, each partition's index scan takes
    :func:`spread_ef_search` of the one index's ef_search.
    ``filtered``: the filter holds every key/value of a filtered HNSW index (see :mod:`dpr_pg.db.filtered`).
    A filter that is exactly its document walks that small graph unfiltered (path ``hnsw``), or, with
    a collection of an unpartitioned table, with an iterative scan that keeps the collection's rows;
    with further conditions, their share is judged against the index's rows rather than the table's.
    An index (or the searched partition's part of it) of fewer than ``k`` rows is left aside.

    >>> plan(conn, None, k=10, pgvector_version=(0, 8, 5)).path  # doctest: +SKIP
    'hnsw'
    """
    if exact:
        return SearchPlan("exact", "mode='exact' asks for an exact scan")
    if row_security:
        return _plan_under_row_security(conn, where, k=k, pgvector_version=pgvector_version,
                                        exact_threshold=exact_threshold, ef_search=ef_search)
    spread = partitions if partition is None else None
    if where is None:
        if k > MAX_EF_SEARCH:
            return SearchPlan("exact", f"k={k} is above hnsw.ef_search's limit of {MAX_EF_SEARCH}")
        if ef_search:
            return SearchPlan("hnsw", "no filter: HNSW index", ef_search=max(k, ef_search))
        unfiltered_ef = spread_ef_search(UNFILTERED_EF_SEARCH, k, spread)
        return SearchPlan("hnsw", "no filter: HNSW index" + _spread_reason(spread, max(k, UNFILTERED_EF_SEARCH),
                                                                           unfiltered_ef), ef_search=unfiltered_ef)
    if pgvector_version < ITERATIVE_SCAN_VERSION:
        shown = ".".join(map(str, pgvector_version))
        return SearchPlan("exact", f"pgvector {shown} has no iterative index scans: exact over the filtered rows")
    if k > MAX_EF_SEARCH:
        return SearchPlan("exact", f"k={k} is above hnsw.ef_search's limit of {MAX_EF_SEARCH}")
    note = ""
    if filtered is not None and filtered.rows < k:  # it cannot hold a top k: walking it would end in an exact scan
        filtered = None
    if filtered is not None:
        if filtered.exact:
            walked = (f"the filter is the document of the filtered HNSW index {filtered.name} (about "
                      f"{filtered.rows:.0f} rows)")
            chosen_ef = max(k, ef_search or UNFILTERED_EF_SEARCH)
            if filtered.collection is not None:  # PostgreSQL's estimate of the pair would assume them independent
                return SearchPlan("hnsw-iterative", walked + f", and collection {filtered.collection!r} filters within "
                                  "it: iterative scan of that index", estimated_rows=filtered.rows,
                                  ef_search=chosen_ef, filtered_index=filtered.name)
            return SearchPlan("hnsw", walked + ": that index, unfiltered", estimated_rows=filtered.rows,
                              ef_search=chosen_ef, filtered_index=filtered.name)
        note = f" within the filtered HNSW index {filtered.name} (about {filtered.rows:.0f} rows)"
        partition, table = None, (filtered.rows, table[1] if table is not None else True)
    if partition is not None and partition.rows > exact_threshold:
        if partition.whole:
            return SearchPlan("hnsw-iterative", f"collection {partition.collection!r} is a partition of about "
                              f"{partition.rows:.0f} rows with its own HNSW index: the index of the partition",
                              estimated_rows=partition.rows,
                              ef_search=max(k, ef_search or UNFILTERED_EF_SEARCH))
        table = (partition.rows, table[1] if table is not None else True)
    chosen = _plan_filtered(conn, where, k=k, exact_threshold=exact_threshold, exact_selectivity=exact_selectivity,
                            ef_search=ef_search, table=table, spread=spread)
    if filtered is None:
        return chosen
    return chosen.with_(reason=chosen.reason + ";" + note, filtered_index=filtered.name)


def _plan_filtered(conn: Connection, where: sa.ColumnElement[bool], *, k: int, exact_threshold: int,
                   exact_selectivity: float, ef_search: int | None, table: tuple[float, bool] | None,
                   spread: PartitionSpread | None) -> SearchPlan:
    """The rules for a filter, with ``table`` the rows its share is judged against."""
    probe = sa.select(sa.literal(1)).select_from(Passage).where(where)
    estimate = float(conn.execute(Explain(probe)).scalar_one()[0]["Plan"]["Plan Rows"])
    chosen_ef = max(k, ef_search) if ef_search else spread_ef_search(FILTERED_EF_SEARCH, k, spread)
    spread_note = "" if ef_search else _spread_reason(spread, max(k, FILTERED_EF_SEARCH), chosen_ef)
    rows, analyzed = -1.0, True
    if estimate <= max(COUNT_BAND * exact_threshold, EXACT_MAX_ROWS):  # a rule below may act on the estimate
        rows, analyzed = table if table is not None else conn.execute(TABLE_FACTS).one()
        rows = float(rows)
    if not analyzed:  # no statistics: the estimate is PostgreSQL's fixed guess, never a sign of a narrow filter
        guess = f"dpr_pg.passages has no statistics yet (never analyzed), so the estimate of {estimate:.0f} rows " \
                "is a guess: "
        matches = _bounded_count(conn, probe, exact_threshold)
        if matches <= exact_threshold:
            return SearchPlan("exact", guess + f"the filter matches {matches} rows (<= {exact_threshold}): exact scan",
                              estimated_rows=estimate, matching_rows=matches)
        return SearchPlan("hnsw-iterative", guess + f"the filter matches more than {exact_threshold} rows: "
                          "iterative HNSW scan" + spread_note, estimated_rows=estimate, matching_rows=matches,
                          ef_search=chosen_ef)
    if estimate <= exact_threshold:  # exact is right at any size; a bounded count would cost as much
        return SearchPlan("exact", f"the filter matches about {estimate:.0f} rows (<= {exact_threshold}): exact scan",
                          estimated_rows=estimate)
    if exact_selectivity > 0 and estimate <= EXACT_MAX_ROWS:
        if estimate <= exact_selectivity * rows:
            return SearchPlan("exact", f"the filter matches about {estimate:.0f} rows, {estimate / rows:.2%} of the "
                              f"table (<= {exact_selectivity:.0%}): too narrow for iterative HNSW: exact scan",
                              estimated_rows=estimate)
    if estimate > COUNT_BAND * exact_threshold:
        return SearchPlan("hnsw-iterative", f"the filter matches about {estimate:.0f} rows: iterative HNSW scan"
                          + spread_note, estimated_rows=estimate, ef_search=chosen_ef)
    matches = _bounded_count(conn, probe, exact_threshold)
    if matches <= exact_threshold:
        return SearchPlan("exact", f"the filter matches {matches} rows (<= {exact_threshold}): exact scan",
                          estimated_rows=estimate, matching_rows=matches)
    return SearchPlan("hnsw-iterative", f"the filter matches more than {exact_threshold} rows: iterative HNSW scan"
                      + spread_note, estimated_rows=estimate, matching_rows=matches, ef_search=chosen_ef)


def _plan_under_row_security(conn: Connection, where: sa.ColumnElement[bool] | None, *, k: int,
                             pgvector_version: tuple[int, ...], exact_threshold: int,
                             ef_search: int | None) -> SearchPlan:
    if k > MAX_EF_SEARCH:
        return SearchPlan("exact", f"k={k} is above hnsw.ef_search's limit of {MAX_EF_SEARCH}", row_security=True)
    probe = sa.select(sa.literal(1)).select_from(Passage)
    if where is not None:
        probe = probe.where(where)
    matches = _bounded_count(conn, probe, exact_threshold)
    visible = "the rows this role may read" + ("" if where is None else " that match the filter")
    if matches <= exact_threshold:
        return SearchPlan("exact", f"row-level security: {visible} are {matches} (<= {exact_threshold}): exact scan",
                          matching_rows=matches, row_security=True)
    if pgvector_version < ITERATIVE_SCAN_VERSION:
        shown = ".".join(map(str, pgvector_version))
        return SearchPlan("exact", f"row-level security: pgvector {shown} has no iterative index scans: exact scan",
                          matching_rows=matches, row_security=True)
    return SearchPlan("hnsw-iterative", f"row-level security: {visible} are more than {exact_threshold}: "
                      "iterative HNSW scan", matching_rows=matches, ef_search=max(k, ef_search or FILTERED_EF_SEARCH),
                      row_security=True)


def _bounded_count(conn: Connection, probe: sa.Select[Any], exact_threshold: int) -> int:
    """The rows ``probe`` matches, counted up to ``exact_threshold + 1``."""
    bounded = sa.select(sa.func.count()).select_from(probe.limit(exact_threshold + 1).subquery())
    return int(conn.execute(bounded).scalar_one())
