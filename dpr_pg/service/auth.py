"""Who may do what: the API key of a request, its scope and its collections.

A key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (never in the URL, which
access logs record). While no key is live, a server on a loopback address (or started with
``--insecure-no-auth``) serves everyone; once one is, every ``/v1`` request needs a valid key:
401 without one, 403 outside its scopes or collections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from dpr_pg.service.errors import ApiError
from dpr_pg.service.keys import ApiKey, authenticate

if TYPE_CHECKING:
    from dpr_pg.service.app import Service

bearer = HTTPBearer(auto_error=False, description="An API key from `dpr-pg keys create`.")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, in its own header.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _secret(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return request.headers.get("x-api-key") or None


async def require(request: Request, scope: str, collection: str | None = None) -> ApiKey | None:
    """The request's key, checked for ``scope`` and ``collection``; None when the server is open."""
    service: Service = request.app.state.service
    secret = _secret(request)
    # One statement (the key and the live count together), so no transaction around it.
    key, live = await service.database("auth", lambda conn: authenticate(conn, secret), transaction=False)
    if key is None:
        if live == 0 and secret is None and service.settings.open_without_keys:
            return None
        if live == 0 and secret is None:
            raise ApiError(401, "unauthorized", "this server needs an API key and none is live: create one with "
                           "dpr-pg keys create NAME, and send it as 'Authorization: Bearer <key>'", _CHALLENGE)
        raise ApiError(401, "unauthorized", "missing or invalid API key: send a live key from dpr-pg keys create as "
                       "'Authorization: Bearer <key>' or 'X-API-Key: <key>'", _CHALLENGE)
    if not key.may(scope):
        raise ApiError(403, "forbidden", f"the key {key.name!r} has the scopes {', '.join(key.scopes)}, not {scope!r}; "
                       f"create a key with --scope {scope}")
    check_collection(key, collection)
    return key


def needs(scope: str) -> Callable[..., Awaitable[ApiKey | None]]:
    """A dependency that checks the key before the body is read: 401, or 403 outside ``scope`` or the
    path's collection. (The security schemes it depends on document the key in OpenAPI.)"""

    async def dependency(request: Request, _bearer: HTTPAuthorizationCredentials | None = Depends(bearer),
                         _header: str | None = Depends(api_key_header)) -> ApiKey | None:
        return await require(request, scope, request.path_params.get("collection"))

    return dependency


def check_collection(key: ApiKey | None, collection: str | None) -> None:
    """403 when the request names a collection its key may not reach."""
    if key is not None and collection is not None and not key.reaches(collection):
        raise ApiError(403, "forbidden", f"the key {key.name!r} may not reach collection {collection!r}; its "
                       f"collections: {', '.join(key.collections or [])}")


def restrict_filter(key: ApiKey | None, filter: dict[str, Any] | None) -> dict[str, Any] | None:
    """The filter, limited to the key's collections when the request names none (the core's filter language)."""
    if key is None or key.collections is None:
        return filter
    only = {"collection": {"$in": list(key.collections)}}
    return {"$and": [filter, only]} if filter else only
