"""The endpoints. Each one checks the key, then calls one core function (through :mod:`dpr_pg.aio`)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Path, Request, Response

from dpr_pg import aio
from dpr_pg.db.collections import list_collections
from dpr_pg.db.revision import current_revision, require_schema
from dpr_pg.ingest import FieldMapping
from dpr_pg.ingest.delete import delete_passages
from dpr_pg.service import auth
from dpr_pg.service.errors import ApiError
from dpr_pg.service.keys import ApiKey
from dpr_pg.service.schemas import (
    AskRequest,
    AskResponse,
    BatchSearchRequest,
    BatchSearchResponse,
    CollectionsResponse,
    DeleteResponse,
    EncodePassagesRequest,
    EncodeQuestionsRequest,
    EncodeResponse,
    ErrorBody,
    HealthResponse,
    IngestReportBody,
    ReadyResponse,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
)

if TYPE_CHECKING:
    from dpr_pg.search.api import Hits
    from dpr_pg.service.app import Service

__all__ = ["ErrorBody", "install"]


def _errors(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these status codes; ``described`` replaces a description (``_404="..."``)."""
    text = {401: "No valid API key.", 403: "The key lacks the scope or the collection.",
            404: "Not found.", 409: "The collection was encoded by another encoder pair.",
            413: "The body is over the limit (1 MB by default).", 422: "The request is invalid.",
            503: "The database or the encoders are not ready; retry."}
    text |= {int(code.lstrip("_")): description for code, description in described.items()}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


_SEARCH = Depends(auth.needs("search"))
_WRITE = Depends(auth.needs("write"))
_V1 = _errors(401, 403, 413, 422, 503)
Collection = Path(min_length=1, max_length=256, description="The collection's name.")
ExternalId = Path(min_length=1, max_length=1024, description="The passage's external id.")


def _service(request: Request) -> Service:
    return request.app.state.service


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _search_body(hits: Hits) -> dict[str, Any]:
    plan = hits.plan
    return {"hits": [{**hit.as_dict(), "score": _finite(hit.score)} for hit in hits],
            "plan": {"path": plan.path, "reason": plan.reason, "estimated_rows": plan.estimated_rows,
                     "matching_rows": plan.matching_rows, "ef_search": plan.ef_search, "fell_back": plan.fell_back}}


def _fingerprint(service: Service) -> dict[str, Any]:
    assert service.pair is not None
    fp = service.pair.fingerprint
    return {"id": fp.id, **dataclasses.asdict(fp)}


def _ask_body(result: Any) -> dict[str, Any]:
    body = result.as_dict()
    for answer in body["answers"]:
        answer["passage"]["score"] = _finite(answer["passage"]["score"])
    return body


async def _search(service: Service, queries: list[Any], texts: list[str | None] | None, body: Any,
                  key: Any) -> list[Hits]:
    """Encode (micro-batched) and search; database time is what remains of the call."""
    assert service.batcher is not None and service.engine is not None
    encode_seconds = 0.0

    async def encode(questions: list[str]) -> Any:
        nonlocal encode_seconds
        started = time.perf_counter()
        try:
            return await service.batcher.encode(questions)  # type: ignore[union-attr]
        finally:
            encode_seconds += time.perf_counter() - started

    started = time.perf_counter()
    try:
        return await aio.search_many(service.engine, queries, encoder=service.pair, encode=encode, query_texts=texts,
                                     k=body.k, filter=auth.restrict_filter(key, body.filter),
                                     collection=body.collection, mode=body.mode, ef_search=body.ef_search)
    finally:
        spent = time.perf_counter() - started - encode_seconds
        service.metrics.database_seconds.labels("search").observe(max(spent, 0.0))


