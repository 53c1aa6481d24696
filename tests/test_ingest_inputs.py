"""Ingest inputs without a database: readers, SQuAD structure, field mapping, chunking, checks."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpr_pg.errors import IngestError
from dpr_pg.ingest.batches import content_hash
from dpr_pg.ingest.chunking import chunk_count, chunk_document, chunk_text
from dpr_pg.ingest.mapping import FieldMapping, to_document
from dpr_pg.ingest.readers import detect_format, read_csv, read_jsonl, read_parquet
from dpr_pg.ingest.records import Document, SourceRecord
from dpr_pg.ingest.squad import passage_id, read_squad
from dpr_pg.ingest.validate import metadata_problem, vector_problems
from dpr_pg.ingest.vectors import EmbeddingSource


def test_format_comes_from_the_extension_or_the_option() -> None:
    assert [detect_format(name) for name in ("a.jsonl", "a.CSV", "a.tsv", "a.parquet", "a.json")] == [
        "jsonl", "csv", "csv", "parquet", "squad"]
    assert detect_format("dump.txt", "jsonl") == "jsonl"
    with pytest.raises(IngestError, match="--format"):
        detect_format("dump.txt")


def test_jsonl_reader_rejects_bad_lines_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "1", "text": "uno"}\n\n[1, 2]\n{"id": "3", "text": "caf\xe9"}\n{"id": NaN}\n{"id": "5", "te')
    records = list(read_jsonl(path))
    assert [(r.number, r.where) for r in records] == [(1, "in.jsonl:1"), (2, "in.jsonl:3"), (3, "in.jsonl:4"),
                                                       (4, "in.jsonl:5"), (5, "in.jsonl:6")]
    assert records[0].fields == {"id": "1", "text": "uno"}
    assert "expected a JSON object" in records[1].problem
    assert "not valid UTF-8 (byte 0xe9" in records[2].problem
    assert "NaN is not valid JSON" in records[3].problem
    assert records[4].problem.startswith("truncated last line")


def test_csv_reader_takes_fields_longer_than_the_default_limit(tmp_path: Path) -> None:
    long_text = "palabra " * 40_000  # 320k characters > csv's 131072 default
    path = tmp_path / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "lang"])
        writer.writerow(["a", long_text, "es"])
        writer.writerow(["b", "corto", "es", "extra"])
    records = list(read_csv(path))
    assert records[0].fields == {"id": "a", "text": long_text, "lang": "es"}
    assert records[1].problem == "expected 3 fields as in the header, found 4"
    assert csv.field_size_limit() == 131072


def test_csv_invalid_utf8_is_rejected_per_record_not_mangled(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,text\na,bien\nb,mal \xff hecho\n")
    records = list(read_csv(path))
    assert to_document(records[0], FieldMapping()).text == "bien"
    assert to_document(records[1], FieldMapping()) == "text is not valid UTF-8 (byte 0xff at character 4); re-encode the file as UTF-8"


def test_parquet_reader_streams_rows_without_the_embedding_column(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["uno", "dos"], "embedding": [[1.0, 2.0], [3.0, 4.0]]}), path)
    records = list(read_parquet(path, exclude=["embedding"]))
    assert [r.fields for r in records] == [{"id": "a", "text": "uno"}, {"id": "b", "text": "dos"}]


def test_field_mapping_puts_every_other_field_in_metadata() -> None:
    record = SourceRecord(7, "in.jsonl:9", {"doc": 12, "heading": "Sevilla", "body": "Texto.", "lang": "es", "n": 1})
    mapped = to_document(record, FieldMapping(id="doc", title="heading", text="body"))
    assert mapped == Document(7, "in.jsonl:9", "12", "Sevilla", "Texto.", {"lang": "es", "n": 1})
    only = to_document(record, FieldMapping(id="doc", title="heading", text="body", metadata=("lang",)))
    assert only.metadata == {"lang": "es"}
    assert to_document(SourceRecord(3, "x", {"text": "sin id"}), FieldMapping()).external_id == "3"


@pytest.mark.parametrize(("fields", "reason"), [
    ({"id": "a"}, "no 'text' field"),
    ({"id": "a", "text": " \n\t"}, "text is empty or whitespace only"),
    ({"id": "a", "text": 5}, "text must be a string, not int"),
    ({"id": "a", "text": "x\x00y"}, "text contains a NUL byte"),
    ({"id": "a", "text": "x\ud800y"}, "text contains a lone surrogate U+D800"),
    ({"id": "a", "text": "ok", "tag": "x\x00"}, "metadata.tag contains a NUL byte"),
    ({"id": "a", "text": "ok", "nested": {"k\x00": 1}}, "contains a NUL byte"),
    ({"id": "a", "text": "ok", "score": float("inf")}, "metadata.score is Infinity"),
    ({"id": "a", "title": 3, "text": "ok"}, "title must be a string"),
    ({"id": ["a"], "text": "ok"}, "id must be a string or an integer"),
    ({"id": "k" * 3000, "text": "ok"}, "expected an id of at most 1024 bytes"),
])
def test_bad_records_are_rejected_with_a_reason_never_altered(fields: dict, reason: str) -> None:
    result = to_document(SourceRecord(1, "in.jsonl:1", fields), FieldMapping())
    assert isinstance(result, str) and reason in result


def test_metadata_checks_accept_plain_json() -> None:
    assert metadata_problem({"a": [1, 2.5, None, True, {"b": "c"}]}) is None


def test_vector_checks_name_each_problem() -> None:
    vectors = np.array([[1, 0, 0], [0, 0, 0], [np.nan, 1, 1], [1, np.inf, 1], [1e300, 1, 1]], dtype=np.float64)
    problems = vector_problems(vectors, 3)
    assert problems[0] is None
    assert "all zeros" in problems[1]
    assert "NaN or Infinity at dimension 0" in problems[2]
    assert "NaN or Infinity at dimension 1" in problems[3]
    assert "overflows float4" in problems[4]
    assert vector_problems(np.ones((2, 4)), 3) == ["expected 3 dimensions, not 4 (shape 2x4)"] * 2


def test_parquet_embeddings_flag_rows_of_the_wrong_length(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"embedding": [[1.0, 2.0, 3.0], [1.0, 2.0], [4.0, 5.0, 6.0]]}), path)
    source = EmbeddingSource.open(path)
    rows = source.rows(0, 3)
    assert source.dim == 3 and rows.shape == (3, 3)
    assert source.length_problem(1) == "expected 3 dimensions, not 2"
    assert source.length_problem(0) is None
    assert np.array_equal(rows[2], [4.0, 5.0, 6.0])


def _squad(data: object) -> dict:
    return {"version": "1.1", "data": data}


def test_squad_contexts_become_deduplicated_passages_and_questions_keep_gold_ids(tmp_path: Path) -> None:
    context = "Sevilla es la capital de Andalucía."
    path = tmp_path / "sq.json"
    path.write_text(json.dumps(_squad([
        {"title": "Sevilla", "paragraphs": [
            {"context": context, "qas": [{"id": "q1", "question": "¿Capital?", "answers": [{"text": "Sevilla", "answer_start": 0}]}]},
            {"context": context, "qas": [{"id": "q2", "question": "¿De qué?", "answers": [{"text": "Andalucía", "answer_start": 25}]}]},
            {"context": "Otro.", "qas": [{"id": "q3", "question": "¿?", "answers": [], "is_impossible": True}]},
        ]}])), encoding="utf-8")
    corpus = read_squad(path)
    pid = passage_id("Sevilla", context)
    assert [r.fields["id"] for r in corpus.records] == [pid, passage_id("Sevilla", "Otro.")]
    assert corpus.questions == [
        {"id": "q1", "question": "¿Capital?", "gold_ids": [pid], "answers": ["Sevilla"], "title": "Sevilla"},
        {"id": "q2", "question": "¿De qué?", "gold_ids": [pid], "answers": ["Andalucía"], "title": "Sevilla"}]
    assert corpus.skipped_questions == 1


@pytest.mark.parametrize(("document", "path"), [
    ({"version": "1"}, "at data: expected a list, found missing"),
    (_squad([{"title": "T"}]), "at data[0].paragraphs: expected a list"),
    (_squad([{"title": "T", "paragraphs": [{"qas": []}]}]), "at data[0].paragraphs[0].context: expected a string"),
    (_squad([{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "q"}]}]}]),
     "at data[0].paragraphs[0].qas[0].question: expected a string"),
    (_squad([{"title": 5, "paragraphs": []}]), "at data[0].title: expected a string, found a int"),
])
def test_malformed_squad_names_the_json_path(tmp_path: Path, document: dict, path: str) -> None:
    target = tmp_path / "bad.json"
    target.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(IngestError, match=path.replace("[", r"\[").replace("]", r"\]")):
        read_squad(target)


def test_chunks_keep_the_title_and_get_stable_ids() -> None:
    doc = Document(1, "in.jsonl:1", "doc", "Título", " ".join(f"w{i}" for i in range(250)))
    chunks = chunk_document(doc, words=100, overlap=10)
    assert [c.external_id for c in chunks] == ["doc#0", "doc#1", "doc#2"]
    assert {c.title for c in chunks} == {"Título"}
    assert chunks[1].text.split()[0] == "w90" and chunks[2].text.split()[-1] == "w249"
    assert chunk_document(doc, words=0) == [doc]


@given(st.lists(st.text(alphabet="abc", min_size=1, max_size=3), min_size=0, max_size=60),
       st.integers(1, 12), st.integers(0, 11), st.sampled_from([" ", "\n", "  \t"]))
def test_chunking_covers_every_word_in_order(words: list[str], size: int, overlap: int, sep: str) -> None:
    overlap = min(overlap, size - 1)
    text = sep.join(words)
    chunks = chunk_text(text, words=size, overlap=overlap)
    assert all(chunk in text for chunk in chunks)
    if len(words) <= size:
        assert chunks == [text]
        return
    assert all(len(chunk.split()) <= size for chunk in chunks)
    step = size - overlap
    rebuilt = [w for chunk in chunks[:-1] for w in chunk.split()[:step]] + chunks[-1].split()
    assert rebuilt == words


@given(st.text(alphabet=st.sampled_from(["a", "ñ", " ", "\t", "\n", "\u3000", "\x0b", "\u00a0", "\u2028"]),
               max_size=80), st.integers(0, 8), st.integers(0, 7))
def test_chunker_matches_word_spans_and_chunk_count(text: str, size: int, overlap: int) -> None:
    """The split-based chunker gives the slices between \\S+ word spans, and chunk_count their number."""
    import re

    overlap = min(overlap, max(size - 1, 0))
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    expected = [text] if size == 0 or len(spans) <= size else [
        text[spans[start][0]:spans[min(start + size, len(spans)) - 1][1]]
        for start in range(0, len(spans), size - overlap) if start == 0 or start + overlap < len(spans)]
    assert chunk_text(text, words=size, overlap=overlap) == expected
    assert chunk_count(text, words=size, overlap=overlap) == len(expected)


@given(st.text())
def test_word_count_shortcut_agrees_with_the_chunker_words(text: str) -> None:
    import re

    assert len(text.split()) == len(re.findall(r"\S+", text))


_ANY_CHAR = st.characters(exclude_categories=())  # surrogates and control characters too


@given(st.lists(st.text(_ANY_CHAR, max_size=40), min_size=4, max_size=4))
def test_content_hash_is_sha256_of_the_canonical_json_list(fields: list[str]) -> None:
    # Stored hashes must never change meaning: the definition is sha256(json.dumps(list, ASCII, compact)).
    canonical = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    assert content_hash(*fields) == hashlib.sha256(canonical.encode("ascii")).hexdigest()
