"""Why a search finds nothing: the collection does not exist, nothing is stored, or the filter matched no row.

A search returns ``min(k, matching rows)`` hits, so an empty result always has one of these
causes. :func:`explain_no_hits` names it; every face calls it (the CLI prints it on stderr), and
it can run before a search to skip loading the encoders when nothing could match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import SchemaError
from dpr_pg.filters import Filter
from dpr_pg.db.models import Passage
from dpr_pg.search.api import _where

Reason = Literal["no_passages", "unknown_collection", "filter_matched_nothing"]
_LISTED = 5  # collections named when the one asked for does not exist


@dataclass(frozen=True)
class NoHits:
    """Why nothing matches: ``reason``, a ``message`` that says what to do, and the counts behind it.

    ``passages`` is how many passages the search covered before the filter (those of
    ``collection``, or all); ``collections`` the largest collections stored, when the one asked
    for does not exist.
    """

    reason: Reason
    message: str
    collection: str | None
    passages: int
    collections: dict[str, int]


def explain_no_hits(bind: Engine | Connection, *, collection: str | None = None, filter: Filter = None) -> NoHits | None:
    """Why a search of ``collection`` under ``filter`` finds nothing, or None when some passage matches.

    Raises :class:`SchemaError` when the database has no dpr_pg schema, and FilterError for a
    malformed filter, as the search would.

    Example:
        >>> explain_no_hits(engine, collection="nosuch").message  # doctest: +SKIP
        "collection 'nosuch' does not exist in this database; it holds demo (47 passages); check the name"
    """
    where = _where(filter, collection)  # the search's own compiler: the same rows, the same errors
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return _explain(conn, collection, filter, where)
    return _explain(bind, collection, filter, where)


def _explain(conn: Connection, collection: str | None, filter: Filter,
             where: sa.ColumnElement[bool] | None) -> NoHits | None:
    if conn.execute(sa.text("SELECT to_regclass('dpr_pg.passages') IS NULL")).scalar():
        raise SchemaError("this database has no dpr_pg schema yet; run dpr-pg init first")
    matching = sa.select(Passage.id)
    if conn.execute(sa.select(sa.exists(matching if where is None else matching.where(where)))).scalar():
        return None
    in_scope = sa.select(sa.func.count()).select_from(Passage)
    if collection is not None:
        in_scope = in_scope.where(Passage.collection == collection)
    passages = int(conn.execute(in_scope).scalar_one())
    if passages and filter:
        scope = f"collection {collection!r}" if collection is not None else "this database"
        return NoHits("filter_matched_nothing", f"the filter matched none of the {passages} passages in {scope}; "
                      "check its field names and values, or loosen it", collection, passages, {})
    if passages:  # a matching row was written meanwhile
        return None
    count = sa.func.count().label("passages")
    largest = {name: int(n) for name, n in conn.execute(
        sa.select(Passage.collection, count).group_by(Passage.collection).order_by(count.desc(), Passage.collection)
        .limit(_LISTED))}
    if not largest:
        where_to = f"collection {collection!r} is empty: " if collection is not None else ""
        return NoHits("no_passages", f"{where_to}this database holds no passages yet; add some with "
                      "dpr-pg ingest FILE --collection NAME (or dpr_pg.ingest)", collection, 0, {})
    held = ", ".join(f"{name} ({n} passages)" for name, n in largest.items())
    more = ", ..." if len(largest) == _LISTED else ""
    return NoHits("unknown_collection", f"collection {collection!r} does not exist in this database; it holds "
                  f"{held}{more}; check the collection name", collection, 0, largest)


__all__ = ["NoHits", "explain_no_hits"]
