"""Request and response bodies of the HTTP API (pydantic models: they make the OpenAPI schema).

Bounds here protect the server (list lengths). Everything the core checks itself (k, ask's k,
ef_search, top_answers, filters, dimensions, finiteness; see :mod:`dpr_pg.validation`) is left to
the core, which answers with the same messages as in Python and on the command line; the schema
still shows the bounds of k, ef_search and top_answers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dpr_pg.ingest.validate import text_problem
from dpr_pg.tuning import MAX_ANSWERS, MAX_ASK_K, MAX_EF_SEARCH, MAX_K, MAX_QUERY_TEXT_CHARS

MAX_TEXT = 20_000  # characters of a passage's title, of a question to encode (the encoder keeps 512 tokens)
MAX_QUESTION = MAX_QUERY_TEXT_CHARS  # a search's question or query text: the core's own bound
MAX_LIST = 256
MAX_DIM = 16_000
Mode = Literal["dense", "hybrid", "exact"]


def _clean(value: str | None, field: str) -> str | None:
    problem = text_problem(value, field) if isinstance(value, str) else None
    if problem:
        raise ValueError(problem)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchOptions(_Strict):
    # k and ef_search are checked by the core (dpr_pg.validation), so a bad one gets the same error and
    # message here as in Python and the CLI; the schema still shows the bounds.
    k: int = Field(10, description="Number of hits.", json_schema_extra={"minimum": 1, "maximum": MAX_K})
    filter: dict[str, Any] | None = Field(None, description="Metadata filter document (MongoDB's query subset).")
    collection: str | None = Field(None, min_length=1, max_length=256, description="Search this collection only.")
    mode: Mode = Field("dense", description="dense: planned HNSW/exact; exact; hybrid: dense + Spanish full text.")
    ef_search: int | None = Field(None, description="hnsw.ef_search for the index path.",
                                  json_schema_extra={"minimum": 1, "maximum": MAX_EF_SEARCH})

    @field_validator("collection")
    @classmethod
    def _collection(cls, value: str | None) -> str | None:
        return _clean(value, "collection")


class SearchRequest(SearchOptions):
    """One question, or one precomputed query vector (``query_text`` gives hybrid mode its text)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"question": "¿Cuál es la capital de España?", "k": 5, "collection": "demo",
         "filter": {"topic": "geografía"}}]})

    question: str | None = Field(None, min_length=1, max_length=MAX_QUESTION)
    vector: list[float] | None = Field(None, min_length=1, max_length=MAX_DIM)
    query_text: str | None = Field(None, min_length=1, max_length=MAX_QUESTION)

    @field_validator("question", "query_text")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _clean(value, "question")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.question is None) == (self.vector is None):
            raise ValueError("expected exactly one of 'question' and 'vector'")
        return self


class BatchSearchRequest(SearchOptions):
    """Many questions, or many query vectors, with one set of options."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"questions": ["¿Cuál es la capital de España?", "¿Quién pintó el Guernica?"], "k": 3}]})

    questions: list[str] | None = Field(None, min_length=1, max_length=MAX_LIST)
    vectors: list[list[float]] | None = Field(None, min_length=1, max_length=MAX_LIST)
    query_texts: list[str] | None = Field(None, min_length=1, max_length=MAX_LIST)

    @field_validator("questions", "query_texts")
    @classmethod
    def _texts(cls, values: list[str] | None) -> list[str] | None:
        for i, value in enumerate(values or []):
            if not value or len(value) > MAX_QUESTION:
                raise ValueError(f"question {i}: expected 1 to {MAX_QUESTION} characters, not {len(value)}")
            _clean(value, f"question {i}")
        return values

    @model_validator(mode="after")
    def _one_kind(self) -> BatchSearchRequest:
        if (self.questions is None) == (self.vectors is None):
            raise ValueError("expected exactly one of 'questions' and 'vectors'")
        return self


class HitBody(BaseModel):
    id: int
    external_id: str
    collection: str
    title: str
    text: str
    metadata: dict[str, Any]
    score: float | None = Field(description="Inner product with the query (the RRF score in hybrid mode); "
                                            "null when it overflows a float.")
    rank: int


class PlanBody(BaseModel):
    path: str = Field(description="hnsw, hnsw-iterative, exact or hybrid.")
    reason: str
    estimated_rows: float | None = None
    matching_rows: int | None = None
    ef_search: int | None = None
    fell_back: bool = False


class SearchResponse(BaseModel):
    hits: list[HitBody]
    plan: PlanBody


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]


class AskRequest(SearchOptions):
    """One question: the top ``k`` passages are retrieved (same options as a search), then read."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"question": "¿Dónde está la Giralda?", "k": 5, "collection": "guias", "top_answers": 3,
         "filter": {"format": "pdf"}}]})

    question: str = Field(min_length=1, max_length=MAX_QUESTION)
    k: int = Field(10, description="Passages retrieved and read.",
                   json_schema_extra={"minimum": 1, "maximum": MAX_ASK_K})
    # top_answers too is the core's to check (dpr_pg.validation.check_top_answers): one error and message.
    top_answers: int = Field(1, description="Answers to return, best first.",
                             json_schema_extra={"minimum": 1, "maximum": MAX_ANSWERS})
    no_answer_threshold: float | None = Field(
        None, ge=0, le=1, description="Answer 'no answer' when no span scores this much, or the reader's null "
                                      "score beats every span (SQuAD 2.0 style); null: always the best spans.")

    @field_validator("question")
    @classmethod
    def _text(cls, value: str) -> str:
        return _clean(value, "question") or ""


