"""Every error as JSON (``ErrorBody``): core errors keep their messages, nothing leaks a traceback.

* 422: a request the core refuses (filter, dimension, k, mode, a bad record under ``strict``) or
  that breaks the schema; a value PostgreSQL cannot store (NUL, invalid Unicode);
* 409: the collection was encoded by another encoder pair;
* 404: no such passage, or ``/v1/ask`` on a server started without a reader;
* 503 (with ``Retry-After``): the database cannot be reached, its schema is not ready, or every
  connection of the pool is busy; the pool reconnects by itself once the database is back;
* 500: anything else, with a plain message; the traceback goes to the server's log only.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dpr_pg.errors import (
    ConfigError,
    DatabaseError,
    DimensionError,
    DprPgError,
    EncoderError,
    EncoderMismatchError,
    FilterError,
    IngestError,
    ReaderError,
    SchemaError,
    SearchError,
)

log = logging.getLogger("dpr_pg.service")

_BY_TYPE: list[tuple[type[DprPgError], int, str]] = [
    (EncoderMismatchError, 409, "encoder_mismatch"),
    (SchemaError, 503, "not_ready"),
    (DatabaseError, 503, "database_unavailable"),
    (FilterError, 422, "filter_error"),
    (DimensionError, 422, "dimension_error"),
    (SearchError, 422, "search_error"),
    (IngestError, 422, "ingest_error"),
    (EncoderError, 422, "encoder_error"),
    (ReaderError, 422, "reader_error"),
    (ConfigError, 422, "invalid_request"),
    (DprPgError, 422, "invalid_request"),
]


class ApiError(Exception):
    """An error the service itself raises (401, 403, 404, 413, 422, 503) with its JSON body."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers


def error_response(status: int, error: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": error, "message": message, "details": details}
    return JSONResponse(body, status_code=status, headers=headers)


def _retry(status: int) -> dict[str, str] | None:
    return {"Retry-After": "1"} if status == 503 else None


def core_error(e: DprPgError) -> JSONResponse:
    for kind, status, name in _BY_TYPE:
        if isinstance(e, kind):
            details = None
            report = getattr(e, "report", None)
            if report is not None and hasattr(report, "as_dict"):
                details = report.as_dict()
            return error_response(status, name, str(e), details, headers=_retry(status))
    raise AssertionError("unreachable: DprPgError is in the table")


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def database_error(e: Exception) -> JSONResponse:
    """A driver error: the database is gone (503) or refused a value (422); else a plain 500."""
    if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) \
            or getattr(e, "connection_invalidated", False):
        log.warning("database unavailable: %s", _first_line(e))
        return error_response(503, "database_unavailable",
                              "the database cannot be reached right now; retry in a moment "
                              f"({_first_line(e)})", headers=_retry(503))
    if isinstance(e, sqlalchemy.exc.DataError):
        return error_response(422, "invalid_value", f"the database refused a value: {_first_line(e)}")
    log.error("database error", exc_info=e)
    return error_response(500, "internal_error", "the database failed on this request; the server log has details")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into an ``ErrorBody``."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.error, e.message, headers=e.headers)

    @app.exception_handler(DprPgError)
    async def _core(request: Request, e: DprPgError) -> JSONResponse:
        return core_error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
                    for err in e.errors()]
        summary = "; ".join(f"{'.'.join(map(str, p['loc'][1:] or p['loc']))}: {p['msg']}" for p in problems[:5])
        return error_response(422, "invalid_request", f"the request does not match the API schema: {summary}",
                              problems)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        name = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(e.status_code, "http_error")
        return error_response(e.status_code, name, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(sqlalchemy.exc.DBAPIError)
    async def _database(request: Request, e: sqlalchemy.exc.DBAPIError) -> JSONResponse:
        return database_error(e)

    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    async def _busy(request: Request, e: sqlalchemy.exc.TimeoutError) -> JSONResponse:
        return error_response(503, "busy", "every database connection of this server is in use; retry in a moment",
                              headers=_retry(503))

    @app.exception_handler(UnicodeError)
    async def _unicode(request: Request, e: UnicodeError) -> JSONResponse:
        return error_response(422, "invalid_value", f"expected valid Unicode text: {e}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        if isinstance(e, psycopg.OperationalError):
            return database_error(sqlalchemy.exc.OperationalError(None, None, e))
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=e)
        return error_response(500, "internal_error", "the server failed on this request; the server log has details")
