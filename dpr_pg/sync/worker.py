"""The sync worker's loop: batch after batch until the queue is drained, or for ever, surviving lost connections.

Each batch is :class:`~dpr_pg.sync.batch.Batcher`'s (one transaction); this loop adds up their
reports, waits when nothing is due, and reconnects with backoff when the server goes away.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.errors import DatabaseError, SyncError
from dpr_pg.sync.batch import Batcher, WorkerReport
from dpr_pg.sync.queue import require_queue

log = logging.getLogger("dpr_pg.sync")  # the worker and its batches log under one name


def run_worker(
    engine: Engine,
    pair: Any,
    *,
    once: bool = False,
    batch_size: int = 32,
    poll_interval: float = 2.0,
    retry_base: float = 5.0,
    retry_max: float = 3600.0,
    max_attempts: int = 5,
    reconnects: int = 10,
    stop: threading.Event | None = None,
) -> WorkerReport:
    """Drain the sync queue with the encoder pair ``pair`` (an :class:`~dpr_pg.encoders.pair.EncoderPair`).

    With ``once``, return when no due item is left (or a batch could complete none: its rows are
    locked by the app right now); otherwise poll every ``poll_interval`` seconds until ``stop`` is set.
    A failed item is retried after ``retry_base * 2**attempts`` seconds, at most ``retry_max``; its
    ``max_attempts``-th failure parks it as dead (see :func:`retry_items`, :func:`discard_items`).
    Tables bound to another encoder pair or dimension, and paused tables (see :func:`sync_status`),
    are left alone and named in ``report.refused``.
    A dropped connection is retried ``reconnects`` times in a row (waiting 1, 2, 4 ... 60 s) before
    :class:`DatabaseError`; the batch it interrupted stays queued.

    Example:
        >>> run_worker(engine, EncoderPair.load(), once=True).embedded  # doctest: +SKIP
        12
    """
    if batch_size < 1:
        raise SyncError(f"expected a batch size of at least 1, not {batch_size}")
    if max_attempts < 1:
        raise SyncError(f"expected max_attempts of at least 1, not {max_attempts}")
    stop = stop or threading.Event()
    batcher = Batcher(engine, pair, retry_base=retry_base, retry_max=retry_max, max_attempts=max_attempts)
    total = WorkerReport()
    lost = 0  # consecutive batches lost to a dropped connection
    checked = False
    while not stop.is_set():
        try:
            if not checked:
                require_queue(engine)
                checked = True
            report = batcher.process_batch(batch_size)
        except (sa.exc.OperationalError, psycopg.OperationalError) as e:
            # The batch rolled back (or died with its session), so its items are still queued.
            lost += 1
            if lost > reconnects:
                raise DatabaseError(
                    f"the worker lost its database connection {lost} times in a row: {e}; "
                    "check that the server is up and the URL is right, then start the worker again"
                ) from e
            log.warning("database connection lost (%s); retrying in %s s", e, min(60, 2 ** (lost - 1)))
            stop.wait(min(60, 2 ** (lost - 1)))
            continue
        lost = 0
        total.add(report)
        if report.batches:
            log.info("batch: %s", report.as_dict())
        if report.completed == 0:
            # Nothing due, or nothing could be completed (only failures, or rows the app holds locked).
            if once:
                break
            stop.wait(poll_interval)
    return total
