"""Index builds beside each other and beside ingest: no deadlock, no leftover ``_new`` index, doctor tells.

Each race is made deterministic by a transaction that holds a ROW EXCLUSIVE lock on the passages
table: CREATE INDEX CONCURRENTLY waits for it, so the other command surely starts while the first
build is in flight. The holder then commits and both commands must finish cleanly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.db.doctor import doctor
from dpr_pg.ingest import ingest
from dpr_pg.db.index import HnswParameters, hnsw_exists, hnsw_parameters

FP = EncoderFingerprint("test/question", "r1", "test/passage", "r1", "tok", 768, 512)
_NEW = "passages_embedding_hnsw_new"


def load(engine: Engine, folder: Path, n: int, *, collection: str = "c") -> None:
    source = folder / f"{collection}.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{i}", "text": f"Texto {i}."}) + "\n" for i in range(n)))
    np.save(folder / f"{collection}.npy", np.random.default_rng(n).standard_normal((n, 768)).astype(np.float32))
    ingest(engine, None, source, collection=collection, embeddings=folder / f"{collection}.npy", fingerprint=FP)


class Command:
    """``dpr-pg ARGS`` in a subprocess; its stderr is collected line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "dpr_pg.cli", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def finish(self) -> tuple[int, str, str]:
        assert self.process.stdout is not None
        out = self.process.stdout.read()  # stderr is read by the thread, not by communicate()
        self.process.wait(timeout=300)
        self._reader.join(timeout=60)
        return self.process.returncode, out, "".join(self.stderr)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition``; a guard against a hang, not a timing assertion."""
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@contextmanager
def writer_in_flight(engine: Engine) -> Iterator[Connection]:
    """An open transaction holding ROW EXCLUSIVE on passages, as an app's uncommitted write does."""
    with engine.connect() as conn:
        conn.execute(sa.text("LOCK TABLE dpr_pg.passages IN ROW EXCLUSIVE MODE"))
        yield conn
        conn.rollback()


