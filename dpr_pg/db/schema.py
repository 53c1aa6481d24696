"""The dpr_pg schema: a frozen Alembic history with its own version table, then sql/'s definitions.

:func:`init` is what ``dpr-pg init`` runs: it checks the server first (pgvector available, rights
to create it, dimension agrees) so that a refused init changes nothing, upgrades to head, then
applies sql/'s idempotent definitions (functions, CREATE OR REPLACE) with the numbers of
:mod:`dpr_pg.tuning` filled in. Migrations carry the SQL they ran and never read sql/; see
migrations/README.md for which change goes where.
"""

from __future__ import annotations

import argparse
import io
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from dpr_pg import tuning
from dpr_pg.config import DEFAULT_DIM
from dpr_pg.errors import ConfigError, DatabaseError, SchemaError
from dpr_pg.db.models import SCHEMA
from dpr_pg.db.storage import check_dim as check_storage_dim
from dpr_pg.db.storage import check_storage, column_type, read_storage
from dpr_pg.db.revision import (  # re-exported: callers know them from here
    VERSION_TABLE,
    alembic_config,
    current_revision,
    embedding_dim,
    head_revision,
    require_schema,
    resource_dir,
)
from dpr_pg.db.column import set_storage
from dpr_pg.db.partition_ops import partition_passages
from dpr_pg.db.partitions import is_partitioned
from dpr_pg.db.index import DROP_INVALID_HNSW, HNSW_INDEX, HnswParameters, hnsw_parameters
from dpr_pg.validation import check_dim

# Serialises concurrent `dpr-pg init` runs (a session-level advisory lock; any constant will do).
_INIT_LOCK_KEY = 0x6470725F7067  # "dpr_pg"
# An allow-list, not an escape: a name the offline script may carry into SQL text.
_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# sql/'s idempotent definitions, in the order they are applied after the last migration.
DEFINITION_FILES = ("search.sql", "sync.sql", "search_table.sql", "partitions.sql", "tenancy.sql")
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_VECTOR_SCHEMA_SQL = (
    "SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
    "WHERE e.extname = 'vector'"
)
# Every routine of the schema with its definition and privileges: what applying sql/ may change.
_DEFINITIONS_FINGERPRINT_SQL = (
    "SELECT md5(string_agg(pg_get_functiondef(p.oid) || coalesce(p.proacl::text, ''), '|' "
    "ORDER BY p.oid::regprocedure::text)) FROM pg_proc p "
    "WHERE p.pronamespace = to_regnamespace('dpr_pg') AND p.prokind IN ('f', 'p')"
)

def quoted_schema_name(name: str) -> str:
    """``name`` as SQL text, quoted only where PostgreSQL needs it; refuses anything but a plain identifier.

    >>> quoted_schema_name("extensions"), quoted_schema_name("Ext")
    ('extensions', '"Ext"')
    """
    if not isinstance(name, str) or not _PLAIN_IDENTIFIER.fullmatch(name):
        raise ConfigError(
            f"expected --vector-schema to be a plain SQL identifier (letters, digits and _, not starting with a "
            f"digit, at most 63 characters), not {name!r}; give the schema pgvector is installed in, as \\dx "
            "in psql shows it"
        )
    return postgresql.dialect().identifier_preparer.quote(name)


def init_sql(
    *, dim: int = DEFAULT_DIM, vector_schema: str = "public", revision: str = "head", start: str | None = None
) -> str:
    """The SQL script that ``init`` would run, for a DBA to review and apply; connects to nothing.

    It is Alembic's offline output (``alembic upgrade head --sql``): the vector extension, the
    dpr_pg schema and its version table, up to ``revision``; at head, sql/'s definitions follow,
    as ``init`` applies them. ``vector_schema`` names the schema pgvector is (or will be) installed
    in; the SQL functions pin it in their search_path. With ``start``, only the steps after that
    revision, for a database already at ``start`` (``start`` at head: the definitions alone).

    >>> print(init_sql(dim=384))  # doctest: +SKIP
    CREATE SCHEMA IF NOT EXISTS dpr_pg;
    ...
    """
    check_dim(dim)
    quoted = quoted_schema_name(vector_schema)
    cfg = alembic_config(dim=dim)
    target, start = _resolve_range(cfg, revision, start)
    cfg.cmd_opts = argparse.Namespace(x=[f"vector_schema={vector_schema}"])
    cfg.output_buffer = io.StringIO()
    if start != target:
        command.upgrade(cfg, f"{start}:{target}" if start else target, sql=True)
    script = cfg.output_buffer.getvalue()
    if target == head_revision():
        script += ("BEGIN;\n\n-- dpr_pg's SQL functions (sql/), applied after the last migration\n\n"
                   f"{definitions_script(quoted).rstrip()}\n\nCOMMIT;\n\n")
    return script


