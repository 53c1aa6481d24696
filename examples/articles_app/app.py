"""An existing app that adopts dpr_pg: its own models, its own Alembic history, DPR search on its table.

The whole flow, as tests/test_example_app.py runs it::

    DATABASE_URL=postgresql://user:password@host/db python examples/articles_app/app.py
    python examples/articles_app/app.py    # no DATABASE_URL: the embedded server, database articles_app

1. ``dpr_pg.init``: dpr_pg's schema (its own Alembic history, its own version table);
2. ``alembic upgrade head``: the app's migrations, the last of which is ``op.enable_dpr("articles", ...)``;
3. the app inserts, edits and deletes articles as it always did; the triggers queue them;
4. ``dpr-pg worker`` (here: :func:`dpr_pg.sync.worker.run_worker`) writes the embeddings into the rows;
5. :func:`search` ranks the app's own rows with one ORM statement, joined and filtered as usual.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import Article, Author  # noqa: E402

import dpr_pg  # noqa: E402
from dpr_pg.search.orm import dpr_order, dpr_score, encoder_guard  # noqa: E402

EMBEDDED_DATABASE = "articles_app"


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """dpr_pg's schema first, then the app's own migrations up to ``revision``."""
    dpr_pg.init(engine, dim=768)
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), revision)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config(str(HERE / "alembic.ini"))
    config.attributes["connection"] = connection
    return config


def search(session: Session, question_vector: Any, *, k: int = 5, author: str | None = None,
           encoder: Any = None) -> list[tuple[Article, float]]:
    """The app's articles that best answer the question, best first, with their DPR score.

    With ``encoder`` (the pair that encoded the question), the statement refuses to run if the
    articles were embedded by another pair.
    """
    statement = (
        sa.select(Article, dpr_score(Article, question_vector))
        .join(Article.author)
        .where(Article.published, Article.embedding.is_not(None))
        .order_by(dpr_order(Article, question_vector))
        .limit(k)
    )
    if author is not None:
        statement = statement.where(Author.name == author)
    if encoder is not None:
        statement = statement.where(encoder_guard(Article, encoder.fingerprint))
    return [(article, float(score)) for article, score in session.execute(statement).all()]


def app_engine() -> sa.Engine:
    """The app's database: DATABASE_URL, else a database of its own on dpr_pg's embedded server."""
    from dpr_pg.db.engine import embedded_url, normalize_url

    url = os.environ.get("DATABASE_URL")
    if url:
        return sa.create_engine(normalize_url(url, origin="DATABASE_URL"))
    print("DATABASE_URL is not set, so the app runs on dpr_pg's embedded PostgreSQL, in a database of its own "
          f"({EMBEDDED_DATABASE!r}); set DATABASE_URL=postgresql://user:password@host/db to run it on yours",
          file=sys.stderr)
    server = sa.engine.make_url(embedded_url())
    with sa.create_engine(server, isolation_level="AUTOCOMMIT").connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                            {"name": EMBEDDED_DATABASE}).scalar():
            conn.execute(sa.text(f'CREATE DATABASE "{EMBEDDED_DATABASE}"'))
    return sa.create_engine(server.set(database=EMBEDDED_DATABASE))


def run(engine: sa.Engine) -> None:
    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.sync.worker import run_worker

    migrate(engine)
    pair = EncoderPair.load()
    with Session(engine) as session, session.begin():
        if session.scalar(sa.select(sa.func.count()).select_from(Article)) == 0:  # a second run adds nothing
            cervantes = Author(name="Cervantes")
            session.add_all([
                Article(author=cervantes, title="El Quijote", body="Un hidalgo de La Mancha lee libros de caballerías."),
                Article(author=cervantes, title="Novelas ejemplares", body="Doce novelas cortas publicadas en 1613."),
            ])
    run_worker(engine, pair, once=True)
    with Session(engine) as session:
        question = pair.question.encode("¿Quién es el hidalgo de La Mancha?")
        for article, score in search(session, question, encoder=pair):
            print(f"{score:8.3f}  {article.title}")


def main() -> None:
    try:
        run(app_engine())
    except dpr_pg.DprPgError as e:  # a missing model or an unreachable database: say what to do, not a traceback
        raise SystemExit(f"articles_app: {e}") from None


if __name__ == "__main__":
    main()
