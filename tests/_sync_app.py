"""Shared arrange steps of the sync tests: an app table of articles, enabled for DPR search, and a
hash-based encoder pair whose vectors can be checked afterwards."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.sync.tables import enable_table

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


class HashPassages:
    """A passage encoder whose vector is a pure function of the text: cheap, and checkable afterwards.

    ``during_encode`` is called once, inside the first ``encode``: what the app does while a worker
    holds a batch. ``delay`` seconds pass in every ``encode`` (a slow model).
    """

    def __init__(self, dim: int, *, during_encode=None, delay: float = 0.0) -> None:  # noqa: ANN001
        self.dim = dim
        self.during_encode = during_encode
        self.delay = delay

    def vector(self, title: str, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(f"{title}\x00{text}".encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)

    def encode(self, passages: list[tuple[str, str]]) -> np.ndarray:
        if self.during_encode is not None:
            hook, self.during_encode = self.during_encode, None
            hook()
        if self.delay:
            time.sleep(self.delay)
        return np.stack([self.vector(title, text) for title, text in passages])


class HashPair:
    """An encoder pair for the worker (it only uses ``passage``, ``dim`` and ``fingerprint``)."""

    def __init__(self, dim: int = 768, *, name: str = "hash", during_encode=None, delay: float = 0.0) -> None:  # noqa: ANN001
        self.dim = dim
        self.passage = HashPassages(dim, during_encode=during_encode, delay=delay)
        self.fingerprint = EncoderFingerprint(
            question_model=f"{name}-q", question_revision=None, passage_model=f"{name}-p", passage_revision=None,
            tokenizer_hash=name, dim=dim, max_length=512,
        )


def wrong_rows(engine: Engine, table: str, pair: HashPair) -> list[str]:
    """Rows of ``table`` (id, title, body) whose embedding is not the one of their current text."""
    wrong = []
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            f"SELECT id, title, body, embedding::text FROM {table} ORDER BY id"  # a test's own table name
        )).all()
    for row_id, title, body, stored in rows:
        title, body = (title or "").strip(), (body or "").strip()
        if not title and not body:
            if stored is not None:
                wrong.append(f"{row_id}: an embedding for an empty row")
        elif stored is None:
            wrong.append(f"{row_id}: no embedding for {body!r}")
        elif not np.allclose(np.array(json.loads(stored), dtype=np.float32), pair.passage.vector(title, body),
                             rtol=1e-5, atol=1e-6):
            wrong.append(f"{row_id}: a stale embedding, not the one of {body!r}")
    return wrong
