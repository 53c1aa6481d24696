"""Bring databases made by the first editions of 0003 and 0004 to the shape those revisions took later.

Revisions 0003 and 0004 were edited in place after they first ran, so databases made in between
differ. This step does those edits once, each only where it is missing, so that every database
ends the same whichever edition it ran:

- sync_queue loses its foreign key to synced_tables: the check cost every app write a lookup and a
  shared row lock (disable_table deletes a table's items itself);
- dpr_pg.sync_row_key goes (the trigger functions, from 0012 on, build the key themselves);
- INSERT and DELETE on enabled app tables enqueue with one statement trigger over the transition
  table instead of a row trigger: a bulk write pays once per statement;
- the metadata GIN index uses jsonb_path_ops, which answers the filters' containment tests exactly
  (the default jsonb_ops handed back 50x the matches for recheck in the benchmark). Where it has
  to be rebuilt, writes to dpr_pg.passages wait for the build.

Downgrade leaves the later shape: the revisions before this one work with either.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from dpr_pg._migrations.frozen import execute_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Row triggers (tgtype bit 0) for INSERT/DELETE become the statement triggers enable_table makes now
# (dpr_pg.enqueue_sync_rows, which 0012 installs in every database).
STATEMENT_TRIGGERS = r"""
DO $$
DECLARE
    enabled record;
    key_args text;
BEGIN
    FOR enabled IN
        SELECT s.tbl, s.key_columns FROM dpr_pg.synced_tables s
        WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                      WHERE g.tgrelid = s.tbl AND g.tgname IN ('dpr_sync_insert', 'dpr_sync_delete')
                        AND (g.tgtype & 1) = 1)
        ORDER BY s.tbl::oid
    LOOP
        SELECT string_agg(quote_literal(c), ', ') INTO key_args FROM unnest(enabled.key_columns) AS c;
        EXECUTE format('DROP TRIGGER IF EXISTS dpr_sync_insert ON %s', enabled.tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS dpr_sync_delete ON %s', enabled.tbl);
        EXECUTE format('CREATE TRIGGER dpr_sync_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS dpr_new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dpr_pg.enqueue_sync_rows(%s)', enabled.tbl, key_args);
        EXECUTE format('CREATE TRIGGER dpr_sync_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS dpr_old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION dpr_pg.enqueue_sync_rows(%s)', enabled.tbl, key_args);
    END LOOP;
END
$$;
"""

PATH_OPS_INDEX = r"""
DO $$
BEGIN
    IF pg_get_indexdef('dpr_pg.passages_metadata_gin'::regclass) NOT LIKE '%jsonb_path_ops%' THEN
        DROP INDEX dpr_pg.passages_metadata_gin;
        CREATE INDEX passages_metadata_gin ON dpr_pg.passages USING gin (metadata jsonb_path_ops);
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute("ALTER TABLE dpr_pg.sync_queue DROP CONSTRAINT IF EXISTS sync_queue_tbl_fkey")
    execute_script(STATEMENT_TRIGGERS)
    op.execute("DROP FUNCTION IF EXISTS dpr_pg.sync_row_key(jsonb, text[])")
    execute_script(PATH_OPS_INDEX)


def downgrade() -> None:
    pass
