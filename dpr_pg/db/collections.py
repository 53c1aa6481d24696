"""What the database holds, per collection: passages and the encoder pairs that made their vectors."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

_COLLECTIONS = sa.text(
    """
    SELECT p.collection, count(*) AS passages, max(p.updated_at) AS updated_at,
           array_agg(DISTINCT p.encoder_id) AS encoder_ids
    FROM dpr_pg.passages p
    WHERE CAST(:names AS text[]) IS NULL OR p.collection = ANY(CAST(:names AS text[]))
    GROUP BY p.collection
    ORDER BY p.collection
    """
)
_ENCODERS = sa.text(
    "SELECT id, fingerprint, question_model, question_revision, passage_model, passage_revision, dim, max_length "
    "FROM dpr_pg.encoders WHERE id = ANY(:ids) ORDER BY id"
)


@dataclass(frozen=True)
class CollectionInfo:
    """One collection: its passage count, last write, and the encoder pairs of its vectors (one, normally)."""

    name: str
    passages: int
    updated_at: dt.datetime | None
    encoders: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_collections(bind: Engine | Connection, *, names: list[str] | None = None) -> list[CollectionInfo]:
    """Every collection (or only ``names``) with its passage count and encoders, by name.

    Example:
        >>> [(c.name, c.passages) for c in list_collections(engine)]  # doctest: +SKIP
        [('demo', 20)]
    """
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return list_collections(conn, names=names)
    rows = bind.execute(_COLLECTIONS, {"names": names}).all()
    ids = sorted({i for row in rows for i in row.encoder_ids})
    encoders = {row.id: dict(row._mapping) for row in bind.execute(_ENCODERS, {"ids": ids})} if ids else {}
    return [CollectionInfo(row.collection, int(row.passages), row.updated_at,
                           [encoders[i] for i in sorted(row.encoder_ids) if i in encoders]) for row in rows]
