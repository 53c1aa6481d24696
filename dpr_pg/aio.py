"""The async Python API: ``search``, ``search_many``, ``ask`` and ``ingest_records`` for asyncio programs.

Searches run on SQLAlchemy's asyncio engine over psycopg's async connections
(``postgresql+psycopg://``). The planner and the SQL are the sync API's own: the search runs
through ``AsyncConnection.run_sync``, so the results are the same by construction. Questions are
encoded off the event loop (a worker thread, or the ``encode`` coroutine you pass, such as the
HTTP service's micro-batcher); ``ask`` reads the passages in a worker thread (or the executor you
pass). ``ingest_records`` runs the sync ingest pipeline in a worker
thread: its binary COPY writer needs psycopg's sync connections.

>>> engine = await dpr_pg.aio.create_async_engine()                         # doctest: +SKIP
>>> hits = await dpr_pg.aio.search(engine, "¿Dónde está Sevilla?", encoder=pair, k=3)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as create

from dpr_pg.db import replicas
from dpr_pg.db.engine import read_route, resolve_url
from dpr_pg.reader.ask import check_ask, read_hits
from dpr_pg.search.api import TRANSACTION_OF_ITS_OWN, check_request
from dpr_pg.search.api import search_many as _search_many
from dpr_pg.errors import DimensionError, SearchError

if TYPE_CHECKING:
    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.filters import Filter
    from dpr_pg.ingest import FieldMapping, IngestReport
    from dpr_pg.reader import AskResult, Reader
    from dpr_pg.search.api import Hits, Mode, Query

__all__ = ["Encode", "ask", "create_async_engine", "ingest_records", "search", "search_many", "sync_engine"]

# An async function that encodes questions: list of n questions in, (n, dim) float32 out.
Encode = Callable[[list[str]], Awaitable[np.ndarray]]
AsyncBind = AsyncEngine | AsyncConnection

_SYNC_ENGINES: weakref.WeakKeyDictionary[Any, sa.Engine] = weakref.WeakKeyDictionary()
_SYNC_LOCK = threading.Lock()


async def create_async_engine(url: str | None = None, *, read_urls: str | Sequence[str] | None = None,
                              max_replica_lag: float | None = None, read_your_writes: bool | None = None,
                              replica_wait: float | None = None, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine (psycopg's async driver) for ``url``, or the configured or embedded database.

    URL precedence and the read replica options are :func:`dpr_pg.create_engine`'s; the embedded
    server starts on demand.

    >>> engine = await create_async_engine("postgresql://app@localhost/app")  # doctest: +SKIP
    """
    route = read_route(read_urls, max_replica_lag=max_replica_lag, read_your_writes=read_your_writes,
                       replica_wait=replica_wait, engine_options=kwargs, asynchronous=True)
    resolved = await asyncio.to_thread(resolve_url, url)
    kwargs.setdefault("pool_pre_ping", True)
    engine = create(resolved, **kwargs)
    if route is not None:
        replicas.attach(engine, route)
    return engine


def sync_engine(bind: AsyncBind) -> sa.Engine:
    """A sync Engine on the same database as ``bind`` (made once per async engine), for sync-only work."""
    engine = bind if isinstance(bind, AsyncEngine) else bind.engine
    with _SYNC_LOCK:
        found = _SYNC_ENGINES.get(engine.sync_engine)
        if found is None:
            found = _SYNC_ENGINES[engine.sync_engine] = sa.create_engine(engine.url, pool_pre_ping=True)
            route = replicas.route_of(engine)
            if route is not None:  # its writes (an ingest) are the async engine's for read-your-writes
                route.watch(found)
        return found


async def _encode_in_thread(encoder: EncoderPair, questions: list[str]) -> np.ndarray:
    return await asyncio.to_thread(encoder.question.encode, questions)


async def _run(bind: AsyncBind, function: Callable[[sa.Connection], Any]) -> Any:
    if isinstance(bind, AsyncEngine):
        async with replicas.read_connection_async(bind) as conn:  # a replica's, when the engine has them
            # This transaction ends with the search: its settings need no restoring (one round trip fewer).
            await conn.execution_options(**{TRANSACTION_OF_ITS_OWN: True})
            return await conn.run_sync(function)
    return await bind.run_sync(function)