def activity(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def build_waiting(engine: Engine) -> bool:
    return activity(engine, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' "
                            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()") == 1


def blocked_on_the_index_lock(engine: Engine, command: Command) -> bool:
    """The second command waits for the first one's lock: in the server (a blocking lock) or in the client."""
    in_server = activity(engine, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") > 0
    return in_server or any("waiting for" in line for line in command.stderr)


def index_names(engine: Engine) -> dict[str, bool]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'dpr_pg' AND c.relname LIKE '%hnsw%'"))
        return dict(rows.all())


def test_two_index_builds_at_once_run_one_after_the_other(engine: Engine, database_url: str, tmp_path: Path) -> None:
    load(engine, tmp_path, 60)
    url = ("--database-url", database_url)
    with writer_in_flight(engine):
        first = Command(*url, "index", "--m", "8", "--ef-construction", "32")
        wait_until(lambda: build_waiting(engine), "the first build to wait for the writer")
        second = Command(*url, "index", "--m", "12", "--ef-construction", "40")
        wait_until(lambda: blocked_on_the_index_lock(engine, second), "the second build to wait for the first")
    results = [first.finish(), second.finish()]

    assert [code for code, _, _ in results] == [0, 0], results
    assert not any("Traceback" in err or "deadlock" in err.lower() for _, _, err in results)
    assert "waiting for" in results[1][2] and "HNSW index" in results[1][2]
    assert index_names(engine) == {"passages_embedding_hnsw": True}
    assert hnsw_parameters(engine) == HnswParameters(12, 40)  # the second one ran last


def test_index_build_beside_a_deferred_index_ingest(engine: Engine, database_url: str, tiny_models,
                                                    tmp_path: Path) -> None:
    load(engine, tmp_path, 60)
    source = tmp_path / "more.jsonl"
    source.write_text("".join(json.dumps({"id": f"m{i}", "text": f"Otro {i}."}) + "\n" for i in range(40)))
    np.save(tmp_path / "more.npy", np.random.default_rng(7).standard_normal((40, 768)).astype(np.float32))
    url = ("--database-url", database_url)
    with writer_in_flight(engine):
        build = Command(*url, "index", "--m", "8", "--ef-construction", "32")
        wait_until(lambda: build_waiting(engine), "the build to wait for the writer")
        load_more = Command(*url, "ingest", str(source), "--collection", "more", "--embeddings",
                            str(tmp_path / "more.npy"), "--defer-index", "--json", "--question-model",
                            str(tiny_models[0]), "--passage-model", str(tiny_models[1]))
        wait_until(lambda: blocked_on_the_index_lock(engine, load_more), "the ingest to wait for the build")
    (built, _, built_err), (loaded, report, loaded_err) = build.finish(), load_more.finish()

    assert (built, loaded) == (0, 0), (built_err, loaded_err)
    assert not any("Traceback" in err or "deadlock" in err.lower() for err in (built_err, loaded_err))
    assert json.loads(report)["inserted"] == 40
    assert index_names(engine) == {"passages_embedding_hnsw": True}
    # The ingest dropped the freshly built index for its bulk load and rebuilt it with its parameters.
    assert hnsw_parameters(engine) == HnswParameters(8, 32)


def test_a_cancelled_build_drops_its_new_index_and_says_so(engine: Engine, database_url: str, tmp_path: Path) -> None:
    load(engine, tmp_path, 40)
    with writer_in_flight(engine):
        build = Command("--database-url", database_url, "index", "--m", "8", "--ef-construction", "32")
        wait_until(lambda: build_waiting(engine), "the build to wait for the writer")
        assert index_names(engine) == {"passages_embedding_hnsw": True, _NEW: False}
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                                 "WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND pid <> pg_backend_pid()"))
    code, _, err = build.finish()

    assert code == 1 and "Traceback" not in err, err
    assert "the HNSW index was not rebuilt" in err and "canceling statement" in err
    assert index_names(engine) == {"passages_embedding_hnsw": True}  # no INVALID leftover, the old index kept
    assert hnsw_parameters(engine) == HnswParameters(16, 64)


def test_doctor_warns_about_any_invalid_dpr_pg_index_ready_or_not(engine: Engine, tmp_path: Path) -> None:
    load(engine, tmp_path, 20)
    assert not [w for w in doctor(engine).warnings if "INVALID" in w]
    with engine.begin() as conn:
        # What a build that failed in its last phase leaves: INVALID, but ready (updated on every write).
        conn.execute(sa.text(f"CREATE INDEX {_NEW} ON dpr_pg.passages USING hnsw (embedding vector_ip_ops)"))
        conn.execute(sa.text("CREATE INDEX passages_stale ON dpr_pg.passages (updated_at)"))
        conn.execute(sa.text(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'dpr_pg.{_NEW}'::regclass"))
        conn.execute(sa.text("UPDATE pg_index SET indisvalid = false, indisready = false "
                             "WHERE indexrelid = 'dpr_pg.passages_stale'::regclass"))

    warnings = [w for w in doctor(engine).warnings if "INVALID" in w]

    assert hnsw_exists(engine)  # the real index is fine: only the leftovers are reported
    assert len(warnings) == 2, warnings
    ready = next(w for w in warnings if _NEW in w)
    assert "updated on every write" in ready and "dpr-pg index" in ready
    assert "DROP INDEX CONCURRENTLY dpr_pg.passages_stale" in next(w for w in warnings if "passages_stale" in w)


def test_a_build_that_cannot_get_the_lock_in_time_names_the_holder(engine: Engine, cli, database_url: str) -> None:
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(hashtextextended('dpr_pg.hnsw', 0))"))
        holder.commit()
        refused = cli("--database-url", database_url, "index", "--m", "8", "--ef-construction", "32", "--wait", "0")
        pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"another index change holds its lock: pid {pid}" in refused.stderr and "--wait" in refused.stderr
    assert hnsw_parameters(engine) == HnswParameters(16, 64)


def test_a_deferred_index_ingest_drops_a_killed_rebuilds_leftover(engine: Engine, tmp_path: Path) -> None:
    load(engine, tmp_path, 20)
    with engine.begin() as conn:  # what a rebuild killed with -9 leaves: an INVALID _new index
        conn.execute(sa.text(f"CREATE INDEX {_NEW} ON dpr_pg.passages USING hnsw (embedding vector_ip_ops)"))
        conn.execute(sa.text(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'dpr_pg.{_NEW}'::regclass"))
    source = tmp_path / "more.jsonl"
    source.write_text("".join(json.dumps({"id": f"m{i}", "text": f"Otro {i}."}) + "\n" for i in range(10)))
    np.save(tmp_path / "more.npy", np.random.default_rng(3).standard_normal((10, 768)).astype(np.float32))

    ingest(engine, None, source, collection="c", embeddings=tmp_path / "more.npy", fingerprint=FP, defer_index=True)

    assert index_names(engine) == {"passages_embedding_hnsw": True}
