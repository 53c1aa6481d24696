"""Filtered HNSW indexes: a small graph of only the passages a hot filter matches, walked unfiltered.

A filter that matches a few percent of the table (``{"tag": "hot"}``) is answered by an iterative
scan of the whole graph, which visits many rows that fail the filter, or exactly, one heap page per
matching row. pgvector's README answers it with a partial index: ``CREATE INDEX ... USING hnsw
(...) WHERE (...)``, a graph of only the matching rows. :func:`build_filtered_index` builds one for a
filter document of 1 to 4 top-level metadata keys with plain values; the search planners (Python's
:mod:`dpr_pg.search.planner` and SQL's ``dpr_pg._search_plan``) walk it when a search's filter holds
every key/value of the document.

The predicate is written as the filter compilers write an equality (one ``metadata @> '{"key":
value}'::jsonb`` per key), so PostgreSQL proves that a search's WHERE implies it: searches run under
``plan_cache_mode = force_custom_plan``, so their values are constants when they are planned. The
values reach SQL as literals quoted by psycopg, the index is named after a hash of the canonical
document, and the document lives in the index's comment: the list is the catalog's.

The index has the table's storage and HNSW parameters, and is built as :func:`dpr_pg.db.index.build_index`
builds the main one (CONCURRENTLY, per partition on a partitioned table, under the same lock). A
rebuild of the main index (``dpr-pg index --m ...``) keeps the filtered ones; a switch of the storage
is refused while any exists (its graph would compare another expression): drop them first. Keys that
are promoted (:mod:`dpr_pg.db.promoted`) compile to their column, which would not imply the jsonb
predicate: the two are exclusive.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from dpr_pg import _progress
from dpr_pg.db.index import (
    INDEX_LOCK_WAIT,
    HnswParameters,
    _autocommit,
    _build_partitions,
    _drop_new_index,
    _execute,
    _index_lock,
    _leaf_index,
    _LEAVES,
    _method,
    _reason,
    _set_memory,
    _set_workers,
    _tell,
    index_parameters,
)
from dpr_pg.db.cached import fresh
from dpr_pg.db.partitions import is_partitioned
from dpr_pg.db.promoted import check_key, promoted_columns
from dpr_pg.db.revision import require_schema
from dpr_pg.db.storage import read_storage
from dpr_pg.errors import ConfigError, DprPgError, IndexBuildError
from dpr_pg.filters import COLUMNS
from dpr_pg.validation import check_filter

MAX_KEYS = 4
PREFIX = "passages_hnsw_where_"
_MARK = "dpr_pg filtered HNSW index "
_ALLOWED = ('a filter document of 1 to 4 top-level metadata keys (letters, digits and _, not starting with a '
            'digit) with plain values (a string, a number or true/false), like {"tag": "hot"}')
# The indexes of dpr_pg.passages whose comment carries the mark, with their rows: the index's own, or
# the sum of its partitions' (a partitioned index has none), and each partition's by table name.
_LIST = sa.text(
    "SELECT c.relname, obj_description(c.oid, 'pg_class'), i.indisvalid, c.relkind = 'I', "
    "       CASE WHEN c.relkind = 'I' THEN (SELECT coalesce(sum(greatest(l.reltuples, 0)), 0) "
    "            FROM pg_partition_tree(c.oid) p JOIN pg_class l ON l.oid = p.relid WHERE p.isleaf) "
    "       ELSE greatest(c.reltuples, 0) END, "
    "       CASE WHEN c.relkind = 'I' THEN (SELECT json_object_agg(t.relname, greatest(l.reltuples, 0)) "
    "            FROM pg_partition_tree(c.oid) p JOIN pg_class l ON l.oid = p.relid "
    "            JOIN pg_index li ON li.indexrelid = l.oid JOIN pg_class t ON t.oid = li.indrelid WHERE p.isleaf) END "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE i.indrelid = to_regclass('dpr_pg.passages') "
    "AND starts_with(coalesce(obj_description(c.oid, 'pg_class'), ''), :mark) ORDER BY c.relname")
_TTL = 5.0
_CACHE: weakref.WeakKeyDictionary[Engine, tuple[float, tuple[FilteredIndex, ...]]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FilteredIndex:
    """A filtered HNSW index: its filter document, its name, the rows it holds (as of the last build,
    VACUUM or ANALYZE), whether it is valid, and on a partitioned table each partition's rows."""

    document: dict[str, Any]
    name: str
    rows: float
    valid: bool = True
    partitions: Mapping[str, float] = field(default_factory=dict)

    @property
    def canonical(self) -> str:
        return canonical_json(self.document)

    def as_dict(self) -> dict[str, Any]:
        return {"filter": self.document, "index": self.name, "rows": int(self.rows), "valid": self.valid,
                "partitions": len(self.partitions)}


