"""The metadata filter language: one JSON document → a SQLAlchemy WHERE clause with bound values.

The language is MongoDB's query subset that vector stores commonly use::

    {"lang": "es", "year": {"$gte": 2020}, "$or": [{"tags": {"$contains": "salud"}}, {"title": {"$like": "%Madrid%"}}]}

* Fields at the top level are ANDed; so are several operators on one field.
* A field is a real column (``collection``, ``external_id``, ``title``, ``created_at``, ``updated_at``)
  or a metadata key; dots reach nested keys (``"a.b"``), and ``"metadata.title"`` reaches the key
  ``title`` rather than the column. Dots never index into arrays.
* Type semantics (MongoDB's type bracketing): numbers compare numerically (1 equals 1.0), strings by
  code point, a boolean equals only a boolean. A comparison with a value of another type is false.
  A missing key matches nothing but ``$ne``, ``$nin``, ``$not`` and ``$exists: false``; ``$exists: true``
  holds for a key that is present, even with a null value; ``{"k": null}`` matches a present null only.
  ``$eq`` on an array or object is exact equality (use ``$contains`` for array membership).

Keys, operators and values never become SQL text: operators come from an allow-list and every key
and value is a bound parameter. The SQL functions (sql/search.sql) compile the same language in
PL/pgSQL; tests/test_filters.py holds both to one pure-Python evaluator.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Union

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from dpr_pg import tuning
from dpr_pg.errors import FilterError
from dpr_pg.db.models import Passage

COMPARISON_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$between",
                        "$like", "$ilike", "$exists", "$contains")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
TEXT_COLUMNS = ("collection", "external_id", "title")
TIME_COLUMNS = ("created_at", "updated_at")
COLUMNS = TEXT_COLUMNS + TIME_COLUMNS
# One set of size limits (dpr_pg.tuning), which dpr_pg.compile_filter (sql/search.sql) checks too;
# tests/test_filters.py holds both to the same documents at each boundary.
MAX_DEPTH = tuning.FILTER_MAX_DEPTH
MAX_NODES = tuning.FILTER_MAX_NODES
MAX_CHARS = tuning.FILTER_MAX_CHARS
MAX_NUMBER_CHARS = tuning.FILTER_MAX_NUMBER_CHARS
MAX_KEY_LENGTH = 256
# A filter given as JSON text is refused unread above this many characters: its jsonb form could
# only be that long with whitespace that PostgreSQL drops (parsing is the cost this bounds).
MAX_TEXT_INPUT_CHARS = 16 * MAX_CHARS
# The same pattern guards timestamps in sql/search.sql.
_ISO_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?")

_RANGE = {"$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__", "$lte": "__le__"}
_COLUMN_OPERATORS = {
    "text": ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$between", "$like", "$ilike", "$exists"),
    "time": ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$between", "$exists"),
}

Filter = Union[Mapping[str, Any], str, None]


@dataclass(frozen=True)
class Leaf:
    """One condition: ``field`` (a column name, or a metadata key path) ``op`` ``value``."""

    column: str | None
    path: tuple[str, ...]
    op: str
    value: Any


@dataclass(frozen=True)
class Logical:
    op: str  # "$and", "$or", "$not" (one child)
    children: tuple[Node, ...]


Node = Union[Leaf, Logical]


def _allowed() -> str:
    return (f"allowed operators: {', '.join(COMPARISON_OPERATORS + LOGICAL_OPERATORS)}; "
            f"fields: {', '.join(COLUMNS)} or a metadata key (dots reach nested keys)")


def _fail(message: str) -> FilterError:
    return FilterError(f"{message}; {_allowed()}")


def _too_large(what: str) -> FilterError:
    return FilterError(f"filter too large: {what}; the limits are {MAX_CHARS} characters of JSON, {MAX_DEPTH} levels, "
                       f"{MAX_NODES} values and numbers of {MAX_NUMBER_CHARS} characters: split the search, "
                       "or use $in with fewer values")


def _number_chars(value: int | float) -> int:
    """The length of ``value`` as PostgreSQL prints it in jsonb: plain decimal notation, no exponent.

    >>> _number_chars(1e-05), _number_chars(-0.0), _number_chars(10 ** 20)
    (7, 3, 21)
    """
    if isinstance(value, int):
        if value.bit_length() > 4 * MAX_NUMBER_CHARS:  # surely too long; str() would refuse 4300+ digits
            return MAX_NUMBER_CHARS + 1
        return len(str(value))
    number = Decimal(repr(value))  # the JSON text sent is repr(value); jsonb keeps its digits and scale
    return len(format(abs(number) if number == 0 else number, "f"))  # numeric has no negative zero


def _string_chars(value: str) -> int:
    """The length of ``value`` as a JSON string in jsonb's output: quotes and escapes included."""
    if len(value) > MAX_CHARS:
        return len(value)  # over the limit whatever its escapes; skip encoding a huge string
    return len(json.dumps(value, ensure_ascii=False))


