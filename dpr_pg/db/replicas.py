"""Read replicas: searches go to streaming replicas, everything else to the primary.

``create_engine(read_urls=...)`` (or ``DPR_PG_READ_URLS``) attaches a :class:`ReadRoute` to the
primary's Engine. A search given that Engine takes its connection from :func:`read_connection`
(:func:`read_connection_async` for an AsyncEngine), which picks a replica that answers, is in
recovery and lags at most ``max_lag`` seconds, and otherwise the primary. Writes never come here:
ingest, sync, init, delete and index use the Engine itself, which is the primary.

A replica's lag is 0 when it has replayed the primary's WAL position, else the age of the last
transaction it replayed. It is checked on the connection that serves the search, at most once per
``check_interval``; a replica that refuses connections is left alone for ``DOWN_RETRY_S``.

With ``read_your_writes``, a search waits (up to ``wait`` seconds) until the replica has replayed
the primary's WAL position as of the last commit made through the Engine (for the first search:
as of that search), and reads the primary when the replica does not get there in time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["ReadRoute", "ReplicaStatus", "probe_replica", "read_connection", "read_connection_async", "reason_of",
           "route_of"]

DOWN_RETRY_S = 5.0  # a replica that refused a connection, or is a primary, is tried again after this
CONNECT_TIMEOUT_S = 3  # libpq's connect_timeout for replicas, so a dead host costs seconds, not minutes
_READ = "dpr_pg_read"  # execution option of the primary connections that only read (their commits write nothing)

_log = logging.getLogger(__name__)
_ROUTES: weakref.WeakKeyDictionary[Any, ReadRoute] = weakref.WeakKeyDictionary()

# On the replica, against the primary's WAL position: in recovery?, bytes behind, age of the last replayed commit.
_REPLICA_SQL = sa.text(
    "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(CAST(:primary_lsn AS pg_lsn), pg_last_wal_replay_lsn()), "
    "extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())")
_REPLAYED_SQL = sa.text("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)")
_PRIMARY_SQL = sa.text("SELECT pg_current_wal_lsn()::text")


@dataclass
class ReplicaStatus:
    """What is known of one read replica.

    ``state``: ``streaming`` (searches use it), ``lagging`` (more than the allowed lag behind),
    ``primary`` (not in recovery: never used), ``unreachable``, or ``unchecked``.
    """

    url: str  # a libpq URL, its password masked
    state: str = "unchecked"
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Replica:
    def __init__(self, engine: Engine | AsyncEngine, url: str) -> None:
        self.engine = engine
        self.status = ReplicaStatus(url)
        self.checked_at = float("-inf")
        self.password = engine.url.password


def probe_replica(conn: Connection, primary_lsn: str, status: ReplicaStatus, max_lag: float) -> ReplicaStatus:
    """Check the replica behind ``conn`` against the primary's WAL position ``primary_lsn``; fills ``status``."""
    in_recovery, behind, age = conn.execute(_REPLICA_SQL, {"primary_lsn": primary_lsn}).one()
    conn.rollback()  # leave no transaction open: the caller begins its own
    if not in_recovery:
        status.state, status.lag_seconds, status.lag_bytes = "primary", None, None
        status.error = "pg_is_in_recovery() is false: this is a primary, not a replica"
        return status
    status.lag_bytes = max(0, int(behind))
    status.lag_seconds = 0.0 if status.lag_bytes == 0 else (float("inf") if age is None else max(0.0, float(age)))
    status.state = "streaming" if status.lag_seconds <= max_lag else "lagging"
    status.error = None
    return status


def reason_of(error: BaseException, password: str | None) -> str:
    """The first line of a connection error, the URL's password masked."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return text.replace(password, "***") if password else text


class ReadRoute:
    """Where an Engine's searches go: its replicas, in turn, when they are fit; else the primary.

    Made by :func:`dpr_pg.create_engine` (or ``dpr_pg.aio.create_async_engine``) with ``read_urls``.
    ``check_interval``: how old a replica's last check may be before a search checks it again.
    """

    def __init__(self, replicas: Sequence[tuple[Engine | AsyncEngine, str]], *, max_lag: float,
                 read_your_writes: bool, wait: float, check_interval: float = 1.0) -> None:
        self.replicas = [_Replica(engine, url) for engine, url in replicas]
        self.max_lag = max_lag
        self.read_your_writes = read_your_writes
        self.wait = wait
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._turn = 0
        self._written = True  # nothing is known of earlier writes: the first search catches up with the primary
        self._target: str | None = None  # the WAL position a read-your-writes search must see

    @property
    def statuses(self) -> list[ReplicaStatus]:
        return [replica.status for replica in self.replicas]

    def watch(self, engine: Engine) -> None:
        """Count the commits of ``engine`` (on the primary) as writes that read-your-writes searches must see."""
        sa.event.listen(engine, "commit", self._committed)

    def _committed(self, conn: Connection) -> None:
        if not conn.get_execution_options().get(_READ):
            self._written = True

    def _candidates(self) -> list[tuple[_Replica, bool]]:
        """The replicas to try, in turn, each with whether it must be checked first."""
        now = time.monotonic()
        with self._lock:
            start, self._turn = self._turn, self._turn + 1
        order = self.replicas[start % len(self.replicas):] + self.replicas[:start % len(self.replicas)]
        found = []
        for replica in order:
            state = replica.status.state
            retry = DOWN_RETRY_S if state in ("unreachable", "primary") else self.check_interval
            stale = now - replica.checked_at >= retry
            if stale or state == "streaming":
                found.append((replica, stale))
        return found

    def _take_written(self) -> bool:
        """Whether a write happened since the last search that read-your-writes must now see."""
        with self._lock:
            written, self._written = self._written, False
            return written and self.read_your_writes

    def _down(self, replica: _Replica, error: BaseException) -> None:
        replica.status.state, replica.status.lag_seconds, replica.status.lag_bytes = "unreachable", None, None
        replica.status.error = reason_of(error, replica.password)
        replica.checked_at = time.monotonic()
        _log.warning("dpr_pg: read replica %s is unreachable (%s); searching elsewhere",
                     replica.status.url, replica.status.error)

    def _judged(self, replica: _Replica, conn: Connection, primary_lsn: str) -> bool:
        probe_replica(conn, primary_lsn, replica.status, self.max_lag)
        replica.checked_at = time.monotonic()
        if replica.status.state == "primary":
            _log.warning("dpr_pg: read URL %s is a primary, not a replica; it is never used",
                         replica.status.url)
        return replica.status.state == "streaming"


def route_of(engine: Engine | AsyncEngine) -> ReadRoute | None:
    """The ReadRoute attached to ``engine``, or None when its searches all go to it."""
    return _ROUTES.get(engine.sync_engine if isinstance(engine, AsyncEngine) else engine)


def attach(primary: Engine | AsyncEngine, route: ReadRoute) -> None:
    """Send ``primary``'s searches along ``route``; commits made through ``primary`` count as writes."""
    sync = primary.sync_engine if isinstance(primary, AsyncEngine) else primary
    _ROUTES[sync] = route
    route.watch(sync)


