-- dpr_pg tenancy: which roles may search (and write) which collections.
--
-- grant_access gives a role what searching needs (and, with can_write, what ingest needs), and,
-- with collections, rows in dpr_pg.collection_grants that the row-level security policies on
-- dpr_pg.passages read (migration 0014). The first collection grant turns row-level security on
-- for the database; set_tenancy turns it on or off explicitly. dpr-pg grant / revoke / tenancy and
-- dpr_pg.grant / revoke / set_tenancy call these functions.
-- Only the owner of the dpr_pg tables can run them (they grant on its objects); EXECUTE is revoked
-- from PUBLIC. Identifiers come from the catalogs and are formatted with %I, never concatenated.
-- Idempotent (CREATE OR REPLACE): `dpr-pg init` applies it after the last migration, every time.

-- The collections the current role may read (or, with for_write, write): its own grants and those
-- of the roles whose privileges it inherits. The policies call it once per statement (a scalar
-- subquery); migration 0014 made the first copy.
CREATE OR REPLACE FUNCTION dpr_pg.allowed_collections(for_write boolean DEFAULT false) RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(array_agg(DISTINCT g.collection), '{}'::text[])
    FROM dpr_pg.collection_grants AS g
    WHERE pg_has_role(g.role, 'USAGE') AND (g.can_write OR NOT for_write)
$$;

-- What a search-only role needs: the functions of every search face, and the tables they read.
CREATE OR REPLACE FUNCTION dpr_pg._read_functions() RETURNS text[]
LANGUAGE sql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY['search', 'hybrid_search', 'search_table', 'compile_filter', '_filter_document', '_filter_field',
                 '_filter_leaf', '_filter_error', '_search_plan', '_storage', '_filter_keys', '_row_document',
                 'allowed_collections', 'check_table_encoder']
$$;