def install(app: FastAPI) -> None:
    """Add the routes to ``app``."""

    @app.post("/v1/search", response_model=SearchResponse, responses=_V1 | _errors(409), tags=["search"],
              summary="Search with one question or query vector")
    async def search(body: SearchRequest, request: Request, key: ApiKey | None = _SEARCH) -> dict[str, Any]:
        """The top-k passages: hits (inner-product score) and the plan (path and reason)."""
        auth.check_collection(key, body.collection)
        query = body.question if body.question is not None else body.vector
        text = body.question if body.question is not None else body.query_text
        hits = await _search(_service(request), [query], [text], body, key)
        return _search_body(hits[0])

    @app.post("/v1/search/batch", response_model=BatchSearchResponse, responses=_V1 | _errors(409),
              tags=["search"], summary="Search with many questions or vectors")
    async def search_batch(body: BatchSearchRequest, request: Request, key: ApiKey | None = _SEARCH) -> dict[str, Any]:
        """One result per question (or vector), in order, with the same options for all."""
        auth.check_collection(key, body.collection)
        queries: list[Any] = list(body.questions if body.questions is not None else body.vectors or [])
        if len(queries) > _service(request).settings.max_questions:
            raise ApiError(422, "invalid_request", f"expected at most {_service(request).settings.max_questions} "
                           f"queries in one call, not {len(queries)}")
        texts: list[str | None] | None = None
        if body.questions is not None:
            texts = list(body.questions)
        elif body.query_texts is not None:
            texts = list(body.query_texts)
        all_hits = await _search(_service(request), queries, texts, body, key)
        return {"results": [_search_body(hits) for hits in all_hits]}

    @app.post("/v1/ask", response_model=AskResponse, tags=["search"], summary="Answer a question from the passages",
              responses=_V1 | _errors(404, 409, _404="This server has no reader: start it with "
                                                     "`dpr-pg serve --reader MODEL` (or DPR_PG_READER_MODEL)."))
    async def ask(body: AskRequest, request: Request, key: ApiKey | None = _SEARCH) -> dict[str, Any]:
        """Retrieve the top ``k`` passages as a search does, then read the answer spans out of them with the
        extractive reader: each answer with its score, its passage and its character offsets
        (``passage.text[start:end] == answer``), as `dpr-pg ask --json` prints it."""
        service = _service(request)
        if service.reader is None:
            raise ApiError(404, "reader_not_configured", "this server has no reader, so it cannot answer /v1/ask: "
                           "start it with dpr-pg serve --reader MODEL (or set DPR_PG_READER_MODEL); POST /v1/search "
                           "returns the passages")
        auth.check_collection(key, body.collection)
        assert service.batcher is not None and service.engine is not None and service.pair is not None
        result = await aio.ask(service.engine, body.question, encoder=service.pair, reader=service.reader,
                               encode=service.batcher.encode, executor=service.reader_executor, k=body.k,
                               filter=auth.restrict_filter(key, body.filter), collection=body.collection,
                               mode=body.mode, ef_search=body.ef_search, top_answers=body.top_answers,
                               no_answer_threshold=body.no_answer_threshold)
        return _ask_body(result)

    @app.post("/v1/encode/questions", response_model=EncodeResponse, responses=_V1, tags=["encode"],
              summary="Question vectors")
    async def encode_questions(body: EncodeQuestionsRequest, request: Request,
                               key: ApiKey | None = _SEARCH) -> dict[str, Any]:
        """The question encoder's vectors (micro-batched, cached), with the pair's fingerprint."""
        service = _service(request)
        assert service.batcher is not None and service.pair is not None
        vectors = await service.batcher.encode(list(body.questions))
        return {"vectors": vectors.tolist(), "dim": service.pair.dim, "fingerprint": _fingerprint(service)}

    @app.post("/v1/encode/passages", response_model=EncodeResponse, responses=_V1, tags=["encode"],
              summary="Passage vectors")
    async def encode_passages(body: EncodePassagesRequest, request: Request,
                              key: ApiKey | None = _SEARCH) -> dict[str, Any]:
        """The passage encoder's vectors for (title, text) pairs; ``truncated`` lists those cut at max length."""
        service = _service(request)
        assert service.batcher is not None and service.pair is not None
        result = await service.batcher.run(service.pair.passage.encode_result,
                                           [(p.title, p.text) for p in body.passages])
        return {"vectors": result.embeddings.tolist(), "dim": service.pair.dim,
                "fingerprint": _fingerprint(service), "truncated": list(result.truncated)}

    @app.put("/v1/collections/{collection}/passages", response_model=IngestReportBody,
             responses=_V1 | _errors(409), tags=["collections"],
             summary="Upsert passages")
    async def upsert(body: UpsertRequest, request: Request, collection: str = Collection,
                     key: ApiKey | None = _WRITE) -> dict[str, Any]:
        """Insert or update records, as `dpr-pg ingest` does with a JSONL file: the same checks, the same
        report and rejection list; sending the same records again writes nothing."""
        service = _service(request)
        assert service.engine is not None and service.pair is not None
        if len(body.records) > service.settings.max_records:
            raise ApiError(422, "invalid_request", f"expected at most {service.settings.max_records} records in one "
                           f"call, not {len(body.records)}")

        fields = FieldMapping(id=body.id_field, title=body.title_field, text=body.text_field,
                              metadata=tuple(body.metadata_fields) if body.metadata_fields is not None else None)
        with service.metrics.database("ingest"):
            report = await aio.ingest_records(service.engine, service.pair, body.records, collection=collection,
                                              fields=fields, chunk_words=body.chunk_words,
                                              chunk_overlap=body.chunk_overlap, strict=body.strict)
        return report.as_dict()

    @app.delete("/v1/collections/{collection}/passages/{external_id}", response_model=DeleteResponse,
                responses=_V1 | _errors(404), tags=["collections"],
                summary="Delete one passage")
    async def delete(request: Request, collection: str = Collection, external_id: str = ExternalId,
                     key: ApiKey | None = _WRITE) -> dict[str, Any]:
        """Delete the passage with this external id (a chunk is ``<id>#<n>``); 404 when there is none."""
        service = _service(request)

        engine = aio.sync_engine(service.engine)  # type: ignore[arg-type]
        with service.metrics.database("delete"):
            deleted = await asyncio.to_thread(delete_passages, engine, collection, [external_id])
        if not deleted:
            raise ApiError(404, "not_found", f"collection {collection!r} has no passage {external_id!r}")
        return {"collection": collection, "external_id": external_id, "deleted": deleted}

    @app.get("/v1/collections", response_model=CollectionsResponse, responses=_errors(401, 403, 503),
             tags=["collections"], summary="Collections, counts and encoders")
    async def collections(request: Request, key: ApiKey | None = _SEARCH) -> dict[str, Any]:
        """Each collection the key reaches: its passage count, last write and encoder pairs."""
        names = key.collections if key is not None else None
        found = await _service(request).database("collections", lambda conn: list_collections(conn, names=names))
        return {"collections": [c.as_dict() for c in found]}

    @app.get("/healthz", response_model=HealthResponse, tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyResponse, responses=_errors(503), tags=["operations"],
             summary="The database answers and the encoders are warm")
    async def readyz(request: Request) -> Any:
        service = _service(request)
        if not service.warm or service.pair is None:
            raise ApiError(503, "not_ready", "the encoders are still loading", {"Retry-After": "1"})

        def check(conn: Any) -> tuple[int, str | None]:
            return require_schema(conn), current_revision(conn)

        dim, revision = await service.database("ready", check)
        if dim != service.pair.dim:
            raise ApiError(503, "not_ready", f"the database stores vector({dim}) but the encoders make "
                           f"{service.pair.dim}-d vectors; serve a {dim}-d encoder pair", {"Retry-After": "60"})
        return {"status": "ready", "schema_revision": revision or "", "dim": dim, "encoder": _fingerprint(service),
                "reader": service.reader.name if service.reader is not None else None}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}, "description": "The Prometheus text format."}},
             response_class=Response)
    async def metrics(request: Request) -> Response:
        service = _service(request)
        cache = service.pair.question.cache_info() if service.pair is not None else None
        return Response(service.metrics.exposition(cache), media_type=service.metrics.content_type)
