"""Search: a question (or a precomputed query vector) → the top-k passages by inner product.

``search`` plans (see :mod:`dpr_pg.search.planner`), sets pgvector's scan settings with ``set_config(...,
is_local => true)`` inside the query's own transaction and restores them afterwards (in a caller's
transaction; one opened for the search alone just ends), and never
returns fewer than ``min(k, matching rows)`` hits. ``search_statement`` is the same query as a
SQLAlchemy ``Select`` for an application's own Session, joins and WHERE clauses.
"""

from __future__ import annotations

import functools
import math
import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.engine import Connection, Engine

from dpr_pg.encoders.fingerprint import STORED_COLUMNS, STORED_SQL, check_encoder, mismatch_error
from dpr_pg.search import planner as _planner
from dpr_pg.search.planner import Explain, SearchPlan
from dpr_pg.search.orm import model_search_statement
from dpr_pg.search.query_vector import vector_binding
from dpr_pg.search.statistics import TABLE_FACTS
from dpr_pg.errors import DimensionError, SchemaError, SearchError
from dpr_pg.filters import Filter, compile_filter, to_sql
from dpr_pg.db.models import Passage
from dpr_pg.db.replicas import read_connection
from dpr_pg.db.partitions import is_partitioned, partition_name
from dpr_pg.db.cached import fresh
from dpr_pg.db.filtered import FilteredMatch, filtered_by_engine, matching_index
from dpr_pg.db.promoted import promoted_by_key
from dpr_pg.db.storage import Storage, ann_distance, check_storage, read_storage
from dpr_pg.tuning import MAX_K, MAX_QUERY_TEXT_CHARS, MAX_QUERY_TEXT_WORDS
from dpr_pg.validation import check_ef_search, check_filter, check_half_range, check_k, check_query_vector

if TYPE_CHECKING:
    from dpr_pg.encoders.fingerprint import EncoderFingerprint
    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.encoders.question_side import QuestionSide

Mode = Literal["dense", "hybrid", "exact"]
MODES = ("dense", "hybrid", "exact")
Query = Union[str, Sequence[float], np.ndarray]
_LONG_VECTOR = re.compile(r"'\[[-+0-9.,eE]{60,}\]'")
_GUC_DEFAULTS = {"hnsw.ef_search": "40", "hnsw.iterative_scan": "off"}
# Execution option of a Connection whose transaction was begun for one search and ends with it
# (dpr_pg.aio sets it): the search leaves its settings to the transaction's end.
TRANSACTION_OF_ITS_OWN = "dpr_pg_transaction_of_its_own"

_VECTOR = Storage()

_COLUMNS = (Passage.id, Passage.external_id, Passage.collection, Passage.title, Passage.text, Passage.metadata_)


@dataclass(frozen=True)
class Hit:
    """One passage found: ``score`` is the inner product with the query (the RRF score in hybrid mode)."""

    id: int
    external_id: str
    collection: str
    title: str
    text: str
    metadata: dict[str, Any]
    score: float
    rank: int  # 0-based

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Hits(list[Hit]):
    """The hits of one search, best first, with ``plan``: the path that ran and why."""

    plan: SearchPlan

    def __init__(self, hits: Sequence[Hit], plan: SearchPlan) -> None:
        super().__init__(hits)
        self.plan = plan


def query_vector(value: Any, dim: int) -> np.ndarray:
    """Check a query vector at the boundary: present, 1-d, ``dim`` long, finite; as float32.

    The same check as :func:`dpr_pg.validation.check_query_vector`, which every face calls.

    >>> query_vector([0.5, 1.0], 2)
    array([0.5, 1. ], dtype=float32)
    """
    return check_query_vector(value, dim)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_text(text: Any) -> None:
    """A question or query text: at most MAX_QUERY_TEXT_CHARS, and no NUL (PostgreSQL text cannot hold it)."""
    if not isinstance(text, str):
        return
    if len(text) > MAX_QUERY_TEXT_CHARS:
        raise SearchError(f"expected a question of at most {MAX_QUERY_TEXT_CHARS} characters, not {len(text)}; "
                          "ask with the question, not a document")
    if "\x00" in text:
        raise SearchError("the question holds a NUL character (\\x00); remove it")


def _check_words(text: Any) -> None:
    """Hybrid mode's text: at most MAX_QUERY_TEXT_WORDS words, as dpr_pg.hybrid_search counts them."""
    words = len(text.split()) if isinstance(text, str) else 0
    if words > MAX_QUERY_TEXT_WORDS:
        raise SearchError(f"expected a query text of at most {MAX_QUERY_TEXT_WORDS} words, not {words}; "
                          "full-text ranking costs grow with every word of the query: keep the words that matter")


