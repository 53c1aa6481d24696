"""``dpr-pg serve``: the binding rule for keys, then uvicorn with graceful shutdown.

With no live API key, the server serves without authentication, so it binds to a loopback
address only and says so; another address needs a key, or ``--insecure-no-auth``. On SIGTERM
uvicorn stops accepting connections and lets the requests in flight finish (up to
``GRACEFUL_SECONDS``) before the encoders and the pool are released; then the process leaves the
embedded server (which stops if nobody else uses it) and dies by the signal, as uvicorn means it to.
"""

from __future__ import annotations

import inspect
import signal
from collections.abc import Callable
from typing import Any

import uvicorn
from sqlalchemy.engine import Engine

from dpr_pg.db import embedded
from dpr_pg.db.revision import require_schema
from dpr_pg.errors import ConfigError
from dpr_pg.service.keys import live_key_count
from dpr_pg.service.settings import ServiceSettings

APP_FACTORY = "dpr_pg.service.app:app_from_environment"
GRACEFUL_SECONDS = 30
WORKER_HEALTHCHECK_SECONDS = 120


def check_binding(engine: Engine, settings: ServiceSettings) -> str:
    """What the server will say at start about keys; raises ConfigError when it must not start.

    >>> check_binding(engine, ServiceSettings(host="0.0.0.0"))  # doctest: +SKIP
    ConfigError: no API key is live, and 0.0.0.0 is not a loopback address ...
    """
    with engine.connect() as conn:
        require_schema(conn)
        live = live_key_count(conn)
    if live:
        return f"{live} API key(s) live: every /v1 request needs one"
    if settings.insecure_no_auth:
        return (f"WARNING: no API key is live and --insecure-no-auth is set: anyone who reaches {settings.host} can "
                "search and write without a key; create one with: dpr-pg keys create NAME")
    if not settings.open_without_keys:
        raise ConfigError(f"no API key is live, so dpr-pg serve binds to localhost only, not {settings.host}: create "
                          "a key first (dpr-pg keys create NAME --scope search), or pass --insecure-no-auth to serve "
                          "this address without authentication")
    return (f"no API key is live: serving without authentication on {settings.host} (this machine) only; "
            "create one with: dpr-pg keys create NAME")


def run(settings: ServiceSettings, *, workers: int = 1, say: Callable[[str], None] = print) -> None:
    """Run uvicorn until SIGTERM/SIGINT; each worker builds the app from ``DPR_PG_SERVICE`` (set by the caller)."""
    if workers < 1:
        raise ConfigError(f"expected --workers of at least 1, not {workers}")
    say(f"dpr-pg serve: http://{settings.host}:{settings.port} (docs at /docs, OpenAPI at /openapi.json), "
        f"{workers} worker(s)")
    options: dict[str, Any] = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # uvicorn kills a worker that misses a 5 s health ping; loading the encoders on a busy CPU can take longer.
        options["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_SECONDS
    previous = signal.signal(signal.SIGTERM, _leave_then_die)  # uvicorn re-raises SIGTERM once it has shut down
    try:
        uvicorn.run(APP_FACTORY, factory=True, host=settings.host, port=settings.port, workers=workers,
                    timeout_graceful_shutdown=GRACEFUL_SECONDS, log_level="info", proxy_headers=False, **options)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _leave_then_die(signum: int, frame: object) -> None:
    """Dying by a signal skips the exit handlers: leave the embedded server first, so that it does not outlive us."""
    embedded.leave()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
