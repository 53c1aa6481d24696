"""Where a database's dpr_pg schema stands: its revision, the package's head, the embedding dimension.

Read-only: :func:`require_schema` is what every command that needs the schema checks first, and
:mod:`dpr_pg.db.schema` changes the schema (init, upgrade, downgrade).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from dpr_pg.db.models import SCHEMA
from dpr_pg.errors import SchemaError

VERSION_TABLE = "alembic_version"


def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]  # dpr_pg/, which holds db/


def resource_dir(name: str) -> Path:
    """``migrations`` or ``sql``: inside the installed wheel, or at the top of a source checkout."""
    inside = _package_root() / f"_{name}"
    if inside.is_dir():
        return inside
    checkout = _package_root().parent / name
    if checkout.is_dir():
        return checkout
    raise SchemaError(f"dpr_pg's {name}/ folder is missing from {_package_root()}; reinstall dpr-pg")


def alembic_config(connection: Connection | None = None, *, dim: int | None = None) -> Config:
    """An Alembic Config for dpr_pg's migrations, bound to ``connection`` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resource_dir("migrations")))
    cfg.attributes["connection"] = connection
    cfg.attributes["dim"] = dim
    return cfg


def current_revision(conn: Connection) -> str | None:
    """dpr_pg's schema revision in this database, or None before ``dpr-pg init``."""
    migration = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "version_table_schema": SCHEMA}
    )
    return migration.get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def embedding_dim(conn: Connection) -> int | None:
    """The dimension of ``dpr_pg.passages.embedding``, or None when the table does not exist."""
    return conn.execute(
        sa.text(
            "SELECT a.atttypmod FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass('dpr_pg.passages') AND a.attname = 'embedding'"
        )
    ).scalar()


def require_schema(conn: Connection) -> int:
    """The embedding dimension, or a SchemaError that says to run ``dpr-pg init``."""
    revision = current_revision(conn)
    if revision is None:
        raise SchemaError("this database has no dpr_pg schema yet; run dpr-pg init first")
    if revision != head_revision():
        raise SchemaError(f"the dpr_pg schema is at revision {revision}, not {head_revision()}; run dpr-pg init")
    dim = embedding_dim(conn)
    assert dim is not None
    return dim