def _where(filter: Filter, collection: str | None, table: Any = Passage, *,
           promoted: Any = None) -> sa.ColumnElement[bool] | None:
    node = check_filter(filter)
    parts = [] if node is None else [to_sql(node, table, promoted=promoted)]
    if collection is not None:
        if not isinstance(collection, str):
            raise SearchError(f"expected the collection as a string, not {type(collection).__name__}")
        parts.append((table.c.collection if hasattr(table, "c") else table.collection) == collection)
    return sa.and_(*parts) if parts else None


def search_statement(
    query: Sequence[float] | np.ndarray,
    *,
    k: int = 10,
    filter: Filter = None,
    collection: str | None = None,
    exact: bool = False,
    dim: int | None = None,
    model: Any = None,
    encoder: Any = None,
    storage: Storage | str | None = None,
) -> sa.Select[Any]:
    """The search as a SQLAlchemy ``Select`` of (id, external_id, collection, title, text, metadata, score).

    With ``model`` (an app model with :class:`dpr_pg.search.orm.DprSearchable`), it ranks the app's own
    rows instead: ``SELECT model, score`` (see :func:`dpr_pg.search.orm.model_search_statement`), and
    ``encoder`` (the question's encoder pair) makes it refuse a table embedded by another pair.

    Join it to your own tables or add ``.where(...)``; run it in your own Session. For filtered ANN,
    call :func:`ann_settings` in the same transaction first. ``exact=True`` orders by the exact inner
    product instead of using the HNSW index. Pass ``dim`` to check the vector's length here.
    ``storage`` (:func:`dpr_pg.current_storage`'s, or its name) makes the ORDER BY the one the database's
    index answers (the default is ``vector``'s): with ``halfvec`` rows are ordered by the halfvec
    inner product and scored by the full one; with ``bit`` the statement selects from a subquery
    that re-ranks ``k * rerank_multiple`` candidates, so add joins against ``stmt.selected_columns``.

    >>> stmt = search_statement(vector, k=5, filter={"lang": "es"})  # doctest: +SKIP
    >>> session.execute(stmt.join(Article, Article.slug == Passage.external_id)).all()  # doctest: +SKIP
    """
    if model is not None:  # an app table enabled with op.enable_dpr
        return model_search_statement(model, query, k=k, filter=filter, exact=exact, encoder=encoder, storage=storage)
    if encoder is not None:
        raise SearchError("encoder= goes with model=; for dpr_pg.passages, search() checks the encoder pair")
    check_k(k)
    if dim is None:  # without the schema's dimension the server checks it when the statement runs
        dim = len(query) if query is not None and hasattr(query, "__len__") else 0
    vector = query_vector(query, dim)
    bound = sa.bindparam("query_vector", vector, type_=Vector(vector.size))
    where = _where(filter, collection)
    chosen = storage if isinstance(storage, Storage) else Storage(check_storage(storage or "vector"))
    if exact:
        score = sa.func.inner_product(Passage.embedding, bound, type_=sa.Float)
        stmt = sa.select(*_COLUMNS, score.label("score")).order_by(score.desc(), Passage.id)
    elif chosen.kind == "bit":
        distance = Passage.embedding.max_inner_product(bound).label("distance")
        inner = sa.select(*_COLUMNS, distance).order_by(
            ann_distance("bit", vector.size, Passage.embedding, bound)).limit(chosen.candidates(k))
        ann = (inner if where is None else inner.where(where)).subquery("ann")
        return sa.select(*(ann.c[c.key] for c in _COLUMNS), (-ann.c.distance).label("score")).order_by(
            ann.c.distance, ann.c.id).limit(k)
    else:
        distance = Passage.embedding.max_inner_product(bound)
        order = ann_distance(chosen.kind, vector.size, Passage.embedding, bound)
        stmt = sa.select(*_COLUMNS, (-distance).label("score")).order_by(order)
    if where is not None:
        stmt = stmt.where(where)
    return stmt.limit(k)


