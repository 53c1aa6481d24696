"""Progress on stderr for steps that take more than a few seconds: on a terminal only, unless asked.

``progress`` is the same three-way switch everywhere (ingest, index builds, the CLI's
``--progress/--no-progress``): True shows it, False hides it, None shows it when stderr is a terminal.
Bars are tqdm's (the ingest bar's); a step of unknown length shows its name and elapsed time.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

POLL_SECONDS = 0.5
# PostgreSQL's own progress report of CREATE INDEX (pgvector fills in the blocks and tuples it has read).
_INDEX_PROGRESS = ("SELECT phase, blocks_done, blocks_total, tuples_done FROM pg_stat_progress_create_index "
                   "WHERE relid = to_regclass('dpr_pg.passages')")


def shown(progress: bool | None) -> bool:
    """Whether to show progress: ``progress``, or None for 'when stderr is a terminal'."""
    return sys.stderr.isatty() if progress is None else bool(progress)


@contextmanager
def step(description: str, progress: bool | None) -> Iterator[None]:
    """``description`` and the seconds it has taken so far, while the block runs.

    Example:
        >>> with step("loading the encoder pair", progress=False):  # doctest: +SKIP
        ...     pair = EncoderPair.load()
    """
    if not shown(progress):
        yield
        return
    from tqdm import tqdm  # lazy: dpr_pg.cli imports this module: keep --help fast

    bar = tqdm(desc=description, total=None, file=sys.stderr, bar_format="{desc}: {elapsed}", leave=False)
    stop = threading.Event()
    ticker = threading.Thread(target=_tick, args=(bar, stop), name="dpr_pg-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.close()


def _tick(bar: Any, stop: threading.Event) -> None:
    while not stop.wait(POLL_SECONDS):
        bar.refresh()


@contextmanager
def index_build(engine: Engine, progress: bool | None, *, description: str = "HNSW index") -> Iterator[None]:
    """A bar of the index build running in the block, read from ``pg_stat_progress_create_index``.

    The build runs on its own connection; another one polls PostgreSQL's progress view twice a
    second, so the bar shows the phase, the table blocks read and the tuples indexed.
    """
    if not shown(progress):
        yield
        return
    from tqdm import tqdm  # lazy: dpr_pg.cli imports this module: keep --help fast

    bar = tqdm(desc=description, total=None, unit=" blocks", file=sys.stderr, mininterval=POLL_SECONDS)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_index, args=(engine, bar, stop, description),
                               name="dpr_pg-index-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        bar.close()


def _watch_index(engine: Engine, bar: Any, stop: threading.Event, description: str) -> None:
    import sqlalchemy as sa  # lazy: dpr_pg.cli imports this module: keep --help fast

    try:
        with engine.connect() as conn:
            while not stop.wait(POLL_SECONDS):
                row = conn.execute(sa.text(_INDEX_PROGRESS)).first()
                conn.rollback()  # a fresh snapshot of the view each time
                if row is None:
                    bar.refresh()
                    continue
                if row.blocks_total:
                    bar.total = row.blocks_total
                    bar.n = min(row.blocks_done, row.blocks_total)
                bar.set_description_str(f"{description}: {row.phase}", refresh=False)
                bar.set_postfix_str(f"{row.tuples_done} tuples", refresh=False)
                bar.refresh()
    except sa.exc.SQLAlchemyError:  # progress is a courtesy: the build itself reports any real problem
        return
