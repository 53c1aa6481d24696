-- dpr_pg sync: an application's own table, embedded in place and kept in sync by a queue.
--
-- enable_table() adds three columns to the app table (the embedding, the encoder that made it,
-- and the hash of the text it was made from), an HNSW index, and three triggers that only upsert
-- the row's key into dpr_pg.sync_queue. The app's writes therefore never wait for, nor fail
-- because of, encoding: `dpr-pg worker` drains the queue later.
-- Identifiers are always formatted with %I (quote_ident) or as regclass, never concatenated, and
-- never used as a format string.
-- Idempotent (CREATE OR REPLACE): `dpr-pg init` applies it after the last migration, every time;
-- the tables come from migration 0003, the queue's columns (version, dead_at) and
-- synced_tables.encoder_id from 0012. MAX_DIM and the HNSW_ names between @ signs are the numbers
-- of dpr_pg/tuning.py.

-- The queue upsert of both triggers. A key already queued gets the writer's transaction id as its
-- new version, and is due again with its failures forgotten: the worker deletes an item only if
-- its version is still the one it claimed, so a write that lands while a worker encodes the row is
-- never swallowed (see dpr_pg/_sync_worker.py). Workers hold no row lock on queue items while they
-- encode (they hold advisory locks), so this upsert never waits for encoding.
--
-- The trigger functions run SECURITY DEFINER, as the owner of dpr_pg's schema, so that the app's
-- role needs no privilege on the queue at all (and so cannot forge items). That is safe because a
-- trigger function cannot be called directly, EXECUTE on it is revoked from PUBLIC (nobody else can
-- attach it to a table), and all it does is upsert the firing table's own keys. search_path is
-- pinned and every operator is schema-qualified as well, so nothing on the writer's search_path
-- (a planted operator or function) can run with the owner's rights or the writer's.
-- Measured with bench/bench_sync.py: see the README's "What sync costs".

-- Row trigger for UPDATE (its WHEN clause fires it only when a watched column really changed).
-- TG_ARGV holds the primary-key column names. Only enqueues; never encodes.
CREATE OR REPLACE FUNCTION dpr_pg.enqueue_sync()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb := pg_catalog.to_jsonb(NEW);
    key jsonb := '{}';
    i integer;
BEGIN
    FOR i IN 0 .. TG_NARGS OPERATOR(pg_catalog.-) 1 LOOP
        key := key OPERATOR(pg_catalog.||)
               pg_catalog.jsonb_build_object(TG_ARGV[i], doc OPERATOR(pg_catalog.->) TG_ARGV[i]);
    END LOOP;
    INSERT INTO dpr_pg.sync_queue AS q (tbl, row_key) VALUES (TG_RELID, key)
    ON CONFLICT (tbl, row_key) DO UPDATE
    SET version = EXCLUDED.version, attempts = 0, last_error = NULL, dead_at = NULL,
        next_attempt_at = LEAST(q.next_attempt_at, EXCLUDED.next_attempt_at);
    RETURN NULL;
END
$$;

-- Statement trigger for INSERT and DELETE: one INSERT ... SELECT over the transition table, so a
-- bulk write pays once per statement rather than once per row. DISTINCT: a deferrable primary key
-- may hold a key twice within one statement, and ON CONFLICT DO UPDATE may not touch a row twice.
CREATE OR REPLACE FUNCTION dpr_pg.enqueue_sync_rows()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_expr text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('%L, t.%I', c, c), ', ') INTO key_expr
    FROM pg_catalog.unnest(TG_ARGV) AS c;
    EXECUTE pg_catalog.format(
        'INSERT INTO dpr_pg.sync_queue AS q (tbl, row_key) '
        'SELECT DISTINCT $1, pg_catalog.jsonb_build_object(%s) FROM %I AS t '
        'ON CONFLICT (tbl, row_key) DO UPDATE '
        'SET version = EXCLUDED.version, attempts = 0, last_error = NULL, dead_at = NULL, '
        'next_attempt_at = LEAST(q.next_attempt_at, EXCLUDED.next_attempt_at)',
        key_expr, CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN 'dpr_old_rows' ELSE 'dpr_new_rows' END)
    USING TG_RELID;
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
    column_type name;
    index_type text;
