"""The frozen history: a populated database at any earlier revision upgrades to exactly what a fresh
``init`` makes, losing no row; a populated database downgrades one revision at a time to base.

The revisions come from the migration scripts themselves, so a new migration is covered as soon as
it exists. Each revision's database is copied from a template made once (upgrading the previous
revision's template by one step), and holds a few passages and a synced app table.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from dpr_pg.db import schema
from dpr_pg.errors import SchemaError

DIM = 4
REVISIONS = [script.revision
             for script in reversed(list(ScriptDirectory.from_config(schema.alembic_config()).walk_revisions()))]
EARLIER = REVISIONS[:-1]
# sha256 of what each revision runs, offline: its upgrade (pgvector in public, then in a schema
# "extensions") and its downgrade. A new revision adds its line; an existing line never changes.
# (An Alembic release that writes its --sql output otherwise changes them all: then check the
# scripts' diff, and update the lines together.)
FROZEN_SQL_SHA256 = {
    "0001": "c4cd852a782aa069966330a142322188f11ca35224e8b8c6bc697209c170e2b5",
    "0002": "ee906e77ab7572bfca488a06b79908b50c4c9b0db7cac8aa677f17dbedc998e9",
    "0003": "50b41d6e6a5f70cbed59767abe25e1147a24b850c6f2794e54f09542ba183311",
    "0004": "bb6e21db5ef1d89c27a1edf4887ab7b454a5afac557a06e268c918b7d8138cb3",
    "0005": "b30b50ddc059dd1e789d699d5adbd31f2f416178425e6b1ee5f1d803a0aa016b",
    "0006": "06dc762f65d974449c664a3a56a2883c60dd48ad28d5051139caee76529b0cfa",
    "0007": "14047c17af498add96e72e818d9d8fcccced4527eb2b29758423327c8bd13819",
    "0008": "1f0a6571b26a6ef039289fb796a240c0d2fa62effa1959fb5d35d2fe9ee8fbaa",
    "0011": "6536a2856abd04d93c0ca5c27d8f0c63122a24dbaa47a882479df37295e70b43",
    "0012": "655269bfb680591a96bd5bf2dbc53c28c8094df73f1fee4c3a2438b2f9d9c2ad",
    "0013": "da1170a64cec14435ef0f10767d18041b1717c814624e06ce6d16b0e3884813a",
    "0014": "d58c10a6355e3df3fb43380c194d1d24d1bd61ac44752c29ebadd9451de9f78a",
    "0015": "25c5597c10f8133ef34b1b2b13c5d1be4bfa6d36344ea4cb18ee7a53de9e2729",
}
DPR_TABLES = ("dpr_pg.encoders", "dpr_pg.passages", "dpr_pg.synced_tables", "dpr_pg.sync_queue")

# The catalog of dpr_pg's schema and of the app's tables (schema public), in comparable text.
CATALOG = {
    "relations": """
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, coalesce(c.reloptions::text, ''),
               c.relrowsecurity, c.relforcerowsecurity, coalesce(c.relacl::text, '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('dpr_pg', 'public') ORDER BY 1, 2""",
    "policies": """
        SELECT p.schemaname, p.tablename, p.policyname, p.permissive, p.roles::text, p.cmd,
               coalesce(p.qual, ''), coalesce(p.with_check, '')
        FROM pg_policies p WHERE p.schemaname IN ('dpr_pg', 'public') ORDER BY 1, 2, 3""",
    "columns": """
        SELECT c.oid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attgenerated, a.attidentity, a.attstorage,
               coalesce(col_description(c.oid, a.attnum), ''),
               row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname IN ('dpr_pg', 'public') AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2""",
    "indexes": """
        SELECT pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisprimary, i.indisunique
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('dpr_pg', 'public') ORDER BY 1""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname IN ('dpr_pg', 'public') ORDER BY 1, 2""",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('dpr_pg', 'public') AND NOT t.tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), coalesce(p.proacl::text, '')
        FROM pg_proc p WHERE p.pronamespace = 'dpr_pg'::regnamespace ORDER BY 1""",
}


def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        found = {name: [tuple(row) for row in conn.execute(sa.text(query))] for name, query in CATALOG.items()}
        found["revision"] = [(schema.current_revision(conn),)]
    engine.dispose()
    return found


def rows(url: str, columns: dict[str, list[str]] | None = None) -> dict[str, tuple[Any, ...]]:
    """Each table's row count and a digest of its rows (of ``columns[table]`` when given: the ones a
    later revision did not add), and its columns, for the tables that exist."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    found = {}
    with engine.connect() as conn:
        for table in (*DPR_TABLES, "public.articles"):
            if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
                continue
            names = (columns or {}).get(table) or list(conn.execute(sa.text(
                "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum"), {"t": table}).scalars())
            row = "ROW(" + ", ".join(f't."{name}"' for name in names) + ")::text"
            count, digest = conn.execute(sa.text(
                f"SELECT count(*), md5(string_agg({row}, '|' ORDER BY {row})) FROM {table} AS t")).one()
            found[table] = (count, digest, names)
    engine.dispose()
    return found


