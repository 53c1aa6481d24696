"""Sync queue items carry a version and can be dead-lettered; app tables remember their encoder pair.

- ``sync_queue.version``: the transaction id of the write that last queued the key. The triggers
  upsert it, and a worker deletes an item only if its version is still the one it claimed, so an
  app write during a batch is never swallowed.
- ``sync_queue.dead_at``: an item that failed ``--max-attempts`` times is parked here; the worker
  skips it, ``dpr-pg status`` counts it, ``dpr-pg sync retry|discard`` act on it.
- ``synced_tables.encoder_id``: the pair whose embeddings the table holds; a worker or a search
  with another pair is refused. Tables enabled before get the one pair their rows hold, if one.
- Row-level security on the queue: a role that may INSERT into it (the triggers no longer need
  that) can only add fresh items, never ones that carry attempts, errors or a dead state. The
  owner (and so the triggers, which run as the owner) is not subject to it.

The functions that use these columns are in sql/sync.sql; this revision runs that file as it was
when the revision was written (sql/0012_sync.sql, frozen), and init applies today's after the last
migration. Downgrade drops the columns and puts back the trigger functions of revision 0003 (their
text is frozen below).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

from pathlib import Path

from dpr_pg._migrations.frozen import execute_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("sql") / "0012_sync.sql"
UPGRADE = """
ALTER TABLE dpr_pg.sync_queue
    ADD COLUMN version xid8 NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN dead_at timestamptz;
DROP INDEX dpr_pg.sync_queue_due_idx;
CREATE INDEX sync_queue_due_idx ON dpr_pg.sync_queue (next_attempt_at) WHERE dead_at IS NULL;

ALTER TABLE dpr_pg.synced_tables ADD COLUMN encoder_id integer REFERENCES dpr_pg.encoders (id);
DO $$
DECLARE
    enabled regclass;
    found integer[];
BEGIN
    FOR enabled IN SELECT s.tbl FROM dpr_pg.synced_tables s JOIN pg_class c ON c.oid = s.tbl LOOP
        BEGIN
            EXECUTE format('SELECT array_agg(DISTINCT t.dpr_encoder_id) FROM %s AS t '
                           'WHERE t.dpr_encoder_id IS NOT NULL', enabled) INTO found;
        EXCEPTION WHEN undefined_column THEN
            found := NULL;  -- a renamed column: the worker binds the table once it is fixed
        END;
        IF cardinality(found) = 1 THEN
            UPDATE dpr_pg.synced_tables s SET encoder_id = found[1] WHERE s.tbl = enabled;
        END IF;
    END LOOP;
END
$$;

ALTER TABLE dpr_pg.sync_queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY sync_queue_read ON dpr_pg.sync_queue FOR SELECT USING (true);
CREATE POLICY sync_queue_settle ON dpr_pg.sync_queue FOR UPDATE USING (true) WITH CHECK (true);
CREATE POLICY sync_queue_remove ON dpr_pg.sync_queue FOR DELETE USING (true);
CREATE POLICY sync_queue_fresh_items ON dpr_pg.sync_queue FOR INSERT
    WITH CHECK (attempts = 0 AND last_error IS NULL AND dead_at IS NULL AND next_attempt_at <= clock_timestamp());
"""

DOWNGRADE = """
CREATE OR REPLACE FUNCTION dpr_pg.enqueue_sync()
RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
AS $fn$
DECLARE
    doc jsonb;
    key jsonb := '{}';
    i integer;
BEGIN
    IF TG_OP = 'DELETE' THEN
        doc := pg_catalog.to_jsonb(OLD);
    ELSE
        doc := pg_catalog.to_jsonb(NEW);
    END IF;
    FOR i IN 0 .. TG_NARGS - 1 LOOP
        key := key OPERATOR(pg_catalog.||)
               pg_catalog.jsonb_build_object(TG_ARGV[i], doc OPERATOR(pg_catalog.->) TG_ARGV[i]);
    END LOOP;
    INSERT INTO dpr_pg.sync_queue (tbl, row_key) VALUES (TG_RELID, key) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION dpr_pg.enqueue_sync_rows()
RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
AS $fn$
DECLARE
    key_expr text := '';
    i integer;
BEGIN
    FOR i IN 0 .. TG_NARGS - 1 LOOP
        key_expr := key_expr OPERATOR(pg_catalog.||) CASE WHEN i > 0 THEN ', ' ELSE '' END
                    OPERATOR(pg_catalog.||) pg_catalog.format('%L, t.%I', TG_ARGV[i], TG_ARGV[i]);
    END LOOP;
    EXECUTE pg_catalog.format(
        'INSERT INTO dpr_pg.sync_queue (tbl, row_key) '
        'SELECT $1, pg_catalog.jsonb_build_object(%s) FROM %I AS t ON CONFLICT DO NOTHING',
        key_expr, CASE WHEN TG_OP = 'DELETE' THEN 'dpr_old_rows' ELSE 'dpr_new_rows' END)
    USING TG_RELID;
    RETURN NULL;
END
$fn$;

ALTER FUNCTION dpr_pg.enqueue_sync() RESET search_path;
ALTER FUNCTION dpr_pg.enqueue_sync_rows() RESET search_path;
DROP FUNCTION IF EXISTS dpr_pg.sync_table_problem(regclass);
DROP FUNCTION IF EXISTS dpr_pg.bind_table_encoder(regclass, integer);
DROP FUNCTION IF EXISTS dpr_pg.check_table_encoder(regclass, text);
DROP FUNCTION IF EXISTS dpr_pg.sync_retry(regclass);
DROP FUNCTION IF EXISTS dpr_pg.sync_discard(regclass);

DROP POLICY IF EXISTS sync_queue_read ON dpr_pg.sync_queue;
DROP POLICY IF EXISTS sync_queue_settle ON dpr_pg.sync_queue;
DROP POLICY IF EXISTS sync_queue_remove ON dpr_pg.sync_queue;
DROP POLICY IF EXISTS sync_queue_fresh_items ON dpr_pg.sync_queue;
ALTER TABLE dpr_pg.sync_queue DISABLE ROW LEVEL SECURITY;
ALTER TABLE dpr_pg.synced_tables DROP COLUMN encoder_id;
DROP INDEX dpr_pg.sync_queue_due_idx;
ALTER TABLE dpr_pg.sync_queue DROP COLUMN version, DROP COLUMN dead_at;
CREATE INDEX sync_queue_due_idx ON dpr_pg.sync_queue (next_attempt_at);
"""


def upgrade() -> None:
    execute_script(UPGRADE)
    # The function definitions of sql/sync.sql (all CREATE OR REPLACE) as they were, with the new columns.
    execute_script(FROZEN_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    execute_script(DOWNGRADE)
