"""The HNSW index: build it with chosen parameters, or drop it for a bulk load and build it once after.

Keeping an HNSW index up to date costs milliseconds per inserted 768-d row, so a bulk load into
an indexed table runs at a few hundred rows/s; building the index once afterwards is far
faster, as pgvector's README recommends (``defer_index``). While the index is gone, searches
still work (exact scans). A run killed in between leaves no index: re-running the ingest with
``defer_index`` builds it, and :func:`ensure_hnsw` does it on its own.

:func:`build_index` (``dpr-pg index``) rebuilds it with other ``m`` / ``ef_construction``, the
knobs of recall on large corpora, without stopping searches or writes: the new index is built
CONCURRENTLY under another name and swapped in. :func:`dpr_pg.db.column.set_storage` (``dpr-pg storage
set``) does the same to switch what the index compares (see :mod:`dpr_pg.db.storage`).

Every change of the index (drop, build, rebuild) holds one advisory lock, taken with
``pg_try_advisory_lock`` and retried from the client, never waited for inside the server: CREATE
INDEX CONCURRENTLY waits for every transaction older than its snapshot, so a session blocked
inside ``pg_advisory_lock`` behind it would be a deadlock. A failed rebuild drops its
``_new`` index: an INVALID index that is ready is still updated on every write.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from dpr_pg import _progress
from dpr_pg.errors import ConfigError, IndexBuildError
from dpr_pg.db.models import HNSW_INDEX, SCHEMA
from dpr_pg.db.partitions import is_partitioned
from dpr_pg.db.revision import require_schema
from dpr_pg.db.storage import Storage, column_type, index_method, read_storage, write_storage
from dpr_pg.tuning import HNSW_EF_CONSTRUCTION, HNSW_M

log = logging.getLogger(__name__)

# Runs in autocommit: an index left INVALID by a killed CREATE INDEX CONCURRENTLY is dropped.
DROP_INVALID_HNSW = f"""
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = '{SCHEMA}' AND c.relname = '{HNSW_INDEX}' AND NOT i.indisvalid
    ) THEN
        DROP INDEX {SCHEMA}.{HNSW_INDEX};
    END IF;
END
$$
"""
INDEX_LOCK_WAIT = 3600.0  # seconds one index change waits for another (a 1M-row build takes ~1000 s)
_KEY = "hashtextextended('dpr_pg.hnsw', 0)"
_TRY_LOCK = f"SELECT pg_try_advisory_lock({_KEY})"
_UNLOCK = f"SELECT pg_advisory_unlock({_KEY})"
# Who holds the lock: a bigint advisory key is split into classid (high half) and objid (low half).
_HOLDER = f"""
SELECT a.pid, coalesce(nullif(a.application_name, ''), 'no application name'), coalesce(a.state, 'unknown'),
       left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 60),
       coalesce(round(extract(epoch FROM now() - a.query_start))::bigint, 0)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = ({_KEY} >> 32) & 4294967295 AND l.objid::bigint = {_KEY} & 4294967295
