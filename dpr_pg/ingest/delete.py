"""Delete passages by external id: the one-record counterpart of ``ingest --prune``.

The delete takes the collection's ingest lock (exclusive, like an upsert), so it never
interleaves with a batch of a concurrent ingest of the same collection. A delete of a large share
of the collection refreshes the planner's statistics, as an ingest does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.search.statistics import analyze_if_changed
from dpr_pg.errors import ConfigError
from dpr_pg.ingest.loader import LOCK_SQL
from dpr_pg.ingest.validate import text_problem

_DELETE = sa.text("DELETE FROM dpr_pg.passages WHERE collection = :collection AND external_id = ANY(:ids)")


def delete_passages(engine: Engine, collection: str, external_ids: Sequence[str]) -> int:
    """Delete the passages of ``collection`` with these external ids; returns how many were deleted.

    Chunks of one document are passages of their own (``<id>#0``, ``<id>#1``, ...): name them.
    An id that is not stored is no error (it counts 0).

    Example:
        >>> delete_passages(engine, "demo", ["madrid", "sevilla"])  # doctest: +SKIP
        2
    """
    if not isinstance(collection, str) or not collection or text_problem(collection, "collection"):
        raise ConfigError(f"expected a collection name without NUL bytes, not {collection!r}")
    ids = [external_ids] if isinstance(external_ids, str) else list(external_ids)
    for external_id in ids:
        if not isinstance(external_id, str) or text_problem(external_id, "external_id"):
            raise ConfigError(f"expected external ids as strings without NUL bytes, not {external_id!r}")
    if not ids:
        return 0
    with engine.begin() as conn:
        conn.execute(sa.text(LOCK_SQL.replace("%s", ":collection")), {"collection": collection})
        deleted = int(conn.execute(_DELETE, {"collection": collection, "ids": ids}).rowcount)
    analyze_if_changed(engine, changed=deleted, collection=collection)
    return deleted