def _measure(document: Any) -> int:
    """Reject values that JSON cannot carry, and documents over the size limits (no recursion).

    The size counted is that of the document's JSON text as PostgreSQL prints it (``", "`` and
    ``": "`` between items), so that this check and the SQL function's agree to the character.
    Returns that size.
    """
    nodes = 0
    chars = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise _too_large(f"more than {MAX_DEPTH} levels deep")
        if nodes > MAX_NODES:
            raise _too_large(f"more than {MAX_NODES} values")
        if isinstance(value, Mapping):
            chars += 2 + 2 * max(len(value) - 1, 0)  # {} and ", " between members
            for key, item in value.items():
                if not isinstance(key, str):
                    raise FilterError(f"filter keys must be strings, not {key!r}; write the document as JSON")
                if "\x00" in key:
                    raise FilterError("filter keys must not contain NUL (\\u0000); remove it")
                chars += _string_chars(key) + 2  # the key and ": "
                stack.append((item, depth + 1))
        elif isinstance(value, (list, tuple)):
            chars += 2 + 2 * max(len(value) - 1, 0)
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, bool):
            chars += 4 if value else 5
        elif isinstance(value, float) and not math.isfinite(value):
            raise FilterError(f"filter values must be finite numbers, not {value!r}")
        elif isinstance(value, (int, float)):
            length = _number_chars(value)
            if length > MAX_NUMBER_CHARS:
                raise _too_large(f"a number of {length} characters")
            chars += length
        elif isinstance(value, str):
            if "\x00" in value:
                raise FilterError("filter values must not contain NUL (\\u0000); remove it")
            chars += _string_chars(value)
        elif value is None:
            chars += 4
        else:
            raise FilterError(f"filter values must be JSON (null, boolean, number, string, array, object), "
                              f"not {type(value).__name__}")
        if chars > MAX_CHARS:
            raise _too_large(f"more than {MAX_CHARS} characters of JSON")
    return chars


def parse(document: Filter) -> Node | None:
    """Validate ``document`` (a dict or a JSON string) and return its tree, or None for no filter.

    >>> parse({"lang": "es"})
    Leaf(column=None, path=('lang',), op='$eq', value='es')
    """
    if document is None:
        return None
    if isinstance(document, (str, bytes)):
        if len(document) > MAX_TEXT_INPUT_CHARS:
            raise _too_large(f"{len(document)} characters of JSON text, over {MAX_TEXT_INPUT_CHARS} even before "
                             "parsing")
        try:
            document = json.loads(document)
        except (ValueError, RecursionError) as e:
            raise FilterError(f"expected the filter as one JSON object, not {str(document)[:80]!r}: {e}") from e
    if not isinstance(document, Mapping):
        raise FilterError(f"expected the filter as a JSON object like {{\"lang\": \"es\"}}, "
                          f"not {type(document).__name__}")
    _measure(document)
    node = _parse_document(document)
    return node