def fill(url: str, *, enable: bool) -> None:
    """Passages, an encoder, and an app table of articles; synced as the worker leaves it when ``enable``."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        encoder = conn.execute(sa.text(
            "INSERT INTO dpr_pg.encoders (fingerprint, question_model, passage_model, tokenizer_hash, dim, max_length) "
            "VALUES ('fp-history', 'q', 'p', 'tok', :dim, 512) RETURNING id"), {"dim": DIM}).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
            "encoder_id) VALUES (:c, :e, :t, :x, CAST(:m AS jsonb), :h, :v, :enc)"),
            [{"c": "wiki" if i % 3 else "news", "e": f"p{i}", "t": f"Título {i}", "x": f"Madrid es la capital {i}.",
              "m": json.dumps({"n": i, "lang": "es" if i % 2 else "en"}), "h": f"h{i}",
              "v": str([float((i * j) % 7 - 3) for j in range(1, DIM + 1)]), "enc": encoder} for i in range(30)])
        conn.execute(sa.text("CREATE TABLE public.articles (id integer PRIMARY KEY, title text NOT NULL, body text)"))
        if enable:
            conn.execute(sa.text("SELECT dpr_pg.enable_table('public.articles', ARRAY['body'], 'title', :dim)"),
                         {"dim": DIM})
        conn.execute(sa.text("INSERT INTO public.articles VALUES (:id, :t, :b)"),
                     [{"id": i, "t": f"Artículo {i}", "b": f"Texto del artículo {i}"} for i in range(20)])
        if enable:  # what the worker leaves: embeddings written back, items done; then the app writes again
            conn.execute(sa.text(
                "UPDATE public.articles SET embedding = CAST(:v AS vector), dpr_encoder_id = :enc, "
                "dpr_content_hash = 'h' || id WHERE id < 15"), {"v": str([1.0] * DIM), "enc": encoder})
            conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue WHERE (row_key ->> 'id')::integer < 15"))
            conn.execute(sa.text("UPDATE public.articles SET body = 'Nuevo texto' WHERE id = 3"))
            conn.execute(sa.text("DELETE FROM public.articles WHERE id = 4"))
    engine.dispose()


def enabled_in(url: str) -> bool:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT to_regclass('dpr_pg.synced_tables')")).scalar() is not None
    engine.dispose()
    return found


@pytest.fixture(scope="module")
def revision_templates(server: Any) -> Iterator[dict[str, str]]:
    """Database name per revision (before head), each the previous one upgraded by one step."""
    templates: dict[str, str] = {}
    previous = None
    for revision in EARLIER:
        name = server.create_database(template=previous)
        engine = sa.create_engine(server.url_for(name), poolclass=sa.NullPool)
        schema.upgrade(engine, revision, dim=DIM)
        engine.dispose()
        templates[revision] = previous = name
    yield templates
    for name in templates.values():
        server.drop_database(name)


@pytest.fixture(scope="module")
def fresh_catalog(server: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog of a fresh ``init`` holding the same passages and synced app table."""
    name = server.create_database(template=server.initialized_template(DIM))
    fill(server.url_for(name), enable=True)
    try:
        return catalog(server.url_for(name))
    finally:
        server.drop_database(name)


