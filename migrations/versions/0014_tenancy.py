"""Tenancy: per-collection grants, row-level security policies on passages, sync settings by privilege.

* ``dpr_pg.collection_grants`` (role, collection, can_write) says which collections a role may
  read, and write. Each role reads only its own rows (and those of the roles whose privileges it
  has); only the owner writes them, through ``dpr_pg.grant_access`` / ``dpr_pg.revoke_access``
  (sql/tenancy.sql), ``dpr-pg grant`` or :func:`dpr_pg.grant`.
* ``dpr_pg.allowed_collections(for_write)`` is the caller's list; the policies on passages read it
  (a frozen copy here, which the policies need as they are made; sql/tenancy.sql replaces it).
  Row-level security itself stays off until the first collection grant turns it on (opt-in per
  database): until then every role with SELECT on passages reads every collection, as before.
* ``dpr_pg.synced_tables`` shows a role the settings of the app tables it may read, and no others.

The table owner (the role that ran ``dpr-pg init``), superusers and BYPASSRLS roles are not
subject to the policies; the tenants are other roles.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

from dpr_pg._migrations.frozen import execute_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE dpr_pg.collection_grants (
    role       regrole NOT NULL,
    collection text NOT NULL CHECK (collection <> ''),
    can_write  boolean NOT NULL DEFAULT false,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, collection)
);
ALTER TABLE dpr_pg.collection_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY collection_grants_own ON dpr_pg.collection_grants FOR SELECT
    USING (pg_has_role(role, 'USAGE'));
GRANT SELECT ON dpr_pg.collection_grants TO PUBLIC;

CREATE FUNCTION dpr_pg.allowed_collections(for_write boolean DEFAULT false) RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(array_agg(DISTINCT g.collection), '{}'::text[])
    FROM dpr_pg.collection_grants AS g
    WHERE pg_has_role(g.role, 'USAGE') AND (g.can_write OR NOT for_write)
$$;

-- The list is a scalar subquery, so it runs once per statement (an InitPlan) and the comparison
-- with a parameter still uses the (collection, external_id) index; called bare, the function
-- would run for every row checked (about 15 us each: 6 ms for the 400 candidates of an HNSW scan).
CREATE POLICY passages_read ON dpr_pg.passages FOR SELECT
    USING (collection = ANY ((SELECT dpr_pg.allowed_collections(false))::text[]));
CREATE POLICY passages_insert ON dpr_pg.passages FOR INSERT
    WITH CHECK (collection = ANY ((SELECT dpr_pg.allowed_collections(true))::text[]));
CREATE POLICY passages_update ON dpr_pg.passages FOR UPDATE
    USING (collection = ANY ((SELECT dpr_pg.allowed_collections(true))::text[]))
    WITH CHECK (collection = ANY ((SELECT dpr_pg.allowed_collections(true))::text[]));
CREATE POLICY passages_delete ON dpr_pg.passages FOR DELETE
    USING (collection = ANY ((SELECT dpr_pg.allowed_collections(true))::text[]));

ALTER TABLE dpr_pg.synced_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY synced_tables_readable ON dpr_pg.synced_tables
    USING (has_table_privilege(tbl, 'SELECT'));
"""

DOWNGRADE = """
DROP POLICY synced_tables_readable ON dpr_pg.synced_tables;
ALTER TABLE dpr_pg.synced_tables DISABLE ROW LEVEL SECURITY;
ALTER TABLE dpr_pg.passages DISABLE ROW LEVEL SECURITY;
DROP POLICY passages_delete ON dpr_pg.passages;
DROP POLICY passages_update ON dpr_pg.passages;
DROP POLICY passages_insert ON dpr_pg.passages;
DROP POLICY passages_read ON dpr_pg.passages;
-- sql/tenancy.sql's functions read the grants table: they go with it
DROP FUNCTION IF EXISTS dpr_pg.set_tenancy(boolean);
DROP FUNCTION IF EXISTS dpr_pg.revoke_access(regrole, text[], boolean);
DROP FUNCTION IF EXISTS dpr_pg.grant_access(regrole, text[], boolean);
DROP FUNCTION IF EXISTS dpr_pg._set_privileges(name, boolean, boolean);
DROP FUNCTION IF EXISTS dpr_pg._read_functions();
DROP FUNCTION dpr_pg.allowed_collections(boolean);
DROP TABLE dpr_pg.collection_grants;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
