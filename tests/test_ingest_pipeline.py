"""The overlapped ingest: stages timed in the report, the same vectors as encoding directly, searches
that see every committed row while a bulk load runs, and an encoder that runs out of memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

import dpr_pg
from dpr_pg.encoders import EncoderPair
from dpr_pg.ingest import IngestReport, ingest
from dpr_pg.ingest.chunking import chunk_text


@pytest.fixture(scope="module")
def pair(tiny_models: tuple[Path, Path]) -> EncoderPair:
    return EncoderPair.load(str(tiny_models[0]), str(tiny_models[1]), precision="fp32", runtime="torch")


def corpus(n: int) -> list[dict]:
    return [{"id": f"r{i:03d}", "title": f"Ciudad {i}",
             "text": " ".join(f"palabra{(i * 7 + j) % 97} de la ciudad número {i}" for j in range(30))}
            for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def stored(engine: Engine) -> dict[str, np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT external_id, embedding::text FROM dpr_pg.passages")).all()
    return {key: np.array(json.loads(vector), dtype=np.float32) for key, vector in rows}


def test_the_stages_are_timed_and_write_what_encoding_directly_gives(engine: Engine, pair: EncoderPair,
                                                                     tmp_path: Path) -> None:
    records = corpus(40)
    report = ingest(engine, pair, write_jsonl(tmp_path / "c.jsonl", records), collection="c", batch_size=16)
    chunks = [(f"{r['id']}#{k}" if len(pieces) > 1 else r["id"], r["title"], piece)
              for r in records for pieces in [chunk_text(r["text"], words=100)] for k, piece in enumerate(pieces)]
    assert report.inserted == report.encoded == len(chunks) > 40
    times = report.as_dict()
    for stage in ("read", "lookup", "tokenize", "encode", "write"):
        assert times[f"{stage}_seconds"] > 0, stage
    assert report.writers >= 1
    expected = pair.passage.encode([(title, text) for _, title, text in chunks])
    rows = stored(engine)
    assert sorted(rows) == sorted(key for key, _, _ in chunks)
    for (key, _, _), vector in zip(chunks, expected):
        np.testing.assert_allclose(rows[key], vector, rtol=1e-5, atol=1e-5)


def test_searches_during_a_bulk_load_find_every_committed_row(engine: Engine, pair: EncoderPair,
                                                              tmp_path: Path) -> None:
    # The index is dropped for the load: searches run meanwhile, on other connections, and every row
    # committed before a search began is among its hits.
    source = write_jsonl(tmp_path / "bulk.jsonl", corpus(120))
    checked: list[int] = []

    def search_committed(_: IngestReport) -> None:
        committed = stored(engine)
        for vector in list(committed.values())[:3]:
            hits = dpr_pg.search(engine, vector, k=1000, collection="bulk")
            assert set(committed) <= {hit.external_id for hit in hits}
        checked.append(len(committed))

    report = ingest(engine, pair, source, collection="bulk", batch_size=16, defer_index=True,
                    on_batch=search_committed)
    assert report.inserted == len(stored(engine)) and report.index_seconds is not None
    assert len(checked) >= 7 and checked[-1] > 0  # searched while the load was still going on
    assert report.inserted > checked[0]


class RunsOutOfMemoryAbove(torch.nn.Module):
    """The passage model, raising CUDA's out-of-memory error on batches of more than ``rows`` inputs."""

    def __init__(self, model: torch.nn.Module, rows: int) -> None:
        super().__init__()
        self.model = model
        self.rows = rows
        self.refused: list[int] = []

    def forward(self, input_ids: torch.Tensor, **kwargs):  # noqa: ANN003, ANN201
        if input_ids.shape[0] > self.rows:
            self.refused.append(input_ids.shape[0])
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {input_ids.shape[0]}")
        return self.model(input_ids=input_ids, **kwargs)


def test_an_out_of_memory_batch_is_halved_and_no_passage_is_dropped(tiny_models: tuple[Path, Path]) -> None:
    passages = [(f"Título {i}", "texto largo " * (5 + 3 * i)) for i in range(20)]
    reference = EncoderPair.load(str(tiny_models[0]), str(tiny_models[1]), precision="fp32", runtime="torch")
    expected = reference.passage.encode(passages)
    encoder = EncoderPair.load(str(tiny_models[0]), str(tiny_models[1]), precision="fp32", runtime="torch",
                               batch_size=16).passage
    encoder.model = RunsOutOfMemoryAbove(encoder.model, rows=5)
    result = encoder.embed(encoder.tokenize(passages))
    assert encoder.model.refused[:2] == [16, 8]  # 16 -> 8 -> 4 rows a batch
    assert result.embeddings.shape == (20, reference.passage.dim)
    np.testing.assert_allclose(result.embeddings, expected, rtol=1e-5, atol=1e-5)
