"""What the migrations under versions/ call, frozen with them: never edit it, add a new helper instead.

A migration must mean the same thing whatever the package becomes, so it takes nothing from
dpr_pg's modules but the public error classes: these helpers are copies, made when they were
first frozen, of the package's ``execute_script``, ``migration_dim`` and ``vector_schema``.
Migrations import them as ``dpr_pg._migrations.frozen`` (this folder, installed or editable).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import context
from sqlalchemy.dialects import postgresql

from dpr_pg import ConfigError, SchemaError

__all__ = ["SchemaError", "execute_script", "migration_dim", "vector_schema"]

# The dimension when neither init nor ``-x dim=N`` gives one: the IIC Spanish DPR models' 768.
DIM = 768
_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_VECTOR_SCHEMA_SQL = (
    "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
    "WHERE e.extname = 'vector'"
)


def execute_script(sql: str) -> None:
    """Run a SQL script verbatim, or write it out in offline (``--sql``) mode.

    Scripts of function bodies hold ``%``, ``:name`` and ``$n`` that a parameter-aware layer would
    try to interpret, so online they go straight to the driver.
    """
    if context.is_offline_mode():
        context.get_context().impl.static_output(sql.rstrip() + "\n")
    else:
        context.get_bind().connection.driver_connection.execute(sql)


def migration_dim() -> int:
    """The dimension to create: init's argument, ``-x dim=N``, or 768."""
    chosen = context.config.attributes.get("dim") or context.get_x_argument(as_dictionary=True).get("dim")
    return int(chosen) if chosen else DIM


def vector_schema() -> str:
    """The quoted schema of the vector extension (``-x vector_schema=`` offline)."""
    if context.is_offline_mode():
        name = context.get_x_argument(as_dictionary=True).get("vector_schema", "public")
        if not isinstance(name, str) or not _PLAIN_IDENTIFIER.fullmatch(name):
            raise ConfigError(f"expected -x vector_schema= to be a plain SQL identifier, not {name!r}")
        return postgresql.dialect().identifier_preparer.quote(name)
    return context.get_bind().execute(sa.text(_VECTOR_SCHEMA_SQL)).scalar_one()
