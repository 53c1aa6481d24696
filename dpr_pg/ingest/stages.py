"""Stages that run at the same time: threads joined by bounded queues, with one way to stop.

An ingest reads on the caller's thread, looks up and tokenizes on one thread, encodes on another
(the one that feeds the GPU, which then does nothing else) and writes on a pool of writers
(:mod:`dpr_pg.ingest.writers`). Each hand-over is a :class:`Channel` of a few items, so memory
stays bounded and a slow stage holds back the ones before it.

Two ways to stop:

* :class:`Halt` (a strict rejection, an input that changed): the stage that raises it stops
  taking work, the stages before it stop producing, and the stages after it finish what they
  already hold, so every batch before the halted one is written; then the caller raises what
  ``Halt.error(report)`` builds, with the final counts.
* any other error: every stage stops as soon as it can (a write in progress ends first); what
  was committed stays, and the idempotent re-run does the rest.

Each stage adds its busy seconds (waiting for work or for room downstream is not counted) to a
:class:`Clock`: the report's ``read_seconds``, ``encode_seconds`` and so on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from dpr_pg.ingest.report import IngestReport

T = TypeVar("T")
END: Any = object()  # the last item of a channel
POLL = 0.05  # seconds between looks at the stop flags while a queue is full or empty


class Halt(Exception):  # noqa: N818 (a control signal, not an error of its own)
    """Stop after the batches before this one are written; ``error(report)`` is what the caller raises.

    ``order`` (the batch's first record) picks the earliest halt when two stages halt at once.
    """

    def __init__(self, error: Callable[[IngestReport], Exception], *, order: int, stopped: str | None = None) -> None:
        super().__init__("halted")
        self.error = error
        self.order = order
        self.stopped = stopped


class Stopped(Exception):  # noqa: N818
    """A stage's consumer left (the ingest halted or failed further on): this stage stops quietly."""


class Clock:
    """Busy seconds of one stage: the time during which at least one of its threads was busy.

    Several writers busy at once count once, so a stage's seconds compare with the wall time.

    Example:
        >>> clock = Clock()
        >>> with clock.busy():
        ...     pass
        >>> clock.seconds >= 0
        True
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._active = 0
        self._since = 0.0
        self._lock = threading.Lock()

    @contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self.seconds += time.perf_counter() - self._since

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds


class Channel(Generic[T]):
    """A bounded queue whose consumer can leave: a put then fails instead of blocking forever."""

    def __init__(self, size: int) -> None:
        self._queue: queue.Queue[T] = queue.Queue(maxsize=size)
        self.closed = threading.Event()  # the consumer is gone

    def backlog(self) -> int:
        return self._queue.qsize()


class Pipeline:
    """The threads of one ingest and the stop flags they share."""

    def __init__(self) -> None:
        self.aborted = threading.Event()  # an error: every stage stops at once
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(error)
        if not isinstance(error, Halt):
            self.aborted.set()

    def halt_order(self) -> int | None:
        """The first record of the earliest batch where the ingest halted, or None."""
        with self._lock:
            orders = [e.order for e in self.errors if isinstance(e, Halt)]
        return min(orders) if orders else None

    def put(self, channel: Channel[T], item: T) -> bool:
        """Hand ``item`` on; False (the item is dropped) when the consumer left or the ingest aborted."""
        while not self.aborted.is_set() and not channel.closed.is_set():
            try:
                channel._queue.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def get(self, channel: Channel[T]) -> T:
        """The next item, or END when the producer is done or the ingest aborted."""
        while not self.aborted.is_set():
            try:
                return channel._queue.get(timeout=POLL)
            except queue.Empty:
                continue
        return END

    def stage(self, name: str, inbox: Channel[Any], work: Callable[[Any], None], *,
              done: Callable[[], None] = lambda: None) -> threading.Thread:
        """Start a thread that calls ``work(item)`` for each item of ``inbox``, then ``done()``.

        When ``work`` raises, the thread records the error, closes ``inbox`` (the producer stops)
        and still calls ``done()`` (which hands END on, so that later stages finish).
        """
        def run() -> None:
            try:
                while (item := self.get(inbox)) is not END:
                    work(item)
            except Stopped:
                pass
            except BaseException as e:  # recorded and re-raised on the caller's thread by join()
                self.fail(e)
            finally:
                inbox.closed.set()
                try:
                    done()
                except BaseException as e:
                    self.fail(e)

        thread = threading.Thread(target=run, name=f"dpr_pg-ingest-{name}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return thread

    def track(self, thread: threading.Thread) -> None:
        """Have :meth:`join` wait for ``thread`` too (a writer the pool started)."""
        with self._lock:
            self._threads.append(thread)

    def join(self, report: IngestReport) -> None:
        """Wait for every stage; raise the first error (or the earliest halt's error, with ``report``'s counts)."""
        joined = 0
        while True:
            with self._lock:
                if joined == len(self._threads):
                    break
                thread = self._threads[joined]
            thread.join()
            joined += 1
        errors = [e for e in self.errors if not isinstance(e, Halt)]
        if errors:
            raise errors[0]
        halts = sorted((e for e in self.errors if isinstance(e, Halt)), key=lambda h: h.order)
        if halts:
            halt = halts[0]
            if halt.stopped is not None:
                report.stopped = halt.stopped
            raise halt.error(report)