class AnswerPassageBody(BaseModel):
    id: int
    external_id: str
    collection: str
    title: str
    metadata: dict[str, Any]
    score: float | None = Field(description="The retrieval score (inner product; RRF in hybrid mode); null when "
                                            "it overflows a float.")
    rank: int
    text: str


class AnswerBody(BaseModel):
    answer: str = Field(description="The span: passage.text[start:end].")
    score: float = Field(description="The reader's score of the span, a probability in [0, 1].")
    start: int = Field(description="Character offset of the span in passage.text.")
    end: int
    passage: AnswerPassageBody


class AskResponse(BaseModel):
    question: str
    answers: list[AnswerBody] = Field(description="Best first; empty when no_answer.")
    no_answer: bool
    no_answer_score: float | None = Field(description="The lowest null score among the windows read.")
    passages_read: int
    search_path: str = Field(description="hnsw, hnsw-iterative, exact or hybrid.")
    seconds: float


class FingerprintBody(BaseModel):
    id: str
    question_model: str
    question_revision: str | None
    passage_model: str
    passage_revision: str | None
    tokenizer_hash: str
    dim: int
    max_length: int
    pooling: str


class EncodeQuestionsRequest(_Strict):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"questions": ["¿Dónde está Sevilla?"]}]})

    questions: list[str] = Field(min_length=1, max_length=MAX_LIST)

    @field_validator("questions")
    @classmethod
    def _texts(cls, values: list[str]) -> list[str]:
        for i, value in enumerate(values):
            if len(value) > MAX_TEXT:
                raise ValueError(f"question {i}: expected at most {MAX_TEXT} characters, not {len(value)}")
            _clean(value, f"question {i}")
        return values


class PassageBody(_Strict):
    title: str = Field("", max_length=MAX_TEXT)
    text: str = Field(max_length=MAX_TEXT * 5)

    @field_validator("title", "text")
    @classmethod
    def _text(cls, value: str) -> str:
        return _clean(value, "passage") or ""


class EncodePassagesRequest(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"passages": [{"title": "Sevilla", "text": "Sevilla está a orillas del Guadalquivir."}]}]})

    passages: list[PassageBody] = Field(min_length=1, max_length=MAX_LIST)


class EncodeResponse(BaseModel):
    vectors: list[list[float]]
    dim: int
    fingerprint: FingerprintBody
    truncated: list[int] = Field(default_factory=list, description="Positions cut at the model's max length.")


class UpsertRequest(_Strict):
    """Records as ``dpr-pg ingest`` reads them from JSONL: by default ``id``, ``title``, ``text``, the rest metadata."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"records": [
        {"id": "madrid", "title": "Madrid", "text": "Madrid es la capital de España.", "region": "España"}]}]})

    records: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)
    id_field: str = Field("id", min_length=1, max_length=256)
    title_field: str = Field("title", min_length=1, max_length=256)
    text_field: str = Field("text", min_length=1, max_length=256)
    metadata_fields: list[str] | None = Field(None, max_length=256)
    chunk_words: int | None = Field(None, ge=0, le=100_000, description="Default 100; 0 turns chunking off.")
    chunk_overlap: int = Field(0, ge=0, le=100_000)
    strict: bool = Field(False, description="Stop at the first bad record (nothing of its batch is written).")


class RejectionBody(BaseModel):
    record: str
    reason: str


class IngestReportBody(BaseModel):
    collection: str
    source: str
    read: int
    passages: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int
    rejections: list[RejectionBody]
    duplicates: int
    duplicate_keys: list[dict[str, str]]
    truncated: int
    encoded: int
    retries: int
    seconds: float


class DeleteResponse(BaseModel):
    collection: str
    external_id: str
    deleted: int


class EncoderBody(BaseModel):
    id: int
    fingerprint: str
    question_model: str
    question_revision: str | None
    passage_model: str
    passage_revision: str | None
    dim: int
    max_length: int


class CollectionBody(BaseModel):
    name: str
    passages: int
    updated_at: dt.datetime | None
    encoders: list[EncoderBody]


class CollectionsResponse(BaseModel):
    collections: list[CollectionBody]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    schema_revision: str
    dim: int
    encoder: FingerprintBody
    reader: str | None = Field(None, description="The reader of POST /v1/ask; null when the server has none.")


class ErrorBody(BaseModel):
    """Every error: a machine-readable ``error`` and a ``message`` that says what to do."""

    error: str = Field(description="e.g. filter_error, dimension_error, unauthorized, not_ready.")
    message: str
    details: list[Any] | dict[str, Any] | None = None