def _resolve_range(cfg: Config, revision: str, start: str | None) -> tuple[str, str | None]:
    """(end, start) as revision ids; start None means from an empty database."""
    scripts = ScriptDirectory.from_config(cfg)
    known = ", ".join(rev.revision for rev in reversed(list(scripts.walk_revisions())))
    resolved = []
    for name in (revision, start or "base"):
        try:
            script = scripts.get_revision(name)
        except CommandError as e:
            raise ConfigError(f"expected a dpr_pg revision ({known}, head or base), not {name!r}") from e
        resolved.append(script.revision if script is not None else None)
    target, first = resolved
    if target is None:
        raise ConfigError(f"expected a revision to upgrade to ({known} or head), not {revision!r}")
    earlier = {rev.revision for rev in scripts.iterate_revisions(target, "base")} - {target}
    if target == scripts.get_current_head():
        earlier.add(target)  # a database at head: the definitions alone
    if first is not None and first not in earlier:
        raise ConfigError(
            f"expected a start revision before {target}, not {start!r}; leave start out for the whole script"
        )
    return target, first


def definitions_script(quoted_vector_schema: str) -> str:
    """sql/'s definitions as one script: placeholders filled from :mod:`dpr_pg.tuning` and the vector schema.

    ``quoted_vector_schema`` is SQL text, already quoted (see :func:`quoted_schema_name`).

    >>> "k > 10000" in definitions_script("public")
    True
    """
    values = {**tuning.sql_values(), "VECTOR_SCHEMA": quoted_vector_schema}
    scripts = []
    for name in DEFINITION_FILES:
        text = (resource_dir("sql") / name).read_text(encoding="utf-8")

        def fill(match: re.Match[str], source: str = name) -> str:
            if match.group(1) not in values:
                raise SchemaError(f"sql/{source} names @{match.group(1)}@, which dpr_pg.tuning.sql_values() does "
                                  f"not define; expected one of {', '.join(sorted(values))}")
            return values[match.group(1)]

        scripts.append(f"-- sql/{name}\n{_PLACEHOLDER.sub(fill, text).strip()}\n")
    return "\n".join(scripts)


def apply_definitions(conn: Connection) -> bool:
    """(Re)create sql/'s functions in this database; True when a definition or privilege changed.

    Runs in ``conn``'s transaction; the caller commits. ``init`` calls it after the last migration.
    """
    before = conn.execute(sa.text(_DEFINITIONS_FINGERPRINT_SQL)).scalar()
    # The functions' argument types name pgvector's vector unqualified: when the extension lives in a
    # schema off the path, that schema goes first on it for this transaction.
    conn.execute(sa.text(
        "SELECT pg_catalog.set_config('search_path', pg_catalog.quote_ident(n.nspname) || ', ' || "
        "pg_catalog.current_setting('search_path'), true) "
        "FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector' AND n.nspname <> ALL (pg_catalog.current_schemas(false))"))
    script = definitions_script(conn.execute(sa.text(_VECTOR_SCHEMA_SQL)).scalar_one())
    # The script holds %, :name and $n that a parameter-aware layer would try to interpret.
    conn.connection.driver_connection.execute(script)
    return conn.execute(sa.text(_DEFINITIONS_FINGERPRINT_SQL)).scalar() != before


