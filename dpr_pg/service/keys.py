"""API keys: a name, the collections it may reach (or all), and its scopes (search, write).

A key is ``dprpg_`` plus 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). Only its
SHA-256 is stored in ``dpr_pg.api_keys``: a slow password hash protects guessable secrets, and
these are not guessable. The key itself is shown once, by :func:`create_key`, and never logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import ConfigError

SCOPES = ("search", "write")
KEY_PREFIX = "dprpg_"
_SHOWN = 12  # characters of a key kept in clear (its prefix) to tell keys apart in `keys list`
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}")
_COLUMNS = "id, name, prefix, collections, scopes, created_at, revoked_at"


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret. ``collections`` None means every collection."""

    id: int
    name: str
    prefix: str
    collections: list[str] | None
    scopes: list[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def reaches(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "prefix": self.prefix, "collections": self.collections, "scopes": self.scopes,
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256, hex.

    >>> hash_key("dprpg_example")[:12]
    'f52f2532672d'
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _check(name: str, collections: Iterable[str] | None, scopes: Iterable[str]) -> tuple[list[str] | None, list[str]]:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"expected a key name of 1-128 letters, digits and _.@:- (starting with a letter or "
                          f"digit), not {name!r}")
    chosen = sorted(set(scopes))
    if not chosen or any(scope not in SCOPES for scope in chosen):
        raise ConfigError(f"expected scopes among {', '.join(SCOPES)}, not {', '.join(map(str, chosen)) or 'none'}")
    if collections is None:
        return None, chosen
    names = sorted(set(collections))
    if not names or any(not isinstance(c, str) or not c or "\x00" in c for c in names):
        raise ConfigError("expected one or more collection names (leave them out for every collection)")
    return names, chosen


def _row(row: Any) -> ApiKey:
    return ApiKey(row.id, row.name, row.prefix, list(row.collections) if row.collections is not None else None,
                  list(row.scopes), row.created_at, row.revoked_at)


def create_key(engine: Engine, name: str, *, collections: Iterable[str] | None = None,
               scopes: Iterable[str] = ("search",)) -> tuple[ApiKey, str]:
    """Create a key; returns it and its secret, which is shown this once and stored only hashed.

    >>> key, secret = create_key(engine, "web", collections=["demo"], scopes=["search"])  # doctest: +SKIP
    """
    names, chosen = _check(name, collections, scopes)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        taken = conn.execute(sa.text("SELECT 1 FROM dpr_pg.api_keys WHERE name = :name AND revoked_at IS NULL"),
                             {"name": name}).first()
        if taken:
            raise ConfigError(f"a live key named {name!r} exists; revoke it first (dpr-pg keys revoke {name}) "
                              "or choose another name")
        row = conn.execute(sa.text(
            f"INSERT INTO dpr_pg.api_keys (name, key_hash, prefix, collections, scopes) "
            f"VALUES (:name, :hash, :prefix, :collections, :scopes) RETURNING {_COLUMNS}"),
            {"name": name, "hash": hash_key(secret), "prefix": secret[:_SHOWN], "collections": names,
             "scopes": chosen}).one()
    return _row(row), secret


def list_keys(engine: Engine, *, revoked: bool = False) -> list[ApiKey]:
    """The live keys (with ``revoked=True``, the revoked ones too), oldest first; never their secrets."""
    where = "" if revoked else " WHERE revoked_at IS NULL"
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(sa.text(f"SELECT {_COLUMNS} FROM dpr_pg.api_keys{where} ORDER BY id"))]


def revoke_key(engine: Engine, name: str) -> ApiKey:
    """Revoke the live key named ``name``: requests with it get 401 from then on."""
    with engine.begin() as conn:
        row = conn.execute(sa.text(
            f"UPDATE dpr_pg.api_keys SET revoked_at = now() WHERE name = :name AND revoked_at IS NULL "
            f"RETURNING {_COLUMNS}"), {"name": name}).first()
    if row is None:
        raise ConfigError(f"no live key named {name!r}; dpr-pg keys list shows them")
    return _row(row)


def live_key_count(conn: Connection) -> int:
    """How many keys are live (not revoked)."""
    return int(conn.execute(sa.text("SELECT count(*) FROM dpr_pg.api_keys WHERE revoked_at IS NULL")).scalar_one())


def authenticate(conn: Connection, secret: str | None) -> tuple[ApiKey | None, int]:
    """(the live key with this secret or None, the number of live keys), in one round trip."""
    row = conn.execute(sa.text(
        f"SELECT (SELECT count(*) FROM dpr_pg.api_keys WHERE revoked_at IS NULL) AS live, k.* "
        f"FROM (SELECT 1) AS one LEFT JOIN (SELECT {_COLUMNS} FROM dpr_pg.api_keys "
        f"WHERE key_hash = :hash AND revoked_at IS NULL) AS k ON true"),
        {"hash": hash_key(secret) if secret else ""}).one()
    return (_row(row) if row.id is not None else None), int(row.live)
