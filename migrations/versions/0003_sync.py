"""Sync of application tables: the settings and queue tables, enable/disable, the queue trigger.

An app table enabled with ``op.enable_dpr`` (or ``SELECT dpr_pg.enable_table(...)``) gets its
embedding column in place; its triggers only enqueue keys here, and ``dpr-pg worker`` drains them.
The functions are those of sql/0003_sync.sql, frozen as this revision first ran them; ``dpr-pg
init`` replaces them with today's sql/sync.sql after the last migration, and 0013 brings the
queue table and the triggers of enabled tables to their later shape.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

from dpr_pg._migrations.frozen import SchemaError, execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("sql") / "0003_sync.sql"


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
            tbl             regclass NOT NULL REFERENCES dpr_pg.synced_tables (tbl) ON DELETE CASCADE,
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
    execute_script(FROZEN_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    if not context.is_offline_mode():
        enabled = op.get_bind().execute(sa.text("SELECT string_agg(tbl::text, ', ') FROM dpr_pg.synced_tables")).scalar()
        if enabled:
            raise SchemaError(
                f"cannot remove dpr_pg's sync functions while app tables use them: {enabled}; run op.disable_dpr "
                "in the app's migrations (or SELECT dpr_pg.disable_table('<table>')) for each, then downgrade again"
            )
    # Whichever edition of the functions is installed: this revision's, or today's from sql/.
    op.execute("DROP FUNCTION dpr_pg.disable_table(regclass)")
    op.execute("DROP FUNCTION dpr_pg.enable_table(regclass, text[], text, integer, text)")
    op.execute("DROP FUNCTION IF EXISTS dpr_pg.enqueue_sync_rows()")
    op.execute("DROP FUNCTION dpr_pg.enqueue_sync()")
    op.execute("DROP FUNCTION IF EXISTS dpr_pg.sync_row_key(jsonb, text[])")
    op.execute("DROP TABLE dpr_pg.sync_queue")
    op.execute("DROP TABLE dpr_pg.synced_tables")
