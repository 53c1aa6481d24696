"""Micro-batching: the questions of concurrent requests are encoded together, in one encoder call.

A BERT forward pass over 32 short questions costs far less than 32 passes of one (the weights are
read once). Requests put their questions in a queue; one worker task takes what is queued (at
most ``max_batch``), encodes it on a single encoder thread, and hands each request its vectors.
While the encoder works, the next requests queue up, so batches grow with the load by themselves.
When the worker wakes from idle and the previous batch was shared, it waits at most ``max_wait``
seconds for company; a lone client never waits. Cached questions skip the queue entirely
(:meth:`QuestionEncoder.cached`), and a batch encodes each distinct question once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class _Waiting:
    question: str
    future: asyncio.Future[np.ndarray]


class QuestionBatcher:
    """Gathers questions from concurrent callers into bounded encoder batches.

    ``on_batch(size, seconds)`` is called after each encoder call (for metrics).

    Example:
        >>> batcher = QuestionBatcher(pair.question, max_batch=32, max_wait=0.002)  # doctest: +SKIP
        >>> vectors = await batcher.encode(["¿Dónde está Sevilla?"])                  # doctest: +SKIP
    """

    def __init__(self, encoder: Any, *, max_batch: int = 32, max_wait: float = 0.002,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait)
        self.on_batch = on_batch
        # One thread: encoder calls never overlap (each one already uses every core).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpr_pg-encoder")
        self._queue: list[_Waiting] = []
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._last_size = 0

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on the encoder thread (e.g. passage encoding), after the batch in flight."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def encode(self, questions: list[str]) -> np.ndarray:
        """``(n, dim)`` float32 for ``questions``, encoded together with other callers' questions."""
        out = np.empty((len(questions), self.encoder.dim), dtype=np.float32)
        loop = asyncio.get_running_loop()
        pending: list[tuple[int, asyncio.Future[np.ndarray]]] = []
        for i, question in enumerate(questions):
            cached = self.encoder.cached(question)
            if cached is not None:
                out[i] = cached
                continue
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.append(_Waiting(question, future))
            pending.append((i, future))
        if pending:
            self._wake()
            for i, future in pending:
                out[i] = await future
        return out

    def _wake(self) -> None:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="dpr_pg question batcher")

    async def _work(self) -> None:
        assert self._arrived is not None
        while self._queue:
            if self._last_size > 1 and len(self._queue) < self.max_batch and self.max_wait > 0:
                await self._gather(time.monotonic() + self.max_wait)
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            batch = [item for item in batch if not item.future.done()]  # a cancelled request
            for item in batch:  # encoded by an earlier batch while this one waited
                cached = self.encoder.cached(item.question)
                if cached is not None:
                    item.future.set_result(cached)
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                continue
            self._last_size = len(batch)
            texts = list(dict.fromkeys(item.question for item in batch))
            started = time.perf_counter()
            try:
                vectors = await self.run(self.encoder.encode, texts)
            except Exception as e:  # every request of the batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(texts), time.perf_counter() - started)
            row = {text: i for i, text in enumerate(texts)}
            for item in batch:
                if not item.future.done():
                    item.future.set_result(vectors[row[item.question]])

    async def _gather(self, deadline: float) -> None:
        """Wait until the batch is full or the deadline passes."""
        assert self._arrived is not None
        while len(self._queue) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def close(self) -> None:
        """Finish the batch in flight, then stop the encoder thread."""
        if self._worker is not None and not self._worker.done():
            await self._worker
        self._executor.shutdown(wait=True)
