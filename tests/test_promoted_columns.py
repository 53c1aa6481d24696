"""Promoted metadata keys: a key kept in a generated column with a btree index gives the same rows.

The rows and random filter documents of tests/test_filters.py run through the compiler with and
without the promoted columns, and through the pure-Python oracle: all three select the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _filter_oracle import matches
from hypothesis import HealthCheck, given, settings
from sqlalchemy.engine import Engine
from test_filters import ROWS, documents, store_rows

from dpr_pg.cli import main
from dpr_pg.db.models import Passage
from dpr_pg.db.promoted import drop_promoted, promote_key, promoted_columns
from dpr_pg.errors import ConfigError
from dpr_pg.filters import compile_filter
from dpr_pg.search.api import search

PROMOTED = {"a": "text", "b": "number", "c": "boolean"}


@pytest.fixture(scope="module")
def promoted_engine(server: Any) -> Iterator[Engine]:
    """ROWS (ids 1..48 in order) in a dim-4 database, with keys a, b and c promoted."""
    name = server.create_database(template=server.initialized_template(4))
    engine = sa.create_engine(server.url_for(name))
    store_rows(engine)
    for key, kind in PROMOTED.items():
        promote_key(engine, key, kind=kind)
    yield engine
    engine.dispose()
    server.drop_database(name)


def ids(engine: Engine, document: Any, promoted: Any = None) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(Passage.id).where(compile_filter(document, promoted=promoted))).scalars())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents())
def test_random_filters_select_the_same_rows_with_and_without_promoted_columns(promoted_engine: Engine,
                                                                             document: dict[str, Any]) -> None:
    promoted = {p.key: p for p in promoted_columns(promoted_engine)}
    expected = {i + 1 for i, row in enumerate(ROWS) if matches(document, row)}
    assert ids(promoted_engine, document) == expected
    assert ids(promoted_engine, document, promoted) == expected


@pytest.mark.parametrize("document", [
    {"a": "b"}, {"a": {"$in": ["a", "b"]}}, {"a": {"$gt": "a"}}, {"a": {"$like": "a%"}},
    {"b": 1}, {"b": 1.0}, {"b": {"$between": [-1, 2]}}, {"b": {"$nin": [0, 2.5]}}, {"c": True},
    {"$not": {"a": {"$ne": "a"}}}, {"$or": [{"b": {"$lte": 0}}, {"c": False}]},
])
def test_the_compiler_uses_the_column_and_keeps_the_rows(promoted_engine: Engine, document: dict[str, Any]) -> None:
    promoted = {p.key: p for p in promoted_columns(promoted_engine)}
    compiled = str(compile_filter(document, promoted=promoted).compile())
    assert "meta_" in compiled and "metadata" not in compiled
    assert ids(promoted_engine, document, promoted) == ids(promoted_engine, document)


def test_searches_read_the_promoted_column(promoted_engine: Engine) -> None:
    hits = search(promoted_engine, [1.0, 0, 0, 0], k=3, filter={"a": "b"}, mode="exact", explain=True)
    assert "meta_a" in hits.plan.explain
    expected = sorted((i + 1 for i, row in enumerate(ROWS) if row["metadata"].get("a") == "b"), reverse=True)[:3]
    assert [h.id for h in hits] == expected


def test_values_of_another_type_and_operators_the_column_cannot_answer_use_the_jsonb(promoted_engine: Engine) -> None:
    promoted = {p.key: p for p in promoted_columns(promoted_engine)}
    for document in ({"a": 1}, {"a": {"$exists": True}}, {"a": {"$ilike": "A%"}}, {"a": None}, {"a.b": 1},
                     {"b": "a"}, {"a": {"$in": ["a", 1]}}):
        compiled = str(compile_filter(document, promoted=promoted).compile())
        assert "meta_" not in compiled, document
        assert ids(promoted_engine, document, promoted) == ids(promoted_engine, document)


@pytest.mark.parametrize("key", ["a; DROP TABLE dpr_pg.passages --", "a b", "1a", "", "é", "x" * 51, "a.b"])
def test_a_key_that_is_not_a_plain_identifier_is_refused(promoted_engine: Engine, key: str) -> None:
    with pytest.raises(ConfigError, match="letters, digits and _"):
        promote_key(promoted_engine, key)


def test_an_unknown_type_or_another_type_for_a_promoted_key_is_refused(promoted_engine: Engine) -> None:
    with pytest.raises(ConfigError, match="one of text, number, boolean"):
        promote_key(promoted_engine, "d", kind="json")
    with pytest.raises(ConfigError, match="promoted as text, not number; drop it first"):
        promote_key(promoted_engine, "a", kind="number")
    assert promote_key(promoted_engine, "a", kind="text").column == "meta_a"  # again: nothing to do


def test_the_cli_promotes_lists_and_drops_a_column(server: Any) -> None:
    from click.testing import CliRunner

    name = server.create_database(template=server.initialized_template(4))
    url = server.url_for(name)
    engine = sa.create_engine(url)
    try:
        runner = CliRunner()
        made = runner.invoke(main, ["--database-url", url, "index", "--column", "year", "--type", "number"])
        assert made.exit_code == 0, made.output
        assert "metadata key 'year' (number) is kept in column dpr_pg.passages.meta_year" in made.output
        listed = runner.invoke(main, ["--database-url", url, "index", "--list-columns", "--json"])
        assert json.loads(listed.output) == [{"key": "year", "type": "number", "column": "meta_year"}]
        with engine.connect() as conn:
            index = conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'passages_meta_year_idx'"))
            assert "btree (meta_year)" in index.scalar_one()
        dropped = runner.invoke(main, ["--database-url", url, "index", "--drop-column", "year"])
        assert dropped.exit_code == 0 and "dropped the column of metadata key 'year'" in dropped.output
        assert promoted_columns(engine) == []
        assert not drop_promoted(engine, "year")
        refused = runner.invoke(main, ["--database-url", url, "index", "--column", "x'; --"])
        assert refused.exit_code == 1 and "letters, digits and _" in refused.output
    finally:
        engine.dispose()
        server.drop_database(name)