@dataclass(frozen=True)
class InitResult:
    """What :func:`init` did: the revision before and after, the embedding dimension, and whether
    applying sql/ changed a function (a package upgrade that only tunes functions has no migration)."""

    previous_revision: str | None
    revision: str
    dim: int
    definitions_changed: bool = False
    storage: str = "vector"
    column: str = "vector"  # the embedding column's type: vector or halfvec
    partitioned: bool = False

    @property
    def changed(self) -> bool:
        return self.previous_revision != self.revision or self.definitions_changed


def _check_vector_extension(conn: Connection) -> None:
    installed = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    if installed:
        return
    available = conn.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).scalar()
    if not available:
        raise DatabaseError(
            "this PostgreSQL server has no pgvector extension (vector): install pgvector on the server "
            "(https://github.com/pgvector/pgvector#installation), use the pgvector/pgvector image from "
            "docker-compose.yml, or unset DPR_PG_DATABASE_URL/DATABASE_URL to use the embedded server"
        )
    allowed = conn.execute(
        sa.text(
            "SELECT rolsuper OR (has_database_privilege(current_database(), 'CREATE') AND "
            "COALESCE((SELECT trusted FROM pg_available_extension_versions "
            "          WHERE name = 'vector' AND trusted LIMIT 1), false)) "
            "FROM pg_roles WHERE rolname = current_user"
        )
    ).scalar()
    if not allowed:
        user, database = conn.execute(sa.text("SELECT current_user, current_database()")).one()
        raise DatabaseError(
            f"user {user!r} may not create the vector extension in database {database!r}: ask a superuser to "
            f'run  CREATE EXTENSION vector;  in {database!r} (psql -d {database} -c "CREATE EXTENSION vector"), '
            "then run dpr-pg init again"
        )


def init(engine: Engine, *, dim: int | None = None, storage: str | None = None,
         partition_by_collection: bool = False) -> InitResult:
    """Create or upgrade the dpr_pg schema, then apply sql/'s definitions; running it again is a no-op.

    ``dim`` is the embedding dimension. None keeps the dimension an existing schema stores, and
    gives 768 (the IIC models') to a new one; a number that differs from the stored one is refused.
    ``storage`` is how vectors are stored (see :mod:`dpr_pg.db.storage`): None keeps an existing
    schema's and gives ``vector`` to a new one. A new schema with ``halfvec`` gets a halfvec(dim)
    column and its index (half the bytes of vector's); with ``bit``, a bit index over the vector
    column. Another storage than an existing schema's is refused (``dpr-pg storage set`` switches
    the index without downtime, ``--rewrite-column`` the column offline).
    ``partition_by_collection`` list-partitions ``dpr_pg.passages`` by collection (see
    :mod:`dpr_pg.db.partitions`); a populated unpartitioned table is refused: ``dpr-pg storage
    partition`` converts it.

    >>> init(engine, dim=768)  # doctest: +SKIP
    InitResult(previous_revision=None, revision='0013', dim=768, definitions_changed=True)
    """
    if dim is not None:
        check_dim(dim)
    if storage is not None:
        check_storage(storage)
    with engine.connect() as conn, _init_lock(conn):
        result = _init_locked(conn, dim, storage)
    if storage is not None and storage != result.storage:  # a new schema: its empty column and index, at once
        chosen = set_storage(engine, storage, rewrite_column=storage == "halfvec").storage
        result = replace(result, storage=chosen.kind, column=chosen.column)
    return _partition_new(engine, result) if partition_by_collection else _with_partitioning(engine, result)


def _with_partitioning(engine: Engine, result: InitResult) -> InitResult:
    return replace(result, partitioned=is_partitioned(engine))


def _partition_new(engine: Engine, result: InitResult) -> InitResult:
    """``init --partition-by-collection``: partition an empty table at once; a populated one is refused."""
    with engine.connect() as conn:
        if is_partitioned(conn):
            return replace(result, partitioned=True)
        populated = conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM dpr_pg.passages)")).scalar()
    if populated:
        raise SchemaError("dpr_pg.passages already holds passages and is not partitioned; run dpr-pg storage partition "
                          "to convert it (writes wait while it runs; searches go on)")
    partition_passages(engine)
    return replace(result, partitioned=True, definitions_changed=True)