@dataclass(frozen=True)
class FilteredIndexBuild:
    """What :func:`build_filtered_index` did: the index, whether it built it (False: it existed), the
    seconds the build took, and its maintenance_work_mem."""

    index: FilteredIndex
    built: bool
    seconds: float = 0.0
    maintenance_work_mem: str = ""


def check_document(document: object) -> dict[str, Any]:
    """``document`` if a filtered index may be built for it, keys sorted; else a ConfigError saying what may.

    >>> check_document({"tag": "hot", "year": 2024})
    {'tag': 'hot', 'year': 2024}
    """
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError as e:
            raise ConfigError(f"expected {_ALLOWED}, not {document!r} (not JSON: {e})") from e
    if not isinstance(document, Mapping) or not 1 <= len(document) <= MAX_KEYS:
        raise ConfigError(f"expected {_ALLOWED}, not {document!r}")
    for key, value in document.items():
        try:
            check_key(key)
        except ConfigError:
            raise ConfigError(f"expected {_ALLOWED}; {key!r} is not such a key (no operators, no dotted paths)") \
                from None
        if key in COLUMNS or key == "metadata":
            raise ConfigError(f"expected {_ALLOWED}; {key!r} names a column, not a metadata key (to keep a "
                              "collection's rows together, partition the table: dpr-pg storage partition)")
        if not _is_plain(value):
            raise ConfigError(f"expected {_ALLOWED}; key {key!r} has {value!r} (no null, operator, list, object, "
                              "NaN or infinity)")
    checked = {key: document[key] for key in sorted(document)}
    try:  # the search's own limits (sizes of strings and numbers)
        check_filter(checked)
    except DprPgError as e:
        raise ConfigError(f"expected {_ALLOWED}: {e}") from e
    return checked


def _is_plain(value: object) -> bool:
    if isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: PostgreSQL text cannot hold it
            return False
        return "\x00" not in value
    return False


def canonical_json(document: Mapping[str, Any]) -> str:
    """The document as one JSON text: keys sorted, no spaces, characters as they are."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def index_name(document: Mapping[str, Any]) -> str:
    """``passages_hnsw_where_`` and 12 hex digits of the SHA-256 of the canonical document.

    >>> index_name({"tag": "hot"})
    'passages_hnsw_where_0765b5fea7a2'
    """
    return PREFIX + hashlib.sha256(canonical_json(document).encode()).hexdigest()[:12]


def predicate(document: Mapping[str, Any]) -> sql.Composed:
    """The index's WHERE: one ``(metadata @> '{"key": value}'::jsonb)`` per key, as the filter compilers
    write an equality (dpr_pg/filters.py's ``_metadata_sql``, sql/search.sql's ``_filter_leaf``)."""
    return sql.SQL(" AND ").join(
        sql.SQL("(metadata @> {}::jsonb)").format(sql.Literal(json.dumps({key: value}, ensure_ascii=False)))
        for key, value in sorted(document.items()))


def filtered_indexes(bind: Engine | Connection) -> list[FilteredIndex]:
    """The filtered HNSW indexes of dpr_pg.passages, read from the catalog.

    >>> filtered_indexes(engine)  # doctest: +SKIP
    [FilteredIndex(document={'tag': 'hot'}, name='passages_hnsw_where_0765b5fea7a2', rows=10000.0, ...)]
    """
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return filtered_indexes(conn)
    found = []
    for name, comment, valid, _, rows, partitions in bind.execute(_LIST, {"mark": _MARK}):
        try:
            document = check_document(json.loads(comment[len(_MARK):]))
        except (ValueError, ConfigError):
            continue  # not one of ours after all
        found.append(FilteredIndex(document, name, float(rows), bool(valid),
                                   {str(t): float(r) for t, r in (partitions or {}).items()}))
    return found


def filtered_by_engine(conn: Connection) -> tuple[FilteredIndex, ...]:
    """The filtered indexes for the search planner, read again after a few seconds (or at once in this process)."""
    return fresh(_CACHE, conn.engine, lambda: tuple(filtered_indexes(conn)), ttl=_TTL)


def forget_filtered_indexes(engine: Engine) -> None:
    """Make this process's next search read the list of filtered indexes again."""
    _CACHE.pop(engine, None)


