"""Promoted metadata keys: a hot key of ``metadata`` as a real column of dpr_pg.passages, with a btree index.

``{"lang": "es"}`` is answered from the jsonb column (a GIN index, then every row's jsonb read
again). Promoted, ``lang`` gets a stored generated column ``meta_lang`` holding the key's value
when it has the promoted type (NULL otherwise) and a btree index; the filter compiler
(:mod:`dpr_pg.filters`) then compares the column for the operators whose meaning the column keeps
(equality, ranges, ``$in``/``$nin``, ``$like``) with a value of that type, and the jsonb for the
rest, so a filter's rows are the same either way.

The key is user input: it must be a plain identifier (letters, digits and _), reaches SQL as a
bound literal in the column's expression and as a quoted identifier in its name, and the type
comes from an allow-list. Adding the column rewrites the table (an ACCESS EXCLUSIVE lock for the
rewrite and the rebuild of its indexes, HNSW included): promote keys before a bulk load, or in a
quiet hour. The list lives in the catalog: each promoted column carries a comment naming its key.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from dpr_pg.db.cached import fresh
from dpr_pg.db.revision import require_schema
from dpr_pg.errors import ConfigError, DatabaseError, PrivilegeError

# type name → (SQL type of the column, jsonb_typeof of the values it keeps, the cast from ->> text)
KINDS = {"text": ('text COLLATE "C"', "string", ""), "number": ("numeric", "number", "::numeric"),
         "boolean": ("boolean", "boolean", "::boolean")}
PREFIX = "meta_"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,49}")
_MARK = "dpr_pg promoted metadata key "
_LIST = sa.text(
    "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = to_regclass('dpr_pg.passages') AND a.attnum > 0 AND NOT a.attisdropped "
    "AND a.attgenerated = 's' AND starts_with(coalesce(col_description(a.attrelid, a.attnum), ''), :mark) "
    "ORDER BY a.attnum")
_TTL = 5.0
_CACHE: weakref.WeakKeyDictionary[Engine, tuple[float, dict[str, PromotedColumn]]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PromotedColumn:
    """A metadata key kept in a column: the key, its type (text, number, boolean) and the column's name."""

    key: str
    kind: str
    column: str