LIMIT 1
"""
_NEW_INDEX = f"{HNSW_INDEX}_new"
# The rows of dpr_pg.passages as of the last ANALYZE: the table itself, or its partitions.
_ROWS = ("SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c "
         "WHERE (c.oid = 'dpr_pg.passages'::regclass AND c.relkind = 'r') "
         "OR c.oid IN (SELECT t.relid FROM pg_partition_tree('dpr_pg.passages') t WHERE t.isleaf)")
_LEAVES = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
           "WHERE i.inhparent = 'dpr_pg.passages'::regclass ORDER BY c.relname")
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]{0,53}")
_SWAP_TRIES = 6
_SWAP_LOCK_TIMEOUT = "5s"  # while the swap waits for its lock, new searches queue behind it: keep it short
# pgvector keeps the graph in maintenance_work_mem while it builds; a build that outgrows it slows
# sharply. Per row: the vector, 2m neighbour slots of the bottom layer and the element's overhead.
_ROW_OVERHEAD = 96
_MAX_AUTO_MEMORY = 16 * 2**30
# The automatic size never takes more than this share of the machine's RAM (the server, its page
# cache and the other processes need the rest): 6 GB on a 24 GB machine, 16 GB from 64 GB up.
_RAM_SHARE = 0.25
_STALE_COUNT = sa.text(
    "SELECT c.reltuples < 0 OR pg_stat_get_mod_since_analyze(c.oid) > 0.1 * c.reltuples "
    "FROM pg_class c WHERE c.oid = 'dpr_pg.passages'::regclass")
# Bytes a dimension of the value the graph stores, by storage (see dpr_pg.db.storage).
_BYTES_PER_DIM = {"vector": 4.0, "halfvec": 2.0, "bit": 1 / 8}


def index_lock_holder(conn: Connection) -> str | None:
    """Who holds the index lock now (pid, application, what it runs), or None when it is free.

    Example:
        >>> index_lock_holder(conn)  # doctest: +SKIP
        "pid 4711 (dpr_pg, active: 'CREATE INDEX CONCURRENTLY passages_embedding_hnsw_new ON …' for 12 s)"
    """
    row = conn.execute(sa.text(_HOLDER)).first()
    if row is None:
        return None
    pid, application, state, query, seconds = row
    return f"pid {pid} ({application}, {state}: {query!r} for {seconds} s)"


@contextmanager
def _index_lock(conn: Connection, *, wait: float) -> Iterator[None]:
    """Hold the index lock on ``conn`` (autocommit), trying again and again for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    delay, told = 0.1, False
    while not conn.execute(sa.text(_TRY_LOCK)).scalar():
        holder = index_lock_holder(conn) or "another session"
        left = deadline - time.monotonic()
        if left <= 0:
            raise IndexBuildError(
                f"expected the HNSW index to be free within {wait:g} s, but another index change holds its lock: "
                f"{holder}; nothing was changed: wait for it to end and re-run (dpr-pg index --wait SECONDS "
                "waits longer)")
        if not told:
            log.warning("waiting for the HNSW index: another index change holds its lock (%s); trying again "
                        "until it ends, for at most %g s", holder, wait)
            told = True
        time.sleep(min(delay, left))  # outside any transaction: a concurrent build never waits for this one
        delay = min(delay * 2, 2.0)
    try:
        yield
    finally:
        if not conn.invalidated:
            try:
                conn.execute(sa.text(_UNLOCK))
            except sa.exc.DBAPIError:  # the connection is gone, and the lock with it
                pass


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def _reason(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class HnswParameters:
    """``m`` (links per node) and ``ef_construction`` (candidate list while building).

    Larger values make a better graph (higher recall at the same ``ef_search``) and a slower
    build; pgvector requires ``ef_construction >= 2 * m``.

    Example:
        >>> HnswParameters(m=24, ef_construction=128).sql()
        'm = 24, ef_construction = 128'
    """

    m: int = HNSW_M
    ef_construction: int = HNSW_EF_CONSTRUCTION

    def __post_init__(self) -> None:
        for name, value, low, high in (("m", self.m, 2, 100), ("ef_construction", self.ef_construction, 4, 1000)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"expected {name} to be an integer from {low} to {high} (pgvector's range), "
                                  f"not {value!r}")
        if self.ef_construction < 2 * self.m:
            raise ConfigError(f"expected ef_construction >= 2 * m (pgvector requires it): with m = {self.m}, "
                              f"ef_construction must be at least {2 * self.m}, not {self.ef_construction}")

    def sql(self) -> str:
        """The WITH (...) options; both values are validated integers, never caller text."""
        return f"m = {int(self.m)}, ef_construction = {int(self.ef_construction)}"


@dataclass(frozen=True)
class IndexBuild:
    """What :func:`build_index` did: the parameters, the rows indexed and the seconds it took."""

    parameters: HnswParameters
    rows: int
    seconds: float
    maintenance_work_mem: str
    parallel_workers: int = 0  # max_parallel_maintenance_workers: processes that help the build's leader


def _definition(name: str, parameters: HnswParameters, method: str, *, concurrently: bool = False) -> str:
    """``method`` is :func:`dpr_pg.db.storage.index_method`'s, for the storage the index gets."""
    how = "CONCURRENTLY" if concurrently else "IF NOT EXISTS"
    return f"CREATE INDEX {how} {name} ON dpr_pg.passages {method} WITH ({parameters.sql()})"


def _method(conn: Connection, chosen: Storage | None = None) -> str:
    """The index method for ``chosen``, or for the storage the database records."""
    dim = conn.execute(sa.text(
        "SELECT a.atttypmod FROM pg_attribute a "
        "WHERE a.attrelid = 'dpr_pg.passages'::regclass AND a.attname = 'embedding'")).scalar_one()
    return index_method((chosen or read_storage(conn)).kind, int(dim), column_type(conn))


def hnsw_exists(engine: Engine) -> bool:
    """Whether the valid HNSW index on passages.embedding exists.

    Example:
        >>> hnsw_exists(engine)  # doctest: +SKIP
        True
    """
    with engine.connect() as conn:
        return bool(conn.execute(sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.oid = to_regclass(:name)"), {"name": f"dpr_pg.{HNSW_INDEX}"}).scalar())


def hnsw_parameters(engine: Engine) -> HnswParameters | None:
    """The parameters of the current HNSW index (pgvector's defaults where unset), or None without one.

    Example:
        >>> hnsw_parameters(engine)  # doctest: +SKIP
        HnswParameters(m=16, ef_construction=64)
    """
    with engine.connect() as conn:
        return index_parameters(conn)


def index_parameters(conn: Connection) -> HnswParameters | None:
    """:func:`hnsw_parameters` on a connection (in its transaction)."""
    options = conn.execute(sa.text(
        "SELECT coalesce(c.reloptions, '{}') FROM pg_class c WHERE c.oid = to_regclass(:name)"),
        {"name": f"dpr_pg.{HNSW_INDEX}"}).scalar()
    if options is None:
        return None
    values = dict(option.split("=", 1) for option in options)
    return HnswParameters(m=int(values.get("m", HNSW_M)),
                          ef_construction=int(values.get("ef_construction", HNSW_EF_CONSTRUCTION)))


def drop_hnsw(engine: Engine, *, wait: float = INDEX_LOCK_WAIT) -> HnswParameters | None:
    """Drop the HNSW index (if present) before a bulk load; returns its parameters, for :func:`ensure_hnsw`.

    A rebuild's leftover ``_new`` index goes too: while it exists, every write updates it.

    Example:
        >>> drop_hnsw(engine)  # doctest: +SKIP
        HnswParameters(m=16, ef_construction=64)
    """
    try:
        with _autocommit(engine) as conn, _index_lock(conn, wait=wait):
            parameters = hnsw_parameters(engine)
            conn.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{HNSW_INDEX}"))
            conn.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{_NEW_INDEX}"))
    except sa.exc.DBAPIError as e:
        raise IndexBuildError(f"could not drop the HNSW index for a bulk load: {_reason(e)}; nothing was "
                              "written: re-run the command") from e
    return parameters


def ensure_hnsw(engine: Engine, parameters: HnswParameters | None = None, *,
                maintenance_work_mem: str | None = None, wait: float = INDEX_LOCK_WAIT,
                progress: bool | None = False) -> bool:
    """Build the HNSW index if it is missing (or INVALID); returns True when it built one.

    ``progress`` shows a bar of the build on stderr (None: on a terminal only).

    Example:
        >>> ensure_hnsw(engine)  # doctest: +SKIP
        True
    """
    parameters = parameters or HnswParameters()
    try:
        with _autocommit(engine) as conn, _index_lock(conn, wait=wait):
            if hnsw_exists(engine):
                return False
            conn.execute(sa.text(DROP_INVALID_HNSW))
            conn.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{_NEW_INDEX}"))  # no rebuild runs: we hold the lock
            storage = read_storage(conn)
            memory = _set_memory(conn, maintenance_work_mem, parameters, storage.kind)
            workers = _set_workers(conn)
            _tell(progress, storage.kind, memory, workers)
            with _progress.index_build(engine, progress):
                conn.execute(sa.text(_definition(HNSW_INDEX, parameters, _method(conn, storage))))
            return True
    except sa.exc.DBAPIError as e:
        raise IndexBuildError(f"the HNSW index was not built: {_reason(e)}; searches run as exact scans "
                              "meanwhile: run dpr-pg index to build it") from e


def build_index(engine: Engine, *, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
                maintenance_work_mem: str | None = None, wait: float = INDEX_LOCK_WAIT,
                storage: Storage | None = None, progress: bool | None = False) -> IndexBuild:
    """(Re)build the HNSW index with these parameters; searches and writes go on meanwhile.

    The new index is built with CREATE INDEX CONCURRENTLY under a temporary name, then swapped
    for the old one in a short transaction. ``maintenance_work_mem`` defaults to what the graph
    needs (estimated from the table, at most 16GB): a build that outgrows it slows sharply.
    Another index change in progress (a rebuild, an ingest with ``defer_index``) is waited for,
    up to ``wait`` seconds. A failed build drops its temporary index and keeps the old one; a
    killed one leaves it INVALID, and the next call drops it. ``storage`` (see :mod:`dpr_pg.db.storage`)
    builds the index for another storage and records it in the swap's transaction; by default the
    index keeps the storage the database records. ``progress`` shows a bar of the build on stderr,
    from PostgreSQL's progress report (None: on a terminal only).

    Example:
        >>> build_index(engine, m=24, ef_construction=128).seconds  # doctest: +SKIP
        812.4
    """
    parameters = HnswParameters(m=m, ef_construction=ef_construction)
    with engine.connect() as conn:
        require_schema(conn)  # before init: say so, not "the index was not rebuilt"
    try:
        with _autocommit(engine) as conn, _index_lock(conn, wait=wait):
            partitioned = is_partitioned(conn)
            how = "" if partitioned else "CONCURRENTLY "  # a partitioned index drops at once
            conn.execute(sa.text(f"DROP INDEX {how}IF EXISTS dpr_pg.{_NEW_INDEX}"))  # a killed build's
            kind = (storage or read_storage(conn)).kind
            memory = _set_memory(conn, maintenance_work_mem, parameters, kind)
            workers = _set_workers(conn)
            try:
                started = time.perf_counter()
                _tell(progress, kind, memory, workers)
                with _progress.index_build(engine, progress):
                    if partitioned:
                        _build_partitions(conn, parameters, _method(conn, storage))
                    else:
                        conn.execute(sa.text(_definition(_NEW_INDEX, parameters, _method(conn, storage),
                                                         concurrently=True)))
                seconds = time.perf_counter() - started
                _swap(engine, storage, partitioned=partitioned)
            except BaseException:
                _drop_new_index(engine, conn, partitioned=partitioned)
                raise
            rows = int(conn.execute(sa.text(_ROWS)).scalar())
    except sa.exc.DBAPIError as e:
        raise IndexBuildError(f"the HNSW index was not rebuilt: {_reason(e)}; the old index is kept and the "
                              "new one was dropped: re-run dpr-pg index") from e
    return IndexBuild(parameters, rows, seconds, memory, workers)


def _build_partitions(conn: Connection, parameters: HnswParameters, method: str, *, name: str = _NEW_INDEX,
                      leaf_suffix: str = "hnsw_new", where: sql.Composable | None = None) -> None:
    """The new index of a partitioned table: CONCURRENTLY on each partition, attached to an index made
    ON ONLY the parent (CREATE INDEX CONCURRENTLY refuses a partitioned table). The parent index is
    valid once every partition's is attached; until the swap, searches use the old one. ``where``: a
    partial index's predicate (see :mod:`dpr_pg.db.filtered`), each partition's index named
    ``<partition>_<leaf_suffix>``.
    """
    options = sql.SQL(f"{method} WITH ({parameters.sql()})")  # both validated, never caller text
    predicate = sql.SQL("") if where is None else sql.SQL(" WHERE {}").format(where)
    _execute(conn, sql.SQL("DROP INDEX IF EXISTS dpr_pg.{}").format(sql.Identifier(name)))  # a killed build's
    _execute(conn, sql.SQL("CREATE INDEX {} ON ONLY dpr_pg.passages {}{}").format(
        sql.Identifier(name), options, predicate))
    for (table,) in conn.execute(sa.text(_LEAVES)).all():
        leaf = sql.Identifier(_leaf_index(table, suffix=leaf_suffix))
        _execute(conn, sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS dpr_pg.{}").format(leaf))
        _execute(conn, sql.SQL("CREATE INDEX CONCURRENTLY {} ON dpr_pg.{} {}{}").format(
            leaf, sql.Identifier(table), options, predicate))
        _execute(conn, sql.SQL("ALTER INDEX dpr_pg.{} ATTACH PARTITION dpr_pg.{}").format(sql.Identifier(name), leaf))


def _execute(conn: Connection, statement: sql.Composable) -> None:
    """A statement composed with psycopg's sql module, straight to the driver: no placeholder is parsed.
    Its errors come as SQLAlchemy's, as those of ``conn.execute`` do."""
    raw = conn.connection.driver_connection
    try:
        raw.execute(statement)  # type: ignore[union-attr]
    except psycopg.Error as e:
        raise sa.exc.DBAPIError.instance(statement.as_string(raw), None, e, psycopg.Error) from e


def _leaf_index(table: str, *, new: bool = False, suffix: str | None = None) -> str:
    """A partition's HNSW index name; ``table`` comes from the catalog (passages_c_<hex>, passages_default)."""
    if not _PLAIN_NAME.fullmatch(table):
        raise IndexBuildError(f"unexpected partition name dpr_pg.{table!r}; detach it, then re-run dpr-pg index")
    return f"{table}_{suffix or ('hnsw_new' if new else 'hnsw')}"


def _swap(engine: Engine, storage: Storage | None = None, *, partitioned: bool = False) -> None:
    """Put the new index in the old one's place, in one short transaction (searches never lack an index).

    The swap needs an exclusive lock on the table; a long transaction (or a deadlock with one)
    makes it give up after a few seconds and try again, instead of stalling every search.
    """
    for attempt in range(_SWAP_TRIES):
        try:
            with engine.begin() as swap:
                swap.execute(sa.text(f"SET LOCAL lock_timeout = '{_SWAP_LOCK_TIMEOUT}'"))
                swap.execute(sa.text(f"DROP INDEX IF EXISTS dpr_pg.{HNSW_INDEX}"))
                swap.execute(sa.text(f"ALTER INDEX dpr_pg.{_NEW_INDEX} RENAME TO {HNSW_INDEX}"))
                if partitioned:  # each partition's index takes the name the next rebuild looks for
                    for (table,) in swap.execute(sa.text(_LEAVES)).all():
                        swap.execute(sa.text(f"ALTER INDEX IF EXISTS dpr_pg.{_leaf_index(table, new=True)} "
                                             f"RENAME TO {_leaf_index(table)}"))
                if storage is not None:  # searches see the new index and the setting at once
                    write_storage(swap, storage)
            return
        except sa.exc.OperationalError as e:
            busy = isinstance(e.orig, (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected))
            if not busy or attempt == _SWAP_TRIES - 1:
                raise
            log.warning("swapping in the new HNSW index: %s; trying again", _reason(e))
            time.sleep(min(2.0**attempt, 10.0))


def _drop_new_index(engine: Engine, conn: Connection, *, partitioned: bool = False, name: str = _NEW_INDEX,
                    leaves: tuple[str, ...] = ()) -> None:
    """Drop a failed build's index ``name`` (a rebuild's ``_new`` one), so that PostgreSQL stops maintaining
    it on every write; ``leaves``: partitions' indexes that may not be attached to it yet."""
    # A partitioned index cannot be dropped CONCURRENTLY; its partitions' indexes go with it, and a
    # partition's index not attached yet is dropped by the next build (or here, when named).
    drops = [sql.SQL("DROP INDEX {}IF EXISTS dpr_pg.{}").format(
        sql.SQL("" if partitioned else "CONCURRENTLY "), sql.Identifier(name))]
    drops += [sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS dpr_pg.{}").format(sql.Identifier(leaf)) for leaf in leaves]
    if not conn.invalidated:
        try:
            for drop in drops:
                _execute(conn, drop)  # still under the lock: it is this build's index
            return
        except sa.exc.DBAPIError:
            pass
    try:  # the connection broke, and its lock went with it: drop the index only if no other build runs now
        with _autocommit(engine) as fresh:
            if fresh.execute(sa.text(_TRY_LOCK)).scalar():
                try:
                    for drop in drops:
                        _execute(fresh, drop)
                finally:
                    fresh.execute(sa.text(_UNLOCK))
    except sa.exc.DBAPIError as e:
        log.warning("could not drop the failed build's index dpr_pg.%s (%s); the next dpr-pg index drops it",
                    name, _reason(e))


def machine_memory() -> int:
    """Bytes of RAM of this machine (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 0


def memory_cap(ram: int | None = None) -> int:
    """The most the automatic ``maintenance_work_mem`` takes: a quarter of the RAM, at most 16 GB.

    Example:
        >>> memory_cap(24 * 2**30) // 2**30, memory_cap(256 * 2**30) // 2**30
        (6, 16)
    """
    ram = machine_memory() if ram is None else ram
    return min(_MAX_AUTO_MEMORY, int(ram * _RAM_SHARE)) if ram else _MAX_AUTO_MEMORY


def graph_bytes(rows: float, dim: int, parameters: HnswParameters, kind: str = "vector") -> int:
    """About what pgvector's in-memory graph of ``rows`` takes while it builds, with a 25% margin.

    Example:
        >>> graph_bytes(1_000_000, 768, HnswParameters(), "vector") // 2**20
        4081
    """
    per_row = _BYTES_PER_DIM.get(kind, 4.0) * dim + 16 * parameters.m + _ROW_OVERHEAD
    return int(rows * per_row * 1.25)


def parallel_workers(cores: int | None = None) -> int:
    """Processes that help the leader of an index build: one less than the cores (pgvector's advice), 1 to 7.

    Example:
        >>> parallel_workers(2), parallel_workers(8), parallel_workers(64)
        (1, 7, 7)
    """
    cores = cores or os.cpu_count() or 2
    return max(1, min(7, cores - 1))


def _set_workers(conn: Connection) -> int:
    """SET max_parallel_maintenance_workers for this session's build from the machine's cores; returns it."""
    workers = parallel_workers()
    conn.execute(sa.text("SELECT set_config('max_parallel_maintenance_workers', :w, false)"), {"w": str(workers)})
    return workers


def _tell(progress: bool | None, kind: str, memory: str, workers: int) -> None:
    """With the progress bar, a line first that says what the build uses."""
    if _progress.shown(progress):
        print(f"HNSW index ({kind}): maintenance_work_mem {memory} (cap {memory_cap() // 2**20}MB, a quarter of "
              f"the RAM), {workers} parallel worker(s) + leader", file=sys.stderr, flush=True)


def graph_memory(conn: Connection, rows: float, parameters: HnswParameters, kind: str = "vector") -> str | None:
    """``maintenance_work_mem`` for building one graph of ``rows`` of dpr_pg.passages' dimension: what
    :func:`graph_bytes` says, at most :func:`memory_cap`; None when the server's setting is as large
    (it is never lowered).
    """
    dim, current = conn.execute(sa.text(
        "SELECT a.atttypmod, pg_size_bytes(current_setting('maintenance_work_mem')) "
        "FROM pg_attribute a WHERE a.attrelid = 'dpr_pg.passages'::regclass AND a.attname = 'embedding'")).one()
    needed = min(graph_bytes(rows, int(dim), parameters, kind), memory_cap())
    return f"{needed // 2**20}MB" if needed > current else None


def _set_memory(conn: Connection, memory: str | None, parameters: HnswParameters, kind: str = "vector",
                rows: float | None = None) -> str:
    """SET maintenance_work_mem for this session: ``memory``, or enough for the table's graph; returns it.

    The automatic size is what the graph needs (:func:`graph_bytes`, for the storage ``kind``), at
    most :func:`memory_cap`, and never below the server's own setting. A table never analysed (a
    bulk load into a new table) is analysed first: without a row count the build got the server's
    default (64MB), and a 1M-row graph that does not fit in memory builds many times slower.
    """
    if memory is None and rows is not None:  # a graph of only some rows (a partial index)
        memory = graph_memory(conn, rows, parameters, kind)
    elif memory is None:
        # reltuples is -1 until the first ANALYZE or VACUUM (a bulk load into a new table), and stale
        # after large writes: a sized build needs the count, so ANALYZE first (a sample: seconds at 1M rows).
        if conn.execute(_STALE_COUNT).scalar():
            conn.execute(sa.text("ANALYZE dpr_pg.passages"))
        rows = conn.execute(sa.text(_ROWS)).scalar_one()
        memory = graph_memory(conn, rows, parameters, kind)
    if memory is not None:
        try:
            conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :m, false)"), {"m": memory})
        except sa.exc.DBAPIError as e:
            raise ConfigError(f"expected a maintenance_work_mem size such as 512MB or 4GB, not {memory!r}") from e
    return str(conn.execute(sa.text("SHOW maintenance_work_mem")).scalar())
