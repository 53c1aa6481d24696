"""The worked example (examples/articles_app): an app with its own models and Alembic history adopts dpr_pg."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from dpr_pg.alembic_ops import include_object
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.sync.worker import run_worker

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "articles_app"


@pytest.fixture(scope="module")
def app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("articles_app", APP_DIR / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["articles_app"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app_engine(empty_url: str, app: ModuleType) -> Iterator[sa.Engine]:
    engine = sa.create_engine(empty_url)
    app.migrate(engine)
    yield engine
    engine.dispose()


def _expected_ranking(engine: sa.Engine, pair: EncoderPair, question: np.ndarray, where: str = "true") -> list[str]:
    """Exact ranking by inner product, computed in numpy from the rows' current text."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT a.title, a.body FROM articles a JOIN authors au ON au.id = a.author_id "
                                    f"WHERE a.published AND {where}")).all()
    scores = pair.passage.encode([(title, body) for title, body in rows]) @ question
    return [rows[i][0] for i in np.argsort(-scores)]


def test_app_inserts_edits_deletes_and_searches_its_own_rows(
    app_engine: sa.Engine, app: ModuleType, fp32_pair: EncoderPair
) -> None:
    Article, Author = app.Article, app.Author  # noqa: N806 - model classes
    with Session(app_engine) as session, session.begin():
        cervantes, lorca = Author(name="Cervantes"), Author(name="Lorca")
        session.add_all([
            Article(author=cervantes, title="El Quijote", body="Un hidalgo de La Mancha lee libros de caballerías."),
            Article(author=cervantes, title="Novelas ejemplares", body="Doce novelas cortas publicadas en 1613."),
            Article(author=lorca, title="Romancero gitano", body="Poemas sobre la Andalucía gitana."),
            Article(author=lorca, title="Bodas de sangre", body="Una tragedia rural en verso y prosa."),
            Article(author=lorca, title="Borrador", body="Texto sin publicar.", published=False),
        ])
    assert run_worker(app_engine, fp32_pair, once=True).embedded == 5

    question = fp32_pair.question.encode("¿Quién es el hidalgo de La Mancha?")
    with Session(app_engine) as session:
        first = [article.title for article, _ in app.search(session, question, k=10)]
    assert first == _expected_ranking(app_engine, fp32_pair, question)
    assert "Borrador" not in first

    # The app edits, deletes and inserts as it always did; the worker catches up.
    with Session(app_engine) as session, session.begin():
        quijote = session.scalars(sa.select(Article).where(Article.title == "El Quijote")).one()
        quijote.body = "Don Quijote y Sancho Panza recorren La Mancha."
        session.delete(session.scalars(sa.select(Article).where(Article.title == "Bodas de sangre")).one())
        session.add(Article(author_id=quijote.author_id, title="La Galatea", body="Una novela pastoril."))
    report = run_worker(app_engine, fp32_pair, once=True)
    assert (report.embedded, report.removed, report.failed) == (2, 1, 0)

    with Session(app_engine) as session:
        second = [article.title for article, _ in app.search(session, question, k=10)]
        only_lorca = [article.title for article, _ in app.search(session, question, k=10, author="Lorca",
                                                                 encoder=fp32_pair)]
    assert second == _expected_ranking(app_engine, fp32_pair, question)
    assert "Bodas de sangre" not in second and "La Galatea" in second
    assert only_lorca == ["Romancero gitano"]

    # Plain SQL gives the same ranking, with the filter over the table's own columns.
    with app_engine.connect() as conn:
        hits = conn.execute(sa.text(
            "SELECT h.row_data ->> 'title' FROM dpr_pg.search_table('articles', CAST(:q AS vector), 10, "
            "'{\"published\": true}') AS h"
        ), {"q": str(question.tolist())}).scalars().all()
    assert hits == second


def _app_table_schema(conn: sa.Connection) -> list[tuple]:
    queries = [
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attstorage::text, a.attnotnull, "
        "col_description(a.attrelid, a.attnum) FROM pg_attribute a "
        "WHERE a.attrelid = 'articles'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attname",
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'articles' ORDER BY indexname",
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'articles'::regclass "
        "AND NOT tgisinternal ORDER BY tgname",
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'articles'::regclass "
        "ORDER BY conname",
        "SELECT tbl::text, key_columns, text_columns, title_column, embedding_column, dim FROM dpr_pg.synced_tables",
    ]
    return [tuple(row) for query in queries for row in conn.execute(sa.text(query)).all()]


def test_disable_dpr_then_enable_dpr_gives_the_same_schema(app_engine: sa.Engine, app: ModuleType) -> None:
    with app_engine.connect() as conn:
        enabled = _app_table_schema(conn)
        conn.execute(sa.text("INSERT INTO authors VALUES (1, 'Cervantes')"))
        conn.execute(sa.text("INSERT INTO articles (id, author_id, title, body) VALUES (1, 1, 'Quijote', 'Hidalgo.')"))
        conn.commit()

        command.downgrade(app.alembic_config(conn), "0002")
        disabled = _app_table_schema(conn)
        queue = conn.execute(sa.text("SELECT count(*) FROM dpr_pg.sync_queue")).scalar()
        command.upgrade(app.alembic_config(conn), "head")
        again = _app_table_schema(conn)
        requeued = conn.execute(sa.text("SELECT row_key FROM dpr_pg.sync_queue")).scalars().all()

    assert again == enabled
    assert not any("embedding" in str(row) or "dpr_" in str(row) for row in disabled)
    assert queue == 0
    assert requeued == [{"id": 1}]  # rows already there are queued when DPR is enabled again