@contextmanager
def ann_settings(conn: Connection, *, ef_search: int, iterative: bool, restore: bool = True,
                 index_order: bool = False) -> Iterator[None]:
    """Set hnsw.ef_search and hnsw.iterative_scan (relaxed_order or off) for this transaction.

    The previous values come back afterwards (``restore=False`` leaves that to the transaction's end).
    ``index_order=True`` also sets enable_sort off, so that PostgreSQL reads the HNSW index in order
    rather than sorting the rows another index finds: under row-level security it cannot see how many
    rows the policy keeps (see :mod:`dpr_pg.db.tenancy`) and guesses few.

    >>> with ann_settings(conn, ef_search=200, iterative=True):  # doctest: +SKIP
    ...     conn.execute(search_statement(vector, filter={"lang": "es"}))
    """
    # One round trip: read the old values, then set the new ones (select-list order). Custom plans:
    # a generic plan of a prepared statement knows neither the vector nor k, and may sort the table.
    saved = conn.execute(sa.text(
        "SELECT current_setting('hnsw.ef_search', true), current_setting('hnsw.iterative_scan', true), "
        "current_setting('plan_cache_mode'), current_setting('enable_sort'), set_config('hnsw.ef_search', :ef, true), "
        "set_config('hnsw.iterative_scan', :mode, true), set_config('plan_cache_mode', 'force_custom_plan', true), "
        "set_config('enable_sort', CASE WHEN :index_order THEN 'off' ELSE current_setting('enable_sort') END, true)"),
        {"ef": str(ef_search), "mode": "relaxed_order" if iterative else "off", "index_order": index_order}).one()
    try:
        yield
    finally:
        if restore:  # None: pgvector was not loaded yet, so it had its default
            conn.execute(sa.text("SELECT set_config('hnsw.ef_search', :ef, true), "
                                 "set_config('hnsw.iterative_scan', :mode, true), "
                                 "set_config('plan_cache_mode', :cache, true), set_config('enable_sort', :sort, true)"),
                         {"ef": saved[0] or _GUC_DEFAULTS["hnsw.ef_search"],
                          "mode": saved[1] or _GUC_DEFAULTS["hnsw.iterative_scan"], "cache": saved[2],
                          "sort": saved[3]})


def _dense_statement(path: str, where: sa.ColumnElement[bool] | None, vector_type: Any,
                     storage: Storage = _VECTOR, dim: int = 0) -> sa.Select[Any]:
    """The dense query of ``path`` with bind parameters ``query_vector``, ``k`` and, for the index
    paths, ``candidates`` (the rows the index scan returns: k, or k * rerank_multiple for ``bit``).

    The index scan orders by the expression the storage's index holds; its rows are then scored
    and ordered by the full inner product, so every storage returns the same scores.
    """
    bound = sa.bindparam("query_vector", type_=vector_type)
    limit = sa.bindparam("k", type_=sa.Integer)
    if path in ("hnsw", "hnsw-iterative"):
        distance = Passage.embedding.max_inner_product(bound).label("distance")
        order = ann_distance(storage.kind, dim, Passage.embedding, bound) if storage.kind != "vector" else distance
        inner = sa.select(*_COLUMNS, distance).order_by(order).limit(sa.bindparam("candidates", type_=sa.Integer))
        if where is not None:  # an iterative scan, or a filtered HNSW index's
            inner = inner.where(where)
        ann = inner.subquery("ann")
        # relaxed_order (and any storage but vector) returns rows nearly in order: sort them exactly.
        return sa.select(*(ann.c[c.key] for c in _COLUMNS), (-ann.c.distance).label("score")).order_by(
            ann.c.distance, ann.c.id).limit(limit)
    score = sa.func.inner_product(Passage.embedding, bound, type_=sa.Float).label("score")
    stmt = sa.select(*_COLUMNS, score).order_by(score.desc(), Passage.id).limit(limit)
    return stmt if where is None else stmt.where(where)


@functools.lru_cache(maxsize=32)
def _unfiltered_statement(path: str, vector_type: Any, storage: Storage = _VECTOR, dim: int = 0) -> sa.Select[Any]:
    """Built once: constructing the Select costs more Python time than running the cached compile."""
    return _dense_statement(path, None, vector_type, storage, dim)


# One round trip: plan_cache_mode, and what the planner needs to know of the table (statistics.TABLE_FACTS);
# for a filtered search also the iterative scan's settings, the only index path it may take; for a
# question's encoder pair, whether another pair made the vectors searched (check_encoder's query).
_SAVE_AND_PIN = ("current_setting('plan_cache_mode'), row_security_active('dpr_pg.passages'), "
                 "set_config('plan_cache_mode', 'force_custom_plan', true), f.reltuples, f.analyzed")
_ITERATIVE = ("current_setting('hnsw.ef_search', true), current_setting('hnsw.iterative_scan', true), "
              "set_config('hnsw.ef_search', :ef, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)")


@functools.lru_cache(maxsize=4)
def _custom_plans_statement(iterative: bool, encoder: bool) -> sa.TextClause:
    columns = [_SAVE_AND_PIN, *([_ITERATIVE] if iterative else []),
               *([", ".join("other." + c for c in STORED_COLUMNS)] if encoder else [])]
    other = f" LEFT JOIN ({STORED_SQL}) AS other ON true" if encoder else ""
    return sa.text(f"SELECT {', '.join(columns)} FROM ({TABLE_FACTS}) AS f{other}")


