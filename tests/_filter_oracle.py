"""A pure-Python evaluator of the filter language, written from the documented semantics only.

The property tests hold dpr_pg/filters.py (SQLAlchemy) and sql/search.sql (PL/pgSQL) to it.
It takes an already validated document (validation is compared separately).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

COLUMNS = ("collection", "external_id", "title", "created_at", "updated_at")
MISSING = object()


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _dec(v: Any) -> Decimal:
    return Decimal(repr(v)) if isinstance(v, float) else Decimal(v)


def json_equal(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return _dec(a) == _dec(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    return False


def _like(value: str, pattern: str, ignore_case: bool) -> bool:
    regex, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        regex.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch("".join(regex), value, flags) is not None


def _compare(x: Any, op: str, v: Any) -> bool:
    if _number(v):
        if not _number(x):
            return False
        a, b = _dec(x), _dec(v)
    else:
        if not isinstance(x, str):
            return False
        a, b = x, v
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def _leaf(x: Any, op: str, v: Any) -> bool:
    present = x is not MISSING
    if op == "$eq":
        return present and json_equal(x, v)
    if op == "$ne":
        return not (present and json_equal(x, v))
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return present and _compare(x, op, v)
    if op == "$between":
        return present and _compare(x, "$gte", v[0]) and _compare(x, "$lte", v[1])
    if op == "$in":
        return present and any(json_equal(x, item) for item in v)
    if op == "$nin":
        return not (present and any(json_equal(x, item) for item in v))
    if op in ("$like", "$ilike"):
        return present and isinstance(x, str) and _like(x, v, op == "$ilike")
    if op == "$exists":
        return present == v
    if op == "$contains":
        return present and isinstance(x, list) and any(json_equal(item, v) for item in x)
    raise AssertionError(op)


def _field_value(row: dict[str, Any], field: str) -> Any:
    if field in COLUMNS:
        return row[field]
    path = field.split(".")
    if path[0] == "metadata" and len(path) > 1:
        path = path[1:]
    value: Any = row["metadata"]
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def _field(row: dict[str, Any], field: str, condition: Any) -> bool:
    x = _field_value(row, field)
    if isinstance(condition, dict) and any(key.startswith("$") for key in condition):
        results = []
        for op, v in condition.items():
            if op == "$not":
                results.append(not _field(row, field, v))
            else:
                results.append(_leaf(x, op, v))
        return all(results)
    return _leaf(x, "$eq", condition)


def matches(document: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether ``row`` (columns plus a ``metadata`` dict) satisfies the filter ``document``."""
    for key, value in document.items():
        if key == "$and":
            ok = all(matches(d, row) for d in value)
        elif key == "$or":
            ok = any(matches(d, row) for d in value)
        elif key == "$not":
            ok = not matches(value, row)
        else:
            ok = _field(row, key, value)
        if not ok:
            return False
    return True
