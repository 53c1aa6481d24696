-- dpr_pg partitions: a collection's passages in a partition of its own (dpr-pg init
-- --partition-by-collection, or dpr-pg storage partition for an existing database).
--
-- dpr_pg.passages may be list-partitioned by collection (dpr_pg.db.partitions). Each collection
-- gets the partition dpr_pg.partition_name(collection) when it is first written; rows written
-- before that land in dpr_pg.passages_default, and move when the partition is made. Creating a
-- partition needs the table's owner: create_collection_partition runs as its owner (SECURITY
-- DEFINER, pinned search_path, identifiers through %I and values through %L), and
-- ensure_collection_partition, which ingest calls, first checks that the caller may write the
-- collection. On an unpartitioned dpr_pg.passages both return false and do nothing.
-- Idempotent (CREATE OR REPLACE): `dpr-pg init` applies it after the last migration, every time.

-- The partition's table name: fixed length, any collection name (quotes, spaces, 1,000 characters).
CREATE OR REPLACE FUNCTION dpr_pg.partition_name(collection_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'passages_c_' || left(md5(collection_name), 16)
$$;

CREATE OR REPLACE FUNCTION dpr_pg.create_collection_partition(collection_name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part text := dpr_pg.partition_name(collection_name);
    columns text;
BEGIN
    IF collection_name IS NULL OR collection_name = '' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'dpr_pg.create_collection_partition: expected a non-empty collection name';
    END IF;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = 'dpr_pg.passages'::regclass) OPERATOR(pg_catalog.<>) 'p' THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('dpr_pg.partition:' OPERATOR(pg_catalog.||) collection_name, 0));
    IF to_regclass(format('dpr_pg.%I', part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF to_regclass('dpr_pg.passages_default') IS NOT NULL
       AND EXISTS (SELECT 1 FROM dpr_pg.passages_default d WHERE d.collection OPERATOR(pg_catalog.=) collection_name) THEN
        -- The default partition caught this collection's rows: they move into the new partition.
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO columns
        FROM pg_attribute a
        WHERE a.attrelid = 'dpr_pg.passages'::regclass AND a.attnum OPERATOR(pg_catalog.>) 0
          AND NOT a.attisdropped AND a.attgenerated OPERATOR(pg_catalog.=) '';
        EXECUTE format('CREATE TEMP TABLE dpr_pg_partition_moving ON COMMIT DROP AS '
                       'SELECT %s FROM dpr_pg.passages_default WHERE collection = %L', columns, collection_name);
        EXECUTE format('DELETE FROM dpr_pg.passages_default WHERE collection = %L', collection_name);
        EXECUTE format('CREATE TABLE dpr_pg.%I PARTITION OF dpr_pg.passages FOR VALUES IN (%L)', part, collection_name);
        EXECUTE format('INSERT INTO dpr_pg.passages (%s) OVERRIDING SYSTEM VALUE SELECT %s '
                       'FROM pg_temp.dpr_pg_partition_moving', columns, columns);
        DROP TABLE pg_temp.dpr_pg_partition_moving;
    ELSE
        EXECUTE format('CREATE TABLE dpr_pg.%I PARTITION OF dpr_pg.passages FOR VALUES IN (%L)', part, collection_name);
    END IF;
    -- A partitioned table takes no storage parameters: each partition keeps its small columns inline.
    EXECUTE format('ALTER TABLE dpr_pg.%I SET (toast_tuple_target = 8160)', part);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION dpr_pg.create_collection_partition(text) FROM PUBLIC;

-- What ingest calls before writing a collection: the partition, if the caller may write it.
CREATE OR REPLACE FUNCTION dpr_pg.ensure_collection_partition(collection_name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = 'dpr_pg.passages'::regclass) OPERATOR(pg_catalog.<>) 'p'
       OR to_regclass(format('dpr_pg.%I', dpr_pg.partition_name(collection_name))) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF NOT has_table_privilege('dpr_pg.passages', 'INSERT')
       OR (row_security_active('dpr_pg.passages')
           AND NOT collection_name OPERATOR(pg_catalog.=) ANY (dpr_pg.allowed_collections(true))) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('role %I may not write collection %L', current_user, collection_name);
    END IF;
    RETURN dpr_pg.create_collection_partition(collection_name);
END
$$;
