"""dpr_pg.search_table (plain SQL) and the ORM statement on an app model rank the same rows, filters included."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.errors import DimensionError, FilterError
from dpr_pg.search.orm import DprSearchable, model_search_statement
from dpr_pg.search.api import search_statement
from dpr_pg.sync.tables import enable_table
from dpr_pg.sync.worker import run_worker

DIM = 8


class Base(DeclarativeBase):
    pass


class Doc(DprSearchable, Base):
    __tablename__ = "docs"
    __dpr_dim__ = DIM

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.Text)
    body: Mapped[str] = mapped_column(sa.Text)
    lang: Mapped[str | None] = mapped_column(sa.Text)
    views: Mapped[int] = mapped_column(sa.Integer)
    published: Mapped[bool] = mapped_column(sa.Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


@pytest.fixture
def docs(engine: Engine) -> np.ndarray:
    """40 docs with varied columns and random 8-d embeddings written in place; returns the query."""
    rng = np.random.default_rng(7)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE docs (id integer PRIMARY KEY, title text NOT NULL, body text NOT NULL, lang text, "
            "views integer NOT NULL, published boolean NOT NULL, created_at timestamptz NOT NULL)"
        ))
        enable_table(conn, "docs", text_columns=["body"], title_column="title", dim=DIM)
        rows = [
            {"id": i, "title": f"Título {i:02d}", "body": f"texto {i}", "lang": [None, "es", "en", "ca"][i % 4],
             "views": (i * 37) % 100, "published": i % 3 != 0,
             "created_at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=i * 9)}
            for i in range(40)
        ]
        conn.execute(sa.text("INSERT INTO docs VALUES (:id, :title, :body, :lang, :views, :published, :created_at)"),
                     rows)
        for i in range(40):  # as the worker would; an embedding-only UPDATE enqueues nothing
            conn.execute(sa.text("UPDATE docs SET embedding = CAST(:e AS vector) WHERE id = :id"),
                         {"e": str(rng.normal(size=DIM).round(4).tolist()), "id": i})
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
    return rng.normal(size=DIM).astype(np.float32)


FILTERS = [
    {},
    {"lang": "es"},
    {"lang": {"$in": ["en", "ca"]}},
    {"lang": {"$exists": False}},
    {"lang": None},
    {"views": {"$gte": 50}},
    {"views": {"$between": [10, 40]}, "published": True},
    {"published": False},
    {"$or": [{"lang": "es"}, {"views": {"$lt": 20}}]},
    {"$not": {"lang": {"$ne": "en"}}},
    {"title": {"$like": "Título 1%"}},
    {"title": {"$gte": "Título 30"}},
    {"created_at": {"$gte": "2024-06-01T00:00:00+00:00"}},
    {"body": {"$ilike": "TEXTO 2%"}},
    {"views": "50"},  # a string never equals a number
]


def _sql_ids(engine: Engine, query: np.ndarray, filter: dict, k: int = 1000) -> list[int]:
    import json

    with engine.connect() as conn:
        keys = conn.execute(sa.text(
            "SELECT row_key FROM dpr_pg.search_table('docs', CAST(:q AS vector), :k, CAST(:f AS jsonb))"
        ), {"q": str(query.tolist()), "k": k, "f": json.dumps(filter)}).scalars().all()
    return [key["id"] for key in keys]


@pytest.mark.parametrize("filter", FILTERS, ids=[str(f) for f in FILTERS])
def test_search_table_and_orm_statement_agree_with_the_filter_language(
    engine: Engine, docs: np.ndarray, filter: dict
) -> None:
    with Session(engine) as session:
        orm_ids = [doc.id for doc, _ in session.execute(model_search_statement(Doc, docs, k=1000, filter=filter,
                                                                               exact=True))]
    sql_ids = _sql_ids(engine, docs, filter)

    assert sql_ids == orm_ids
    if filter == {}:
        assert len(sql_ids) == 40


def test_top_k_is_the_exact_ranking_and_search_statement_takes_the_model(engine: Engine, docs: np.ndarray) -> None:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, embedding::text FROM docs")).all()
    scores = {i: float(np.array(eval(e)) @ docs) for i, e in rows}  # noqa: S307 - pgvector's text output
    expected = sorted(scores, key=lambda i: -scores[i])[:5]

    with Session(engine) as session:
        via_search_statement = [doc.id for doc, _ in session.execute(search_statement(docs, k=5, model=Doc))]
    assert _sql_ids(engine, docs, {}, k=5) == expected
    assert via_search_statement == expected


def test_search_table_refuses_bad_requests(engine: Engine, docs: np.ndarray) -> None:
    def run(sql: str, **params: object) -> None:
        with engine.connect() as conn:
            conn.execute(sa.text(sql), params)

    with pytest.raises(sa.exc.DBAPIError, match="expected a 8-dimension query vector for public.docs, not 3"):
        run("SELECT * FROM dpr_pg.search_table('docs', '[1,2,3]', 5)")
    with pytest.raises(sa.exc.DBAPIError, match="the query vector is NULL"):
        run("SELECT * FROM dpr_pg.search_table('docs', NULL, 5)")
    with pytest.raises(sa.exc.DBAPIError, match="expected k between 1 and 10000, not 0"):
        run("SELECT * FROM dpr_pg.search_table('docs', :q, 0)", q=str(docs.tolist()))
    with pytest.raises(sa.exc.DBAPIError, match="unknown operator '\\$regex'"):
        run("SELECT * FROM dpr_pg.search_table('docs', :q, 5, '{\"lang\": {\"$regex\": \"x\"}}')", q=str(docs.tolist()))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE plain (id int PRIMARY KEY)"))
    with pytest.raises(sa.exc.DBAPIError, match="table public.plain is not enabled for DPR search"):
        run("SELECT * FROM dpr_pg.search_table('plain', :q, 5)", q=str(docs.tolist()))
    with pytest.raises(FilterError), Session(engine) as session:
        session.execute(model_search_statement(Doc, docs, filter={"lang": {"$regex": "x"}}))
    with pytest.raises(DimensionError, match="expected a query vector of 8 dimensions, not 2"):
        model_search_statement(Doc, [1.0, 2.0])


def test_quoted_names_in_another_schema_work_end_to_end(engine: Engine, pair: EncoderPair) -> None:
    schema, table = 'App "Schema"', 'Weird; "Name" --'
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "App ""Schema"""'))
        conn.execute(sa.text('CREATE TABLE "App ""Schema"""."Weird; ""Name"" --" '
                             '("Key" text PRIMARY KEY, "Body Text" text NOT NULL)'))
        conn.execute(sa.text('INSERT INTO "App ""Schema"""."Weird; ""Name"" --" VALUES (\'a\', \'Hola\'), (\'b\', \'Adiós\')'))
        enable_table(conn, table, schema=schema, text_columns=["Body Text"])

    assert run_worker(engine, pair, once=True).embedded == 2
    with engine.connect() as conn:
        keys = conn.execute(sa.text(
            "SELECT row_key FROM dpr_pg.search_table(CAST(:t AS regclass), CAST(:q AS vector), 5)"
        ), {"t": '"App ""Schema"""."Weird; ""Name"" --"', "q": str(pair.question.encode("hola").tolist())}).scalars().all()
    assert sorted(key["Key"] for key in keys) == ["a", "b"]