@contextmanager
def _custom_plans(conn: Connection, restore: bool, *, iterative_ef: int | None = None,
                  encoder: EncoderFingerprint | None = None,
                  collection: str | None = None) -> Iterator[tuple[bool, tuple[float, bool]]]:
    """plan_cache_mode = force_custom_plan for the planner's probes and the exact query (see above).

    Yields whether row-level security hides rows of dpr_pg.passages from this role, and the table's
    (reltuples, has statistics) for :func:`dpr_pg.search.planner.plan`, read in the same round trip. With
    ``iterative_ef``, it also sets what :func:`ann_settings` would for an iterative scan at that
    ef_search (the exact path ignores them; under row-level security ann_settings runs all the same).
    With ``encoder``, it raises :class:`EncoderMismatchError` as :func:`check_encoder` would for
    ``collection``, settings restored, before anything else runs.
    """
    params: dict[str, Any] = {}
    if iterative_ef is not None:
        params["ef"] = str(iterative_ef)
    if encoder is not None:
        params |= {"fingerprint": encoder.id, "collection": collection}
    row = conn.execute(_custom_plans_statement(iterative_ef is not None, encoder is not None), params).one()
    saved, row_security, _, rows, analyzed = row[:5]
    ef, mode = row[5:7] if iterative_ef is not None else (None, None)
    try:
        if encoder is not None and row[-len(STORED_COLUMNS)] is not None:
            raise mismatch_error(dict(zip(STORED_COLUMNS, row[-len(STORED_COLUMNS):])), encoder, collection)
        yield bool(row_security), (float(rows), bool(analyzed))
    finally:
        if restore and iterative_ef is None:
            conn.execute(sa.text("SELECT set_config('plan_cache_mode', :v, true)"), {"v": saved})
        elif restore:  # None: pgvector was not loaded yet, so it had its default
            conn.execute(sa.text("SELECT set_config('hnsw.ef_search', :ef, true), "
                                 "set_config('hnsw.iterative_scan', :mode, true), "
                                 "set_config('plan_cache_mode', :cache, true)"),
                         {"ef": ef or _GUC_DEFAULTS["hnsw.ef_search"],
                          "mode": mode or _GUC_DEFAULTS["hnsw.iterative_scan"], "cache": saved})


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Engine):
        with read_connection(bind) as conn:  # on a read replica, when the engine has them
            yield conn
    else:
        yield bind


def _hits(rows: Sequence[Any]) -> list[Hit]:
    return [Hit(r.id, r.external_id, r.collection, r.title, r.text, r.metadata, float(r.score), rank)
            for rank, r in enumerate(rows)]


def _run(conn: Connection, stmt: sa.Select[Any], params: dict[str, Any],
         explain: bool) -> tuple[list[Any], str | None]:
    text = None
    if explain:
        text = "\n".join(row[0] for row in conn.execute(Explain(stmt, "COSTS OFF"), params))
        text = _LONG_VECTOR.sub("'[...]'", text)  # a 768-d literal would drown the plan
    return list(conn.execute(stmt, params)), text


def _dense(conn: Connection, vector: np.ndarray, where: sa.ColumnElement[bool] | None, k: int,
           plan: SearchPlan, explain: bool, restore: bool = True, vector_oid: int = 0,
           iterative_ef: int | None = None, storage: Storage = _VECTOR) -> Hits:
    """``iterative_ef``: the iterative scan's settings at this ef_search are in place (_custom_plans)."""
    value, vector_type = vector_binding(conn, vector, vector_oid)
    params = {"query_vector": value, "k": k}
    dim = vector.size
    if plan.path in ("hnsw", "hnsw-iterative"):
        # A filtered HNSW index (plan.filtered_index) is found by the WHERE that implies its predicate.
        filtered = where is not None and (plan.path == "hnsw-iterative" or plan.filtered_index is not None)
        stmt = _dense_statement(plan.path, where, vector_type, storage, dim) if filtered else _unfiltered_statement(
            plan.path, vector_type, storage, dim)
        params["candidates"] = candidates = storage.candidates(k)
        ef_search = plan.ef_search or _planner.UNFILTERED_EF_SEARCH
        # A non-iterative scan returns at most ef_search rows: more candidates need the iterative scan.
        iterative = plan.path == "hnsw-iterative" or candidates > ef_search
        ef_search = min(max(ef_search, candidates), _planner.MAX_EF_SEARCH)
        # The iterative scan's settings may be in place already (_custom_plans); under row-level
        # security, and on a filtered HNSW index, ann_settings also reads the index in order: PostgreSQL's
        # estimate of the rows may be far too low there (a policy it cannot see; a tag and a collection it
        # takes as independent), and it would sort what another index finds.
        index_order = plan.row_security or plan.filtered_index is not None
        preset = plan.path == "hnsw-iterative" and ef_search == iterative_ef and not index_order
        with nullcontext() if preset else ann_settings(conn, ef_search=ef_search, iterative=iterative,
                                                       restore=restore, index_order=index_order):
            rows, text = _run(conn, stmt, params, explain)
        if len(rows) >= k:
            return Hits(_hits(rows), plan.with_(explain=text))
        # The index ran out (max_scan_tuples) before k matches: answer exactly.
        plan = plan.with_(path="exact", fell_back=True,
                          reason=plan.reason + f"; the index scan found {len(rows)} < k rows, so exact scan")
    stmt = _unfiltered_statement("exact", vector_type) if where is None else _dense_statement(
        "exact", where, vector_type)
    rows, text = _run(conn, stmt, params, explain)
    return Hits(_hits(rows), plan.with_(explain=text))