CREATE OR REPLACE FUNCTION dpr_pg._set_privileges(role_name name, grant_them boolean, can_write boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    verb text := CASE WHEN grant_them THEN 'GRANT' ELSE 'REVOKE' END;
    direction text := CASE WHEN grant_them THEN 'TO' ELSE 'FROM' END;
    fn regprocedure;
    vs name;
BEGIN
    IF can_write THEN
        EXECUTE format('%s INSERT, UPDATE, DELETE ON dpr_pg.passages %s %I', verb, direction, role_name);
        -- ingest registers the encoder pair it runs with (it also stages batches in a temporary
        -- table: PUBLIC has TEMPORARY on a database unless a DBA took it away)
        EXECUTE format('%s INSERT ON dpr_pg.encoders %s %I', verb, direction, role_name);
        EXECUTE format('%s USAGE ON SEQUENCE %s %s %I', verb,
                       pg_get_serial_sequence('dpr_pg.encoders', 'id'), direction, role_name);
        -- a first write into a collection makes its partition (sql/partitions.sql)
        EXECUTE format('%s EXECUTE ON FUNCTION dpr_pg.create_collection_partition(text) %s %I', verb, direction,
                       role_name);
        RETURN;
    END IF;
    EXECUTE format('%s USAGE ON SCHEMA dpr_pg %s %I', verb, direction, role_name);
    IF grant_them THEN  -- pgvector's schema may be shared with other uses: never revoked here
        SELECT e.extnamespace::regnamespace::name INTO vs FROM pg_extension e WHERE e.extname = 'vector';
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', vs, role_name);
    END IF;
    EXECUTE format('%s SELECT ON dpr_pg.passages, dpr_pg.encoders, dpr_pg.synced_tables, dpr_pg.collection_grants, '
                   'dpr_pg.alembic_version %s %I', verb, direction, role_name);
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'dpr_pg'::regnamespace AND p.proname = ANY (dpr_pg._read_functions()) LOOP
        EXECUTE format('%s EXECUTE ON FUNCTION %s %s %I', verb, fn, direction, role_name);
    END LOOP;
END
$$;

-- Let role search (and with can_write, ingest); with collections, only those collections.
CREATE OR REPLACE FUNCTION dpr_pg.grant_access(role regrole, collections text[] DEFAULT NULL,
                                               can_write boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role_name name;
    bypasses boolean;
BEGIN
    IF role IS NULL OR can_write IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'dpr_pg.grant_access: expected a role and can_write, not NULL';
    END IF;
    SELECT r.rolname, r.rolsuper OR r.rolbypassrls
           OR pg_has_role(r.oid, (SELECT c.relowner FROM pg_class c WHERE c.oid = 'dpr_pg.passages'::regclass), 'USAGE')
    INTO role_name, bypasses
    FROM pg_roles r WHERE r.oid = role;
    IF collections IS NOT NULL THEN
        IF cardinality(collections) = 0 OR array_position(collections, NULL) IS NOT NULL OR '' = ANY (collections) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('dpr_pg.grant_access: expected non-empty collection names, not %s', collections),
                HINT = 'leave collections NULL to grant the privileges alone';
        END IF;
        IF bypasses THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('dpr_pg.grant_access: role %I owns dpr_pg.passages, is a superuser or has BYPASSRLS, '
                                 'so row-level security does not limit it to collections', role_name),
                HINT = 'grant collections to an application role that owns no dpr_pg table';
        END IF;
    END IF;
    PERFORM dpr_pg._set_privileges(role_name, true, false);
    IF can_write THEN
        PERFORM dpr_pg._set_privileges(role_name, true, true);
    END IF;
    IF collections IS NOT NULL THEN
        INSERT INTO dpr_pg.collection_grants AS g (role, collection, can_write)
        SELECT grant_access.role, c, grant_access.can_write FROM unnest(collections) AS c
        ON CONFLICT ON CONSTRAINT collection_grants_pkey DO UPDATE SET can_write = EXCLUDED.can_write, granted_at = now();
        IF NOT (SELECT c.relrowsecurity FROM pg_class c WHERE c.oid = 'dpr_pg.passages'::regclass) THEN
            ALTER TABLE dpr_pg.passages ENABLE ROW LEVEL SECURITY;
        END IF;
    END IF;
END
$$;

-- Take collections (all of them, and every privilege grant_access gave, when NULL) from role;
-- with write_only, take only the right to write them.
CREATE OR REPLACE FUNCTION dpr_pg.revoke_access(role regrole, collections text[] DEFAULT NULL,
                                                write_only boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role_name name;
BEGIN
    IF role IS NULL OR write_only IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'dpr_pg.revoke_access: expected a role and write_only, not NULL';
    END IF;
    SELECT r.rolname INTO role_name FROM pg_roles r WHERE r.oid = role;
    IF write_only THEN
        UPDATE dpr_pg.collection_grants AS g SET can_write = false
        WHERE g.role = revoke_access.role AND (collections IS NULL OR g.collection = ANY (collections));
    ELSE
        DELETE FROM dpr_pg.collection_grants AS g
        WHERE g.role = revoke_access.role AND (collections IS NULL OR g.collection = ANY (collections));
    END IF;
    IF collections IS NULL THEN
        PERFORM dpr_pg._set_privileges(role_name, false, true);
        IF NOT write_only THEN
            PERFORM dpr_pg._set_privileges(role_name, false, false);
        END IF;
    END IF;
END
$$;

-- Row-level security on dpr_pg.passages, on or off. Off, every role with SELECT reads every collection.
CREATE OR REPLACE FUNCTION dpr_pg.set_tenancy(enabled boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF enabled IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'dpr_pg.set_tenancy: expected true or false, not NULL';
    ELSIF enabled THEN
        ALTER TABLE dpr_pg.passages ENABLE ROW LEVEL SECURITY;
    ELSE
        ALTER TABLE dpr_pg.passages DISABLE ROW LEVEL SECURITY;
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION dpr_pg.grant_access(regrole, text[], boolean), dpr_pg.revoke_access(regrole, text[], boolean),
    dpr_pg.set_tenancy(boolean), dpr_pg._set_privileges(name, boolean, boolean) FROM PUBLIC;
