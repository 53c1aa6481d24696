-- Frozen: sql/sync.sql as revision 0003 ran it when that revision was written (git 0071975).
-- Never edit: databases already ran it. Change functions in sql/, tables in a new migration.

-- dpr_pg sync: an application's own table, embedded in place and kept in sync by a queue.
--
-- enable_table() adds three columns to the app table (the embedding, the encoder that made it,
-- and the hash of the text it was made from), an HNSW index, and three triggers that only
-- INSERT INTO dpr_pg.sync_queue ... ON CONFLICT DO NOTHING. The app's writes therefore never
-- wait for, nor fail because of, encoding: `dpr-pg worker` drains the queue later.
-- Identifiers are always formatted with %I (quote_ident) or as regclass, never concatenated.
-- Installed by migration 0004 (CREATE OR REPLACE, so re-running the file is harmless).

-- The row's key as jsonb, built from to_jsonb(row) so that it equals what enable_table's
-- backfill builds with jsonb_build_object(col, t.col).
CREATE OR REPLACE FUNCTION dpr_pg.sync_row_key(doc jsonb, key_columns text[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(c, doc -> c), '{}'::jsonb) FROM unnest(key_columns) AS c
$$;

-- Trigger: TG_ARGV holds the primary-key column names. Only enqueues; never encodes.
CREATE OR REPLACE FUNCTION dpr_pg.enqueue_sync()
RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        doc := to_jsonb(OLD);
    ELSE
        doc := to_jsonb(NEW);
    END IF;
    INSERT INTO dpr_pg.sync_queue (tbl, row_key)
    VALUES (TG_RELID::regclass, dpr_pg.sync_row_key(doc, TG_ARGV::text[]))
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dpr_pg.enable_table(
    tbl regclass,
    text_columns text[],
    title_column text DEFAULT NULL,
    dim integer DEFAULT 768,
    embedding_column text DEFAULT 'embedding'
)
RETURNS void
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_columns text[];
    watched text[];
    col text;
    rel name;
    nsp name;
    key_args text;
    key_expr text;
    vector_schema name;
BEGIN
    -- search_path is pinned, so pgvector's objects are named with the schema it lives in.
    SELECT e.extnamespace::regnamespace::name INTO vector_schema FROM pg_extension e WHERE e.extname = 'vector';
    IF dim IS NULL OR dim < 1 OR dim > 16000 THEN
        RAISE EXCEPTION 'dpr_pg.enable_table: expected dim between 1 and 16000, not %', dim
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF text_columns IS NULL OR cardinality(text_columns) = 0 THEN
        RAISE EXCEPTION 'dpr_pg.enable_table: expected at least one text column to embed, not %', text_columns
            USING ERRCODE = 'invalid_parameter_value', HINT = 'pass text_columns => ARRAY[''body'']';
    END IF;
    IF embedding_column IS NULL OR embedding_column = '' THEN
        RAISE EXCEPTION 'dpr_pg.enable_table: expected an embedding column name, not %', embedding_column
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM dpr_pg.synced_tables s WHERE s.tbl = enable_table.tbl) THEN
        RAISE EXCEPTION 'dpr_pg.enable_table: table % is already enabled', tbl
            USING ERRCODE = 'duplicate_object', HINT = 'call dpr_pg.disable_table first to change its settings';
    END IF;
    SELECT c.relname, n.nspname INTO rel, nsp
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = tbl AND c.relkind IN ('r', 'p');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dpr_pg.enable_table: expected an ordinary table, not %', tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;

    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO key_columns
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'dpr_pg.enable_table: table % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'the sync queue refers to rows by primary key: add one, then enable again';
    END IF;

    watched := text_columns || CASE WHEN title_column IS NULL THEN '{}'::text[] ELSE ARRAY[title_column] END;
    FOREACH col IN ARRAY watched LOOP
        PERFORM 1 FROM pg_attribute a
        WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
          AND a.atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype);
        IF NOT FOUND THEN
            RAISE EXCEPTION 'dpr_pg.enable_table: expected a text column % in table %', quote_ident(col), tbl
                USING ERRCODE = 'undefined_column',
                      HINT = 'text_columns and title_column must name existing text/varchar columns';
        END IF;
    END LOOP;
    FOREACH col IN ARRAY ARRAY[embedding_column, 'dpr_encoder_id', 'dpr_content_hash'] LOOP
        PERFORM 1 FROM pg_attribute a
        WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF FOUND THEN
            RAISE EXCEPTION 'dpr_pg.enable_table: table % already has a column %', tbl, quote_ident(col)
                USING ERRCODE = 'duplicate_column',
                      HINT = 'choose another embedding_column, or rename the existing column';
        END IF;
    END LOOP;

    EXECUTE format(
        'ALTER TABLE %s ADD COLUMN %I %I.vector(%s), '
        'ADD COLUMN dpr_encoder_id integer CONSTRAINT %I REFERENCES dpr_pg.encoders (id), '
        'ADD COLUMN dpr_content_hash text',
        tbl, embedding_column, vector_schema, dim, left(rel, 40) || '_dpr_encoder_fkey');
    -- A 768-d float4 vector is ~3 KB: keep it inline instead of in TOAST (pgvector #353).
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STORAGE PLAIN', tbl, embedding_column);
    EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', tbl, embedding_column,
                   'dpr_pg: DPR passage embedding, written by dpr-pg worker');
    EXECUTE format('COMMENT ON COLUMN %s.dpr_encoder_id IS %L', tbl,
                   'dpr_pg: dpr_pg.encoders row of the encoder pair that made the embedding');
    EXECUTE format('COMMENT ON COLUMN %s.dpr_content_hash IS %L', tbl,
                   'dpr_pg: hash of the embedded text, to skip unchanged rows');
    EXECUTE format('CREATE INDEX %I ON %s USING hnsw (%I %I.vector_ip_ops) WITH (m = 16, ef_construction = 64)',
                   left(rel, 50) || '_dpr_hnsw', tbl, embedding_column, vector_schema);

    SELECT string_agg(quote_literal(c), ', ') INTO key_args FROM unnest(key_columns) AS c;
    EXECUTE format('CREATE TRIGGER dpr_sync_insert AFTER INSERT ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION dpr_pg.enqueue_sync(%s)', tbl, key_args);
    EXECUTE format('CREATE TRIGGER dpr_sync_delete AFTER DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION dpr_pg.enqueue_sync(%s)', tbl, key_args);
    -- Fires only for an UPDATE whose SET list names a watched column and that really changes one.
    EXECUTE format('CREATE TRIGGER dpr_sync_update AFTER UPDATE OF %s ON %s FOR EACH ROW WHEN (%s) '
                   'EXECUTE FUNCTION dpr_pg.enqueue_sync(%s)',
                   (SELECT string_agg(quote_ident(c), ', ') FROM unnest(watched) AS c),
                   tbl,
                   (SELECT string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ')
                      FROM unnest(watched) AS c),
                   key_args);

    INSERT INTO dpr_pg.synced_tables (tbl, key_columns, text_columns, title_column, embedding_column, dim)
    VALUES (tbl, key_columns, text_columns, title_column, embedding_column, dim);

    -- Rows that exist already are queued too.
    SELECT string_agg(format('%L, t.%I', c, c), ', ') INTO key_expr FROM unnest(key_columns) AS c;
    EXECUTE format('INSERT INTO dpr_pg.sync_queue (tbl, row_key) '
                   'SELECT $1, jsonb_build_object(%s) FROM %s AS t ON CONFLICT DO NOTHING', key_expr, tbl)
    USING tbl;