@dataclass(frozen=True)
class FilteredMatch:
    """The filtered index a search's filter covers: ``exact`` when the filter is the index's document."""

    index: FilteredIndex
    exact: bool


def matching_index(filter: object, indexes: tuple[FilteredIndex, ...] | list[FilteredIndex], *,
                   partition: str | None = None) -> FilteredMatch | None:
    """The valid index whose every key/value the filter holds as a top-level plain equality (the exact
    canonical JSON value), the one with fewest rows if several (then by name, as the SQL face's
    ``dpr_pg._filtered_plan``); None if none. ``partition``: the searched collection's partition of a
    partitioned table, whose part of each index is what counts.

    >>> matching_index({"tag": "hot", "lang": "es"}, [FilteredIndex({"tag": "hot"}, "i", 10.0)]).exact
    False
    """
    if not indexes or not isinstance(filter, Mapping):
        return None
    plain = {}
    for key, value in filter.items():
        if isinstance(value, Mapping) and len(value) == 1 and "$eq" in value:
            value = value["$eq"]
        if isinstance(key, str) and not isinstance(value, (Mapping, list)) and value is not None:
            plain[key] = json.dumps(value, ensure_ascii=False)
    covering = [index for index in indexes if index.valid and all(
        plain.get(k) == json.dumps(v, ensure_ascii=False) for k, v in index.document.items())]
    if not covering:
        return None
    best = min(covering, key=lambda i: (i.rows if partition is None else i.partitions.get(partition, 0.0), i.name))
    return FilteredMatch(best, exact=len(filter) == len(best.document))


def _drop_hint(document: Mapping[str, Any]) -> str:
    return f"dpr-pg index --drop-where '{canonical_json(document)}'"


def refuse_promoted(conn: Connection, key: str) -> None:
    """A ConfigError when a filtered index uses ``key``: promoted, the key would compile to its column."""
    for index in filtered_indexes(conn):
        if key in index.document:
            raise ConfigError(f"metadata key {key!r} is used by the filtered HNSW index {index.name} for "
                              f"{index.canonical}, which a promoted column's filter would no longer reach; drop it "
                              f"first ({_drop_hint(index.document)}), or keep the key unpromoted")


def refuse_storage_change(conn: Connection, what: str) -> None:
    """A ConfigError naming the filtered indexes, which a change of the index's storage would leave behind."""
    found = filtered_indexes(conn)
    if found:
        names = ", ".join(f"{i.name} for {i.canonical}" for i in found)
        raise ConfigError(f"{what} would leave the filtered HNSW indexes on the old storage ({names}); drop them "
                          f"first ({'; '.join(_drop_hint(i.document) for i in found)}), then build them again "
                          "(dpr-pg index --where ...) after the switch")