def _parse_document(document: Mapping[str, Any]) -> Node | None:
    children: list[Node] = []
    for key, value in document.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
                raise _fail(f"{key} expects a non-empty array of filter objects, not {json.dumps(value)[:80]}")
            parts = [_parse_document(v) for v in value]
            children.append(Logical(key, tuple(p if p is not None else Logical("$and", ()) for p in parts)))
        elif key == "$not":
            if not isinstance(value, Mapping):
                raise _fail(f"$not expects a filter object, not {json.dumps(value)[:80]}")
            inner = _parse_document(value)
            children.append(Logical("$not", (inner if inner is not None else Logical("$and", ()),)))
        elif key.startswith("$"):
            raise _fail(f"unknown operator {key!r} at the top level of the filter")
        else:
            children.append(_parse_field(key, value))
    if not children:
        return None
    return children[0] if len(children) == 1 else Logical("$and", tuple(children))


def _field(key: str) -> tuple[str | None, tuple[str, ...]]:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise _fail(f"a field name must have 1 to {MAX_KEY_LENGTH} characters, not {len(key)}")
    if key in COLUMNS:
        return key, ()
    path = tuple(key.split("."))
    if path[0] == "metadata" and len(path) > 1:
        path = path[1:]
    if any(not part or part.startswith("$") for part in path):
        raise _fail(f"unknown field {key!r}: each dotted part must be non-empty and must not start with $")
    return None, path


