"""Every number that tunes search and the HNSW index, and the limits that go with them: one place.

The Python planner (:mod:`dpr_pg.search.planner`), the API, the CLI and the SQL functions all read them
here. The SQL files in sql/ name them as placeholders, ``@EXACT_THRESHOLD@``, which
:func:`dpr_pg.db.schema.definitions_script` fills in from :func:`sql_values` whenever ``dpr-pg init``
applies them; so a change here reaches ``dpr_pg.search`` at the next ``dpr-pg init``, without a
migration. Migrations never read this module: what they ran stays as it was.

The planner's rules, in order (sql/search.sql's ``dpr_pg._search_plan`` applies the same):

- no filter: HNSW with ``hnsw.ef_search = max(k, UNFILTERED_EF_SEARCH)``; exact above
  ``k = MAX_EF_SEARCH`` (pgvector's limit);
- a filter on pgvector older than ``ITERATIVE_SCAN_VERSION``, or ``k > MAX_EF_SEARCH``: exact;
- a search of one collection of a table partitioned by collection whose partition has more than
  ``EXACT_THRESHOLD`` rows (as of its last ANALYZE): with no other filter, the partition's own HNSW
  index with ``hnsw.ef_search = max(k, UNFILTERED_EF_SEARCH)``; with one, the rules below judge the
  filter's share against the partition's rows rather than the table's;
- a search of every collection of a table partitioned by collection (no ``collection``) walks each
  partition's HNSW index at one ``hnsw.ef_search``, and PostgreSQL merges them: unless the caller
  names one, ``hnsw.ef_search`` is the one index's choice (``UNFILTERED_EF_SEARCH`` or
  ``FILTERED_EF_SEARCH``) times the largest partition's share of the rows, rounded up, and at least
  ``PARTITIONS_MIN_EF_SEARCH`` and k; the one index's choice while a partition was never analysed;
- a table without statistics (never analysed) and an estimate low enough for a rule below: the
  estimate is a guess, so count up to ``EXACT_THRESHOLD + 1`` matching rows, exact if there are no
  more than ``EXACT_THRESHOLD``, else iterative HNSW;
- PostgreSQL's estimate of the matching rows at most ``EXACT_THRESHOLD``: exact;
- at most ``EXACT_MAX_ROWS`` rows that are at most ``EXACT_SELECTIVITY`` of the table: exact;
- an estimate within ``COUNT_BAND * EXACT_THRESHOLD``: count up to ``EXACT_THRESHOLD + 1``
  matching rows, exact if there are no more than ``EXACT_THRESHOLD``;
- otherwise iterative HNSW with ``hnsw.ef_search = max(k, FILTERED_EF_SEARCH)``, and exact when
  the index scan comes back with fewer than k rows.
"""

from __future__ import annotations

MAX_K = 10_000  # hits one search may ask for
MAX_ASK_K = 100  # passages one ask reads: reading costs far more than retrieving
MAX_ANSWERS = 100  # answer spans one ask or reading returns
MAX_DIM = 16_000  # pgvector's limit for a vector column

EXACT_THRESHOLD = 2000  # filtered rows at or below which exact search is both faster and exact
# Count only when the estimate is within this factor of the threshold: counting 2,001 of a 10% filter's
# rows cost 6 ms on the 100k benchmark (was 10x); a worse estimate still gets iterative HNSW + the fallback.
COUNT_BAND = 3
# A filter this narrow a share of the table goes exact even above EXACT_THRESHOLD: iterative HNSW
# must walk ~k / selectivity nodes and loses recall (1% of the 1M benchmark: recall@10 0.947 in
# 20.6 ms; exact: 1.000 in 24 ms). Exact costs ~2.4 us a matching row there, so only up to EXACT_MAX_ROWS.
EXACT_SELECTIVITY = 0.02
EXACT_MAX_ROWS = 25_000
UNFILTERED_EF_SEARCH = 250  # 200 left one query of 100 with recall 0 on the 100k benchmark
FILTERED_EF_SEARCH = 400
MAX_EF_SEARCH = 1000  # pgvector's limit for hnsw.ef_search
# A search of every collection of a partitioned table: each partition's index scan makes its whole
# first search at hnsw.ef_search before PostgreSQL's Merge Append returns a row, so the cost is the
# partitions times one search. Each partition keeps its share of the one index's candidates instead
# (the largest partition's share), but never fewer than this floor: when collections follow topics, a
# question's whole top 10 sits in one partition, whose own graph must find all of it. On the 100k
# benchmark's 11 partitions (the largest 11%) with topical collections, recall@10 of a search of every
# collection was 0.968 at 40 (one question at 0), 0.988 at 100, 0.991 at 160 and 0.992 at 250 (a
# second build: 0.979, 0.991, 0.992, 0.993); with collections at random, 1.000 from 20 or 40 up. The
# unpartitioned table reaches its 250 recall at 160 too. base * sqrt(share) would give 84, under 0.99.
# The price: 32-44 ms p50 at 160 against 9-22 ms at 40 and 49-53 ms at 250 (docs/benchmarks.md).
PARTITIONS_MIN_EF_SEARCH = 160
# dpr_pg.search_table filters a document built from each row, which no statistics describe: it
# estimates such a filter's matching rows from a sample of about this many rows (whole pages).
TABLE_SAMPLE_ROWS = 1000
ITERATIVE_SCAN_VERSION = (0, 8, 0)  # pgvector's first release with hnsw.iterative_scan

