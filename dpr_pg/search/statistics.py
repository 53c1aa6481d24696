"""Planner statistics: whether a table has any, and ANALYZE after a write that changed a large share of it.

PostgreSQL estimates a filter's matching rows from the table's statistics, which ANALYZE (or
autovacuum, a minute or more later) writes. A table that was never analysed has none, and the
estimate is a fixed guess: 0.5 % of the table for an equality. Right after a bulk load of 20,000
rows into one collection, ``collection = 'c'`` was estimated at 100 rows (1,306 with the index kept),
and the search planner took the exact path over every row. Two guards:

- the planner (:mod:`dpr_pg.search.planner`, and ``dpr_pg._search_plan`` in sql/search.sql) never takes
  a small estimate from a table without statistics at its word: it counts the matching rows,
  bounded, instead (:data:`TABLE_FACTS`);
- the writes that change a large share of a collection or an app table (ingest, prune, delete, a
  sync batch) run ANALYZE on that table when they finish (:func:`analyze_if_changed`).
"""

from __future__ import annotations

import json
import logging

import sqlalchemy as sa
from psycopg import sql as psycopg_sql
from sqlalchemy.engine import Engine

from dpr_pg.tuning import ANALYZE_CHANGED_SHARE, ANALYZE_MIN_ROWS

log = logging.getLogger(__name__)

# dpr_pg.passages' row count as of its last ANALYZE/VACUUM (-1: never) and whether it has statistics.
# pg_stats lists only what the role may read: under row-level security that is nothing, and the
# planner then counts, as for a table never analysed. No parameters: the server keeps one plan of
# it even under plan_cache_mode = force_custom_plan (planning the pg_stats view costs ~1 ms).
TABLE_FACTS = sa.text(
    "SELECT c.reltuples, EXISTS (SELECT 1 FROM pg_catalog.pg_stats s "
    "                            WHERE s.schemaname = n.nspname AND s.tablename = c.relname) AS analyzed "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.oid = 'dpr_pg.passages'::regclass")

# What analyze_if_changed needs in one round trip; ``may`` follows ANALYZE's own permission rule
# (PostgreSQL 17 added the MAINTAIN privilege; before it, the owner or the database's owner).
_FACTS = """
SELECT n.nspname, c.relname, c.reltuples,
       EXISTS (SELECT 1 FROM pg_catalog.pg_stats s WHERE s.schemaname = n.nspname AND s.tablename = c.relname)
           AS analyzed,
       COALESCE(pg_catalog.pg_stat_get_mod_since_analyze(c.oid), 0) AS modified,
       {may} AS may
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = CAST(:relation AS regclass)
"""
_MAY_17 = "pg_catalog.has_table_privilege(c.oid, 'MAINTAIN')"
_MAY_OLDER = ("(pg_catalog.pg_has_role(c.relowner, 'USAGE') OR pg_catalog.pg_has_role("
              "(SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = current_database()), 'USAGE'))")
_COLLECTION_ROWS = sa.text("EXPLAIN (FORMAT JSON) SELECT 1 FROM dpr_pg.passages WHERE collection = :collection")


def large_change(changed: float, estimated_rows: float) -> bool:
    """Whether ``changed`` rows are enough to move the planner's estimate of ``estimated_rows``.

    >>> large_change(20_000, 100), large_change(50, 100), large_change(2_000, 1_000_000)
    (True, False, False)
    """
    return changed >= ANALYZE_MIN_ROWS and changed >= ANALYZE_CHANGED_SHARE * max(estimated_rows, 0.0)


def analyze_if_changed(engine: Engine, *, changed: int, relation: str | int = "dpr_pg.passages",
                       collection: str | None = None) -> bool:
    """ANALYZE ``relation`` (a name or an OID) after a write of ``changed`` rows, if it matters; True if it ran.

    It runs when the table has no statistics at all, or when the change is large
    (:func:`large_change`): measured against PostgreSQL's estimate of ``collection``'s rows when
    one is given (the estimate searches of that collection will use), else against the table's
    rows, counting every change since its last ANALYZE. ``ANALYZE (SKIP_LOCKED)`` never waits for
    a concurrent VACUUM, ANALYZE or index build, and a role that may not analyse the table skips
    it. The write has committed by then: a failure here is logged, not raised, and leaves the
    table to autovacuum (and the planner to its bounded count).

    Example:
        >>> analyze_if_changed(engine, changed=report.inserted, collection="wiki")  # doctest: +SKIP
        True
    """
    if changed <= 0:
        return False
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            may = _MAY_17 if (conn.dialect.server_version_info or (0,)) >= (17,) else _MAY_OLDER
            facts = conn.execute(sa.text(_FACTS.format(may=may)), {"relation": str(relation)}).one_or_none()
            if facts is None or not facts.may:  # dropped meanwhile, or not ours to analyse
                return False
            if collection is not None:
                plan = conn.execute(_COLLECTION_ROWS, {"collection": collection}).scalar_one()
                plan = json.loads(plan) if isinstance(plan, str) else plan
                estimated, changes = float(plan[0]["Plan"]["Plan Rows"]), changed
            else:
                estimated, changes = float(facts.reltuples), max(changed, int(facts.modified))
            if facts.analyzed and not large_change(changes, estimated):
                return False
            conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                psycopg_sql.SQL("ANALYZE (SKIP_LOCKED) {}.{}").format(
                    psycopg_sql.Identifier(facts.nspname), psycopg_sql.Identifier(facts.relname)))
            return True
    except sa.exc.DBAPIError as e:
        log.warning("could not ANALYZE %s after %d changed rows (%s); autovacuum will", relation, changed,
                    str(getattr(e, "orig", e)).strip().splitlines()[0])
        return False
