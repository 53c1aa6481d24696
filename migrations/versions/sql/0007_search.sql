-- Frozen: the dpr_pg.search block of sql/search.sql as revision 0007 ran it when that revision was written (git 0c20d37).
-- Never edit: databases already ran it. Change functions in sql/, tables in a new migration.

-- BEGIN dpr_pg.search (migration 0007 re-runs this block: keep CREATE OR REPLACE and the signature)
CREATE OR REPLACE FUNCTION dpr_pg.search(query vector, k integer, filter jsonb DEFAULT '{}', collection text DEFAULT NULL)
RETURNS SETOF dpr_pg.hit
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, dpr_pg, @VECTOR_SCHEMA@, pg_temp
AS $$
DECLARE
    exact_threshold CONSTANT integer := 2000;
    compiled record;
    where_sql text;
    dim integer;
    pgv integer[];
    est double precision;
    plan json;
    matches bigint;
    path text;
    hits dpr_pg.hit[];
    old_ef text;
    old_iterative text;
    select_list CONSTANT text := 'id, external_id, collection, title, text, metadata';
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'dpr_pg.search: the query vector is NULL; pass a vector';
    END IF;
    IF k IS NULL OR k < 1 OR k > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('dpr_pg.search: expected k between 1 and 10000, not %s', k);
    END IF;
    SELECT a.atttypmod INTO dim FROM pg_attribute a
    WHERE a.attrelid = 'dpr_pg.passages'::regclass AND a.attname = 'embedding';
    IF vector_dims(query) <> dim THEN
        RAISE EXCEPTION USING ERRCODE = '22000',
            MESSAGE = format('dpr_pg.search: expected a %s-dimension query vector, not %s', dim, vector_dims(query));
    END IF;
    compiled := dpr_pg.compile_filter(filter);
    where_sql := compiled.clause || CASE WHEN collection IS NULL THEN '' ELSE ' AND collection = $4' END;
    SELECT string_to_array(split_part(extversion, '-', 1), '.')::integer[] INTO pgv
    FROM pg_extension WHERE extname = 'vector';

    IF where_sql = 'true' THEN
        path := CASE WHEN k <= 1000 THEN 'hnsw' ELSE 'exact' END;
    ELSIF pgv < ARRAY[0, 8, 0] THEN
        path := 'exact';
    ELSE
        -- statistics first; a bounded count only when they say the filter may be narrow
        EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM dpr_pg.passages WHERE ' || where_sql
            INTO plan USING compiled.params, query, k, collection;
        est := (plan -> 0 -> 'Plan' ->> 'Plan Rows')::double precision;
        path := 'hnsw-iterative';
        IF est <= exact_threshold THEN
            path := 'exact';  -- right at any size; a bounded count would cost as much as the search
        ELSIF est <= 10 * exact_threshold THEN
            EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM dpr_pg.passages WHERE ' || where_sql || ' LIMIT $5) AS m'
                INTO matches USING compiled.params, query, k, collection, exact_threshold + 1;
            IF matches <= exact_threshold THEN
                path := 'exact';
            END IF;
        END IF;
    END IF;

    IF path IN ('hnsw', 'hnsw-iterative') THEN
        old_ef := current_setting('hnsw.ef_search');
        old_iterative := current_setting('hnsw.iterative_scan', true);
        PERFORM set_config('hnsw.ef_search', greatest(k, CASE WHEN path = 'hnsw' THEN 250 ELSE 400 END)::text, true);
        IF path = 'hnsw-iterative' THEN
            PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        END IF;
        EXECUTE format(
            'SELECT array_agg(ROW(%1$s, -d)::dpr_pg.hit ORDER BY d, id) FROM ('
            '  SELECT %1$s, embedding <#> $2 AS d FROM dpr_pg.passages WHERE %2$s'
            '  ORDER BY embedding <#> $2 LIMIT $3) AS ann', select_list,
            CASE WHEN path = 'hnsw' THEN 'true' ELSE where_sql END)
            INTO hits USING compiled.params, query, k, collection;
        PERFORM set_config('hnsw.ef_search', old_ef, true);
        IF old_iterative IS NOT NULL THEN
            PERFORM set_config('hnsw.iterative_scan', old_iterative, true);
        END IF;
        IF COALESCE(cardinality(hits), 0) < k THEN
            path := 'exact';  -- the index scan ran out before k matches: answer exactly
        END IF;
    END IF;
    IF path = 'exact' THEN
        EXECUTE format(
            'SELECT array_agg(ROW(%1$s, s)::dpr_pg.hit ORDER BY s DESC, id) FROM ('
            '  SELECT %1$s, inner_product(embedding, $2) AS s FROM dpr_pg.passages WHERE %2$s'
            '  ORDER BY s DESC, id LIMIT $3) AS exact', select_list, where_sql)
            INTO hits USING compiled.params, query, k, collection;
    END IF;
    RETURN QUERY SELECT * FROM unnest(hits);
END
$$;
