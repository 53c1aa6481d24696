"""Shared arrange steps of the sync tests: an app table of articles, enabled for DPR search."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.sync import enable_table

ARTICLES = [
    ("Madrid", "Madrid es la capital de España y su ciudad más poblada."),
    ("Sevilla", "Sevilla está a orillas del Guadalquivir, en Andalucía."),
    ("ADN", "El ADN guarda la información genética de los seres vivos."),
    ("Fotosíntesis", "Las plantas convierten la luz del sol en energía química."),
]


def create_articles(engine: Engine, *, rows: list[tuple[str, str]] = ARTICLES, enable: bool = True) -> None:
    """``articles(id, title, body, views, lang)`` with ``rows``, enabled with title + body."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE articles (id integer PRIMARY KEY, title text NOT NULL, body text NOT NULL, "
            "views integer NOT NULL DEFAULT 0, lang text NOT NULL DEFAULT 'es')"
        ))
        if rows:
            conn.execute(sa.text("INSERT INTO articles (id, title, body) VALUES (:id, :title, :body)"),
                         [{"id": i, "title": t, "body": b} for i, (t, b) in enumerate(rows, start=1)])
        if enable:
            enable_table(conn, "articles", text_columns=["body"], title_column="title")


def queued(engine: Engine) -> list[dict]:
    """The queued row keys of articles, e.g. [{"id": 1}], in key order."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT row_key FROM dpr_pg.sync_queue WHERE tbl = 'articles'::regclass ORDER BY row_key"
        )).scalars())
