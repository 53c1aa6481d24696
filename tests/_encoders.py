"""A stand-in encoder pair registered by hand, for tests that store vectors without loading any model."""

from __future__ import annotations

import sqlalchemy as sa


def stand_in_encoder(conn: sa.Connection, dim: int, *, fingerprint: str = "fp", question_model: str = "q",
                     passage_model: str = "p", tokenizer_hash: str = "t") -> int:
    """The id of a new dpr_pg.encoders row for ``dim``-d vectors (max_length 512), by these names."""
    return int(conn.execute(sa.text(
        "INSERT INTO dpr_pg.encoders (fingerprint, question_model, passage_model, tokenizer_hash, dim, max_length) "
        "VALUES (:f, :q, :p, :t, :d, 512) RETURNING id"),
        {"f": fingerprint, "q": question_model, "p": passage_model, "t": tokenizer_hash, "d": dim}).scalar_one())