def check_key(key: object) -> str:
    """``key`` if it may be promoted: a plain identifier of at most 50 characters, else a ConfigError.

    >>> check_key("lang")
    'lang'
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ConfigError(f"expected a metadata key made of letters, digits and _ (not starting with a digit, at most "
                          f"50 characters) to promote, not {key!r}; keep filtering other keys through metadata")
    return key


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise ConfigError(f"expected the promoted column's type to be one of {', '.join(KINDS)}, not {kind!r}")
    return str(kind)


def promoted_columns(bind: Engine | Connection) -> list[PromotedColumn]:
    """The promoted keys of dpr_pg.passages, in the order they were promoted.

    >>> promoted_columns(engine)  # doctest: +SKIP
    [PromotedColumn(key='lang', kind='text', column='meta_lang')]
    """
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return promoted_columns(conn)
    found = []
    for column, comment in bind.execute(_LIST, {"mark": _MARK}):
        try:
            described = json.loads(comment[len(_MARK):])
            found.append(PromotedColumn(check_key(described["key"]), check_kind(described["kind"]), column))
        except (ValueError, KeyError, TypeError, ConfigError):
            continue  # not one of ours after all
    return found


def promoted_by_key(conn: Connection) -> dict[str, PromotedColumn]:
    """{key: column} for the filter compiler, read again after a few seconds (or at once in this process)."""
    return fresh(_CACHE, conn.engine, lambda: {p.key: p for p in promoted_columns(conn)}, ttl=_TTL)


def promote_key(engine: Engine, key: str, *, kind: str = "text") -> PromotedColumn:
    """Keep metadata key ``key`` in a column ``meta_<key>`` of type ``kind``, with a btree index.

    The column holds the key's value when it is of that type (a JSON string for ``text``, a number
    for ``number``, true/false for ``boolean``), NULL otherwise. Promoting a key again with the same
    type does nothing; with another type, drop it first.

    >>> promote_key(engine, "lang").column  # doctest: +SKIP
    'meta_lang'
    """
    check_key(key)
    check_kind(kind)
    column = PREFIX + key.lower()
    with engine.connect() as conn:
        require_schema(conn)
        existing = {p.key: p for p in promoted_columns(conn)}
        taken = conn.execute(sa.text(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'dpr_pg.passages'::regclass "
            "AND attname = :c AND NOT attisdropped)"), {"c": column}).scalar()
    if key not in existing:
        from dpr_pg.db.filtered import refuse_promoted  # lazy: dpr_pg.db.filtered imports this module
        with engine.connect() as conn:
            refuse_promoted(conn, key)
    if key in existing:
        if existing[key].kind != kind:
            raise ConfigError(f"metadata key {key!r} is promoted as {existing[key].kind}, not {kind}; drop it first "
                              f"(dpr-pg index --drop-column {key})")
        return existing[key]
    if taken:
        raise ConfigError(f"dpr_pg.passages already has a column {column!r}; promote another key")
    sql_type, json_type, cast = KINDS[kind]
    value = sql.SQL("CASE WHEN jsonb_typeof(metadata -> {key}) = {json_type} THEN (metadata ->> {key}){cast} END").format(
        key=sql.Literal(key), json_type=sql.Literal(json_type), cast=sql.SQL(cast))
    index = sql.Identifier(f"passages_{column}_idx")
    try:
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            raw.execute(sql.SQL("ALTER TABLE dpr_pg.passages ADD COLUMN {} {} GENERATED ALWAYS AS ({}) STORED").format(
                sql.Identifier(column), sql.SQL(sql_type), value))
            raw.execute(sql.SQL("COMMENT ON COLUMN dpr_pg.passages.{} IS {}").format(
                sql.Identifier(column), sql.Literal(_MARK + json.dumps({"key": key, "kind": kind}))))
            raw.execute(sql.SQL("CREATE INDEX {} ON dpr_pg.passages ({})").format(index, sql.Identifier(column)))
            raw.execute("ANALYZE dpr_pg.passages")
    except sa.exc.DBAPIError as e:
        raise _explained(e, f"metadata key {key!r} was not promoted") from e
    _CACHE.pop(engine, None)
    return PromotedColumn(key, kind, column)


def drop_promoted(engine: Engine, key: str) -> bool:
    """Drop the column (and index) of promoted key ``key``; filters go back to the jsonb. False: not promoted.

    >>> drop_promoted(engine, "lang")  # doctest: +SKIP
    True
    """
    check_key(key)
    with engine.connect() as conn:
        found = {p.key: p for p in promoted_columns(conn)}.get(key)
    if found is None:
        return False
    try:
        with engine.begin() as conn:
            conn.connection.driver_connection.execute(sql.SQL("ALTER TABLE dpr_pg.passages DROP COLUMN {}").format(
                sql.Identifier(found.column)))
    except sa.exc.DBAPIError as e:
        raise _explained(e, f"the column of metadata key {key!r} was not dropped") from e
    _CACHE.pop(engine, None)
    return True


def _explained(error: sa.exc.DBAPIError, what: str) -> Exception:
    if isinstance(error.orig, psycopg.errors.InsufficientPrivilege):
        return PrivilegeError(f"{what}: only the owner of the dpr_pg tables (the role that ran dpr-pg init) may "
                              "change its columns; connect as that role")
    first = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else type(error.orig).__name__
    return DatabaseError(f"{what}: {first}; nothing was changed")


__all__ = ["KINDS", "PromotedColumn", "check_key", "drop_promoted", "promote_key", "promoted_columns"]