def _hybrid(conn: Connection, vector: np.ndarray, query_text: str, where: sa.ColumnElement[bool] | None, k: int,
            dense_plan: SearchPlan, *, rrf_k: float, dense_weight: float, text_weight: float,
            candidates: int, vector_oid: int = 0, storage: Storage = _VECTOR) -> Hits:
    n = max(k, candidates)
    dense = _dense(conn, vector, where, n, dense_plan, False, vector_oid=vector_oid, storage=storage)
    tsquery = sa.func.websearch_to_tsquery(sa.literal_column("'spanish'::regconfig"), query_text)
    rank = sa.func.ts_rank_cd(Passage.tsv, tsquery)
    lexical = sa.select(Passage.id).where(Passage.tsv.op("@@")(tsquery)).order_by(rank.desc(), Passage.id).limit(n)
    if where is not None:
        lexical = lexical.where(where)
    fused: dict[int, float] = {}
    for weight, ids in ((dense_weight, [h.id for h in dense]), (text_weight, list(conn.execute(lexical).scalars()))):
        for position, pid in enumerate(ids, start=1):
            fused[pid] = fused.get(pid, 0.0) + weight / (rrf_k + position)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    rows = {r.id: r for r in conn.execute(sa.select(*_COLUMNS).where(Passage.id.in_([pid for pid, _ in best])))}
    hits = [Hit(pid, rows[pid].external_id, rows[pid].collection, rows[pid].title, rows[pid].text,
                rows[pid].metadata, score, rank) for rank, (pid, score) in enumerate(best)]
    plan = SearchPlan("hybrid", f"RRF of dense ({dense.plan.path}: {dense.plan.reason}) and Spanish full text",
                      dense.plan.estimated_rows, dense.plan.matching_rows, dense.plan.ef_search, dense.plan.fell_back,
                      storage=dense.plan.storage, filtered_index=dense.plan.filtered_index)
    return Hits(hits, plan)


_FACTS: weakref.WeakKeyDictionary[Engine, tuple[int, tuple[int, ...], int, bool]] = weakref.WeakKeyDictionary()
_STORAGE: weakref.WeakKeyDictionary[Engine, tuple[float, Storage]] = weakref.WeakKeyDictionary()
_PARTITIONED: weakref.WeakKeyDictionary[Engine, tuple[float, bool]] = weakref.WeakKeyDictionary()
# Seconds a process trusts the storage it read: after another process switches it (dpr-pg storage
# set), searches here order by the old index's expression for at most this long (and the moment one
# search takes to read it again); they stay right (the exact path), only slower. set_storage in this
# process takes effect at once.
STORAGE_TTL = 5.0
def forget_database_facts(engine: Engine) -> None:
    """Make the next search on ``engine`` read the dimension, pgvector's version and the storage again."""
    _FACTS.pop(engine, None)
    _STORAGE.pop(engine, None)
    _PARTITIONED.pop(engine, None)


