"""The writers of an ingest: a pool of connections that grows while the writes fall behind.

The server's per-row work (the generated Spanish ``tsvector``, the GIN and HNSW inserts) runs in
the backend of each connection, so more writers use more of the server's cores. How many an
ingest needs depends on how fast rows come: a BERT-base encoder on a CPU leaves one writer idle
most of the time, a GPU or precomputed vectors keep several busy. The pool starts with one and
adds one each time a batch has to wait for room with the writers, up to :func:`writer_limit`
(from the machine's cores). Each batch is split into one part per writer,
so a single batch already spreads over them.

Parts of different batches hold different keys (duplicates are resolved before anything is
written), so they commit in any order; a COPY of new keys takes the collection's lock shared
and an upsert exclusively (see :mod:`dpr_pg.ingest.loader`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sqlalchemy.engine import Engine

from dpr_pg.ingest.loader import PassageWriter, StagedPassage
from dpr_pg.ingest.report import IngestReport
from dpr_pg.ingest.stages import END, POLL, Channel, Clock, Pipeline

MAX_WRITERS = 8
MIN_PART = 32  # rows: smaller parts cost more in round trips than they gain in parallel work
WRITE_BATCHES = 2  # batches handed to the writers and not yet committed: one being written, the next one


def writer_limit(cores: int | None = None) -> int:
    """The most writers an ingest opens: half the cores (the encoder and the reader need the rest), 2 to 8.

    Example:
        >>> writer_limit(2), writer_limit(16), writer_limit(64)
        (2, 8, 8)
    """
    cores = cores or os.cpu_count() or 2
    return max(2, min(MAX_WRITERS, cores // 2))


class _Batch:
    """The parts of one batch still being written; the last one done makes room for another batch."""

    def __init__(self, parts: int) -> None:
        self.left = parts


class WriterPool:
    """Writes staged passages on up to ``limit`` connections; counts what they did into ``report``.

    At most :data:`WRITE_BATCHES` batches are with the writers at once: with the stages before
    them, what bounds memory and what a kill -9 can lose.
    """

    def __init__(self, engine: Engine, options: dict[str, Any], *, pipeline: Pipeline, report: IngestReport,
                 lock: threading.Lock, clock: Clock, limit: int) -> None:
        self.engine = engine
        self.options = options
        self.pipeline = pipeline
        self.report = report
        self.lock = lock
        self.clock = clock
        self.limit = max(1, limit)
        self.parts: Channel[Any] = Channel(WRITE_BATCHES * self.limit)  # never full: the semaphore bounds it
        self._room = threading.Semaphore(WRITE_BATCHES)
        self._threads: list[threading.Thread] = []
        self._open: list[PassageWriter] = []

    @property
    def writers(self) -> int:
        return len(self._threads)

    def submit(self, rows: list[StagedPassage], *, fresh: bool) -> bool:
        """Queue ``rows`` for writing, in one part per writer; False when the ingest stopped meanwhile."""
        behind = not self._room.acquire(blocking=False)
        while behind and not self._room.acquire(timeout=POLL):
            if self.pipeline.aborted.is_set() or self.parts.closed.is_set():
                return False
        # The batch had to wait for the writers: they fall behind, one more connection.
        if not self._threads or (behind and self.writers < self.limit):
            self._add_writer()
        count = max(1, min(self.writers, len(rows) // MIN_PART))
        share = -(-len(rows) // count)
        batch = _Batch(-(-len(rows) // share))
        for start in range(0, len(rows), share):
            if not self.pipeline.put(self.parts, (rows[start:start + share], fresh, batch)):
                return False
        return True

    def close(self) -> None:
        """No more parts: the writers finish the queued ones and stop (call :meth:`join` next)."""
        self.pipeline.put(self.parts, END)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        for writer in self._open:
            writer.close()

    def _add_writer(self) -> None:
        writer = PassageWriter(self.engine, **self.options)
        self._open.append(writer)
        thread = threading.Thread(target=self._run, args=(writer,), name=f"dpr_pg-ingest-writer-{len(self._open)}",
                                  daemon=True)
        self._threads.append(thread)
        self.pipeline.track(thread)
        thread.start()

    def _run(self, writer: PassageWriter) -> None:
        try:
            while (part := self.pipeline.get(self.parts)) is not END:
                rows, fresh, batch = part
                with self.clock.busy():
                    inserted, updated = writer.write(rows, fresh=fresh)
                with self.lock:
                    self.report.inserted += inserted
                    self.report.updated += updated
                    self.report.unchanged += len(rows) - inserted - updated  # written meanwhile by another ingest
                    batch.left -= 1
                    if batch.left == 0:
                        self._room.release()
            self.pipeline.put(self.parts, END)  # for the next writer
        except BaseException as e:
            self.pipeline.fail(e)
            self.parts.closed.set()
