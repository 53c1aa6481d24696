"""Clustered unit vectors, stored both as dpr_pg.passages and as the rows of an app table, for the storage tests."""

from __future__ import annotations

import json

import numpy as np
import sqlalchemy as sa
from _encoders import stand_in_encoder
from sqlalchemy.engine import Engine

DIM = 32
N = 10000


def clustered_vectors(*, seed: int, clusters: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """N unit vectors around ``clusters`` random centres, and ``queries`` query vectors close to some of them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, DIM))
    vectors = centers[rng.integers(0, clusters, N)] + 0.6 * rng.normal(size=(N, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    near = (vectors[rng.integers(0, N, queries)] + 0.05 * rng.normal(size=(queries, DIM))).astype(np.float32)
    return vectors, near


def lang_of(i: int) -> str:
    """Row i's metadata ``lang``: "ca" for 1% of the rows, "en" for 10%, "es" for the rest."""
    return "ca" if i % 100 == 0 else "en" if i % 10 == 1 else "es"


def load_clustered(engine: Engine, vectors: np.ndarray) -> None:
    """``vectors`` as passages 1..N of collection "c", and as the rows of the sync-enabled app table ``docs``."""
    rows = [{"id": i + 1, "lang": lang_of(i), "v": str(vectors[i].tolist())} for i in range(len(vectors))]
    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, DIM)
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, embedding, "
            "encoder_id) SELECT 'c', 'doc-' || r.id, 'Título ' || r.id, 'texto número ' || r.id, "
            "jsonb_build_object('lang', r.lang), 'h', CAST(r.v AS vector), :enc "
            "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id integer, lang text, v text) ORDER BY r.id"),
            {"enc": encoder, "rows": json.dumps(rows)})
        conn.execute(sa.text("CREATE TABLE docs (id integer PRIMARY KEY, title text NOT NULL, "
                             "body text NOT NULL DEFAULT 'texto', lang text)"))
        conn.execute(sa.text("SELECT dpr_pg.enable_table('docs', ARRAY['body'], 'title', :d)"), {"d": DIM})
        conn.execute(sa.text("INSERT INTO docs (id, title, lang, embedding, dpr_encoder_id) "
                             "SELECT id, title, metadata ->> 'lang', embedding, encoder_id FROM dpr_pg.passages"))
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))
        conn.execute(sa.text("ANALYZE docs"))