def build_filtered_index(engine: Engine, document: Mapping[str, Any] | str, *, maintenance_work_mem: str | None = None,
                         wait: float = INDEX_LOCK_WAIT, progress: bool | None = False) -> FilteredIndexBuild:
    """Build the filtered HNSW index of ``document`` (see :func:`check_document`); searches and writes go on.

    The index has the table's storage and HNSW parameters, its memory is sized for the rows the
    document matches, and it is built CONCURRENTLY (per partition on a partitioned table). An
    index of that document that exists already is kept. A failed build leaves no index behind.

    >>> build_filtered_index(engine, {"tag": "hot"}).index.rows  # doctest: +SKIP
    10000.0
    """
    document = check_document(document)
    name = index_name(document)
    with engine.connect() as conn:
        require_schema(conn)
        promoted = {p.key for p in promoted_columns(conn)}
    for key in document:
        if key in promoted:
            raise ConfigError(f"metadata key {key!r} is promoted to a column, and a filter on it reads the column, "
                              "never the jsonb a filtered index's predicate holds: drop the column first "
                              f"(dpr-pg index --drop-column {key}), or leave the key out of the document")
    where = predicate(document)
    comment = sql.Literal(_MARK + canonical_json(document))
    leaf_suffix = "where_" + name[len(PREFIX):]
    try:
        with _autocommit(engine) as conn, _index_lock(conn, wait=wait):
            existing = {i.name: i for i in filtered_indexes(conn)}.get(name)
            if existing is not None and existing.valid:
                return FilteredIndexBuild(existing, built=False)
            partitioned = is_partitioned(conn)
            leaves = tuple(_leaf_index(t, suffix=leaf_suffix) for (t,) in conn.execute(sa.text(_LEAVES)).all()) \
                if partitioned else ()
            # A killed build's leftover (INVALID, or without its comment) goes first.
            _drop_new_index(engine, conn, partitioned=partitioned, name=name, leaves=leaves)
            storage = read_storage(conn)
            parameters = index_parameters(conn) or HnswParameters()
            rows = conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                sql.SQL("SELECT count(*) FROM dpr_pg.passages WHERE {}").format(where)).fetchone()[0]
            memory = _set_memory(conn, maintenance_work_mem, parameters, storage.kind, rows=rows)
            workers = _set_workers(conn)
            method = _method(conn, storage)
            try:
                started = time.perf_counter()
                _tell(progress, storage.kind, memory, workers)
                with _progress.index_build(engine, progress):
                    if partitioned:
                        _build_partitions(conn, parameters, method, name=name, leaf_suffix=leaf_suffix, where=where)
                    else:
                        _execute(conn, sql.SQL("CREATE INDEX CONCURRENTLY {} ON dpr_pg.passages {} WITH ({}) WHERE {}")
                                 .format(sql.Identifier(name), sql.SQL(method), sql.SQL(parameters.sql()), where))
                seconds = time.perf_counter() - started
                _execute(conn, sql.SQL("COMMENT ON INDEX dpr_pg.{} IS {}").format(sql.Identifier(name), comment))
            except BaseException:
                _drop_new_index(engine, conn, partitioned=partitioned, name=name, leaves=leaves)
                raise
            built = {i.name: i for i in filtered_indexes(conn)}[name]
    except sa.exc.DBAPIError as e:
        raise IndexBuildError(f"the filtered HNSW index for {canonical_json(document)} was not built: {_reason(e)}; "
                              "it was dropped, searches go on as before: re-run dpr-pg index --where") from e
    forget_filtered_indexes(engine)
    return FilteredIndexBuild(built, built=True, seconds=seconds, maintenance_work_mem=memory)


def drop_filtered_index(engine: Engine, document: Mapping[str, Any] | str, *, wait: float = INDEX_LOCK_WAIT) -> bool:
    """Drop the filtered HNSW index of ``document``; False when there is none.

    >>> drop_filtered_index(engine, {"tag": "hot"})  # doctest: +SKIP
    True
    """
    document = check_document(document)
    name = index_name(document)
    with engine.connect() as conn:
        require_schema(conn)
    try:
        with _autocommit(engine) as conn, _index_lock(conn, wait=wait):
            if name not in {i.name for i in filtered_indexes(conn)}:
                return False
            partitioned = is_partitioned(conn)
            _execute(conn, sql.SQL("DROP INDEX {}IF EXISTS dpr_pg.{}").format(
                sql.SQL("" if partitioned else "CONCURRENTLY "), sql.Identifier(name)))
    except sa.exc.DBAPIError as e:
        raise IndexBuildError(f"the filtered HNSW index for {canonical_json(document)} was not dropped: "
                              f"{_reason(e)}; re-run dpr-pg index --drop-where") from e
    finally:
        forget_filtered_indexes(engine)
    return True


__all__ = ["FilteredIndex", "FilteredIndexBuild", "FilteredMatch", "build_filtered_index", "check_document",
           "drop_filtered_index", "filtered_indexes", "matching_index"]