async def search_many(
    bind: AsyncBind,
    queries: Sequence[Query],
    *,
    encoder: EncoderPair | None = None,
    encode: Encode | None = None,
    query_texts: Sequence[str | None] | None = None,
    **options: Any,
) -> list[Hits]:
    """:func:`dpr_pg.search_many`, awaited: questions are encoded off the event loop, then searched.

    ``options`` are those of the sync function (``k``, ``filter``, ``collection``, ``mode``,
    ``ef_search``, ...). ``encode`` replaces the default encoding in a worker thread, e.g. with a
    micro-batcher shared by concurrent requests. With an AsyncEngine the search runs in its own
    transaction; with an AsyncConnection, in yours.

    >>> found = await search_many(engine, ["¿Qué es el ADN?", "¿Dónde está Sevilla?"], encoder=pair)  # doctest: +SKIP
    >>> [len(hits) for hits in found]  # doctest: +SKIP
    [10, 10]
    """
    if isinstance(queries, (str, np.ndarray)) and not (isinstance(queries, np.ndarray) and queries.ndim == 2):
        queries = [queries]  # type: ignore[list-item]
    items = list(queries)
    # Cheap checks first: a bad k, mode or filter fails before anything is encoded.
    texts = list(query_texts) if query_texts is not None else [q if isinstance(q, str) else None for q in items]
    check_request(k=options.get("k", 10), mode=options.get("mode", "dense"), filter=options.get("filter"),
                  collection=options.get("collection"), rrf_k=options.get("rrf_k", 60.0),
                  dense_weight=options.get("dense_weight", 1.0), text_weight=options.get("text_weight", 1.0),
                  candidates=options.get("candidates", 100), texts=[*items, *texts],
                  ef_search=options.get("ef_search"))
    questions = [q for q in items if isinstance(q, str)]
    if questions and encoder is not None:
        vectors = await (encode(questions) if encode is not None else _encode_in_thread(encoder, questions))
        encoded = iter(vectors)
        items = [next(encoded) if isinstance(q, str) else q for q in items]
    return await _run(bind, lambda conn: _search_many(conn, items, encoder=encoder, query_texts=texts,
                                                    **options))


async def search(
    bind: AsyncBind,
    query: Query,
    *,
    encoder: EncoderPair | None = None,
    encode: Encode | None = None,
    query_text: str | None = None,
    **options: Any,
) -> Hits:
    """:func:`dpr_pg.search`, awaited: the top-k passages for one question or query vector.

    >>> hits = await search(engine, "¿Cuál es la capital de España?", encoder=pair, k=3)  # doctest: +SKIP
    >>> hits.plan.path  # doctest: +SKIP
    'hnsw'
    """
    if isinstance(query, np.ndarray) and query.ndim != 1:
        raise DimensionError(f"expected one query vector, not an array of shape {query.shape}; use search_many")
    if query is None:
        raise SearchError("expected a question or a query vector, not None")
    texts = [query_text] if query_text is not None else None
    return (await search_many(bind, [query], encoder=encoder, encode=encode, query_texts=texts, **options))[0]


async def ask(
    bind: AsyncBind,
    question: str,
    *,
    encoder: EncoderPair,
    reader: Reader,
    encode: Encode | None = None,
    executor: Executor | None = None,
    k: int = 10,
    collection: str | None = None,
    filter: Filter = None,
    mode: Mode = "dense",
    top_answers: int = 1,
    no_answer_threshold: float | None = None,
    ef_search: int | None = None,
) -> AskResult:
    """:func:`dpr_pg.ask`, awaited: the search as :func:`search`, then the reader in ``executor``.

    The same checks (before anything is encoded), answers and ``AskResult`` as the sync function.
    ``encode`` is :func:`search_many`'s; ``executor`` runs the reader (default: asyncio's thread
    pool; one thread keeps concurrent readings from fighting over the cores).

    >>> result = await ask(engine, "¿Dónde está la Giralda?", encoder=pair, reader=reader)  # doctest: +SKIP
    >>> result.answer.text  # doctest: +SKIP
    'Sevilla'
    """
    check_ask(question, k=k, top_answers=top_answers, no_answer_threshold=no_answer_threshold)
    started = time.perf_counter()
    hits = await search(bind, question, encoder=encoder, encode=encode, query_text=question, k=k, filter=filter,
                        collection=collection, mode=mode, ef_search=ef_search)
    return await asyncio.get_running_loop().run_in_executor(
        executor, lambda: read_hits(reader, question, hits, top_answers=top_answers,
                                    no_answer_threshold=no_answer_threshold, started=started))


async def ingest_records(
    bind: AsyncBind,
    encoder: EncoderPair,
    records: Iterable[Mapping[str, Any]],
    *,
    collection: str,
    fields: FieldMapping | None = None,
    **options: Any,
) -> IngestReport:
    """:func:`dpr_pg.ingest.ingest_records`, awaited: encoding and the COPY writer run in a worker thread.

    The same checks, idempotency and report as the sync function (``options``: ``chunk_words``,
    ``chunk_overlap``, ``batch_size``, ``strict``, ``source``).

    >>> report = await ingest_records(engine, pair, [{"id": "a", "text": "Hola"}], collection="demo")  # doctest: +SKIP
    >>> report.inserted  # doctest: +SKIP
    1
    """
    from dpr_pg.ingest import ingest_records as ingest_sync  # lazy: it loads alembic, ~0.4 s; searches never need it

    items = list(records)
    return await asyncio.to_thread(ingest_sync, sync_engine(bind), encoder, items, collection=collection,
                                   fields=fields, **options)
