-- Frozen: sql/search_table.sql as revision 0005 ran it when that revision was written (git f4c3615).
-- Never edit: databases already ran it. Change functions in sql/, tables in a new migration.

-- dpr_pg.search_table: DPR search over an app table enabled with dpr_pg.enable_table (op.enable_dpr).
--
-- The filter is the language of dpr_pg/filters.py, compiled by dpr_pg.compile_filter (sql/search.sql):
-- each row's own columns form the document its keys are looked up in ("views", "lang", "a.b"); the
-- column fields of that language (title, collection, external_id, created_at, updated_at) are the
-- table's columns of those names when it has them with a text/timestamp type.
-- tests/test_sync_search_table.py proves the results agree with filters.py on the same rows.
-- pgvector's schema is found at run time and named in the dynamic SQL, so search_path stays pinned.
-- Installed by migration 0005.

CREATE TYPE dpr_pg.table_hit AS (
    row_key  jsonb,             -- the primary key, e.g. {"id": 42}
    score    double precision,  -- inner product of the row's embedding and the query
    row_data jsonb              -- the row without its embedding columns
);

CREATE FUNCTION dpr_pg.search_table(tbl regclass, query vector, k integer, filter jsonb DEFAULT '{}')
RETURNS SETOF dpr_pg.table_hit
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    settings dpr_pg.synced_tables%ROWTYPE;
    vs name;
    dims integer;
    compiled record;
    key_expr text;
    columns text;
    doc_expr text;
    source text;
    hits dpr_pg.table_hit[];
    old_ef text;
    old_iterative text;
BEGIN
    SELECT * INTO settings FROM dpr_pg.synced_tables s WHERE s.tbl = search_table.tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('dpr_pg.search_table: table %s is not enabled for DPR search', tbl),
            HINT = 'enable it with op.enable_dpr in a migration, or SELECT dpr_pg.enable_table(...)';
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'dpr_pg.search_table: the query vector is NULL; pass a vector';
    END IF;
    IF k IS NULL OR k < 1 OR k > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('dpr_pg.search_table: expected k between 1 and 10000, not %s', k);
    END IF;
    SELECT e.extnamespace::regnamespace::name INTO vs FROM pg_extension e WHERE e.extname = 'vector';
    EXECUTE format('SELECT %I.vector_dims($1)', vs) INTO dims USING query;
    IF dims <> settings.dim THEN
        RAISE EXCEPTION USING ERRCODE = '22000',
            MESSAGE = format('dpr_pg.search_table: expected a %s-dimension query vector for %s, not %s',
                             settings.dim, tbl, dims);
    END IF;
    compiled := dpr_pg.compile_filter(filter);

    SELECT string_agg(format('%L, t.%I', c, c), ', ') INTO key_expr FROM unnest(settings.key_columns) AS c;
    SELECT string_agg(
               CASE WHEN a.attname IS NULL THEN format('NULL::%s AS %I', f.typ, f.name)
                    ELSE format('t.%I::%s AS %I', f.name, f.typ, f.name) END, ', ')
    INTO columns
    FROM (VALUES ('collection', 'text'), ('external_id', 'text'), ('title', 'text'),
                 ('created_at', 'timestamptz'), ('updated_at', 'timestamptz')) AS f(name, typ)
    LEFT JOIN pg_attribute a
           ON a.attrelid = tbl AND a.attname = f.name AND a.attnum > 0 AND NOT a.attisdropped
          AND (CASE WHEN f.typ = 'text' THEN a.atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype)
                    ELSE a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) END);
    -- The row as jsonb without its embedding columns; built column by column so that the vector is
    -- never rendered as text, in chunks of 40 pairs (a function takes at most 100 arguments).
    SELECT string_agg(chunk, ' || ') INTO doc_expr FROM (
        SELECT format('jsonb_build_object(%s)', string_agg(format('%L, t.%I', a.attname, a.attname), ', ' ORDER BY a.attnum)) AS chunk
        FROM (SELECT a.attname, a.attnum, (row_number() OVER (ORDER BY a.attnum) - 1) / 40 AS part
              FROM pg_attribute a
              WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attname NOT IN (settings.embedding_column, 'dpr_encoder_id', 'dpr_content_hash')) AS a
        GROUP BY a.part ORDER BY a.part) AS chunks;
    -- A simple subquery: PostgreSQL pulls it up, so ORDER BY ... <#> still reaches the HNSW index.
    source := format(
        'SELECT jsonb_build_object(%1$s) AS row_key, t.%2$I AS embedding_, '
        '       %3$s AS metadata, %4$s '
        'FROM %5$s AS t WHERE t.%2$I IS NOT NULL',
        key_expr, settings.embedding_column, doc_expr, columns, tbl);

    IF k <= 1000 THEN
        old_ef := current_setting('hnsw.ef_search', true);
        old_iterative := current_setting('hnsw.iterative_scan', true);
        PERFORM set_config('hnsw.ef_search', greatest(k, CASE WHEN compiled.clause = 'true' THEN 100 ELSE 200 END)::text, true);
        IF compiled.clause <> 'true' THEN
            PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        END IF;
        EXECUTE format(
            'SELECT array_agg(ROW(h.row_key, -h.d, h.metadata)::dpr_pg.table_hit ORDER BY h.d, h.row_key) FROM ('
            '  SELECT s.row_key, s.metadata, s.embedding_ OPERATOR(%1$I.<#>) $2 AS d FROM (%2$s) AS s'
            '  WHERE %3$s ORDER BY s.embedding_ OPERATOR(%1$I.<#>) $2 LIMIT $3) AS h', vs, source, compiled.clause)
            INTO hits USING compiled.params, query, k;
        IF old_ef IS NOT NULL THEN
            PERFORM set_config('hnsw.ef_search', old_ef, true);
        END IF;
        IF old_iterative IS NOT NULL THEN
            PERFORM set_config('hnsw.iterative_scan', old_iterative, true);
        END IF;
    END IF;
    IF COALESCE(cardinality(hits), 0) < k THEN
        -- The index scan ran out before k rows (or k is large): answer exactly over the matching rows.
        EXECUTE format(
            'SELECT array_agg(ROW(h.row_key, h.score, h.metadata)::dpr_pg.table_hit ORDER BY h.score DESC, h.row_key) FROM ('
            '  SELECT s.row_key, s.metadata, %1$I.inner_product(s.embedding_, $2) AS score FROM (%2$s) AS s'
            '  WHERE %3$s ORDER BY 3 DESC, 1 LIMIT $3) AS h', vs, source, compiled.clause)
            INTO hits USING compiled.params, query, k;
    END IF;
    RETURN QUERY SELECT * FROM unnest(hits);
END
$$;
