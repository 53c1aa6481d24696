"""Alembic environment of dpr_pg.

dpr_pg keeps its own version table (``dpr_pg.alembic_version``), so its history coexists with an
application's Alembic history in the same database.

Each migration carries the SQL it ran (inline or in versions/sql/) and never reads sql/ or the
package's constants; sql/'s idempotent functions are applied after the last migration by
:func:`dpr_pg.db.schema.init` / :func:`dpr_pg.db.schema.upgrade` / ``init_sql``, not by Alembic alone.
Which change goes where: migrations/README.md.

Settings: ``config.attributes["connection"]`` (set by :func:`dpr_pg.db.schema.upgrade`) or the URL from
``-x url=...``, ``DPR_PG_DATABASE_URL``, ``DATABASE_URL`` or the embedded server; the embedding
dimension from ``config.attributes["dim"]`` or ``-x dim=N`` (768 by default).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from dpr_pg.db.models import SCHEMA

VERSION_TABLE = "alembic_version"

config = context.config


def _configure(**kwargs: object) -> None:
    context.configure(
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transaction_per_migration=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    from dpr_pg.db.schema import quoted_schema_name

    url = context.get_x_argument(as_dictionary=True).get("url") or "postgresql+psycopg://"
    vector_schema = context.get_x_argument(as_dictionary=True).get("vector_schema", "public")
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        if vector_schema != "public":
            # The migrations name pgvector's types and operator classes unqualified: put its schema
            # first on this session's path (CREATE EXTENSION IF NOT EXISTS also lands there).
            quoted = quoted_schema_name(vector_schema).replace("'", "''")
            context.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted_schema_name(vector_schema)}")
            context.execute(f"DO $$ BEGIN PERFORM pg_catalog.set_config('search_path', '{quoted}, ' || "
                            "pg_catalog.current_setting('search_path'), false); END $$")
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    from dpr_pg.db.engine import create_engine

    engine = create_engine(context.get_x_argument(as_dictionary=True).get("url"))
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


def _run_on(connection: sa.Connection) -> None:
    # The version table lives in our schema, so the schema must exist before Alembic looks.
    connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    # pgvector installed in a schema off the path (CREATE EXTENSION vector SCHEMA extensions): the
    # migrations name its types unqualified, so it goes first on the path while they run.
    saved = connection.execute(sa.text(
        "SELECT pg_catalog.current_setting('search_path'), pg_catalog.set_config('search_path', "
        "pg_catalog.quote_ident(n.nspname) || ', ' || pg_catalog.current_setting('search_path'), false) "
        "FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector' AND n.nspname <> ALL (pg_catalog.current_schemas(false))")).scalar()
    connection.commit()
    try:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if saved is not None:  # the caller's connection gets its own path back
            connection.rollback()
            connection.execute(sa.text("SELECT pg_catalog.set_config('search_path', :path, false)"), {"path": saved})
            connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