def test_offline_sql_mode_emits_enable_and_disable(app: ModuleType) -> None:
    up, down = io.StringIO(), io.StringIO()
    config = app.alembic_config()
    config.output_buffer = up
    command.upgrade(config, "0002:0003", sql=True)
    config = app.alembic_config()
    config.output_buffer = down
    command.downgrade(config, "0003:0002", sql=True)

    assert ("SELECT dpr_pg.enable_table(CAST('\"articles\"' AS REGCLASS), ARRAY['body'], 'title', 768, "
            "'embedding')") in up.getvalue()
    assert "SELECT dpr_pg.disable_table(CAST('\"articles\"' AS REGCLASS))" in down.getvalue()


def test_autogenerate_leaves_dpr_objects_alone_with_include_object(app_engine: sa.Engine, app: ModuleType) -> None:
    metadata = app.Article.metadata
    with app_engine.connect() as conn:
        plain = compare_metadata(MigrationContext.configure(conn), metadata)
        hooked = compare_metadata(MigrationContext.configure(conn, opts={"include_object": include_object}), metadata)

    assert any("articles_dpr_hnsw" in str(diff) for diff in plain)  # what the hook is there to hide
    assert hooked == []


def test_enable_dpr_before_dpr_pg_init_says_to_run_init(empty_url: str, app: ModuleType) -> None:
    from dpr_pg import DprPgError

    # As the app's developer types it: Alembic's own command line, in the app's folder.
    result = subprocess.run([sys.executable, "-m", "alembic", "-c", str(APP_DIR / "alembic.ini"), "upgrade", "head"],
                            capture_output=True, text=True, env={**os.environ, "DATABASE_URL": empty_url}, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "FAILED: op.enable_dpr('articles') needs dpr_pg's schema" in output and "run `dpr-pg init`" in output
    engine = sa.create_engine(empty_url)
    with engine.connect() as conn, pytest.raises(DprPgError, match="run `dpr-pg init`"):
        command.upgrade(app.alembic_config(conn), "head")
    engine.dispose()


@pytest.mark.parametrize("with_url", [True, False], ids=["DATABASE_URL", "embedded"])
def test_the_app_runs_as_the_readme_says(empty_url: str, tiny_models: tuple[Path, Path], with_url: bool) -> None:
    home = Path(tempfile.mkdtemp(prefix="dpr_pg_app_"))  # short: the embedded server's socket lives in it
    env = {**os.environ, "DPR_PG_HOME": str(home), "DPR_PG_QUESTION_MODEL": str(tiny_models[0]),
           "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}
    env.pop("DATABASE_URL", None)
    if with_url:
        env["DATABASE_URL"] = empty_url
    try:
        runs = [subprocess.run([sys.executable, str(APP_DIR / "app.py")], capture_output=True, text=True, env=env,
                               cwd=ROOT, timeout=300) for _ in range(1 if with_url else 2)]
    finally:
        shutil.rmtree(home, ignore_errors=True)
    for result in runs:
        assert result.returncode == 0, result.stderr
        assert sorted(line.split(maxsplit=1)[1] for line in result.stdout.splitlines()) == [
            "El Quijote", "Novelas ejemplares"]  # the second run adds no duplicates
    assert ("DATABASE_URL is not set" in runs[0].stderr) is not with_url


def test_the_app_without_models_says_what_to_set(empty_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_url, "DPR_PG_QUESTION_MODEL": "/nonexistent/question"}
    result = subprocess.run([sys.executable, str(APP_DIR / "app.py")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("articles_app: cannot load the question encoder '/nonexistent/question'")


@pytest.mark.parametrize("page", ["README.md", "docs/sync.md"])
def test_the_documented_search_table_query_finds_the_apps_rows(app_engine: sa.Engine, app: ModuleType,
                                                               fp32_pair: EncoderPair, page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    (query,) = [block for block in re.findall(r"```sql\n(.*?)```", text, re.DOTALL) if "search_table(" in block]
    with Session(app_engine) as session, session.begin():
        cervantes = app.Author(name="Cervantes")
        session.add_all([app.Article(author=cervantes, title="El Quijote", body="Un hidalgo de La Mancha."),
                         app.Article(author=cervantes, title="Borrador", body="Sin publicar.", published=False)])
    run_worker(app_engine, fp32_pair, once=True)
    question = fp32_pair.question.encode("¿Quién es el hidalgo?")
    with app_engine.connect() as conn:
        titles = conn.execute(sa.text(query.replace("$1::vector", "CAST(:q AS vector)")),
                              {"q": str(question.tolist())}).scalars(2).all()
    assert titles == ["El Quijote"]