def _parse_field(key: str, value: Any) -> Node:
    column, path = _field(key)
    if isinstance(value, Mapping) and any(k.startswith("$") for k in value):
        if not all(k.startswith("$") for k in value):
            raise _fail(f"field {key!r} mixes operators and plain keys: {sorted(value)}")
        leaves = [_parse_operator(key, column, path, op, operand) for op, operand in value.items()]
        return leaves[0] if len(leaves) == 1 else Logical("$and", tuple(leaves))
    return _parse_operator(key, column, path, "$eq", value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_operator(key: str, column: str | None, path: tuple[str, ...], op: str, value: Any) -> Node:
    if op == "$not":
        if not isinstance(value, Mapping) or not value or not all(k.startswith("$") for k in value):
            raise _fail(f"{key}: $not expects an operator object like {{\"$gt\": 5}}, not {json.dumps(value)[:80]}")
        return Logical("$not", (_parse_field(key, value),))
    if op not in COMPARISON_OPERATORS:
        raise _fail(f"unknown operator {op!r} on field {key!r}")
    kind = None if column is None else ("text" if column in TEXT_COLUMNS else "time")
    if kind is not None and op not in _COLUMN_OPERATORS[kind]:
        raise _fail(f"operator {op} does not apply to the column {column!r}")

    def expect(ok: bool, what: str) -> None:
        if not ok:
            raise _fail(f"{key}: {op} expects {what}, not {json.dumps(value)[:80]}")

    def check_column_value(v: Any) -> None:
        if kind == "text":
            expect(isinstance(v, str), f"a string (column {column} is text)")
        elif kind == "time":
            expect(isinstance(v, str), "an ISO 8601 timestamp string")
            try:
                if not _ISO_TIMESTAMP.fullmatch(v):
                    raise ValueError("not ISO 8601")
                datetime.fromisoformat(v)
            except ValueError as e:
                raise _fail(f"{key}: {op} expects an ISO 8601 timestamp like 2024-05-01T00:00:00+00:00, "
                            f"not {v!r}") from e

    if op in ("$eq", "$ne"):
        if kind:
            check_column_value(value)
    elif op in _RANGE:
        expect(_is_number(value) or isinstance(value, str), "a number or a string")
        if kind:
            check_column_value(value)
    elif op == "$between":
        expect(isinstance(value, list) and len(value) == 2 and (all(_is_number(v) for v in value)
               or all(isinstance(v, str) for v in value)), "[low, high]: two numbers or two strings")
        if kind:
            for v in value:
                check_column_value(v)
    elif op in ("$in", "$nin"):
        expect(isinstance(value, list) and all(_is_scalar(v) for v in value), "an array of scalars")
        if kind:
            for v in value:
                check_column_value(v)
    elif op in ("$like", "$ilike"):
        expect(isinstance(value, str), "a LIKE pattern string (% any run, _ one character, \\ escapes)")
        trailing = len(value) - len(value.rstrip("\\"))
        expect(trailing % 2 == 0, "a LIKE pattern that does not end with a lone escape (\\)")
    elif op == "$exists":
        expect(isinstance(value, bool), "true or false")
    elif op == "$contains":
        expect(_is_scalar(value), "a scalar to look for in an array")
    return Leaf(column, path, op, value)


# ---- SQL ------------------------------------------------------------------------------------------


def _nested(path: tuple[str, ...], value: Any) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


def _jsonb(value: Any) -> sa.ColumnElement[Any]:
    return sa.bindparam(None, value, type_=JSONB)


def _typed(x: sa.ColumnElement[Any], jsonb_type: str, then: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    # CASE keeps the cast from running on a value of another type (which would raise).
    return sa.case((sa.func.jsonb_typeof(x) == jsonb_type, then), else_=sa.false())


def _compare(x: sa.ColumnElement[Any], op: str, value: Any) -> sa.ColumnElement[bool]:
    if _is_number(value):
        return _typed(x, "number", getattr(sa.cast(x, sa.Numeric), _RANGE[op])(sa.bindparam(None, value, sa.Numeric)))
    as_text = x.op("#>>", return_type=sa.Text)(sa.literal_column("'{}'::text[]")).collate("C")
    return _typed(x, "string", getattr(as_text, _RANGE[op])(sa.bindparam(None, value, sa.Text)))


_PROMOTED_TYPES = {"text": sa.Text, "number": sa.Numeric, "boolean": sa.Boolean}


def _of_kind(value: Any, kind: str) -> bool:
    return (isinstance(value, str) if kind == "text" else _is_number(value) if kind == "number"
            else isinstance(value, bool))


def _exact(value: Any, kind: str) -> Any:
    """A value bound for equality as jsonb compares it: a float by its JSON digits (numeric), not as float8."""
    if kind == "number":
        return sa.bindparam(None, Decimal(repr(value)) if isinstance(value, float) else value, sa.Numeric)
    return sa.bindparam(None, value, _PROMOTED_TYPES[kind])


def _promoted_sql(leaf: Leaf, promoted: Mapping[str, Any] | None) -> sa.ColumnElement[bool] | None:
    """The leaf on a promoted key's column (see :mod:`dpr_pg.db.promoted`), or None where only the jsonb
    keeps the meaning: another type's value, ``$exists``, ``$contains``, ``$ilike`` (case folding
    follows the collation), nested keys.

    The column holds the key's value only when it has the promoted type and is NULL otherwise; each
    comparison is ANDed with ``IS NOT NULL`` so that it is false, never NULL, under ``$not``.
    """
    if not promoted or len(leaf.path) != 1 or leaf.path[0] not in promoted:
        return None
    found = promoted[leaf.path[0]]
    kind, op, value = found.kind, leaf.op, leaf.value
    column = sa.column(found.column, _PROMOTED_TYPES[kind], _selectable=Passage.__table__)
    present = column.is_not(None)
    if op in ("$eq", "$ne") and _of_kind(value, kind):
        equal = sa.and_(column == _exact(value, kind), present)
        return equal if op == "$eq" else sa.not_(equal)
    if op in _RANGE and kind != "boolean" and _of_kind(value, kind):
        bound = sa.bindparam(None, value, sa.Numeric if kind == "number" else sa.Text)
        return sa.and_(getattr(column, _RANGE[op])(bound), present)
    if op == "$between" and kind != "boolean" and all(_of_kind(v, kind) for v in value):
        low, high = (sa.bindparam(None, v, sa.Numeric if kind == "number" else sa.Text) for v in value)
        return sa.and_(column >= low, column <= high, present)
    if op in ("$in", "$nin") and all(_of_kind(v, kind) for v in value):
        found_in = sa.and_(sa.or_(sa.false(), *(column == _exact(v, kind) for v in value)), present)
        return found_in if op == "$in" else sa.not_(found_in)
    if op == "$like" and kind == "text":
        return sa.and_(column.like(sa.bindparam(None, value, sa.Text)), present)
    return None


def _metadata_sql(leaf: Leaf, table: Any, promoted: Mapping[str, Any] | None = None) -> sa.ColumnElement[bool]:
    if table is Passage:
        on_column = _promoted_sql(leaf, promoted)
        if on_column is not None:
            return on_column
    metadata = table.c.metadata if hasattr(table, "c") else table.metadata_
    x: sa.ColumnElement[Any] = metadata
    for key in leaf.path:
        x = x.op("->")(sa.bindparam(None, key, sa.Text))
    op, value = leaf.op, leaf.value
    if op == "$eq":
        if _is_scalar(value):  # containment lets the GIN index answer
            return metadata.op("@>", is_comparison=True)(_jsonb(_nested(leaf.path, value)))
        return sa.func.coalesce(x == _jsonb(value), sa.false())
    if op == "$ne":
        return sa.not_(_metadata_sql(Leaf(None, leaf.path, "$eq", value), table))
    if op in _RANGE:
        return _compare(x, op, value)
    if op == "$between":
        return sa.and_(_compare(x, "$gte", value[0]), _compare(x, "$lte", value[1]))
    if op in ("$in", "$nin"):
        found = sa.func.coalesce(x == sa.any_(sa.bindparam(None, list(value), ARRAY(JSONB))), sa.false())
        return found if op == "$in" else sa.not_(found)
    if op in ("$like", "$ilike"):
        as_text = x.op("#>>", return_type=sa.Text)(sa.literal_column("'{}'::text[]"))
        pattern = sa.bindparam(None, value, sa.Text)
        return _typed(x, "string", as_text.like(pattern) if op == "$like" else as_text.ilike(pattern))
    if op == "$exists":
        return x.is_not(None) if value else x.is_(None)
    assert op == "$contains"
    return metadata.op("@>", is_comparison=True)(_jsonb(_nested(leaf.path, [value])))


def _column_sql(leaf: Leaf, table: Any) -> sa.ColumnElement[bool]:
    column = table.c[leaf.column] if hasattr(table, "c") else getattr(table, leaf.column)
    op, value = leaf.op, leaf.value
    ordered = column  # strings order by code point, as in Python and in the SQL functions
    if leaf.column in TIME_COLUMNS:
        def bind(v: Any) -> Any:
            return sa.cast(sa.bindparam(None, v, sa.Text), sa.DateTime(timezone=True))
    else:
        ordered = column.collate("C")

        def bind(v: Any) -> Any:
            return sa.bindparam(None, v, sa.Text)
    if op == "$eq":
        return column == bind(value)
    if op == "$ne":
        return column != bind(value)
    if op in _RANGE:
        return getattr(ordered, _RANGE[op])(bind(value))
    if op == "$between":
        return sa.and_(ordered >= bind(value[0]), ordered <= bind(value[1]))
    if op in ("$in", "$nin"):
        found = sa.or_(sa.false(), *(column == bind(v) for v in value))
        return found if op == "$in" else sa.not_(found)
    if op == "$like":
        return column.like(bind(value))
    if op == "$ilike":
        return column.ilike(bind(value))
    assert op == "$exists"
    return sa.true() if value else sa.false()


def to_sql(node: Node | None, table: Any = Passage, *,
           promoted: Mapping[str, Any] | None = None) -> sa.ColumnElement[bool]:
    """The WHERE clause of a parsed filter against ``table`` (the passages table or an alias of it).

    ``promoted``: {key: :class:`dpr_pg.db.promoted.PromotedColumn`} of dpr_pg.passages; those keys
    are compared on their columns where that keeps the filter's meaning.
    """
    if node is None:
        return sa.true()
    if isinstance(node, Leaf):
        return _metadata_sql(node, table, promoted) if node.column is None else _column_sql(node, table)
    parts = [to_sql(child, table, promoted=promoted) for child in node.children]
    if node.op == "$not":
        return sa.not_(parts[0])
    if node.op == "$or":
        return sa.or_(sa.false(), *parts)
    return sa.and_(sa.true(), *parts)


def compile_filter(document: Filter, table: Any = Passage, *,
                   promoted: Mapping[str, Any] | None = None) -> sa.ColumnElement[bool]:
    """Validate a filter document and return its SQLAlchemy WHERE clause; every value is a bound parameter.

    ``promoted`` (see :func:`to_sql`) uses promoted keys' columns; the rows are the same.

    >>> stmt = sa.select(Passage.id).where(compile_filter({"lang": "es", "year": {"$gte": 2020}}))
    """
    return to_sql(parse(document), table, promoted=promoted)