def _database_facts(conn: Connection) -> tuple[int, tuple[int, ...], int, bool]:
    """The embedding dimension, pgvector's version, the vector type's OID, and whether row-level
    security hid rows from the Engine's role then, read once per Engine.

    Filtered and hybrid searches read the last one afresh for free (see _custom_plans); an
    unfiltered dense search trusts this copy, so a role that tenancy starts to limit after its
    first search plans as before until a new Engine: its hits are the rows it may read all the
    same (PostgreSQL applies the policy), found by HNSW with an exact fallback.
    """
    cached = _FACTS.get(conn.engine)
    if cached is not None:
        return cached
    # The query goes as a vector whatever the column's type: on a halfvec column the server casts it
    # once (an implicit cast), and the ORDER BY still matches the index.
    dim, oid, version, row_security = conn.execute(sa.text(
        "SELECT a.atttypmod, (SELECT t.oid::integer FROM pg_type t JOIN pg_extension e ON e.extnamespace = "
        "t.typnamespace WHERE e.extname = 'vector' AND t.typname = 'vector'), "
        "(SELECT extversion FROM pg_extension WHERE extname = 'vector'), "
        "COALESCE(row_security_active(to_regclass('dpr_pg.passages')), false) "
        "FROM (SELECT 1) AS one LEFT JOIN pg_attribute a "
        "ON a.attrelid = to_regclass('dpr_pg.passages') AND a.attname = 'embedding'"
    )).one()
    if dim is None:
        raise SchemaError("this database has no dpr_pg schema yet; run dpr-pg init first")
    facts = _FACTS[conn.engine] = (int(dim), _planner.version_tuple(version), int(oid), bool(row_security))
    return facts


def _partitioned(conn: Connection) -> bool:
    """Whether dpr_pg.passages is partitioned by collection, read again after STORAGE_TTL seconds."""
    return fresh(_PARTITIONED, conn.engine, lambda: is_partitioned(conn), ttl=STORAGE_TTL)


def _collection_partition(conn: Connection, collection: str, *, whole: bool) -> _planner.CollectionPartition | None:
    """The collection's partition and its rows, when dpr_pg.passages is partitioned and it was analysed."""
    if not _partitioned(conn):
        return None
    rows = conn.execute(sa.text("SELECT c.reltuples FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(:t)"),
                        {"t": f"dpr_pg.{partition_name(collection)}"}).scalar()
    return _planner.CollectionPartition(collection, float(rows), whole) if rows is not None and rows >= 0 else None


# The same aggregate as dpr_pg._search_plan's (sql/search.sql), so that both faces compute one ef_search.
_PARTITION_SPREAD = sa.text(
    "SELECT count(*), max(c.reltuples::float8), sum(c.reltuples::float8), bool_and(c.reltuples >= 0) "
    "FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'dpr_pg.passages'::regclass")


def _filtered_rows(conn: Connection, covered: FilteredMatch | None,
                   collection: str | None) -> _planner.FilteredRows | None:
    """What the planner needs of the filtered index the filter covers. A search of one collection of a
    partitioned table walks its partition's part of the index (with that part's rows); on a plain
    table the collection is a condition within the index's rows."""
    if covered is None:
        return None
    index = covered.index
    if collection is None:
        return _planner.FilteredRows(index.name, index.rows, covered.exact)
    if _partitioned(conn):
        rows = index.partitions.get(partition_name(collection), 0.0)
        return _planner.FilteredRows(index.name, rows, covered.exact)
    return _planner.FilteredRows(index.name, index.rows, covered.exact, collection=collection)


def _partition_spread(conn: Connection) -> _planner.PartitionSpread | None:
    """How the partitions of dpr_pg.passages spread its rows, when it is partitioned by collection."""
    if not _partitioned(conn):
        return None
    partitions, largest, rows, analyzed = conn.execute(_PARTITION_SPREAD).one()
    if not partitions:
        return None
    return _planner.PartitionSpread(int(partitions), float(largest), float(rows), bool(analyzed))


def _storage(conn: Connection) -> Storage:
    """The index's storage (see :mod:`dpr_pg.db.storage`), read again after STORAGE_TTL seconds."""
    return fresh(_STORAGE, conn.engine, lambda: read_storage(conn), ttl=STORAGE_TTL)


def check_request(*, k: int, mode: str = "dense", filter: Filter = None, collection: str | None = None,
                  rrf_k: float = 60.0, dense_weight: float = 1.0, text_weight: float = 1.0, candidates: int = 100,
                  texts: Sequence[Any] = (), ef_search: int | None = None) -> sa.ColumnElement[bool] | None:
    """Check a search's options before anything is encoded or sent: k, mode, ef_search, hybrid mode's
    rrf_k, weights and candidates, the questions or query texts (``texts``), and the filter.

    Returns the compiled WHERE clause (None without filter and collection); raises SearchError
    (InvalidKError for k) or FilterError, as :mod:`dpr_pg.validation` does on every face. :func:`search_many` and :mod:`dpr_pg.aio` call it first.

    >>> check_request(k=0)  # doctest: +SKIP
    InvalidKError: expected k between 1 and 10000, not 0
    """
    check_k(k)
    check_ef_search(ef_search)
    if mode not in MODES:
        raise SearchError(f"expected mode to be one of {', '.join(MODES)}, not {mode!r}")
    if not _is_real(rrf_k) or rrf_k < 0 or not math.isfinite(rrf_k):
        raise SearchError(f"expected rrf_k >= 0, not {rrf_k!r}")
    if not (_is_real(dense_weight) and _is_real(text_weight)
            and math.isfinite(dense_weight) and math.isfinite(text_weight)):
        raise SearchError(f"expected finite weights, not dense_weight {dense_weight!r} and text_weight {text_weight!r}")
    check_k(candidates, name="candidates")
    for text in texts:
        _check_text(text)
        if mode == "hybrid":
            _check_words(text)
    return _where(filter, collection)  # validates the filter