BEGIN
    -- search_path is pinned, so pgvector's objects are named with the schema it lives in.
    SELECT e.extnamespace::regnamespace::name INTO vector_schema FROM pg_extension e WHERE e.extname = 'vector';
    IF dim IS NULL OR dim < 1 OR dim > @MAX_DIM@ THEN
        RAISE EXCEPTION 'dpr_pg.enable_table: expected dim between 1 and @MAX_DIM@, not %', dim
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

    -- The app table follows dpr_pg.passages: the same column type (vector or halfvec), and a halfvec
    -- index over a vector column when the database's storage is halfvec (dpr_pg/db/storage.py). A
    -- bit storage is not followed: its re-ranking is dpr_pg.passages' own.
    SELECT t.typname INTO column_type FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = 'dpr_pg.passages'::regclass AND a.attname = 'embedding';
    column_type := CASE WHEN column_type = 'halfvec' THEN 'halfvec' ELSE 'vector' END;
    IF to_regclass('dpr_pg.settings') IS NOT NULL THEN
        SELECT s.value INTO index_type FROM dpr_pg.settings s WHERE s.name = 'storage';
    END IF;
    EXECUTE format(
        'ALTER TABLE %s ADD COLUMN %I %I.%I(%s), '
        'ADD COLUMN dpr_encoder_id integer CONSTRAINT %I REFERENCES dpr_pg.encoders (id), '
        'ADD COLUMN dpr_content_hash text',
        tbl, embedding_column, vector_schema, column_type, dim, left(rel, 40) || '_dpr_encoder_fkey');
    -- A 768-d float4 vector is ~3 KB: keep it inline instead of in TOAST (pgvector #353).
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STORAGE PLAIN', tbl, embedding_column);
    EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', tbl, embedding_column,
                   'dpr_pg: DPR passage embedding, written by dpr-pg worker');
    EXECUTE format('COMMENT ON COLUMN %s.dpr_encoder_id IS %L', tbl,
                   'dpr_pg: dpr_pg.encoders row of the encoder pair that made the embedding');
    EXECUTE format('COMMENT ON COLUMN %s.dpr_content_hash IS %L', tbl,
                   'dpr_pg: hash of the embedded text, to skip unchanged rows');
    IF column_type = 'vector' AND index_type = 'halfvec' THEN
        EXECUTE format('CREATE INDEX %I ON %s USING hnsw ((%I::%I.halfvec(%s)) %I.halfvec_ip_ops) '
                       'WITH (m = @HNSW_M@, ef_construction = @HNSW_EF_CONSTRUCTION@)',
                       left(rel, 50) || '_dpr_hnsw', tbl, embedding_column, vector_schema, dim, vector_schema);
    ELSE
        EXECUTE format('CREATE INDEX %I ON %s USING hnsw (%I %I.%I) WITH (m = @HNSW_M@, ef_construction = @HNSW_EF_CONSTRUCTION@)',
                       left(rel, 50) || '_dpr_hnsw', tbl, embedding_column, vector_schema, column_type || '_ip_ops');
    END IF;

    SELECT string_agg(quote_literal(c), ', ') INTO key_args FROM unnest(key_columns) AS c;
    EXECUTE format('CREATE TRIGGER dpr_sync_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS dpr_new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION dpr_pg.enqueue_sync_rows(%s)', tbl, key_args);
    EXECUTE format('CREATE TRIGGER dpr_sync_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS dpr_old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION dpr_pg.enqueue_sync_rows(%s)', tbl, key_args);
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
    DELETE FROM dpr_pg.sync_queue q WHERE q.tbl = enable_table.tbl;  -- left by a dropped table of this oid
    EXECUTE format('INSERT INTO dpr_pg.sync_queue (tbl, row_key) SELECT $1, jsonb_build_object(%s) FROM %s AS t',
                   key_expr, tbl)
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
    DELETE FROM dpr_pg.sync_queue q WHERE q.tbl = disable_table.tbl;
    DELETE FROM dpr_pg.synced_tables s WHERE s.tbl = disable_table.tbl;