END
$$;

CREATE OR REPLACE FUNCTION dpr_pg.disable_table(tbl regclass)
RETURNS void
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    settings dpr_pg.synced_tables%ROWTYPE;
    rel name;
BEGIN
    SELECT * INTO settings FROM dpr_pg.synced_tables s WHERE s.tbl = disable_table.tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dpr_pg.disable_table: table % is not enabled for DPR search', tbl
            USING ERRCODE = 'undefined_object', HINT = 'SELECT tbl FROM dpr_pg.synced_tables lists enabled tables';
    END IF;
    SELECT c.relname INTO rel FROM pg_class c WHERE c.oid = tbl;
    EXECUTE format('DROP TRIGGER IF EXISTS dpr_sync_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS dpr_sync_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS dpr_sync_delete ON %s', tbl);
    -- Dropping the columns drops the HNSW index and the foreign key with them.
    EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I, DROP COLUMN IF EXISTS dpr_encoder_id, '
                   'DROP COLUMN IF EXISTS dpr_content_hash', tbl, settings.embedding_column);
    DELETE FROM dpr_pg.synced_tables s WHERE s.tbl = disable_table.tbl;  -- the queue rows cascade
END
$$;

REVOKE EXECUTE ON FUNCTION dpr_pg.enable_table(regclass, text[], text, integer, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dpr_pg.disable_table(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dpr_pg.enqueue_sync() FROM PUBLIC;
