"""The HTTP service behind ``dpr-pg serve``: one process that keeps the encoders warm.

Modules, one concept each: ``settings`` (what a server runs with), ``keys`` (API keys, hashed,
with collections and scopes), ``batching`` (concurrent questions → one encoder call),
``metrics`` (Prometheus), ``schemas`` (request and response bodies), ``errors`` (every error as
JSON), ``limits`` (request body size), ``auth`` (key checks per request), ``routes`` and
``app`` (the FastAPI application), ``server`` (binding rules and uvicorn).

FastAPI and uvicorn come with the ``serve`` extra (``pip install 'dpr-pg[serve]'``); ``keys`` and
``settings`` need neither, so ``dpr-pg keys`` works without it.
"""

from dpr_pg.service.keys import ApiKey, create_key, list_keys, revoke_key
from dpr_pg.service.settings import ServiceSettings

__all__ = ["ApiKey", "ServiceSettings", "create_key", "list_keys", "revoke_key"]