END
$$;

-- Why an enabled table cannot be synced right now, or NULL when it can: a key, text or title
-- column renamed or dropped (or no longer text), an embedding column gone, a queue trigger dropped
-- or disabled. The worker leaves such a table's items queued and untouched, `dpr-pg status` shows
-- the reason, and syncing resumes by itself once the table is fixed.
CREATE OR REPLACE FUNCTION dpr_pg.sync_table_problem(tbl regclass)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    settings dpr_pg.synced_tables%ROWTYPE;
    col text;
    kind regtype;
    fix constant text := 'rename it back, or run op.disable_dpr and op.enable_dpr with the new settings';
BEGIN
    SELECT * INTO settings FROM dpr_pg.synced_tables s WHERE s.tbl = sync_table_problem.tbl;
    IF NOT FOUND THEN
        RETURN format('%s is not enabled for DPR search', tbl);
    END IF;
    FOREACH col IN ARRAY settings.key_columns
                         || settings.text_columns
                         || CASE WHEN settings.title_column IS NULL THEN '{}'::text[]
                                 ELSE ARRAY[settings.title_column] END
                         || ARRAY[settings.embedding_column, 'dpr_encoder_id', 'dpr_content_hash'] LOOP
        SELECT a.atttypid::regtype INTO kind FROM pg_attribute a
        WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RETURN format('sync is paused: column %s of %s is gone (renamed or dropped); %s',
                          quote_ident(col), tbl, fix);
        END IF;
        IF (col = ANY (settings.text_columns) OR col = settings.title_column)
           AND kind NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype) THEN
            RETURN format('sync is paused: column %s of %s is %s, not text; %s', quote_ident(col), tbl, kind, fix);
        END IF;
    END LOOP;
    FOREACH col IN ARRAY ARRAY['dpr_sync_insert', 'dpr_sync_update', 'dpr_sync_delete'] LOOP
        PERFORM 1 FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = col AND t.tgenabled <> 'D';
        IF NOT FOUND THEN
            RETURN format('sync is paused: trigger %s on %s is gone or disabled, so writes are not queued; '
                          'run op.disable_dpr and op.enable_dpr to recreate it', col, tbl);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- The encoder pair an enabled table's embeddings belong to: the pair it is bound to; else the pair