def test_the_history_is_read_from_the_migration_scripts() -> None:
    assert REVISIONS[0] == "0001"
    assert REVISIONS[-1] == schema.head_revision()
    assert len(REVISIONS) == len(set(REVISIONS)) >= 9


def _offline_sql(direction: str, target: str, vector_schema: str = "public") -> str:
    """What ``alembic <direction> <target> --sql`` writes: the migrations alone (init_sql adds sql/ at head)."""
    cfg = schema.alembic_config(dim=768)
    cfg.cmd_opts = argparse.Namespace(x=[f"vector_schema={vector_schema}"])
    cfg.output_buffer = io.StringIO()
    getattr(command, direction)(cfg, target, sql=True)
    return cfg.output_buffer.getvalue()


def test_each_revision_runs_the_sql_it_ran_when_it_was_frozen() -> None:
    found, previous = {}, None
    for revision in REVISIONS:
        scripts = [_offline_sql("upgrade", f"{previous}:{revision}" if previous else revision, vector_schema)
                   for vector_schema in ("public", "extensions")]
        scripts.append(_offline_sql("downgrade", f"{revision}:{previous or 'base'}"))
        found[revision] = hashlib.sha256("".join(scripts).encode()).hexdigest()
        previous = revision
    assert found == FROZEN_SQL_SHA256

def test_each_revision_keeps_what_it_ran(server: Any, revision_templates: dict[str, str]) -> None:
    def facts(revision: str) -> tuple[Any, ...]:
        engine = sa.create_engine(server.url_for(revision_templates[revision]), poolclass=sa.NullPool)
        with engine.connect() as conn:
            found = conn.execute(sa.text(
                "SELECT (SELECT pg_get_functiondef(p.oid) FROM pg_proc p "
                "        WHERE p.oid = to_regprocedure('dpr_pg.search(vector, integer, jsonb, text)')), "
                "       to_regprocedure('dpr_pg.sync_row_key(jsonb, text[])') IS NOT NULL, "
                "       (SELECT count(*) FROM pg_constraint WHERE conname = 'sync_queue_tbl_fkey'), "
                "       (SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "        WHERE i.indexrelid = to_regclass('dpr_pg.passages_metadata_gin'))")).one()
        engine.dispose()
        return tuple(found)

    search_at_0004, row_key_function, queue_foreign_keys, metadata_index = facts("0004")
    assert "THEN 100 ELSE 200 END" in search_at_0004 and "est <= 10 * exact_threshold" in search_at_0004
    assert (row_key_function, queue_foreign_keys) == (True, 1)
    assert "jsonb_path_ops" not in metadata_index
    search_at_0007 = facts("0007")[0]
    assert "THEN 250 ELSE 400 END" in search_at_0007 and "exact_selectivity" not in search_at_0007
    assert "exact_selectivity CONSTANT double precision := 0.02" in facts("0008")[0]


def test_head_has_the_shape_the_edited_revisions_gave_it(fresh_catalog: dict[str, list[tuple[Any, ...]]]) -> None:
    constraints = {name: definition for _, name, definition in fresh_catalog["constraints"]}
    indexes = [row[0] for row in fresh_catalog["indexes"]]
    triggers = {name: definition for _, name, definition, _ in fresh_catalog["triggers"]}
    assert "sync_queue_tbl_fkey" not in constraints
    assert not any(signature.startswith("dpr_pg.sync_row_key") for signature, *_ in fresh_catalog["functions"])
    assert any("passages_metadata_gin" in index and "jsonb_path_ops" in index for index in indexes)
    assert "REFERENCING NEW TABLE AS dpr_new_rows FOR EACH STATEMENT" in triggers["dpr_sync_insert"]
    assert "REFERENCING OLD TABLE AS dpr_old_rows FOR EACH STATEMENT" in triggers["dpr_sync_delete"]


@pytest.mark.parametrize("revision", EARLIER)
def test_a_populated_database_at_an_earlier_revision_upgrades_to_what_init_makes(
    server: Any, revision_templates: dict[str, str], fresh_catalog: dict[str, list[tuple[Any, ...]]], revision: str
) -> None:
    name = server.create_database(template=revision_templates[revision])
    url = server.url_for(name)
    try:
        synced = enabled_in(url)
        fill(url, enable=synced)
        before = rows(url)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        result = schema.init(engine, dim=DIM)
        after = rows(url, {table: names for table, (_, _, names) in before.items()})
        if not synced:  # sync came with a later revision: enable the table now
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT dpr_pg.enable_table('public.articles', ARRAY['body'], 'title', :d)"),
                             {"d": DIM})
        engine.dispose()
        assert (result.previous_revision, result.revision) == (revision, schema.head_revision())
        assert {table: after[table] for table in before} == before
        assert catalog(url) == fresh_catalog
    finally:
        server.drop_database(name)


