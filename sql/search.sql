-- dpr_pg search functions: dpr_pg.search, dpr_pg.hybrid_search, the planner and the filter compiler they share.
--
-- Idempotent (CREATE OR REPLACE): `dpr-pg init` applies this file after the last migration, every
-- time, so a change here needs no migration (see migrations/README.md). It fills in the placeholders
-- (a name between two @ signs): VECTOR_SCHEMA with the (quoted) schema of the vector extension, so
-- the pinned search_path resolves pgvector's operators, and every other name with the number of that
-- name in dpr_pg/tuning.py. The result type dpr_pg.hit comes from migration 0004.
--
-- The filter language is the one in dpr_pg/filters.py; tests/test_filters.py proves they agree.
-- Keys and values never become SQL text: the compiler emits references $1[i] into a jsonb[] that is
-- bound with EXECUTE ... USING; only operators from the allow-list below are spelled out.

CREATE OR REPLACE FUNCTION dpr_pg._filter_error(message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = 'dpr_pg filter: ' || message
            || '; allowed operators: $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $between, $like, $ilike, '
            || '$exists, $contains, $and, $or, $not; fields: collection, external_id, title, created_at, '
            || 'updated_at or a metadata key (dots reach nested keys)';
END
$$;

-- One condition on one field. Returns the clause; appends the values it references to params.
CREATE OR REPLACE FUNCTION dpr_pg._filter_leaf(field text, op text, val jsonb, INOUT params jsonb[], OUT clause text)
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    path text[];
    kind text;  -- NULL for metadata, 'text' or 'time' for a column
    vt text := jsonb_typeof(val);
    x text;
    nested jsonb;
    ref text;
    col text;
    item jsonb;
    listed boolean;
    iso text := '^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$';
    bad text := field || ': ' || op || ' expects ';
BEGIN
    IF length(field) < 1 OR length(field) > 256 THEN
        PERFORM dpr_pg._filter_error('a field name must have 1 to 256 characters, not ' || length(field));
    END IF;
    IF field IN ('collection', 'external_id', 'title') THEN
        kind := 'text';
    ELSIF field IN ('created_at', 'updated_at') THEN
        kind := 'time';
    ELSE
        path := string_to_array(field, '.');
        IF path[1] = 'metadata' AND cardinality(path) > 1 THEN
            path := path[2:];
        END IF;
        IF EXISTS (SELECT 1 FROM unnest(path) AS p WHERE p = '' OR left(p, 1) = '$') THEN
            PERFORM dpr_pg._filter_error('unknown field ' || quote_literal(field)
                || ': each dotted part must be non-empty and must not start with $');
        END IF;
    END IF;
    IF op NOT IN ('$eq', '$ne', '$gt', '$gte', '$lt', '$lte', '$in', '$nin', '$between', '$like', '$ilike',
                  '$exists', '$contains') THEN
        PERFORM dpr_pg._filter_error('unknown operator ' || quote_literal(op) || ' on field ' || quote_literal(field));
    END IF;
    IF (kind = 'text' AND op = '$contains') OR (kind = 'time' AND op IN ('$like', '$ilike', '$contains')) THEN
        PERFORM dpr_pg._filter_error('operator ' || op || ' does not apply to the column ' || quote_literal(field));
    END IF;

    -- value checks, in the same terms as filters.py
    IF op IN ('$gt', '$gte', '$lt', '$lte') AND vt NOT IN ('number', 'string') THEN
        PERFORM dpr_pg._filter_error(bad || 'a number or a string');
    ELSIF op = '$between' AND NOT (vt = 'array' AND jsonb_array_length(val) = 2 AND (
            (jsonb_typeof(val -> 0) = 'number' AND jsonb_typeof(val -> 1) = 'number')
            OR (jsonb_typeof(val -> 0) = 'string' AND jsonb_typeof(val -> 1) = 'string'))) THEN
        PERFORM dpr_pg._filter_error(bad || '[low, high]: two numbers or two strings');
    ELSIF op IN ('$in', '$nin') AND NOT (vt = 'array' AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(val) AS e WHERE jsonb_typeof(e) IN ('array', 'object'))) THEN
        PERFORM dpr_pg._filter_error(bad || 'an array of scalars');
    ELSIF op IN ('$like', '$ilike') AND vt <> 'string' THEN
        PERFORM dpr_pg._filter_error(bad || 'a LIKE pattern string');
    ELSIF op IN ('$like', '$ilike') AND (length(val #>> '{}') - length(rtrim(val #>> '{}', '\'))) % 2 = 1 THEN
        PERFORM dpr_pg._filter_error(bad || 'a LIKE pattern that does not end with a lone escape (\)');
    ELSIF op = '$exists' AND vt <> 'boolean' THEN
        PERFORM dpr_pg._filter_error(bad || 'true or false');
    ELSIF op = '$contains' AND vt IN ('array', 'object') THEN
        PERFORM dpr_pg._filter_error(bad || 'a scalar to look for in an array');
    END IF;
    listed := op IN ('$in', '$nin', '$between');
    IF kind IS NOT NULL AND op <> '$exists' THEN
        FOR item IN SELECT CASE WHEN listed THEN e ELSE val END
                    FROM jsonb_array_elements(CASE WHEN listed THEN val ELSE '[null]'::jsonb END) AS e LOOP
            IF jsonb_typeof(item) IS DISTINCT FROM 'string' THEN
                PERFORM dpr_pg._filter_error(bad || 'a string (column ' || field || ')');
            END IF;
            IF kind = 'time' THEN
                IF (item #>> '{}') !~ iso THEN
                    PERFORM dpr_pg._filter_error(bad || 'an ISO 8601 timestamp like 2024-05-01T00:00:00+00:00');
                END IF;
                BEGIN
                    PERFORM (item #>> '{}')::timestamptz;
                EXCEPTION WHEN others THEN
                    PERFORM dpr_pg._filter_error(bad || 'an ISO 8601 timestamp like 2024-05-01T00:00:00+00:00');
                END;
            END IF;
        END LOOP;
    END IF;

    IF kind IS NOT NULL THEN
        col := quote_ident(field);  -- one of five allow-listed names
        IF op = '$exists' THEN
            clause := CASE WHEN val = 'true' THEN 'true' ELSE 'false' END;
            RETURN;
        END IF;
        params := params || val;
        ref := format('$1[%s]', cardinality(params));
        IF kind = 'time' THEN
            clause := CASE op
                WHEN '$eq' THEN format('(%s = (%s #>> ''{}'')::timestamptz)', col, ref)
                WHEN '$ne' THEN format('(%s <> (%s #>> ''{}'')::timestamptz)', col, ref)
                WHEN '$gt' THEN format('(%s > (%s #>> ''{}'')::timestamptz)', col, ref)
                WHEN '$gte' THEN format('(%s >= (%s #>> ''{}'')::timestamptz)', col, ref)
                WHEN '$lt' THEN format('(%s < (%s #>> ''{}'')::timestamptz)', col, ref)
                WHEN '$lte' THEN format('(%s <= (%s #>> ''{}'')::timestamptz)', col, ref)
                WHEN '$between' THEN format('(%1$s >= (%2$s ->> 0)::timestamptz AND %1$s <= (%2$s ->> 1)::timestamptz)', col, ref)
                WHEN '$in' THEN format('(%s = ANY (ARRAY(SELECT jsonb_array_elements_text(%s))::timestamptz[]))', col, ref)
                WHEN '$nin' THEN format('(NOT %s = ANY (ARRAY(SELECT jsonb_array_elements_text(%s))::timestamptz[]))', col, ref)
            END;
        ELSE
            clause := CASE op
                WHEN '$eq' THEN format('(%s = (%s #>> ''{}''))', col, ref)
                WHEN '$ne' THEN format('(%s <> (%s #>> ''{}''))', col, ref)
                WHEN '$gt' THEN format('(%s COLLATE "C" > (%s #>> ''{}''))', col, ref)
                WHEN '$gte' THEN format('(%s COLLATE "C" >= (%s #>> ''{}''))', col, ref)
                WHEN '$lt' THEN format('(%s COLLATE "C" < (%s #>> ''{}''))', col, ref)
                WHEN '$lte' THEN format('(%s COLLATE "C" <= (%s #>> ''{}''))', col, ref)
                WHEN '$between' THEN format('(%1$s COLLATE "C" >= (%2$s ->> 0) AND %1$s COLLATE "C" <= (%2$s ->> 1))', col, ref)
                WHEN '$in' THEN format('(%s = ANY (ARRAY(SELECT jsonb_array_elements_text(%s))))', col, ref)
                WHEN '$nin' THEN format('(NOT %s = ANY (ARRAY(SELECT jsonb_array_elements_text(%s))))', col, ref)
                WHEN '$like' THEN format('(%s LIKE (%s #>> ''{}''))', col, ref)
                WHEN '$ilike' THEN format('(%s ILIKE (%s #>> ''{}''))', col, ref)
            END;
        END IF;
        RETURN;
    END IF;

    -- metadata: x is metadata -> key1 -> key2 ..., each key a bound value
    x := 'metadata';
    FOR i IN 1 .. cardinality(path) LOOP
        params := params || to_jsonb(path[i]);
        x := x || format(' -> (($1[%s]) #>> ''{}'')', cardinality(params));
    END LOOP;
    IF op IN ('$eq', '$ne') AND vt NOT IN ('array', 'object') OR op = '$contains' THEN
        nested := CASE WHEN op = '$contains' THEN jsonb_build_array(val) ELSE val END;
        FOR i IN REVERSE cardinality(path) .. 1 LOOP
            nested := jsonb_build_object(path[i], nested);
        END LOOP;
        params := params || nested;
        clause := format('(metadata @> $1[%s])', cardinality(params));  -- containment: the GIN index answers
        IF op = '$ne' THEN
            clause := '(NOT ' || clause || ')';
        END IF;
        RETURN;
    END IF;
    params := params || val;
    ref := format('$1[%s]', cardinality(params));
    clause := CASE
        WHEN op = '$eq' THEN format('COALESCE(%s = %s, false)', x, ref)
        WHEN op = '$ne' THEN format('(NOT COALESCE(%s = %s, false))', x, ref)
        WHEN op IN ('$gt', '$gte', '$lt', '$lte') AND vt = 'number' THEN
            format('(CASE WHEN jsonb_typeof(%1$s) = ''number'' THEN (%1$s)::numeric %2$s (%3$s)::numeric ELSE false END)',
                   x, CASE op WHEN '$gt' THEN '>' WHEN '$gte' THEN '>=' WHEN '$lt' THEN '<' ELSE '<=' END, ref)
        WHEN op IN ('$gt', '$gte', '$lt', '$lte') THEN
            format('(CASE WHEN jsonb_typeof(%1$s) = ''string'' THEN (%1$s #>> ''{}'') COLLATE "C" %2$s (%3$s #>> ''{}'') ELSE false END)',
                   x, CASE op WHEN '$gt' THEN '>' WHEN '$gte' THEN '>=' WHEN '$lt' THEN '<' ELSE '<=' END, ref)
        WHEN op = '$between' AND jsonb_typeof(val -> 0) = 'number' THEN
            format('(CASE WHEN jsonb_typeof(%1$s) = ''number'' THEN (%1$s)::numeric >= (%2$s -> 0)::numeric AND (%1$s)::numeric <= (%2$s -> 1)::numeric ELSE false END)', x, ref)
        WHEN op = '$between' THEN
            format('(CASE WHEN jsonb_typeof(%1$s) = ''string'' THEN (%1$s #>> ''{}'') COLLATE "C" >= (%2$s ->> 0) AND (%1$s #>> ''{}'') COLLATE "C" <= (%2$s ->> 1) ELSE false END)', x, ref)
        WHEN op = '$in' THEN format('COALESCE(%s = ANY (ARRAY(SELECT jsonb_array_elements(%s))), false)', x, ref)
        WHEN op = '$nin' THEN format('(NOT COALESCE(%s = ANY (ARRAY(SELECT jsonb_array_elements(%s))), false))', x, ref)
        WHEN op = '$like' THEN
            format('(CASE WHEN jsonb_typeof(%1$s) = ''string'' THEN (%1$s #>> ''{}'') LIKE (%2$s #>> ''{}'') ELSE false END)', x, ref)
        WHEN op = '$ilike' THEN
            format('(CASE WHEN jsonb_typeof(%1$s) = ''string'' THEN (%1$s #>> ''{}'') ILIKE (%2$s #>> ''{}'') ELSE false END)', x, ref)
        WHEN op = '$exists' AND val = 'true' THEN format('(%s IS NOT NULL)', x)
        WHEN op = '$exists' THEN format('(%s IS NULL)', x)
    END;
END
$$;

-- A field's condition: {"$gt": 1, "$lt": 5}, {"$not": {...}} or a plain value ($eq).
CREATE OR REPLACE FUNCTION dpr_pg._filter_field(field text, val jsonb, INOUT params jsonb[], OUT clause text)
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    op text;
    operand jsonb;
    part text;
    parts text[] := '{}';
BEGIN
    IF jsonb_typeof(val) = 'object' AND EXISTS (SELECT 1 FROM jsonb_object_keys(val) AS k WHERE left(k, 1) = '$') THEN
        IF EXISTS (SELECT 1 FROM jsonb_object_keys(val) AS k WHERE left(k, 1) <> '$') THEN
            PERFORM dpr_pg._filter_error('field ' || quote_literal(field) || ' mixes operators and plain keys');
        END IF;
        FOR op, operand IN SELECT key, value FROM jsonb_each(val) LOOP
            IF op = '$not' THEN
                IF jsonb_typeof(operand) <> 'object' OR operand = '{}' OR EXISTS (
                        SELECT 1 FROM jsonb_object_keys(operand) AS k WHERE left(k, 1) <> '$') THEN
                    PERFORM dpr_pg._filter_error(field || ': $not expects an operator object like {"$gt": 5}');
                END IF;
                SELECT f.params, f.clause INTO params, part FROM dpr_pg._filter_field(field, operand, params) AS f;
                part := '(NOT ' || part || ')';
            ELSE
                SELECT f.params, f.clause INTO params, part FROM dpr_pg._filter_leaf(field, op, operand, params) AS f;
            END IF;
            parts := parts || part;
        END LOOP;
        clause := '(' || array_to_string(parts, ' AND ') || ')';
    ELSE
        SELECT f.params, f.clause INTO params, clause FROM dpr_pg._filter_leaf(field, '$eq', val, params) AS f;
    END IF;
END
$$;

-- A filter document: fields ANDed, and $and / $or / $not.
CREATE OR REPLACE FUNCTION dpr_pg._filter_document(doc jsonb, INOUT params jsonb[], OUT clause text)
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key text;
    val jsonb;
    item jsonb;
    part text;
    parts text[] := '{}';
    inner_parts text[];
BEGIN
    FOR key, val IN SELECT e.key, e.value FROM jsonb_each(doc) AS e LOOP
        IF key IN ('$and', '$or') THEN
            IF jsonb_typeof(val) <> 'array' OR jsonb_array_length(val) = 0 OR EXISTS (
                    SELECT 1 FROM jsonb_array_elements(val) AS e WHERE jsonb_typeof(e) <> 'object') THEN
                PERFORM dpr_pg._filter_error(key || ' expects a non-empty array of filter objects');
            END IF;
            inner_parts := '{}';
            FOR item IN SELECT e FROM jsonb_array_elements(val) AS e LOOP
                SELECT d.params, d.clause INTO params, part FROM dpr_pg._filter_document(item, params) AS d;
                inner_parts := inner_parts || part;
            END LOOP;
            parts := parts || ('(' || array_to_string(inner_parts, CASE key WHEN '$and' THEN ' AND ' ELSE ' OR ' END) || ')');
        ELSIF key = '$not' THEN
            IF jsonb_typeof(val) <> 'object' THEN
                PERFORM dpr_pg._filter_error('$not expects a filter object');
            END IF;
            SELECT d.params, d.clause INTO params, part FROM dpr_pg._filter_document(val, params) AS d;
            parts := parts || ('(NOT ' || part || ')');
        ELSIF left(key, 1) = '$' THEN
            PERFORM dpr_pg._filter_error('unknown operator ' || quote_literal(key) || ' at the top level of the filter');
        ELSE
            SELECT f.params, f.clause INTO params, part FROM dpr_pg._filter_field(key, val, params) AS f;
            parts := parts || part;
        END IF;
    END LOOP;
    clause := CASE WHEN cardinality(parts) = 0 THEN 'true' ELSE '(' || array_to_string(parts, ' AND ') || ')' END;
END
$$;

-- The WHERE clause of a filter document, and the jsonb[] to bind as $1 when it runs.
-- The size limits are dpr_pg/tuning.py's FILTER_MAX_*, which dpr_pg/filters.py checks too,
-- checked in linear time before the document is walked: its size from the datum's header, its
-- depth by a jsonpath that stops one level past the limit, its values and numbers on its text with the strings
-- blanked out.
CREATE OR REPLACE FUNCTION dpr_pg.compile_filter(filter jsonb, OUT clause text, OUT params jsonb[])
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_chars CONSTANT integer := @FILTER_MAX_CHARS@;
    max_number_chars CONSTANT integer := @FILTER_MAX_NUMBER_CHARS@;
    max_nodes CONSTANT integer := @FILTER_MAX_NODES@;
    max_depth CONSTANT integer := @FILTER_MAX_DEPTH@;
    doc text;
    shape text;
    nodes bigint;
    too_large CONSTANT text := 'filter too large: %s; the limits are @FILTER_MAX_CHARS@ characters of JSON, '
        '@FILTER_MAX_DEPTH@ levels, @FILTER_MAX_NODES@ values and numbers of @FILTER_MAX_NUMBER_CHARS@ characters: '
        'split the search, or use $in with fewer values';
BEGIN
    filter := COALESCE(filter, '{}');
    IF jsonb_typeof(filter) <> 'object' THEN
        PERFORM dpr_pg._filter_error('expected the filter as a JSON object like {"lang": "es"}, not a '
                                     || jsonb_typeof(filter));
    END IF;
    -- jsonb's binary form is at most about 4x its text (an array of one-digit numbers): a larger one is
    -- refused from its header alone, without reading it.
    IF pg_column_size(filter) > 8 * max_chars THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'dpr_pg ' || format(too_large,
            format('%s bytes of jsonb, more than %s characters of JSON', pg_column_size(filter), max_chars));
    END IF;
    doc := filter::text;
    IF length(doc) > max_chars THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'dpr_pg ' || format(too_large,
            format('more than %s characters of JSON', max_chars));
    END IF;
    IF jsonb_path_exists(filter, format('strict $.**{%s}', max_depth + 1)::jsonpath) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'dpr_pg ' || format(too_large,
            format('more than %s levels deep', max_depth));
    END IF;
    -- Strings (keys and values) become s: what is left is punctuation, numbers, true, false and null.
    shape := regexp_replace(doc, '"(?:[^"\\]|\\.)*"', 's', 'g');
    IF shape ~ format('[-.0-9]{200}[-.0-9]{%s}', max_number_chars + 1 - 200) THEN  -- a count is at most 255
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'dpr_pg ' || format(too_large,
            format('a number of more than %s characters', max_number_chars));
    END IF;
    -- values: the root, one per item after a comma, one per first item of a non-empty container
    nodes := 1 + (length(shape) - length(replace(shape, ',', '')))
           + (length(shape) - length(translate(shape, '[{', '')))
           - (length(shape) - length(replace(replace(shape, '[]', ''), '{}', ''))) / 2;
    IF nodes > max_nodes THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'dpr_pg ' || format(too_large,
            format('more than %s values', max_nodes));
    END IF;
    SELECT d.params, d.clause INTO params, clause FROM dpr_pg._filter_document(filter, '{}'::jsonb[]) AS d;
END
$$;

-- The path of a dense top-k search over the rows of `source` (a FROM item: dpr_pg.passages, or an
-- app table's subquery) that match `where_sql`, which may refer to $1 (params) and $4 (collection).
-- The rules of dpr_pg/search/planner.py with the numbers of dpr_pg/tuning.py:
-- no filter → HNSW (exact above k = @MAX_EF_SEARCH@); a filter on pgvector < 0.8, or k above
-- @MAX_EF_SEARCH@ → exact; a narrow filter (≤ exact_threshold rows by the estimate, ≤ @EXACT_MAX_ROWS@
-- rows that are ≤ exact_selectivity of `relation`, or ≤ exact_threshold by a count bounded at
-- exact_threshold + 1 when the estimate is within @COUNT_BAND@ times it) → exact over the filtered
-- rows; otherwise an iterative HNSW scan. A search of one collection of a partitioned dpr_pg.passages
-- larger than exact_threshold takes its partition's HNSW index when there is no other filter, and
-- judges a filter's share against the partition's rows (the partition rule of dpr_pg/search/planner.py);
-- a search of every collection of it walks each partition's index at the partitions' share of ef_search.
-- When `relation` has no statistics (never analysed), a low estimate is a guess: the bounded count
-- decides instead (exact or iterative HNSW). The caller falls back to exact when the index scan
-- returns fewer than k rows. The two thresholds are arguments so that tests can reach every rule;
-- `estimate`, when given, stands in for PostgreSQL's estimate of the matching rows.
-- `filtered_rows`: the rows of the filtered HNSW index the filter covers (dpr_pg._filtered_plan), against
-- which a filter's share is judged instead of the table's or the partition's.
DROP FUNCTION IF EXISTS dpr_pg._search_plan(regclass, text, text, jsonb[], integer, text, integer, double precision,
                                            double precision);
CREATE OR REPLACE FUNCTION dpr_pg._search_plan(
    relation regclass, source text, where_sql text, params jsonb[], k integer, collection text DEFAULT NULL,
    exact_threshold integer DEFAULT @EXACT_THRESHOLD@, exact_selectivity double precision DEFAULT @EXACT_SELECTIVITY@,
    estimate double precision DEFAULT NULL, filtered_rows double precision DEFAULT NULL,
    OUT path text, OUT estimated_rows double precision, OUT matching_rows bigint, OUT ef_search integer)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pgv integer[];
    plan json;
    table_rows double precision;
    rls boolean := row_security_active(relation);
    trusted boolean := true;  -- statistics the plan may trust; else the bounded count decides
    partition_rows double precision;  -- the rows of the searched collection's partition, when it has one
    spread record;  -- how the partitions spread the rows, for a search of every collection
    unfiltered_ef integer := greatest(k, @UNFILTERED_EF_SEARCH@);
    filtered_ef integer := greatest(k, @FILTERED_EF_SEARCH@);
BEGIN
    -- A search of every collection of dpr_pg.passages partitioned by collection walks each partition's
    -- HNSW index, and PostgreSQL merges them: each index scan makes its whole first search before the
    -- first row comes. Each keeps the largest partition's share of the one index's ef_search, rounded
    -- up, at least @PARTITIONS_MIN_EF_SEARCH@ (one partition may hold a question's whole top k, when
    -- collections follow topics) and k; unless a partition was never analysed.
    -- The same numbers, in the same order of operations, as spread_ef_search in dpr_pg/search/planner.py.
    IF collection IS NULL AND NOT rls AND relation = 'dpr_pg.passages'::regclass
            AND (SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = relation) THEN
        SELECT count(*) AS partitions, max(c.reltuples::float8) AS largest, sum(c.reltuples::float8) AS total,
               bool_and(c.reltuples >= 0) AS analyzed
        INTO spread
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = relation;
        IF spread.partitions > 0 AND spread.analyzed AND spread.total > 0 THEN
            unfiltered_ef := greatest(k, least(@UNFILTERED_EF_SEARCH@, greatest(@PARTITIONS_MIN_EF_SEARCH@,
                ceil(@UNFILTERED_EF_SEARCH@ * spread.largest / spread.total)::integer)));
            filtered_ef := greatest(k, least(@FILTERED_EF_SEARCH@, greatest(@PARTITIONS_MIN_EF_SEARCH@,
                ceil(@FILTERED_EF_SEARCH@ * spread.largest / spread.total)::integer)));
        END IF;
    END IF;
    IF where_sql = 'true' AND NOT rls THEN
        IF k > @MAX_EF_SEARCH@ THEN
            path := 'exact';  -- above hnsw.ef_search's limit
        ELSE
            path := 'hnsw';
            ef_search := unfiltered_ef;
        END IF;
        RETURN;
    END IF;
    SELECT string_to_array(split_part(extversion, '-', 1), '.')::integer[] INTO pgv
    FROM pg_extension WHERE extname = 'vector';
    IF pgv < ARRAY[@ITERATIVE_SCAN_VERSION@] OR k > @MAX_EF_SEARCH@ THEN
        path := 'exact';  -- no iterative index scans, or k above hnsw.ef_search's limit
        RETURN;
    END IF;
    -- A search of one collection of dpr_pg.passages partitioned by collection (dpr_pg/db/partitions.py)
    -- reads that collection's partition, which has an HNSW index of its own: a collection larger than
    -- exact_threshold (its rows as of the last ANALYZE) with no other filter walks that index, and a
    -- filter's share is judged against the partition's rows rather than the table's. dpr_pg.search
    -- builds 'true AND collection = $4' for a search of one collection with no filter.
    IF collection IS NOT NULL AND NOT rls AND estimate IS NULL AND relation = 'dpr_pg.passages'::regclass
            AND (SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = relation) THEN
        SELECT c.reltuples INTO partition_rows FROM pg_class c
        WHERE c.oid = to_regclass(format('dpr_pg.%I', 'passages_c_' || left(md5(collection), 16)));
        IF partition_rows < 0 OR partition_rows <= exact_threshold THEN  -- never analysed, or small
            partition_rows := NULL;
        ELSIF where_sql = 'true AND collection = $4' THEN
            path := 'hnsw-iterative';
            estimated_rows := partition_rows;
            ef_search := greatest(k, @UNFILTERED_EF_SEARCH@);
            RETURN;
        END IF;
    END IF;
    IF filtered_rows IS NOT NULL THEN
        partition_rows := filtered_rows;  -- the filter's share of the filtered index's rows
    END IF;
    IF rls AND estimate IS NULL THEN
        -- Row-level security (a tenant role, see dpr_pg.grant_access) hides rows, and PostgreSQL
        -- estimates a non-leakproof condition such as @> without statistics for the caller; the
        -- policy filters every search, filter or not: the bounded count of the visible matches decides.
        trusted := false;
    ELSIF estimate IS NULL THEN  -- statistics first; a bounded count only when they say the filter may be narrow
        EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM ' || source || ' WHERE ' || where_sql
            INTO plan USING params, NULL::text, k, collection;
        estimated_rows := (plan -> 0 -> 'Plan' ->> 'Plan Rows')::double precision;
        -- A table never analysed has no statistics, and PostgreSQL's estimate is a fixed guess (0.5 % of
        -- the table for an equality): never a sign of a narrow filter. The bounded count decides then.
        -- pg_stats shows only what the role may read (nothing under row-level security): a count too.
        IF estimated_rows <= greatest(@COUNT_BAND@ * exact_threshold, @EXACT_MAX_ROWS@) THEN
            SELECT c.reltuples, EXISTS (SELECT 1 FROM pg_stats s WHERE s.schemaname = n.nspname AND s.tablename = c.relname)
            INTO table_rows, trusted
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
        END IF;
    ELSE
        estimated_rows := estimate;
    END IF;
    IF NOT trusted THEN
        EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM ' || source || ' WHERE ' || where_sql || ' LIMIT $5) AS m'
            INTO matching_rows USING params, NULL::text, k, collection, exact_threshold + 1;
        IF matching_rows <= exact_threshold THEN
            path := 'exact';
        ELSE
            path := 'hnsw-iterative';
            ef_search := filtered_ef;
        END IF;
        RETURN;
    END IF;
    IF estimated_rows <= exact_threshold THEN
        path := 'exact';  -- right at any size; a bounded count would cost as much as the search
        RETURN;
    END IF;
    IF exact_selectivity > 0 AND estimated_rows <= @EXACT_MAX_ROWS@ THEN
        IF partition_rows IS NOT NULL THEN
            table_rows := partition_rows;
        ELSIF table_rows IS NULL THEN  -- the estimate came from the caller
            SELECT c.reltuples INTO table_rows FROM pg_class c WHERE c.oid = relation;
        END IF;
        IF estimated_rows <= exact_selectivity * table_rows THEN
            path := 'exact';  -- this narrow a share of the table, iterative HNSW loses recall
            RETURN;
        END IF;
    END IF;
    IF estimated_rows <= @COUNT_BAND@ * exact_threshold THEN
        EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM ' || source || ' WHERE ' || where_sql || ' LIMIT $5) AS m'
            INTO matching_rows USING params, NULL::text, k, collection, exact_threshold + 1;
        IF matching_rows <= exact_threshold THEN
            path := 'exact';
            RETURN;
        END IF;
    END IF;
    path := 'hnsw-iterative';
    ef_search := filtered_ef;
END
$$;

-- What the HNSW index on passages compares (dpr_pg.settings, migration 0015; see dpr_pg/storage.py):
-- 'vector', 'halfvec' or 'bit', and how many candidates per hit a 'bit' index scan re-ranks.
-- A database downgraded below 0015 has no settings table: its index is the vector one.
CREATE OR REPLACE FUNCTION dpr_pg._storage(OUT storage text, OUT rerank_multiple integer)
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    storage := 'vector';
    rerank_multiple := 4;
    IF to_regclass('dpr_pg.settings') IS NULL THEN
        RETURN;
    END IF;
    SELECT COALESCE(max(s.value) FILTER (WHERE s.name = 'storage'), 'vector'),
           COALESCE(max(s.value) FILTER (WHERE s.name = 'rerank_multiple'), '4')::integer
    INTO storage, rerank_multiple FROM dpr_pg.settings AS s;
END
$$;

-- The filtered HNSW index (dpr_pg/db/filtered.py) whose every key/value the filter holds as a top-level
-- plain equality (the same JSON value: jsonb's text of it), the one with fewest rows if several; its
-- rows (those of the collection's partition when the table is partitioned and one is searched),
-- whether the filter is exactly its document, and `within`: a collection searched on a plain table,
-- a condition within the index's rows. Nothing under row-level security, on pgvector < @ITERATIVE_SCAN_VERSION@ or above k = @MAX_EF_SEARCH@,
-- or when those rows are fewer than k (the index cannot hold a top k):
-- the rules of dpr_pg/search/planner.py and dpr_pg/db/filtered.py's matching_index.
CREATE OR REPLACE FUNCTION dpr_pg._filtered_plan(filter jsonb, collection text, k integer,
                                                 OUT name text, OUT index_rows double precision, OUT exact boolean,
                                                 OUT within boolean)
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mark CONSTANT text := 'dpr_pg filtered HNSW index ';
    plain jsonb;
    partitioned boolean;
    leaf text;
BEGIN
    IF filter IS NULL OR jsonb_typeof(filter) <> 'object' OR filter = '{}' OR k > @MAX_EF_SEARCH@
            OR row_security_active('dpr_pg.passages')
            OR (SELECT string_to_array(split_part(extversion, '-', 1), '.')::integer[] < ARRAY[@ITERATIVE_SCAN_VERSION@]
                FROM pg_extension WHERE extname = 'vector') THEN
        RETURN;
    END IF;
    SELECT jsonb_object_agg(e.key, CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value -> '$eq' ELSE e.value END)
    INTO plain FROM jsonb_each(filter) AS e
    WHERE jsonb_typeof(e.value) IN ('string', 'number', 'boolean')
       OR (jsonb_typeof(e.value) = 'object' AND e.value - '$eq' = '{}'
           AND jsonb_typeof(e.value -> '$eq') IN ('string', 'number', 'boolean'));
    IF plain IS NULL THEN
        RETURN;
    END IF;
    partitioned := (SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = 'dpr_pg.passages'::regclass);
    leaf := CASE WHEN partitioned AND collection IS NOT NULL
                 THEN 'passages_c_' || left(md5(collection), 16) END;
    SELECT x.relname, x.rows, (SELECT count(*) FROM jsonb_object_keys(filter)) = x.keys,
           collection IS NOT NULL AND NOT partitioned
    INTO name, index_rows, exact, within
    FROM (SELECT c.relname, (SELECT count(*) FROM jsonb_object_keys(d.doc)) AS keys, d.doc,
                 CASE WHEN c.relkind <> 'I' THEN greatest(c.reltuples, 0)
                      ELSE (SELECT coalesce(sum(greatest(l.reltuples, 0)), 0)
                            FROM pg_partition_tree(c.oid) t JOIN pg_class l ON l.oid = t.relid
                            JOIN pg_index li ON li.indexrelid = l.oid JOIN pg_class tb ON tb.oid = li.indrelid
                            WHERE t.isleaf AND (leaf IS NULL OR tb.relname = leaf)) END AS rows
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid,
               LATERAL (SELECT substr(obj_description(c.oid, 'pg_class'), length(mark) + 1) AS text) AS cm,
               LATERAL (SELECT CASE WHEN pg_input_is_valid(cm.text, 'jsonb') THEN cm.text::jsonb END AS doc) AS d
          WHERE i.indrelid = 'dpr_pg.passages'::regclass AND i.indisvalid
            AND starts_with(coalesce(obj_description(c.oid, 'pg_class'), ''), mark)
            AND jsonb_typeof(d.doc) = 'object') AS x
    WHERE NOT EXISTS (SELECT 1 FROM jsonb_each(x.doc) AS e WHERE (plain -> e.key)::text IS DISTINCT FROM e.value::text)
    ORDER BY x.rows, x.relname
    LIMIT 1;
    IF index_rows < k THEN  -- it cannot hold a top k: walking it would end in an exact scan
        name := NULL; index_rows := NULL; exact := NULL; within := NULL;
    END IF;
END
$$;

-- Dense top-k by inner product (score = embedding · query), with a filter that never comes back short:
-- the path is dpr_pg._search_plan's, and an index scan that finds fewer than k rows is answered
-- exactly. `SET client_min_messages = debug1` shows the plan as a DEBUG message. Under row-level
-- security the plan counts the rows the caller may read (see dpr_pg._search_plan). The index scan
-- orders by the expression of the storage's index (dpr_pg._storage); its rows are scored and ordered
-- by the full inner product, after a 'bit' scan over k * rerank_multiple candidates.
CREATE OR REPLACE FUNCTION dpr_pg.search(query vector, k integer, filter jsonb DEFAULT '{}', collection text DEFAULT NULL)
RETURNS SETOF dpr_pg.hit
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, dpr_pg, @VECTOR_SCHEMA@, pg_temp
AS $$
DECLARE
    compiled record;
    where_sql text;
    dim integer;
    chosen record;
    covered record;
    path text;
    fell_back boolean := false;
    hits dpr_pg.hit[];
    old_ef text;
    old_iterative text;
    old_sort text;
    rls boolean;
    stored record;
    ann_order text;
    candidates integer;
    select_list CONSTANT text := 'id, external_id, collection, title, text, metadata';
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'dpr_pg.search: the query vector is NULL; pass a vector';
    END IF;
    IF k IS NULL OR k < 1 OR k > @MAX_K@ THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('dpr_pg.search: expected k between 1 and @MAX_K@, not %s', k);
    END IF;
    SELECT a.atttypmod INTO dim FROM pg_attribute a
    WHERE a.attrelid = 'dpr_pg.passages'::regclass AND a.attname = 'embedding';
    IF vector_dims(query) <> dim THEN
        RAISE EXCEPTION USING ERRCODE = '22000',
            MESSAGE = format('dpr_pg.search: expected a %s-dimension query vector, not %s', dim, vector_dims(query));
    END IF;
    compiled := dpr_pg.compile_filter(filter);
    where_sql := compiled.clause || CASE WHEN collection IS NULL THEN '' ELSE ' AND collection = $4' END;
    rls := row_security_active('dpr_pg.passages');
    -- A filtered HNSW index the filter covers: exactly its document walks it unfiltered (its predicate
    -- is implied by where_sql, so the index scan below keeps the WHERE), or with an iterative scan when
    -- a collection of a plain table filters within it; further conditions are judged against its rows.
    covered := dpr_pg._filtered_plan(filter, collection, k);
    IF covered.exact THEN
        SELECT CASE WHEN covered.within THEN 'hnsw-iterative' ELSE 'hnsw' END AS path,
               covered.index_rows AS estimated_rows, NULL::bigint AS matching_rows,
               greatest(k, @UNFILTERED_EF_SEARCH@) AS ef_search INTO chosen;
    ELSE
        SELECT * INTO chosen FROM dpr_pg._search_plan('dpr_pg.passages', 'dpr_pg.passages', where_sql,
                                                      compiled.params, k, collection, filtered_rows => covered.index_rows);
    END IF;
    path := chosen.path;

    IF path IN ('hnsw', 'hnsw-iterative') THEN
        SELECT * INTO stored FROM dpr_pg._storage();
        -- dim is an integer from the catalog: the expression repeats the index's own
        ann_order := CASE stored.storage
            WHEN 'halfvec' THEN format('embedding::halfvec(%s) <#> $2::halfvec(%s)', dim, dim)
            WHEN 'bit' THEN format('binary_quantize(embedding)::bit(%s) <~> binary_quantize($2)::bit(%s)', dim, dim)
            ELSE 'embedding <#> $2' END;
        candidates := CASE WHEN stored.storage = 'bit' THEN k * stored.rerank_multiple ELSE k END;
        old_ef := current_setting('hnsw.ef_search');
        old_iterative := current_setting('hnsw.iterative_scan', true);
        PERFORM set_config('hnsw.ef_search', least(greatest(chosen.ef_search, candidates), @MAX_EF_SEARCH@)::text, true);
        -- a non-iterative scan returns at most ef_search rows: more candidates need the iterative scan
        IF path = 'hnsw-iterative' OR candidates > chosen.ef_search THEN
            PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        END IF;
        -- Under row-level security PostgreSQL cannot see how many rows the policy keeps and guesses
        -- few: without this it sorts what the collection index finds instead of reading HNSW in order.
        -- On a filtered HNSW index too: it takes a tag and a collection as independent, and may guess few.
        old_sort := current_setting('enable_sort');
        IF rls OR covered.name IS NOT NULL THEN
            PERFORM set_config('enable_sort', 'off', true);
        END IF;
        EXECUTE format(
            'SELECT (array_agg(ROW(%1$s, -d)::dpr_pg.hit ORDER BY d, id))[1:$3] FROM ('
            '  SELECT %1$s, embedding <#> $2 AS d FROM dpr_pg.passages WHERE %2$s'
            '  ORDER BY %3$s LIMIT $5) AS ann', select_list,
            CASE WHEN path = 'hnsw' AND covered.name IS NULL THEN 'true' ELSE where_sql END, ann_order)
            INTO hits USING compiled.params, query, k, collection, candidates;
        PERFORM set_config('hnsw.ef_search', old_ef, true);
        PERFORM set_config('enable_sort', old_sort, true);
        IF old_iterative IS NOT NULL THEN
            PERFORM set_config('hnsw.iterative_scan', old_iterative, true);
        END IF;
        IF COALESCE(cardinality(hits), 0) < k THEN
            path := 'exact';  -- the index scan ran out before k matches: answer exactly
            fell_back := true;
        END IF;
    END IF;
    IF path = 'exact' THEN
        EXECUTE format(
            'SELECT array_agg(ROW(%1$s, s)::dpr_pg.hit ORDER BY s DESC, id) FROM ('
            '  SELECT %1$s, inner_product(embedding, $2) AS s FROM dpr_pg.passages WHERE %2$s'
            '  ORDER BY s DESC, id LIMIT $3) AS exact', select_list, where_sql)
            INTO hits USING compiled.params, query, k, collection;
    END IF;
    RAISE DEBUG 'dpr_pg.search plan: %', json_build_object(
        'path', path, 'estimated_rows', chosen.estimated_rows, 'matching_rows', chosen.matching_rows,
        'ef_search', chosen.ef_search, 'fell_back', fell_back)::jsonb
        || CASE WHEN covered.name IS NULL THEN '{}' ELSE jsonb_build_object('filtered_index', covered.name) END;
    RETURN QUERY SELECT * FROM unnest(hits);
END
$$;

-- Spanish full-text ('spanish' tsvector, websearch syntax) and dense search, fused by reciprocal
-- rank fusion: score = dense_weight / (rrf_k + dense rank) + text_weight / (rrf_k + text rank),
-- ranks 1-based over each side's top max(k, candidates) rows.
CREATE OR REPLACE FUNCTION dpr_pg.hybrid_search(query vector, query_text text, k integer, filter jsonb DEFAULT '{}',
                                     collection text DEFAULT NULL, dense_weight double precision DEFAULT 1.0,
                                     text_weight double precision DEFAULT 1.0, rrf_k integer DEFAULT 60,
                                     candidates integer DEFAULT 100)
RETURNS SETOF dpr_pg.hit
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, dpr_pg, @VECTOR_SCHEMA@, pg_temp
AS $$
DECLARE
    max_text_chars CONSTANT integer := @MAX_QUERY_TEXT_CHARS@;
    max_text_words CONSTANT integer := @MAX_QUERY_TEXT_WORDS@;
    words bigint;
    compiled record;
    n integer;
BEGIN
    IF k IS NULL OR k < 1 OR k > @MAX_K@ THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('dpr_pg.hybrid_search: expected k between 1 and @MAX_K@, not %s', k);
    END IF;
    IF rrf_k IS NULL OR rrf_k < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('dpr_pg.hybrid_search: expected rrf_k >= 0, not %s', COALESCE(rrf_k::text, 'NULL'));
    END IF;
    -- NaN compares above every number in PostgreSQL, so this refuses NaN, both infinities and NULL.
    IF NOT (dense_weight > '-Infinity' AND dense_weight < 'Infinity' AND text_weight > '-Infinity'
            AND text_weight < 'Infinity') OR dense_weight IS NULL OR text_weight IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('dpr_pg.hybrid_search: expected finite weights, not dense_weight %s and text_weight %s',
                             COALESCE(dense_weight::text, 'NULL'), COALESCE(text_weight::text, 'NULL'));
    END IF;
    IF candidates IS NOT NULL AND (candidates < 1 OR candidates > @MAX_K@) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('dpr_pg.hybrid_search: expected candidates between 1 and @MAX_K@, not %s', candidates);
    END IF;
    -- octet_length reads the header only: a text far over the limit is refused without being read.
    IF octet_length(query_text) > 4 * max_text_chars OR length(query_text) > max_text_chars THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('dpr_pg.hybrid_search: expected a query text of at most %s characters, not %s',
                             max_text_chars, length(query_text)),
            HINT = 'full-text search needs the question, not a document: shorten the text';
    END IF;
    SELECT count(*) INTO words FROM regexp_split_to_table(query_text, '\s+') AS w WHERE w <> '';
    IF words > max_text_words THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('dpr_pg.hybrid_search: expected a query text of at most %s words, not %s',
                             max_text_words, words),
            HINT = 'full-text ranking costs grow with every word of the query: keep the words that matter';
    END IF;
    n := greatest(k, COALESCE(candidates, 100));
    compiled := dpr_pg.compile_filter(filter);
    RETURN QUERY EXECUTE format($q$
        WITH dense AS (
            SELECT d.id, row_number() OVER (ORDER BY d.score DESC, d.id) AS r
            FROM dpr_pg.search($2, $3, $5, $4) AS d
        ), lexical AS (
            SELECT p.id, row_number() OVER (ORDER BY ts_rank_cd(p.tsv, q.q) DESC, p.id) AS r
            FROM dpr_pg.passages AS p, websearch_to_tsquery('spanish', $6) AS q(q)
            WHERE p.tsv @@ q.q AND %s %s
            ORDER BY ts_rank_cd(p.tsv, q.q) DESC, p.id LIMIT $3
        ), fused AS (
            SELECT COALESCE(dense.id, lexical.id) AS id,
                   COALESCE($7 / ($9 + dense.r), 0) + COALESCE($8 / ($9 + lexical.r), 0) AS score
            FROM dense FULL JOIN lexical ON dense.id = lexical.id
        )
        SELECT p.id, p.external_id, p.collection, p.title, p.text, p.metadata, f.score
        FROM fused AS f JOIN dpr_pg.passages AS p ON p.id = f.id
        ORDER BY f.score DESC, p.id LIMIT $10 $q$,
        compiled.clause, CASE WHEN collection IS NULL THEN '' ELSE 'AND p.collection = $4' END)
        USING compiled.params, query, n, collection, filter, COALESCE(query_text, ''),
              dense_weight, text_weight, rrf_k::double precision, k;
END
$$;