-- its rows hold (a table enabled before tables remembered their pair), which it is then bound to;
-- else encoder_id, the pair of the worker about to write its first embedding. A caller whose pair
-- is not the one returned must not write. Never raises.
CREATE OR REPLACE FUNCTION dpr_pg.bind_table_encoder(tbl regclass, encoder_id integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bound integer;
    found_id integer;
BEGIN
    SELECT s.encoder_id INTO bound FROM dpr_pg.synced_tables s WHERE s.tbl = bind_table_encoder.tbl;
    IF bound IS NOT NULL THEN
        RETURN bound;
    END IF;
    EXECUTE format('SELECT t.dpr_encoder_id FROM %s AS t WHERE t.dpr_encoder_id IS NOT NULL LIMIT 1', tbl)
        INTO found_id;
    -- Two workers binding at once: the second waits here for the first to commit, then binds nothing
    -- and returns what the first bound.
    UPDATE dpr_pg.synced_tables s SET encoder_id = coalesce(found_id, bind_table_encoder.encoder_id)
    WHERE s.tbl = bind_table_encoder.tbl AND s.encoder_id IS NULL
    RETURNING s.encoder_id INTO bound;
    IF bound IS NULL THEN
        SELECT s.encoder_id INTO bound FROM dpr_pg.synced_tables s WHERE s.tbl = bind_table_encoder.tbl;
    END IF;
    RETURN bound;
END
$$;

-- Raise unless the embeddings of tbl come from the encoder pair with this fingerprint (or there are
-- none yet): a question encoded by one pair scores meaninglessly against another pair's passages.
-- Returns true, so that a query can carry it as a one-time filter (dpr_pg/mixin.py does).
CREATE OR REPLACE FUNCTION dpr_pg.check_table_encoder(tbl regclass, fingerprint text)
RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    settings dpr_pg.synced_tables%ROWTYPE;
    wanted integer;
    stored dpr_pg.encoders%ROWTYPE;
BEGIN
    SELECT * INTO settings FROM dpr_pg.synced_tables s WHERE s.tbl = check_table_encoder.tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('dpr_pg.check_table_encoder: table %s is not enabled for DPR search', tbl),
            HINT = 'enable it with op.enable_dpr in a migration, or SELECT dpr_pg.enable_table(...)';
    END IF;
    SELECT e.id INTO wanted FROM dpr_pg.encoders e WHERE e.fingerprint = check_table_encoder.fingerprint;
    IF settings.encoder_id IS NOT NULL THEN
        SELECT * INTO stored FROM dpr_pg.encoders e WHERE e.id = settings.encoder_id;
    ELSE
        EXECUTE format('SELECT e.* FROM dpr_pg.encoders e WHERE e.id = (SELECT t.dpr_encoder_id FROM %s AS t '
                       'WHERE t.dpr_encoder_id IS DISTINCT FROM $1 AND t.dpr_encoder_id IS NOT NULL LIMIT 1)', tbl)
            INTO stored USING wanted;
    END IF;
    IF stored.id IS NULL OR stored.id = wanted THEN
        RETURN true;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '22000',
        MESSAGE = format('dpr_pg: the embeddings of %s were made by question=%s passage=%s (dim %s, fingerprint %s), '
                         'but the query vector comes from the pair with fingerprint %s; expected the same pair '
                         'for both', tbl, stored.question_model, stored.passage_model, stored.dim,
                         left(stored.fingerprint, 12), left(check_table_encoder.fingerprint, 12)),
        HINT = 'load the pair that made the table, or re-embed it: op.disable_dpr, op.enable_dpr, then dpr-pg worker';
END
$$;

-- Make the dead (and failing) queue items of tbl, or of every table, due again with their
-- attempts forgotten; returns how many. `dpr-pg sync retry` and dpr_pg.sync.retry_items run it.
CREATE OR REPLACE FUNCTION dpr_pg.sync_retry(tbl regclass DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE dpr_pg.sync_queue q
    SET attempts = 0, last_error = NULL, dead_at = NULL, next_attempt_at = clock_timestamp()
    WHERE (q.dead_at IS NOT NULL OR q.last_error IS NOT NULL)
      AND (sync_retry.tbl IS NULL OR q.tbl = sync_retry.tbl);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Delete the dead queue items of tbl, or of every table; returns how many. Their rows keep the
-- embedding they had (or none) until the app writes them again. `dpr-pg sync discard` runs it.
CREATE OR REPLACE FUNCTION dpr_pg.sync_discard(tbl regclass DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM dpr_pg.sync_queue q
    WHERE q.dead_at IS NOT NULL AND (sync_discard.tbl IS NULL OR q.tbl = sync_discard.tbl);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

REVOKE EXECUTE ON FUNCTION dpr_pg.enable_table(regclass, text[], text, integer, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dpr_pg.disable_table(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dpr_pg.enqueue_sync() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dpr_pg.enqueue_sync_rows() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dpr_pg.bind_table_encoder(regclass, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dpr_pg.sync_retry(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dpr_pg.sync_discard(regclass) FROM PUBLIC;