# The size of a filter document, in dpr_pg.filters and dpr_pg.compile_filter alike. Its characters
# are those of its JSON text as PostgreSQL prints jsonb ({"a": [1, 2]}); any float64 prints in 327.
FILTER_MAX_CHARS = 100_000
FILTER_MAX_DEPTH = 32  # key/index steps from the root of the document to its deepest value
FILTER_MAX_NODES = 2000  # JSON values in the whole document
FILTER_MAX_NUMBER_CHARS = 400
# A question, or hybrid mode's text: the encoders read 512 tokens at most, and full-text search of a
# whole document is not a question (16 MB of it reached PostgreSQL's tsquery limit).
MAX_QUERY_TEXT_CHARS = 10_000
# Hybrid mode's text, in words (runs of non-space characters): ts_rank_cd's cost per matching row grows
# faster than the query's terms (10,000 characters of one repeated word took 33 s over a few hundred
# rows; 200 words take a few tenths of a second).
MAX_QUERY_TEXT_WORDS = 200

# A write (ingest, prune, delete, a sync batch) ANALYZEs the table it changed when the table has no
# statistics yet, or when it changed at least ANALYZE_CHANGED_SHARE of the rows PostgreSQL believes
# the collection (the app table) has, and at least ANALYZE_MIN_ROWS rows (see dpr_pg.search.statistics).
# Fewer rows cannot move an estimate far enough across EXACT_THRESHOLD to matter (exact over about
# a thousand rows takes a few ms), and autovacuum catches up with them; 10% is autovacuum's own share.
ANALYZE_CHANGED_SHARE = 0.10
ANALYZE_MIN_ROWS = 1000

# New HNSW indexes (passages, and app tables at enable time); `dpr-pg index` rebuilds with others.
HNSW_M = 16  # pgvector's default
HNSW_EF_CONSTRUCTION = 64  # pgvector's default
# A graph over more rows than this needs more links: with the defaults, recall@10 on the clustered
# benchmark falls from 0.98-0.99 at 100k rows to 0.90-0.92 at 1M however high ef_search goes, while
# m 24 / ef_construction 128 keeps 1.000 at 1M (docs/operations.md). `dpr-pg doctor` says so.
LARGE_GRAPH_ROWS = 250_000
LARGE_GRAPH_M = 24
LARGE_GRAPH_EF_CONSTRUCTION = 128


def sql_values() -> dict[str, str]:
    """The placeholders of sql/ and their SQL text, e.g. ``{"EXACT_THRESHOLD": "2000", ...}``.

    >>> sql_values()["ITERATIVE_SCAN_VERSION"]
    '0, 8, 0'
    """
    numbers: dict[str, int | float] = {
        "MAX_K": MAX_K, "MAX_DIM": MAX_DIM, "EXACT_THRESHOLD": EXACT_THRESHOLD, "COUNT_BAND": COUNT_BAND,
        "EXACT_SELECTIVITY": EXACT_SELECTIVITY, "EXACT_MAX_ROWS": EXACT_MAX_ROWS,
        "UNFILTERED_EF_SEARCH": UNFILTERED_EF_SEARCH, "FILTERED_EF_SEARCH": FILTERED_EF_SEARCH,
        "MAX_EF_SEARCH": MAX_EF_SEARCH, "PARTITIONS_MIN_EF_SEARCH": PARTITIONS_MIN_EF_SEARCH,
        "TABLE_SAMPLE_ROWS": TABLE_SAMPLE_ROWS,
        "HNSW_M": HNSW_M, "HNSW_EF_CONSTRUCTION": HNSW_EF_CONSTRUCTION,
        "FILTER_MAX_CHARS": FILTER_MAX_CHARS, "FILTER_MAX_DEPTH": FILTER_MAX_DEPTH,
        "FILTER_MAX_NODES": FILTER_MAX_NODES, "FILTER_MAX_NUMBER_CHARS": FILTER_MAX_NUMBER_CHARS,
        "MAX_QUERY_TEXT_CHARS": MAX_QUERY_TEXT_CHARS, "MAX_QUERY_TEXT_WORDS": MAX_QUERY_TEXT_WORDS,
    }
    values = {name: repr(float(v)) if isinstance(v, float) else str(int(v)) for name, v in numbers.items()}
    values["ITERATIVE_SCAN_VERSION"] = ", ".join(str(int(part)) for part in ITERATIVE_SCAN_VERSION)
    return values
