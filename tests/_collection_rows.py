"""A throw-away database of collections of synthetic passages (precomputed random vectors), partitioned or not."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg import ingest
from dpr_pg.db.partitions import is_partitioned
from dpr_pg.db.schema import init
from dpr_pg.encoders.fingerprint import EncoderFingerprint


def load_collections(engine: Engine, tmp_path: Path, sizes: dict[str, int], *, fingerprint: EncoderFingerprint,
                     seed: int, metadata: Callable[[str, int], dict[str, Any]]) -> None:
    """``sizes[c]`` passages in each collection ``c``, ids ``c:i``, with ``metadata(c, i)``; then ANALYZE."""
    rng = np.random.default_rng(seed)
    for name, n in sizes.items():
        rows = tmp_path / f"{uuid.uuid4().hex}.jsonl"
        rows.write_text("".join(json.dumps({"id": f"{name}:{i}", "title": f"{name} {i}", "text": f"texto {name} {i}",
                                            **metadata(name, i)}) + "\n" for i in range(n)))
        vectors = rows.with_suffix(".npy")
        np.save(vectors, rng.normal(size=(n, fingerprint.dim)).astype(np.float32))
        ingest(engine, None, rows, collection=name, embeddings=vectors, fingerprint=fingerprint, progress=False)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))


@contextmanager
def collections_database(server: Any, *, partitioned: bool, dim: int,
                         load: Callable[[Engine], None]) -> Iterator[Engine]:
    """A new database initialised with ``dim`` (partitioned by collection or not), filled by ``load``."""
    name = server.create_database()
    engine = sa.create_engine(server.url_for(name))
    try:
        init(engine, dim=dim, partition_by_collection=partitioned)
        load(engine)
        assert is_partitioned(engine) is partitioned
        yield engine
    finally:
        engine.dispose()
        server.drop_database(name)
