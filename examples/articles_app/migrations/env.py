"""The example app's Alembic environment: an ordinary env.py plus dpr_pg's include_object hook.

The URL comes from ``config.attributes["connection"]``, ``-x url=...`` or ``DATABASE_URL``.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context
from models import Base

import dpr_pg.alembic_ops  # registers op.enable_dpr / op.disable_dpr

config = context.config
target_metadata = Base.metadata
OPTIONS = {"target_metadata": target_metadata, "include_object": dpr_pg.alembic_ops.include_object}


def _url() -> str | None:
    return context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")


if context.is_offline_mode():  # alembic upgrade head --sql: no database needed, only the dialect
    context.configure(url=_url() or "postgresql+psycopg://", literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        if not _url():
            raise SystemExit("set DATABASE_URL or pass -x url=postgresql+psycopg://...")
        engine = sa.create_engine(_url(), poolclass=sa.NullPool)
        connection = engine.connect()
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
