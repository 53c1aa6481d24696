"""Tenancy: which roles may search, and write, which collections (row-level security on passages).

``grant`` gives a role what searching needs through every face (the SQL functions, the Python API,
the ORM helpers); ``write=True`` adds what ingest needs. With ``collections``, the role sees only
those collections: the grant is a row in ``dpr_pg.collection_grants``, which the row-level
security policies on ``dpr_pg.passages`` read, and the first one turns row-level security on for
the database. The owner of the dpr_pg tables (the role that ran ``dpr-pg init``), superusers and
BYPASSRLS roles are not subject to it. All three functions call the SQL functions of
sql/tenancy.sql, so that psql users manage the same grants the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpr_pg.errors import ConfigError, DatabaseError, PrivilegeError, SchemaError, explain_database_error


@dataclass(frozen=True)
class CollectionGrant:
    """One row of ``dpr_pg.collection_grants`` (``role``: the role's name, or its OID once dropped)."""

    role: str
    collection: str
    write: bool
    granted_at: datetime


@dataclass(frozen=True)
class Tenancy:
    """Whether row-level security limits roles to their collections, and the grants it reads."""

    enabled: bool
    grants: list[CollectionGrant] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _collections(collections: Iterable[str] | str | None) -> list[str] | None:
    if collections is None:
        return None
    names = [collections] if isinstance(collections, str) else list(collections)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ConfigError(f"expected one or more collection names, not {names!r}; e.g. collections=['wiki', 'news']")
    return list(dict.fromkeys(n.strip() for n in names))


def _require_tenancy_schema(conn: Connection) -> None:
    """On a database without the schema the fix is dpr-pg init, whatever the role: say so first."""
    if conn.execute(sa.text("SELECT to_regclass('dpr_pg.collection_grants') IS NULL")).scalar():
        raise SchemaError("this database has no dpr_pg schema, or one without tenancy; "
                          "run dpr-pg init to create or upgrade it")


def _call(engine: Engine, statement: str, params: dict[str, Any], role: str | None) -> None:
    if role is not None and (not isinstance(role, str) or not role):
        raise ConfigError(f"expected a role name, not {role!r}")
    try:
        with engine.begin() as conn:
            _require_tenancy_schema(conn)
            if role is not None:
                exists = conn.execute(sa.text("SELECT to_regrole(quote_ident(:r)) IS NOT NULL"), {"r": role}).scalar()
                if not exists:
                    raise ConfigError(f"role {role!r} does not exist: create it first (CREATE ROLE \"{role}\" LOGIN "
                                      "PASSWORD '...'), then grant")
            conn.execute(sa.text(statement), params)
    except sa.exc.DBAPIError as e:
        sqlstate = getattr(e.orig, "sqlstate", None)
        detail = e.orig.diag.message_primary if isinstance(e.orig, psycopg.Error) else str(e.orig)
        if sqlstate == "42501":  # not the owner, or EXECUTE on the grant functions refused
            raise PrivilegeError(f"{detail}: only the owner of the dpr_pg tables (the role that ran dpr-pg init) "
                                 "or a superuser can change grants; connect as that role") from e
        if sqlstate == "22023":
            raise ConfigError(detail) from e
        explained = explain_database_error(e)
        if explained is not None:
            raise explained from e
        raise DatabaseError(f"changing grants failed: {detail}") from e


def grant(engine: Engine, role: str, *, collections: Iterable[str] | str | None = None, write: bool = False) -> None:
    """Let ``role`` search (with ``write=True``, also ingest); with ``collections``, only those.

    A role granted collections sees no other collection once row-level security is on, and this
    turns it on. Granting again sets the role's access to those collections (read, or read and write).

    >>> grant(engine, "tenant_a", collections=["wiki"])  # doctest: +SKIP
    """
    names = _collections(collections)
    _call(engine, "SELECT dpr_pg.grant_access(CAST(quote_ident(:role) AS regrole), CAST(:c AS text[]), :w)",
          {"role": role, "c": names, "w": bool(write)}, role)


def revoke(engine: Engine, role: str, *, collections: Iterable[str] | str | None = None, write: bool = False) -> None:
    """Take ``collections`` from ``role``; without collections, every collection and every privilege
    :func:`grant` gave. ``write=True`` takes only the right to write.

    >>> revoke(engine, "tenant_a", collections=["wiki"])  # doctest: +SKIP
    """
    names = _collections(collections)
    _call(engine, "SELECT dpr_pg.revoke_access(CAST(quote_ident(:role) AS regrole), CAST(:c AS text[]), :w)",
          {"role": role, "c": names, "w": bool(write)}, role)


def set_tenancy(engine: Engine, enabled: bool) -> None:
    """Turn row-level security on dpr_pg.passages on or off (off: every role with SELECT reads every collection).

    >>> set_tenancy(engine, False)  # doctest: +SKIP
    """
    _call(engine, "SELECT dpr_pg.set_tenancy(:e)", {"e": bool(enabled)}, None)


def tenancy_status(engine: Engine) -> Tenancy:
    """Whether tenancy is on, and the grants this role may see (the owner sees them all).

    >>> tenancy_status(engine).enabled  # doctest: +SKIP
    True
    """
    with engine.connect() as conn:
        _require_tenancy_schema(conn)
        enabled = conn.execute(sa.text(
            "SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass('dpr_pg.passages')")).scalar()
        rows = conn.execute(sa.text(
            "SELECT COALESCE(r.rolname::text, g.role::text), g.collection, g.can_write, g.granted_at "
            "FROM dpr_pg.collection_grants g LEFT JOIN pg_roles r ON r.oid = g.role ORDER BY 1, 2")).all()
    return Tenancy(bool(enabled), [CollectionGrant(*row) for row in rows])


def check_write_access(conn: Connection, collection: str, *, prune: bool = False) -> None:
    """Raise :class:`PrivilegeError` unless this role may write ``collection`` (ingest checks it first).

    >>> check_write_access(conn, "wiki")  # doctest: +SKIP
    """
    needed = ["dpr_pg.passages:INSERT", "dpr_pg.passages:UPDATE", "dpr_pg.encoders:INSERT"]
    if prune:
        needed.append("dpr_pg.passages:DELETE")
    role, missing, limited, allowed = conn.execute(sa.text(
        "SELECT current_user, "
        "       ARRAY(SELECT n FROM unnest(CAST(:needed AS text[])) AS n "
        "             WHERE NOT has_table_privilege(split_part(n, ':', 1), split_part(n, ':', 2))), "
        "       row_security_active('dpr_pg.passages'), dpr_pg.allowed_collections(true)"),
        {"needed": needed}).one()
    how = f"ask the owner of the dpr_pg tables to run: dpr-pg grant {role} --collections {collection} --write"
    if missing:
        lacks = ", ".join(n.split(":")[1] + " on " + n.split(":")[0] for n in missing)
        raise PrivilegeError(f"role {role!r} may not ingest: it lacks {lacks}; {how}")
    if limited and collection not in allowed:
        mine = ", ".join(allowed) or "none"
        raise PrivilegeError(f"role {role!r} may not write collection {collection!r} (it may write: {mine}); {how}")
