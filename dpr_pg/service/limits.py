"""ASGI middleware: the request body limit (413) and the per-request metrics.

The body is read whole (at most ``max_bytes``) before the application sees it: a larger body, by
its Content-Length or by what arrives, gets 413 without being parsed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dpr_pg.service.metrics import ServiceMetrics

Scope = dict[str, Any]
Message = dict[str, Any]


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    """Answers 413 to a request body over ``max_bytes``; hands smaller bodies on, read whole."""

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> dict[str, Any]:
        return {"error": "body_too_large", "details": None,
                "message": f"expected a request body of at most {self.max_bytes} bytes, not {size}; "
                           "split the records or questions over several requests"}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, self._too_large(f"{int(declared)}"))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await _send_json(send, 413, self._too_large(f"more than {self.max_bytes}"))
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, when the client leaves

        await self.app(scope, replay, send)


class RequestMetrics:
    """Counts each request by route template, method and status, with its latency."""

    def __init__(self, app: Any, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        counted = scope["path"] != "/metrics"

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        if counted:
            self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, record)
        finally:
            if counted:
                self.metrics.in_progress.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"  # never the raw path: ids would explode labels
            self.metrics.request(template, scope["method"], status, time.perf_counter() - started)