def search_many(
    bind: Engine | Connection,
    queries: Sequence[Query],
    *,
    encoder: EncoderPair | QuestionSide | None = None,
    k: int = 10,
    filter: Filter = None,
    collection: str | None = None,
    mode: Mode = "dense",
    query_texts: Sequence[str] | None = None,
    ef_search: int | None = None,
    exact_threshold: int = _planner.EXACT_THRESHOLD,
    exact_selectivity: float = _planner.EXACT_SELECTIVITY,
    rrf_k: float = 60.0,
    dense_weight: float = 1.0,
    text_weight: float = 1.0,
    candidates: int = 100,
    explain: bool = False,
    pgvector_version: tuple[int, ...] | None = None,
) -> list[Hits]:
    """Search for many questions (or query vectors) at once: one batch encode, one plan, one transaction.

    Options are those of :func:`search`; ``query_texts`` gives hybrid mode's text for vector queries.

    >>> [len(h) for h in search_many(engine, ["¿Qué es el ADN?", "¿Dónde está Sevilla?"], encoder=pair, k=3)]
    [3, 3]
    """
    where_probe = check_request(k=k, mode=mode, filter=filter, collection=collection, rrf_k=rrf_k,
                                dense_weight=dense_weight, text_weight=text_weight, candidates=candidates,
                                ef_search=ef_search)
    if isinstance(queries, (str, np.ndarray)) and not (isinstance(queries, np.ndarray) and queries.ndim == 2):
        queries = [queries]  # type: ignore[list-item]
    queries = list(queries)
    questions = [q for q in queries if isinstance(q, str)]
    texts = list(query_texts) if query_texts is not None else [q if isinstance(q, str) else None for q in queries]
    for text in [*questions, *texts]:
        _check_text(text)
    if questions and encoder is None:
        raise SearchError("a question needs an encoder: pass encoder=EncoderPair.load(...), or pass query vectors")
    if mode == "hybrid":
        if len(texts) != len(queries) or any(not isinstance(t, str) for t in texts):
            raise SearchError("hybrid mode needs the text of every query: pass questions, or query_texts= with vectors")
        for text in texts:
            _check_words(text)
    with _transaction(bind) as conn:
        dim, version, oid, row_security = _database_facts(conn)
        stored = _storage(conn)
        storage = stored if mode != "exact" else _VECTOR
        covered = None
        if filter:  # promoted metadata keys (dpr_pg.db.promoted): the same rows, found through their columns
            promoted = promoted_by_key(conn)
            if promoted:
                where_probe = _where(filter, collection, promoted=promoted)
            if mode != "exact":  # a filtered HNSW index (dpr_pg.db.filtered) whose rows the filter covers
                part = partition_name(collection) if collection is not None and _partitioned(conn) else None
                covered = matching_index(filter, filtered_by_engine(conn), partition=part)
        # Our own transaction ends right after (an Engine's, or one the async API opened for this
        # search alone): its SET LOCALs end with it, nothing to restore.
        restore = not isinstance(bind, Engine) and not conn.get_execution_options().get(TRANSACTION_OF_ITS_OWN)
        # Unfiltered ANN sets the plan mode with its other settings: one round trip fewer.
        pgvector = pgvector_version or version
        # A search of every collection of a partitioned table walks each partition's index, at the
        # partitions' share of the one index's ef_search (planner.spread_ef_search; not under row-level
        # security, whose plan counts the visible rows instead).
        spread = _partition_spread(conn) if collection is None and mode != "exact" and not row_security else None
        # A filtered dense search takes the exact path or an iterative scan at this ef_search: its
        # settings go with plan_cache_mode, one round trip fewer.
        filtered_ef = max(k, ef_search) if ef_search else _planner.spread_ef_search(_planner.FILTERED_EF_SEARCH, k,
                                                                                     spread)
        iterative_ef = (filtered_ef if where_probe is not None and mode == "dense"
                        and pgvector >= _planner.ITERATIVE_SCAN_VERSION and k <= _planner.MAX_EF_SEARCH else None)
        probes = where_probe is not None or mode != "dense" or row_security
        fingerprint = encoder.fingerprint if encoder is not None else None
        if fingerprint is not None and not probes:
            check_encoder(conn, fingerprint, collection=collection)
        # With probes, the encoder check rides on their round trip; either way it comes first.
        pinned = (_custom_plans(conn, restore, iterative_ef=iterative_ef, encoder=fingerprint, collection=collection)
                  if probes else nullcontext((False, None)))
        with pinned as (row_security, table):
            encoded = iter(encoder.question.encode(questions)) if questions and encoder is not None else iter(())
            vectors = [query_vector(next(encoded) if isinstance(q, str) else q, dim) for q in queries]
            if stored.column == "halfvec":
                for vector in vectors:
                    check_half_range(vector)
            # hybrid too: its dense side is the dense search of SQL's dpr_pg.hybrid_search, which plans alike
            partition = (_collection_partition(conn, collection, whole=not filter)
                         if collection is not None and mode != "exact" and not row_security else None)
            plan = _planner.plan(conn, where_probe, k=max(k, candidates) if mode == "hybrid" else k,
                                 pgvector_version=pgvector, exact=mode == "exact",
                                 exact_threshold=exact_threshold, exact_selectivity=exact_selectivity,
                                 ef_search=ef_search, row_security=row_security, table=table,
                                 partition=partition, partitions=spread,
                                 filtered=_filtered_rows(conn, covered, collection)).with_(storage=storage.kind)
            if mode == "hybrid":
                return [_hybrid(conn, v, t, where_probe, k, plan, rrf_k=rrf_k, dense_weight=dense_weight,
                                text_weight=text_weight, candidates=candidates, vector_oid=oid, storage=storage)
                        for v, t in zip(vectors, texts)]
            return [_dense(conn, v, where_probe, k, plan, explain, restore, vector_oid=oid, iterative_ef=iterative_ef,
                           storage=storage)
                    for v in vectors]


