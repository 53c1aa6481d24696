-- dpr_pg.search_table: DPR search over an app table enabled with dpr_pg.enable_table (op.enable_dpr).
--
-- The filter is the language of dpr_pg/filters.py, compiled by dpr_pg.compile_filter (sql/search.sql):
-- each row's own columns form the document its keys are looked up in ("views", "lang", "a.b"); the
-- column fields of that language (title, collection, external_id, created_at, updated_at) are the
-- table's columns of those names when it has them with a text/timestamp type.
-- tests/test_sync_search_table.py proves the results agree with filters.py on the same rows.
-- The path is dpr_pg._search_plan's (sql/search.sql), the planner of dpr_pg.search.
-- pgvector's schema is found at run time and named in the dynamic SQL, so search_path stays pinned.
-- Idempotent (CREATE OR REPLACE): `dpr-pg init` applies it after the last migration, every time; the
-- result type dpr_pg.table_hit comes from migration 0005.

-- The fields a (valid) filter document looks up in the row document: the first part of each name,
-- as dpr_pg._filter_leaf reads it.
CREATE OR REPLACE FUNCTION dpr_pg._filter_keys(doc jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key text;
    val jsonb;
    item jsonb;
    path text[];
    keys text[] := '{}';
BEGIN
    FOR key, val IN SELECT e.key, e.value FROM jsonb_each(COALESCE(doc, '{}')) AS e LOOP
        IF key IN ('$and', '$or') THEN
            FOR item IN SELECT e FROM jsonb_array_elements(val) AS e LOOP
                keys := keys || dpr_pg._filter_keys(item);
            END LOOP;
        ELSIF key = '$not' THEN
            keys := keys || dpr_pg._filter_keys(val);
        ELSE
            path := string_to_array(key, '.');
            keys := keys || CASE WHEN path[1] = 'metadata' AND cardinality(path) > 1 THEN path[2] ELSE path[1] END;
        END IF;
    END LOOP;
    RETURN keys;
END
$$;

-- SQL text of a row of `tbl` (alias t) as jsonb: its columns but `excluded`, or only those of them in
-- `included`; built column by column so that a vector is never rendered as text, in chunks of 40
-- pairs (a function takes at most 100 arguments).
CREATE OR REPLACE FUNCTION dpr_pg._row_document(tbl regclass, excluded text[], included text[] DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(string_agg(chunk, ' || ' ORDER BY part), '''{}''::jsonb') FROM (
        SELECT a.part, format('jsonb_build_object(%s)',
                              string_agg(format('%L, t.%I', a.attname, a.attname), ', ' ORDER BY a.attnum)) AS chunk
        FROM (SELECT a.attname, a.attnum, (row_number() OVER (ORDER BY a.attnum) - 1) / 40 AS part
              FROM pg_attribute a
              WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> ALL (excluded)
                AND (included IS NULL OR a.attname = ANY (included))) AS a
        GROUP BY a.part) AS chunks
$$;

CREATE OR REPLACE FUNCTION dpr_pg.search_table(tbl regclass, query vector, k integer, filter jsonb DEFAULT '{}')
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
    excluded text[];
    row_expr text;
    filtered_expr text;
    source text;
    table_rows double precision;
    sampled_matches bigint;
    sampled_rows bigint;
    sample_estimate double precision;
    chosen record;
    path text;
    fell_back boolean := false;
    hits dpr_pg.table_hit[];
    old_ef text;
    old_iterative text;
    old_seqscan text;
    ann_order text;
BEGIN
    -- Checked before anything is read or run: a query that failed on the table would print, in
    -- its error's context, the column list of a table the caller may not read.
    IF NOT (has_table_privilege(tbl, 'SELECT') AND has_schema_privilege(
            (SELECT c.relnamespace FROM pg_class c WHERE c.oid = tbl), 'USAGE')) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('dpr_pg.search_table: permission denied for table %s: the search reads its rows', tbl),
            HINT = 'ask the table''s owner to GRANT SELECT on it (and USAGE on its schema) to this role';
    END IF;
    SELECT * INTO settings FROM dpr_pg.synced_tables s WHERE s.tbl = search_table.tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('dpr_pg.search_table: table %s is not enabled for DPR search', tbl),
            HINT = 'enable it with op.enable_dpr in a migration, or SELECT dpr_pg.enable_table(...)';
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'dpr_pg.search_table: the query vector is NULL; pass a vector';
    END IF;
    IF k IS NULL OR k < 1 OR k > @MAX_K@ THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('dpr_pg.search_table: expected k between 1 and @MAX_K@, not %s', k);
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
    -- The row as jsonb without its embedding columns, returned with each hit; and the document the
    -- filter reads (as `metadata`), with only the columns it names: a scan over many rows builds little.
    excluded := ARRAY[settings.embedding_column, 'dpr_encoder_id', 'dpr_content_hash'];
    row_expr := dpr_pg._row_document(tbl, excluded);
    filtered_expr := CASE WHEN strpos(compiled.clause, 'metadata') > 0  -- the clause reads the document
                          THEN dpr_pg._row_document(tbl, excluded, dpr_pg._filter_keys(filter))
                          ELSE '''{}''::jsonb' END;
    -- A simple subquery: PostgreSQL pulls it up, so ORDER BY ... <#> still reaches the HNSW index.
    -- %6$s is room for a TABLESAMPLE clause.
    source := 'SELECT jsonb_build_object(%1$s) AS row_key, t.%2$I AS embedding_, '
              '       %3$s AS metadata, %7$s AS row_data, %4$s '
              'FROM %5$s AS t %6$s WHERE t.%2$I IS NOT NULL';
    IF strpos(compiled.clause, 'metadata') > 0 THEN
        -- No statistics describe the document built from each row, so PostgreSQL's estimate of a
        -- filter on it is a fixed guess: estimate the matching rows from a sample of whole pages
        -- (all of a table of up to @TABLE_SAMPLE_ROWS@ rows, or of one never analysed).
        SELECT c.reltuples INTO table_rows FROM pg_class c WHERE c.oid = tbl;
        EXECUTE format('SELECT count(*) FILTER (WHERE %s), count(*) FROM (%s) AS s', compiled.clause,
                       format(source, key_expr, settings.embedding_column, filtered_expr, columns, tbl,
                              format('TABLESAMPLE SYSTEM (%s) REPEATABLE (0)',
                                     least(100, 100.0 * @TABLE_SAMPLE_ROWS@ / greatest(table_rows, 1))),
                              row_expr))
            INTO sampled_matches, sampled_rows USING compiled.params;
        IF sampled_rows > 0 THEN
            sample_estimate := CASE WHEN table_rows > @TABLE_SAMPLE_ROWS@
                                    THEN sampled_matches::double precision / sampled_rows * table_rows
                                    ELSE sampled_matches END;
        END IF;
    END IF;
    source := format(source, key_expr, settings.embedding_column, filtered_expr, columns, tbl, '', row_expr);

    SELECT * INTO chosen FROM dpr_pg._search_plan(tbl, '(' || source || ') AS s', compiled.clause, compiled.params, k,
                                                  estimate => sample_estimate);
    path := chosen.path;

    IF path IN ('hnsw', 'hnsw-iterative') THEN
        -- The ORDER BY repeats the table's index: a halfvec expression index over a vector column
        -- (a database whose storage is halfvec, see dpr_pg.enable_table) compares halfvec values; a
        -- halfvec column's own index takes the query as is (cast once to halfvec by PostgreSQL).
        ann_order := format('s.embedding_ OPERATOR(%1$I.<#>) $2', vs);
        IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_opclass oc ON oc.oid = i.indclass[0]
                   JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = settings.embedding_column
                   JOIN pg_type ty ON ty.oid = a.atttypid
                   WHERE i.indrelid = tbl AND i.indisvalid AND i.indkey[0] = 0 AND oc.opcname = 'halfvec_ip_ops'
                     AND ty.typname = 'vector') THEN
            ann_order := format('(s.embedding_)::%1$I.halfvec(%2$s) OPERATOR(%1$I.<#>) ($2)::%1$I.halfvec(%2$s)',
                                vs, settings.dim);
        END IF;
        old_ef := current_setting('hnsw.ef_search', true);
        old_iterative := current_setting('hnsw.iterative_scan', true);
        old_seqscan := current_setting('enable_seqscan');
        PERFORM set_config('hnsw.ef_search', chosen.ef_search::text, true);
        IF path = 'hnsw-iterative' THEN
            PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        END IF;
        -- PostgreSQL's own guess for a filter on the row document can make a sequential scan and a
        -- sort look cheaper than the index at this ef_search; the plan above chose the index.
        PERFORM set_config('enable_seqscan', 'off', true);
        EXECUTE format(
            'SELECT array_agg(ROW(h.row_key, -h.d, h.row_data)::dpr_pg.table_hit ORDER BY h.d, h.row_key) FROM ('
            '  SELECT s.row_key, s.row_data, s.embedding_ OPERATOR(%1$I.<#>) $2 AS d FROM (%2$s) AS s'
            '  WHERE %3$s ORDER BY %4$s LIMIT $3) AS h', vs, source,
            CASE WHEN path = 'hnsw' THEN 'true' ELSE compiled.clause END, ann_order)
            INTO hits USING compiled.params, query, k;
        PERFORM set_config('enable_seqscan', old_seqscan, true);
        IF old_ef IS NOT NULL THEN
            PERFORM set_config('hnsw.ef_search', old_ef, true);
        END IF;
        IF old_iterative IS NOT NULL THEN
            PERFORM set_config('hnsw.iterative_scan', old_iterative, true);
        END IF;
        IF COALESCE(cardinality(hits), 0) < k THEN
            path := 'exact';  -- the index scan ran out before k rows: answer exactly
            fell_back := true;
        END IF;
    END IF;
    IF path = 'exact' THEN
        EXECUTE format(
            'SELECT array_agg(ROW(h.row_key, h.score, h.row_data)::dpr_pg.table_hit ORDER BY h.score DESC, h.row_key) FROM ('
            '  SELECT s.row_key, s.row_data, %1$I.inner_product(s.embedding_, $2) AS score FROM (%2$s) AS s'
            '  WHERE %3$s ORDER BY 3 DESC, 1 LIMIT $3) AS h', vs, source, compiled.clause)
            INTO hits USING compiled.params, query, k;
    END IF;
    RAISE DEBUG 'dpr_pg.search_table plan: %', json_build_object(
        'path', path, 'estimated_rows', chosen.estimated_rows, 'matching_rows', chosen.matching_rows,
        'ef_search', chosen.ef_search, 'fell_back', fell_back);
    RETURN QUERY SELECT * FROM unnest(hits);
END
$$;
