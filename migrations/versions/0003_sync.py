"""Sync of application tables: the settings and queue tables, enable/disable, the queue trigger.

An app table enabled with ``op.enable_dpr`` (or ``SELECT dpr_pg.enable_table(...)``) gets its
embedding column in place; its triggers only enqueue keys here, and ``dpr-pg worker`` drains them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from dpr_pg.errors import SchemaError
from dpr_pg.schema import resource_dir

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SQL_FILES = ("sync.sql",)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE dpr_pg.synced_tables (
            tbl              regclass PRIMARY KEY,
            key_columns      text[] NOT NULL CHECK (cardinality(key_columns) > 0),
            text_columns     text[] NOT NULL CHECK (cardinality(text_columns) > 0),
            title_column     text,
            embedding_column text NOT NULL DEFAULT 'embedding',
            dim              integer NOT NULL CHECK (dim BETWEEN 1 AND 16000),
            enabled_at       timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE dpr_pg.sync_queue (
            -- No foreign key to synced_tables: its check would cost every app write a lookup and a
            -- shared row lock. disable_table deletes a table's items itself.
            tbl             regclass NOT NULL,
            row_key         jsonb NOT NULL,
            enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            last_error      text,
            PRIMARY KEY (tbl, row_key)
        )
        """
    )
    op.execute("CREATE INDEX sync_queue_due_idx ON dpr_pg.sync_queue (next_attempt_at)")
    for name in SQL_FILES:
        op.execute(sa.text((resource_dir("sql") / name).read_text(encoding="utf-8")))


def downgrade() -> None:
    if not context.is_offline_mode():
        enabled = op.get_bind().execute(sa.text("SELECT string_agg(tbl::text, ', ') FROM dpr_pg.synced_tables")).scalar()
        if enabled:
            raise SchemaError(
                f"cannot remove dpr_pg's sync functions while app tables use them: {enabled}; run op.disable_dpr "
                "in the app's migrations (or SELECT dpr_pg.disable_table('<table>')) for each, then downgrade again"
            )
    op.execute("DROP FUNCTION dpr_pg.disable_table(regclass)")
    op.execute("DROP FUNCTION dpr_pg.enable_table(regclass, text[], text, integer, text)")
    op.execute("DROP FUNCTION dpr_pg.enqueue_sync_rows()")
    op.execute("DROP FUNCTION dpr_pg.enqueue_sync()")
    op.execute("DROP TABLE dpr_pg.sync_queue")
    op.execute("DROP TABLE dpr_pg.synced_tables")