def search(
    bind: Engine | Connection,
    query: Query,
    *,
    encoder: EncoderPair | QuestionSide | None = None,
    k: int = 10,
    filter: Filter = None,
    collection: str | None = None,
    mode: Mode = "dense",
    query_text: str | None = None,
    ef_search: int | None = None,
    exact_threshold: int = _planner.EXACT_THRESHOLD,
    exact_selectivity: float = _planner.EXACT_SELECTIVITY,
    rrf_k: float = 60.0,
    dense_weight: float = 1.0,
    text_weight: float = 1.0,
    candidates: int = 100,
    explain: bool = False,
    pgvector_version: tuple[int, ...] | None = None,
) -> Hits:
    """The top-``k`` passages for a question (encoded by ``encoder``) or a precomputed query vector.

    ``filter`` is a filter document (see :mod:`dpr_pg.filters`), ``collection`` limits the search to
    one collection. ``mode``: ``"dense"`` (planned: HNSW, iterative HNSW or exact), ``"exact"``, or
    ``"hybrid"`` (dense + Spanish full text of ``query_text`` or the question, fused by RRF with
    ``rrf_k``, ``dense_weight``, ``text_weight`` over ``candidates`` per side). ``hits.plan`` says
    which path ran; ``explain=True`` adds PostgreSQL's EXPLAIN of the query. With an Engine the search
    runs in its own transaction; with a Connection, in the caller's. ``exact_threshold`` and
    ``exact_selectivity`` tune the planner (see :mod:`dpr_pg.search.planner`; 0 and 0 force the iterative
    index scan under any filter). ``pgvector_version`` overrides the detected version (to exercise
    the pre-0.8 path).

    >>> hits = search(engine, "¿Cuál es la capital de España?", encoder=pair, k=3, filter={"lang": "es"})
    >>> hits[0].title, hits.plan.path  # doctest: +SKIP
    ('Madrid', 'hnsw-iterative')
    """
    texts = [query_text] if query_text is not None else None
    if isinstance(query, np.ndarray) and query.ndim != 1:
        raise DimensionError(f"expected one query vector, not an array of shape {query.shape}; use search_many")
    return search_many(bind, [query], encoder=encoder, k=k, filter=filter, collection=collection, mode=mode,
                       query_texts=texts, ef_search=ef_search, exact_threshold=exact_threshold,
                       exact_selectivity=exact_selectivity, rrf_k=rrf_k,
                       dense_weight=dense_weight, text_weight=text_weight, candidates=candidates,
                       explain=explain, pgvector_version=pgvector_version)[0]


__all__ = ["Hit", "Hits", "SearchPlan", "ann_settings", "compile_filter", "query_vector", "search", "search_many",
           "search_statement"]