def test_a_populated_database_downgrades_one_revision_at_a_time_and_keeps_its_rows(
    server: Any, fresh_catalog: dict[str, list[tuple[Any, ...]]]
) -> None:
    name = server.create_database(template=server.initialized_template(DIM))
    url = server.url_for(name)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        fill(url, enable=True)
        with engine.begin() as conn:  # tenancy on, with a grant: the tenancy step takes both away
            conn.execute(sa.text("INSERT INTO dpr_pg.collection_grants (role, collection) "
                                 "VALUES (current_user::regrole, 'wiki')"))
            conn.execute(sa.text("SELECT dpr_pg.set_tenancy(true)"))
        kept = rows(url)
        refusals = []
        for target in [*reversed(EARLIER), "base"]:
            try:
                schema.downgrade(engine, target)
            except SchemaError as e:  # app tables still use the sync functions: the app disables them first
                refusals.append((target, str(e)))
                with engine.begin() as conn:
                    conn.execute(sa.text("SELECT dpr_pg.disable_table('public.articles')"))
                schema.downgrade(engine, target)
            with engine.connect() as conn:
                assert schema.current_revision(conn) == (None if target == "base" else target)
                if target != "base" and target < "0014":  # below the tenancy step: no grants, no policy or RLS left
                    assert conn.execute(sa.text(
                        "SELECT to_regclass('dpr_pg.collection_grants') IS NULL "
                        "AND NOT EXISTS (SELECT FROM pg_policies "
                        "                WHERE schemaname = 'dpr_pg' AND tablename IN ('passages', 'synced_tables')) "
                        "AND NOT relrowsecurity FROM pg_class WHERE oid = 'dpr_pg.passages'::regclass")).scalar()
            now = rows(url)
            if target != "base":  # base drops every dpr_pg table, as documented
                assert [now[t] for t in ("dpr_pg.encoders", "dpr_pg.passages")] == [
                    kept[t] for t in ("dpr_pg.encoders", "dpr_pg.passages")]
            assert now["public.articles"][0] == kept["public.articles"][0]
        assert [target for target, _ in refusals] == ["0002"]
        assert "articles" in refusals[0][1] and "disable_table" in refusals[0][1]
        leftovers = catalog(url)
        assert [row[1] for row in leftovers["relations"] if row[0] == "dpr_pg"] == [
            "alembic_version", "alembic_version_pkc"]
        assert leftovers["functions"] == []
        assert [row[1] for row in leftovers["columns"] if row[0] == "articles"] == ["body", "id", "title"]

        schema.init(engine, dim=DIM)
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT dpr_pg.enable_table('public.articles', ARRAY['body'], 'title', :d)"),
                         {"d": DIM})
        assert catalog(url) == fresh_catalog
    finally:
        engine.dispose()
        server.drop_database(name)