@contextmanager
def _init_lock(conn: Connection) -> Iterator[None]:
    _wait_for_init_lock(conn)
    try:
        yield
    finally:
        conn.rollback()
        conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _INIT_LOCK_KEY})
        conn.commit()


def _wait_for_init_lock(conn: Connection, *, timeout: float = 600.0) -> None:
    # Poll instead of blocking in pg_advisory_lock: a waiter's open snapshot would make the other
    # init's CREATE INDEX CONCURRENTLY wait for it, a deadlock.
    deadline = time.monotonic() + timeout
    while True:
        acquired = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": _INIT_LOCK_KEY}).scalar()
        conn.commit()
        if acquired:
            return
        if time.monotonic() > deadline:
            raise SchemaError(f"another dpr-pg init has held the schema lock for {timeout:.0f} s; try again later")
        time.sleep(0.2)


def _init_locked(conn: Connection, dim: int | None, storage: str | None = None) -> InitResult:
    _check_vector_extension(conn)
    existing = embedding_dim(conn)
    if dim is None:
        dim = existing or DEFAULT_DIM
    if existing is not None and existing != dim:
        raise SchemaError(
            f"the dpr_pg schema in this database stores vector({existing}), not vector({dim}); "
            f"run dpr-pg init --dim {existing}, or use another database for {dim}-d vectors"
        )
    stored = read_storage(conn) if existing is not None else None
    if storage is not None:
        check_storage_dim(storage, dim)
        if stored is not None and stored.kind != storage:
            rewrite = " --rewrite-column" if storage == "vector" and stored.column == "halfvec" else ""
            raise SchemaError(
                f"the dpr_pg index in this database stores {stored.kind} (a {stored.column}({dim}) column), not "
                f"{storage}; run dpr-pg storage set {storage}{rewrite} to switch it, or dpr-pg init without --storage")
    previous = current_revision(conn)
    conn.rollback()
    command.upgrade(alembic_config(conn, dim=dim), "head")
    definitions_changed = apply_definitions(conn)
    revision = current_revision(conn)
    conn.commit()
    assert revision is not None
    chosen = read_storage(conn)
    return InitResult(previous_revision=previous, revision=revision, dim=dim, definitions_changed=definitions_changed,
                      storage=chosen.kind, column=chosen.column)


def upgrade(engine: Engine, revision: str = "head", *, dim: int = DEFAULT_DIM) -> None:
    """Upgrade dpr_pg's schema to ``revision``; at head, apply sql/'s definitions too.

    A database left at an earlier revision keeps the functions that revision's migrations made.
    """
    with engine.connect() as conn, _init_lock(conn):
        conn.rollback()
        command.upgrade(alembic_config(conn, dim=dim), revision)
        if current_revision(conn) == head_revision():
            apply_definitions(conn)
        conn.commit()


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Downgrade dpr_pg's schema to ``revision``; ``base`` drops every dpr_pg table and its data.

    Revisions before 0015 know only a vector column: a halfvec column is widened to vector first
    (exactly; offline, see :func:`dpr_pg.db.column.rewrite_column`).
    """
    with engine.connect() as conn:
        column = column_type(conn) if current_revision(conn) is not None else "vector"
    if column == "halfvec" and revision not in _revisions_from(_COLUMN_TYPE_REVISION):
        current = hnsw_parameters(engine) or HnswParameters()
        set_storage(engine, "vector", rewrite_column=True, m=current.m, ef_construction=current.ef_construction)
    with engine.connect() as conn:
        command.downgrade(alembic_config(conn, dim=embedding_dim(conn) or DEFAULT_DIM), revision)


# The first revision whose schema may hold a halfvec column (it records the index's storage).
_COLUMN_TYPE_REVISION = "0015"


def _revisions_from(first: str) -> set[str]:
    """``first`` and every later revision up to head, with the name ``head``."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in scripts.iterate_revisions("head", first)} | {"head"}

