"""Huge records and hostile files: rejected per record at a bounded memory, never fatal to the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.errors import IngestError
from dpr_pg.ingest import IngestReport, RecordLimits, ingest
from dpr_pg.ingest.readers import read_csv, read_jsonl, read_parquet

FP = EncoderFingerprint("test/question", "r1", "test/passage", "r1", "tok", 768, 512)
MiB = 2**20


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def with_vectors(source: Path, n: int) -> Path:
    emb = source.with_suffix(".npy")
    np.save(emb, np.random.default_rng(n).standard_normal((n, 768)).astype(np.float32))
    return emb


def run(engine: Engine, source: Path, n: int, **options) -> IngestReport:
    return ingest(engine, None, source, collection="c", embeddings=with_vectors(source, n), fingerprint=FP, **options)


def stored_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT external_id FROM dpr_pg.passages ORDER BY external_id")).scalars().all()


def test_a_record_over_the_text_or_title_limit_is_rejected_and_the_run_goes_on(engine: Engine, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "Sevilla."},
        {"id": "big-text", "text": "palabra " * (MiB // 8 + 1)},  # 1 MiB + 8 bytes, one lexeme: PostgreSQL takes it
        {"id": "big-title", "title": "título " * 9000, "text": "corto"},  # 72 kB of UTF-8
        {"id": "b", "text": "Granada."},
    ])
    report = run(engine, source, 4)

    assert report.exit_code == 2 and report.rejected == 2 and report.inserted == 2
    assert [r.record for r in report.rejections] == ["in.jsonl:2", "in.jsonl:3"]
    assert report.rejections[0].reason.startswith(f"text is {MiB + 8} bytes, over the limit of {MiB} bytes")
    assert "--max-text-bytes" in report.rejections[0].reason
    assert "title is 72000 bytes, over the limit of 65536 bytes (--max-title-bytes)" in report.rejections[1].reason
    assert stored_ids(engine) == ["a", "b"]

    roomy = run(engine, source, 4, limits=RecordLimits(max_text_bytes=2 * MiB, max_title_bytes=MiB))
    assert (roomy.rejected, roomy.inserted) == (0, 2)


def test_a_record_whose_tsvector_would_pass_postgres_limit_is_rejected_not_fatal(engine: Engine,
                                                                                   tmp_path: Path) -> None:
    words = " ".join(f"w{i:x}z" for i in range(300_000))  # ~2.4 MB of distinct words: a tsvector over 1 MB
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "Sevilla."}, {"id": "huge", "title": words, "text": "x"}, {"id": "b", "text": "Cádiz."}])
    limits = RecordLimits(max_title_bytes=4 * MiB)

    report = run(engine, source, 3, limits=limits)

    assert (report.rejected, report.inserted) == (1, 2)
    assert report.rejections[0].record == "in.jsonl:2"
    assert "tsvector" in report.rejections[0].reason and "1048575" in report.rejections[0].reason
    assert stored_ids(engine) == ["a", "b"]


def test_limits_from_the_command_line(cli, database_url: str, tiny_models, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "corto"}, {"id": "b", "text": "x" * 300}])
    emb = with_vectors(source, 2)
    result = cli("--database-url", database_url, "ingest", str(source), "--collection", "c", "--embeddings", str(emb),
                 "--max-text-bytes", "200", "--max-title-bytes", "1kB", "--json",
                 "--question-model", str(tiny_models[0]), "--passage-model", str(tiny_models[1]))
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert (report["inserted"], report["rejected"]) == (1, 1)
    assert report["rejections"] == [{"record": "in.jsonl:2", "reason": "text is 300 bytes, over the limit of 200 "
                                     "bytes (--max-text-bytes); shorten it, or raise the limit"}]
    bad = cli("--database-url", database_url, "ingest", str(source), "--collection", "c", "--max-text-bytes", "lots")
    assert bad.returncode == 64 and "expected a size such as 1048576, 64kB or 8MB" in bad.stderr


# The child measures its own peak RSS around the ingest, under an address-space limit so that a
# reader that holds the whole line fails fast instead of taking gigabytes from the machine.
_CHILD = textwrap.dedent("""
    import json, resource, sys
    import sqlalchemy as sa
    from dpr_pg.encoders.fingerprint import EncoderFingerprint
    from dpr_pg.ingest import ingest

    url, source, emb = sys.argv[1:4]
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    fp = EncoderFingerprint("test/question", "r1", "test/passage", "r1", "tok", 768, 512)
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = ingest(engine, None, source, collection="c", embeddings=emb, fingerprint=fp, format="jsonl")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kib": after - before, "report": report.as_dict()}))
""")


def test_a_100_mb_line_is_rejected_at_a_bounded_memory(database_url: str, engine: Engine, tmp_path: Path) -> None:
    source = tmp_path / "huge.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "a", "text": "antes"}) + "\n")
        handle.write('{"id": "huge", "text": "')
        for _ in range(100):
            handle.write("palabra " * (MiB // 8))
        handle.write('"}\n')
        handle.write(json.dumps({"id": "b", "text": "después"}) + "\n")
    emb = with_vectors(source, 3)

    child = subprocess.run([sys.executable, "-c", _CHILD, database_url, str(source), str(emb)],
                           capture_output=True, text=True, timeout=600)

    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout)
    assert result["report"]["rejections"] == [{
        "record": "huge.jsonl:2", "reason": f"line is {100 * MiB + 26} bytes, over the limit of {8 * MiB} bytes per "
        "record (--max-record-bytes); split the record, or raise the limit"}]
    assert result["report"]["inserted"] == 2 and stored_ids(engine) == ["a", "b"]
    print(f"peak RSS grew by {result['grew_kib']} KiB")
    assert result["grew_kib"] < 64 * 1024, result  # the old reader held the line several times over: gigabytes


def test_csv_and_parquet_records_over_the_record_limit_are_rejected_with_their_place(tmp_path: Path) -> None:
    csv_path = tmp_path / "in.csv"
    csv_path.write_text('id,text\na,corto\nb,"' + "largo\n" * 50 + '"\nc,"otra\nlínea"\n', encoding="utf-8")
    records = list(read_csv(csv_path, max_record_bytes=100))
    assert [(r.where, r.fields) for r in records if r.problem is None] == [
        ("in.csv:2", {"id": "a", "text": "corto"}), ("in.csv:54", {"id": "c", "text": "otra\nlínea"})]
    assert [(r.where, r.problem) for r in records if r.problem] == [
        ("in.csv:3", "record is 305 characters, over the limit of 100 per record (--max-record-bytes); "
                     "split the record, or raise the limit")]

    parquet_path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["uno", "x" * 500, "tres"]}), parquet_path)
    rows = list(read_parquet(parquet_path, max_record_bytes=100))
    assert [r.fields for r in rows] == [{"id": "a", "text": "uno"}, None, {"id": "c", "text": "tres"}]
    assert rows[1].where == "in.parquet row 2" and rows[1].problem.startswith("row is 501 bytes, over the limit of 100")


def test_a_bom_on_the_first_jsonl_line_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "1", "text": "uno"}\n{"id": "2", "text": "dos"}\n')
    assert [r.fields for r in read_jsonl(path)] == [{"id": "1", "text": "uno"}, {"id": "2", "text": "dos"}]


_NOT_FILES = textwrap.dedent("""
    import json, os, resource, sys
    from dpr_pg.errors import IngestError
    from dpr_pg.ingest.readers import read_records
    from dpr_pg.ingest.squad import read_squad
    from dpr_pg.ingest.vectors import EmbeddingSource

    resource.setrlimit(resource.RLIMIT_AS, (2**31, resource.RLIM_INFINITY))
    fifo = sys.argv[1]
    cases = [(fmt, lambda fmt=fmt: list(read_records("/dev/zero", fmt))) for fmt in ("jsonl", "csv", "parquet")]
    cases += [("squad", lambda: read_squad("/dev/zero")), ("squad fifo", lambda: read_squad(fifo)),
              ("embeddings", lambda: EmbeddingSource.open("/dev/zero")),
              ("embeddings fifo", lambda: EmbeddingSource.open(fifo + ".npy"))]
    messages = {}
    for name, read in cases:
        try:
            read()
            messages[name] = "read"
        except IngestError as e:
            messages[name] = str(e)
    print(json.dumps(messages))
""")


def test_every_format_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    os.mkfifo(str(fifo) + ".npy")
    child = subprocess.run([sys.executable, "-c", _NOT_FILES, str(fifo)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    messages = json.loads(child.stdout)
    assert len(messages) == 7
    for name, message in messages.items():
        assert "is not a regular file" in message, (name, message)


def test_a_file_that_changes_under_the_ingest_stops_it_and_keeps_what_was_committed(engine: Engine,
                                                                                     tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"p{i}", "text": f"Texto {i}."} for i in range(6)])

    def append_more(_: IngestReport) -> None:
        with open(source, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"id": "late", "text": "Llegó tarde."}) + "\n")

    with pytest.raises(IngestError, match="in.jsonl changed while it was being ingested") as caught:
        run(engine, source, 6, batch_size=2, on_batch=append_more)
    assert "the 2 passages committed before are kept" in str(caught.value)
    assert stored_ids(engine) == ["p0", "p1"]
