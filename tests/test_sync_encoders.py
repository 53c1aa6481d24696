"""An app table holds the embeddings of one encoder pair: workers and ORM searches with another are refused."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from _sync_app import HashPair, create_articles, wrong_rows
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dpr_pg.db import schema
from dpr_pg.errors import EncoderMismatchError, SearchError
from dpr_pg.search.orm import DprSearchable, model_search_statement
from dpr_pg.search.api import search_statement
from dpr_pg.encoders.pair import check_table_encoder
from dpr_pg.sync.queue import sync_status
from dpr_pg.sync.tables import enable_table
from dpr_pg.sync.worker import run_worker


class Base(DeclarativeBase):
    pass


class Article(DprSearchable, Base):
    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]


def _embedded_ids(engine: Engine, pair: HashPair) -> list[int]:
    with engine.connect() as conn:
        encoder = conn.execute(sa.text("SELECT id FROM dpr_pg.encoders WHERE fingerprint = :f"),
                               {"f": pair.fingerprint.id}).scalar()
        return list(conn.execute(sa.text("SELECT id FROM articles WHERE dpr_encoder_id = :e ORDER BY id"),
                                 {"e": encoder}).scalars())


def test_a_worker_with_another_pair_of_the_same_dimension_writes_nothing(engine: Engine, cli, database_url: str,
                                                                         tiny_models) -> None:
    create_articles(engine)
    first, other = HashPair(name="first"), HashPair(name="other")
    assert run_worker(engine, first, once=True).embedded == 4
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET body = body || ' (editado)' WHERE id <= 3"))

    report = run_worker(engine, other, once=True)

    assert (report.embedded, report.failed) == (0, 0)
    assert "its embeddings were made by question=first-q passage=first-p" in report.refused["public.articles"]
    assert _embedded_ids(engine, other) == []
    [status] = sync_status(engine)
    assert status.pending == 3 and (status.encoder or "").startswith("first-p (")
    question_dir, passage_dir = tiny_models
    result = cli("--database-url", database_url, "worker", "--once",
                 env={"DPR_PG_QUESTION_MODEL": str(question_dir), "DPR_PG_PASSAGE_MODEL": str(passage_dir)})
    assert result.returncode == 1 and "left public.articles alone: its embeddings were made by" in result.stderr
    assert "Traceback" not in result.stderr

    assert run_worker(engine, first, once=True).embedded == 3
    assert wrong_rows(engine, "articles", first) == []


def test_an_unbound_table_is_bound_to_the_pair_its_rows_hold(engine: Engine) -> None:
    create_articles(engine)
    first, other = HashPair(name="first"), HashPair(name="other")
    run_worker(engine, first, once=True)
    with engine.begin() as conn:  # as a table enabled before tables remembered their pair
        conn.execute(sa.text("UPDATE dpr_pg.synced_tables SET encoder_id = NULL"))
        conn.execute(sa.text("UPDATE articles SET body = 'nuevo' WHERE id = 1"))

    report = run_worker(engine, other, once=True)

    assert report.embedded == 0 and "made by question=first-q" in report.refused["public.articles"]
    assert run_worker(engine, first, once=True).embedded == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT encoder_id IS NOT NULL FROM dpr_pg.synced_tables")).scalar()


def test_orm_model_search_refuses_another_pair(engine: Engine) -> None:
    create_articles(engine)
    first, other = HashPair(name="first"), HashPair(name="other")
    run_worker(engine, first, once=True)
    with engine.begin() as conn:  # `other` is a known pair too (it embedded another table)
        conn.execute(sa.text("CREATE TABLE notes (id integer PRIMARY KEY, body text)"))
        conn.execute(sa.text("INSERT INTO notes VALUES (1, 'hola')"))
        enable_table(conn, "notes", text_columns=["body"])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE dpr_pg.synced_tables SET encoder_id = NULL WHERE tbl = 'articles'::regclass"))
    run_worker(engine, other, once=True)
    query = first.passage.vector("Madrid", "Madrid es la capital de España y su ciudad más poblada.")

    with Session(engine) as session:
        hits = session.execute(model_search_statement(Article, query, k=2, encoder=first)).all()
        assert hits[0][0].title == "Madrid"
        with pytest.raises(sa.exc.DBAPIError, match="the embeddings of public.articles were made by question=first-q"):
            session.execute(search_statement(query, k=2, model=Article, encoder=other)).all()
    check_table_encoder(engine, "articles", first.fingerprint)
    with pytest.raises(EncoderMismatchError, match="were made by question=first-q passage=first-p"):
        check_table_encoder(engine, "articles", other.fingerprint)
    with pytest.raises(SearchError, match="a question needs an encoder"):
        model_search_statement(Article, "¿Capital de España?")
    with pytest.raises(SearchError, match="encoder= goes with model="):
        search_statement(np.zeros(768, np.float32), encoder=first)


def test_upgrading_binds_tables_enabled_before_to_the_pair_their_rows_hold(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    try:
        schema.init(engine)
        schema.downgrade(engine, "0011")
        create_articles(engine)
        with engine.begin() as conn:  # what a worker of that revision wrote
            conn.execute(sa.text(
                "INSERT INTO dpr_pg.encoders (fingerprint, question_model, passage_model, tokenizer_hash, dim, "
                "max_length) VALUES ('f0', 'q', 'p', 't', 768, 512)"))
            conn.execute(sa.text("UPDATE articles SET embedding = array_fill(0.5, ARRAY[768])::vector, "
                                 "dpr_encoder_id = (SELECT id FROM dpr_pg.encoders) WHERE id < 3"))

        schema.init(engine)

        with engine.connect() as conn:
            bound = conn.execute(sa.text("SELECT e.fingerprint FROM dpr_pg.synced_tables s "
                                         "JOIN dpr_pg.encoders e ON e.id = s.encoder_id")).scalar()
            versions = conn.execute(sa.text("SELECT count(DISTINCT version) FROM dpr_pg.sync_queue")).scalar()
        assert bound == "f0" and versions == 1
    finally:
        engine.dispose()
