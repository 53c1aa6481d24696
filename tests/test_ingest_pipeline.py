"""The overlapped ingest: stages timed in the report, the same vectors as encoding directly, searches
that see every committed row while a bulk load runs, an encoder that runs out of memory, and an error
in any stage, which stops them all and keeps what was committed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

import dpr_pg
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.ingest import IngestReport, ingest
from dpr_pg.ingest.chunking import chunk_text


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


def test_the_stages_are_timed_and_write_what_encoding_directly_gives(engine: Engine, torch_fp32_pair: EncoderPair,
                                                                     tmp_path: Path) -> None:
    records = corpus(40)
    report = ingest(engine, torch_fp32_pair, write_jsonl(tmp_path / "c.jsonl", records), collection="c", batch_size=16)
    chunks = [(f"{r['id']}#{k}" if len(pieces) > 1 else r["id"], r["title"], piece)
              for r in records for pieces in [chunk_text(r["text"], words=100)] for k, piece in enumerate(pieces)]
    assert report.inserted == report.encoded == len(chunks) > 40
    times = report.as_dict()
    for stage in ("read", "lookup", "tokenize", "encode", "write"):
        assert times[f"{stage}_seconds"] > 0, stage
    assert report.writers >= 1
    expected = torch_fp32_pair.passage.encode([(title, text) for _, title, text in chunks])
    rows = stored(engine)
    assert sorted(rows) == sorted(key for key, _, _ in chunks)
    for (key, _, _), vector in zip(chunks, expected):
        np.testing.assert_allclose(rows[key], vector, rtol=1e-5, atol=1e-5)


def test_searches_during_a_bulk_load_find_every_committed_row(engine: Engine, torch_fp32_pair: EncoderPair,
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

    report = ingest(engine, torch_fp32_pair, source, collection="bulk", batch_size=16, defer_index=True,
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


BATCH_RECORDS = 8  # corpus() records are 180 words: two chunks of 100 words, so 16 passages a batch
FAILING_BATCH = 3  # the fault strikes at the third batch


def batch_keys(batch: int) -> set[str]:
    """The passage ids of the ``batch``-th batch (1-based) of corpus() at batch_size=16."""
    first = (batch - 1) * BATCH_RECORDS
    return {f"r{i:03d}#{k}" for i in range(first, first + BATCH_RECORDS) for k in (0, 1)}


def wait_until_committed(engine: Engine, keys: set[str]) -> None:
    """Block the failing stage until the batches before it are committed (their writes overlap the fault)."""
    deadline = time.monotonic() + 120  # a guard against a hang, not a measure: the test asserts rows
    while time.monotonic() < deadline and not keys <= set(stored(engine)):
        time.sleep(0.02)


class StageFault(RuntimeError):
    """The fault a test injects into one stage of the ingest."""


@pytest.mark.parametrize("stage", ["read", "lookup", "tokenize", "encode", "write"])
def test_an_error_in_any_stage_surfaces_and_the_committed_batches_are_kept(
        engine: Engine, torch_fp32_pair: EncoderPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        stage: str) -> None:
    records = corpus(8 * BATCH_RECORDS)
    source = write_jsonl(tmp_path / "c.jsonl", records)
    every = set().union(*(batch_keys(b) for b in range(1, 9)))
    before = set().union(*(batch_keys(b) for b in range(1, FAILING_BATCH)))
    failing = batch_keys(FAILING_BATCH)
    failing_title = f"Ciudad {(FAILING_BATCH - 1) * BATCH_RECORDS}"
    on_batch = None
    expected: type[Exception] = StageFault
    if stage == "read":  # on_batch runs on the reading thread, after the batch was handed on
        handed: list[int] = []

        def on_batch(_: IngestReport) -> None:
            handed.append(1)
            if len(handed) == FAILING_BATCH:
                wait_until_committed(engine, before)
                raise StageFault("reading failed")
    elif stage == "lookup":
        from dpr_pg.ingest.loader import PassageWriter

        real_lookup = PassageWriter.existing_hashes

        def lookup(self: PassageWriter, ids: list[str]) -> dict[str, str]:
            if failing & set(ids):
                wait_until_committed(engine, before)
                raise StageFault("the lookup failed")
            return real_lookup(self, ids)

        monkeypatch.setattr(PassageWriter, "existing_hashes", lookup)
    elif stage == "tokenize":
        real_tokenize = torch_fp32_pair.passage.tokenize

        def tokenize(passages):  # noqa: ANN001, ANN202
            if any(title == failing_title for title, _ in passages):
                wait_until_committed(engine, before)
                raise StageFault("tokenization failed")
            return real_tokenize(passages)

        monkeypatch.setattr(torch_fp32_pair.passage, "tokenize", tokenize)
    elif stage == "encode":
        real_embed, calls = torch_fp32_pair.passage.embed, []

        def embed(tokens):  # noqa: ANN001, ANN202
            calls.append(1)
            if len(calls) == FAILING_BATCH:
                wait_until_committed(engine, before)
                raise StageFault("the encoder failed")
            return real_embed(tokens)

        monkeypatch.setattr(torch_fp32_pair.passage, "embed", embed)
    else:  # the server refuses a row of the failing batch: its transaction rolls back
        import psycopg

        expected = psycopg.errors.RaiseException
        with engine.begin() as conn:
            conn.execute(sa.text(
                "CREATE FUNCTION public.refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.external_id = 'r{(FAILING_BATCH - 1) * BATCH_RECORDS:03d}#0' THEN "
                "RAISE EXCEPTION 'the server refused this row'; END IF; RETURN NEW; END $$"))
            conn.execute(sa.text("CREATE TRIGGER refuse_row BEFORE INSERT ON dpr_pg.passages "
                                 "FOR EACH ROW EXECUTE FUNCTION public.refuse_row()"))

    with pytest.raises(expected) as raised:
        ingest(engine, torch_fp32_pair, source, collection="c", batch_size=16, on_batch=on_batch)
    assert "refused" in str(raised.value) if stage == "write" else str(raised.value).endswith("failed")
    # Every stage stopped: no thread of the ingest is left, nor any of its connections.
    assert [t.name for t in threading.enumerate() if t.name.startswith("dpr_pg-ingest")] == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ingest_connections(engine):
        time.sleep(0.05)  # a closed connection's backend exits just after
    assert ingest_connections(engine) == 0
    kept = stored(engine)
    assert before <= set(kept) <= every
    if stage == "read":  # the failing batch was handed on before the fault: stored whole, or not at all
        assert set(kept) - before in (set(), failing)
    else:  # whole batches, none of the failing one
        assert not failing & set(kept)
    if stage in ("lookup", "tokenize", "encode"):  # one thread runs these: nothing after the fault went on
        assert set(kept) == before

    monkeypatch.undo()
    if stage == "write":
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER refuse_row ON dpr_pg.passages"))
    again = ingest(engine, torch_fp32_pair, source, collection="c", batch_size=16)
    assert (again.unchanged, again.inserted, again.updated) == (len(kept), len(every) - len(kept), 0)
    rows = stored(engine)
    assert set(rows) == every
    titles = {f"r{i:03d}": r["title"] for i, r in enumerate(records)}
    texts = {f"r{i:03d}#{k}": piece for i, r in enumerate(records)
             for k, piece in enumerate(chunk_text(r["text"], words=100))}
    keys = sorted(every)
    expected_vectors = torch_fp32_pair.passage.encode([(titles[key.split("#")[0]], texts[key]) for key in keys])
    for key, vector in zip(keys, expected_vectors):
        np.testing.assert_allclose(rows[key], vector, rtol=1e-5, atol=1e-5)


def ingest_connections(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dpr_pg ingest' "
                                    "AND datname = current_database()")).scalar()
