"""The FastAPI application: the encoders (and the reader, when configured), warm, and an async engine.

:func:`create_app` builds it from :class:`ServiceSettings`; :func:`app_from_environment` is the
factory each uvicorn worker calls (``dpr-pg serve`` passes the settings as JSON).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import TYPE_CHECKING, TypeVar

import sqlalchemy as sa
from fastapi import FastAPI

from dpr_pg import aio, config
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.reader import Reader
from dpr_pg.service import errors, routes
from dpr_pg.service.batching import QuestionBatcher
from dpr_pg.service.limits import BodyLimit, RequestMetrics
from dpr_pg.service.metrics import ServiceMetrics
from dpr_pg.service.settings import ServiceSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
POOL_SIZE = 24  # database connections of one worker
log = logging.getLogger("dpr_pg.service")
DESCRIPTION = """Dense Passage Retrieval inside PostgreSQL, over HTTP: questions in, passages (and answers) out.

Send an API key from `dpr-pg keys create` as `Authorization: Bearer <key>` (or `X-API-Key`).
Every error is JSON: `{"error": ..., "message": ..., "details": ...}`.
"""


class Service:
    """What the requests share: settings, encoders, the question batcher, the reader, the engine, the metrics."""

    def __init__(self, settings: ServiceSettings, *, pair: EncoderPair | None = None,
                 reader: Reader | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.pair = pair
        self.reader = reader
        # One thread: readings never overlap (each one already uses every core), nor hold up question encoding.
        self.reader_executor: ThreadPoolExecutor | None = None
        self.batcher: QuestionBatcher | None = None
        self.engine: AsyncEngine | None = None
        self.warm = False

    async def start(self) -> None:
        s = self.settings
        # At most 24 connections a worker (PostgreSQL allows 100 by default), opened as the load needs
        # them and then kept: an overflow connection, closed on its return, cost a new backend (a fork
        # and a login) for about one request in three at 32 clients. A request that finds none free
        # within 30 s gets 503. Pre-ping replaces the connections a restart broke. Last in, first out: a
        # light load keeps reusing the few connections whose backends have their caches and psycopg's
        # prepared statements warm, rather than rotating through every one a burst opened.
        self.engine = await aio.create_async_engine(s.database_url, read_urls=s.read_urls, pool_size=POOL_SIZE,
                                                    max_overflow=0, pool_timeout=30, pool_use_lifo=True)
        if self.pair is None:
            self.pair = await asyncio.to_thread(EncoderPair.load, s.question_model, s.passage_model,
                                                precision=s.precision, runtime=s.runtime)
        # One encoder call per micro-batch: the question side's batch holds a whole micro-batch.
        self.pair.question.batch_size = max(self.pair.question.batch_size, s.batch_max)
        self.batcher = QuestionBatcher(self.pair.question, max_batch=s.batch_max, max_wait=s.batch_wait_ms / 1000,
                                       on_batch=self.metrics.encoder_batch)
        await self.batcher.run(self.pair.question.warm_up)
        await self.batcher.run(self.pair.passage.warm_up)
        log.info("encoders ready: %s", self.pair.fingerprint.describe())
        if self.reader is None and s.reader_model:
            self.reader = await asyncio.to_thread(Reader.load, s.reader_model, precision=s.precision)
        if self.reader is not None:
            self.reader_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpr_pg-reader")
            reader = self.reader
            await asyncio.get_running_loop().run_in_executor(
                self.reader_executor, lambda: reader.read("¿Dónde está Sevilla?", ["Sevilla está en Andalucía."]))
            log.info("reader ready: %r", self.reader)
        self.warm = True

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.reader_executor is not None:
            self.reader_executor.shutdown(wait=True)
        if self.engine is not None:
            await self.engine.dispose()

    async def database(self, operation: str, function: Callable[[sa.Connection], T], *,
                       transaction: bool = True) -> T:
        """Run a sync function of a Connection on the async engine, in one transaction, timed.

        ``transaction=False`` runs it in autocommit instead, for a single read: no BEGIN and no
        COMMIT, two round trips fewer.
        """
        assert self.engine is not None
        with self.metrics.database(operation):
            if transaction:
                async with self.engine.begin() as conn:
                    return await conn.run_sync(function)
            async with self.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                return await conn.run_sync(function)


def create_app(settings: ServiceSettings | None = None, *, pair: EncoderPair | None = None,
               reader: Reader | None = None) -> FastAPI:
    """The application for ``settings``; ``pair`` and ``reader`` give already loaded models (tests, embedding).

    >>> app = create_app(ServiceSettings(database_url="postgresql://app@localhost/app"))  # doctest: +SKIP
    """
    service = Service(settings or ServiceSettings(), pair=pair, reader=reader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()


    app = FastAPI(title="dpr-pg", version=version("dpr-pg"), description=DESCRIPTION, lifespan=lifespan,
                  responses={422: {"model": routes.ErrorBody, "description": "The request is invalid."}})
    app.state.service = service
    errors.install(app)
    routes.install(app)
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics)  # outermost: counts the 413s too
    return app


def app_from_environment() -> FastAPI:
    """The factory uvicorn's workers call, with the settings ``dpr-pg serve`` put in ``DPR_PG_SERVICE``."""
    raw = config.service_settings()
    return create_app(ServiceSettings.from_json(raw) if raw else ServiceSettings())