def _primary_lsn(conn: Connection) -> str:
    lsn = conn.execute(_PRIMARY_SQL).scalar_one()
    conn.rollback()
    return lsn


def _replayed(conn: Connection, lsn: str) -> bool:
    done = bool(conn.execute(_REPLAYED_SQL, {"lsn": lsn}).scalar())
    conn.rollback()
    return done


def _pause(waited: int) -> float:
    return min(0.05, 0.005 * 2 ** waited)


def _replica_connection(route: ReadRoute, primary: Engine) -> Connection | None:
    """A connection to a fit replica, or None for the primary."""
    candidates = route._candidates()
    if not candidates:
        return None
    written, primary_lsn = route._take_written(), ""
    if written or any(stale for _, stale in candidates):
        with primary.connect() as conn:
            primary_lsn = _primary_lsn(conn.execution_options(**{_READ: True}))
        if written:
            route._target = primary_lsn
    for replica, stale in candidates:
        try:
            conn = replica.engine.connect()  # type: ignore[union-attr]
        except sa.exc.DBAPIError as e:
            route._down(replica, e)
            continue
        try:
            if stale and not route._judged(replica, conn, primary_lsn):
                conn.close()
                continue
            if route.read_your_writes and route._target is not None:
                deadline, waited = time.monotonic() + route.wait, 0
                while not _replayed(conn, route._target):
                    if time.monotonic() >= deadline:
                        conn.close()
                        return None  # it has not caught up in time: the primary has the writes
                    time.sleep(_pause(waited))
                    waited += 1
            return conn
        except sa.exc.DBAPIError as e:
            conn.close()
            route._down(replica, e)
    return None


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction for a search on ``engine``: on a fit replica, else on the primary.

    >>> with read_connection(engine) as conn:  # doctest: +SKIP
    ...     conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar()
    True
    """
    route = _ROUTES.get(engine)
    conn = _replica_connection(route, engine) if route is not None else None
    if conn is None:
        conn = engine.connect().execution_options(**{_READ: True})
    with conn, conn.begin():
        yield conn


async def _replica_connection_async(route: ReadRoute, primary: AsyncEngine) -> AsyncConnection | None:
    """:func:`_replica_connection` for an AsyncEngine; the checks are the same sync functions, run by run_sync."""
    candidates = route._candidates()
    if not candidates:
        return None
    written, primary_lsn = route._take_written(), ""
    if written or any(stale for _, stale in candidates):
        async with primary.connect() as conn:
            await conn.execution_options(**{_READ: True})
            primary_lsn = await conn.run_sync(_primary_lsn)
        if written:
            route._target = primary_lsn
    for replica, stale in candidates:
        try:
            conn = await replica.engine.connect()  # type: ignore[misc]
        except sa.exc.DBAPIError as e:
            route._down(replica, e)
            continue
        try:
            if stale and not await conn.run_sync(lambda c: route._judged(replica, c, primary_lsn)):
                await conn.close()
                continue
            target = route._target
            if route.read_your_writes and target is not None:
                deadline, waited = time.monotonic() + route.wait, 0
                while not await conn.run_sync(_replayed, target):
                    if time.monotonic() >= deadline:
                        await conn.close()
                        return None
                    await asyncio.sleep(_pause(waited))
                    waited += 1
            return conn
        except sa.exc.DBAPIError as e:
            await conn.close()
            route._down(replica, e)
    return None


@asynccontextmanager
async def read_connection_async(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """:func:`read_connection` for an AsyncEngine."""
    route = _ROUTES.get(engine.sync_engine)
    conn = await _replica_connection_async(route, engine) if route is not None else None
    if conn is None:
        conn = await engine.connect()
        await conn.execution_options(**{_READ: True})
    try:
        async with conn.begin():
            yield conn
    finally:
        await conn.close()
