"""The extractive reader: spans and null scores, windows with stride, batching, loading, and ask()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from click.testing import CliRunner

from _documents import MADRID, SEVILLA, markdown_text
from dpr_pg import config
from dpr_pg.cli import main
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.errors import ReaderError, SearchError
from dpr_pg.ingest import ingest
from dpr_pg.reader import Reader, ask, make_tiny_reader
from dpr_pg.reader.spans import window_spans
from dpr_pg.reader.windows import make_windows

LONG = " ".join(f"En {1900 + i} la ciudad de Sevilla celebró su feria número {i} junto al río Guadalquivir."
                for i in range(40))


@pytest.fixture(scope="session")
def reader_dir(tiny_reader: Path) -> Path:
    return tiny_reader


@pytest.fixture(scope="module")
def reader(reader_dir: Path) -> Reader:
    return Reader.load(str(reader_dir), max_length=96, stride=24, max_question_tokens=24)


# ---- spans ----------------------------------------------------------------------------------------

LOGITS = st.lists(st.floats(-8, 8), min_size=4, max_size=24)


@given(LOGITS, LOGITS, st.data())
def test_best_span_is_the_best_valid_pair(start: list[float], end: list[float], data: st.DataObject) -> None:
    n = min(len(start), len(end))
    s, e = np.array(start[:n]), np.array(end[:n])
    first = data.draw(st.integers(1, n - 1))
    last = data.draw(st.integers(first, n - 1))
    context = np.zeros(n, dtype=bool)
    context[first:last + 1] = True
    word_start = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    longest = data.draw(st.integers(1, 5))
    spans, null = window_spans(s, e, context, 0, max_answer_tokens=longest, top=3, word_start=word_start)

    allowed = context.copy()
    allowed[0] = True
    p_start = np.exp(s - s[allowed].max()) * allowed
    p_start /= p_start.sum()
    p_end = np.exp(e - e[allowed].max()) * allowed
    p_end /= p_end.sum()
    valid = sorted(((p_start[i] * p_end[j], i, j) for i in range(first, last + 1) for j in range(i, last + 1)
                    if j - i < longest and word_start[i]), reverse=True)
    assert null == pytest.approx(p_start[0] * p_end[0])
    assert [round(score, 9) for _, _, score in spans] == [round(v[0], 9) for v in valid[:3]]
    assert all(word_start[i] and i <= j < i + longest and context[i] and context[j] for i, j, _ in spans)


def test_a_model_that_points_at_cls_gives_a_high_null_score() -> None:
    start, end = np.array([9.0, 0.0, 0.0, 0.0]), np.array([9.0, 0.0, 0.0, 0.0])
    spans, null = window_spans(start, end, np.array([False, True, True, True]), 0, max_answer_tokens=3, top=1)
    assert null > 0.99 and spans[0][2] < 0.001


# ---- windows and reading --------------------------------------------------------------------------


def test_long_passages_are_windowed_with_stride_and_cover_every_token(reader: Reader) -> None:
    windows = make_windows(reader.tokenizer, [("¿Qué río?", LONG)], max_length=96, stride=24)
    assert len(windows) > 5 and all(len(w.input_ids) <= 96 for w in windows)
    spans = [[w.offsets[i] for i in np.flatnonzero(w.context)] for w in windows]
    for before, after in zip(spans, spans[1:]):
        assert before[-24:] == after[:24]  # consecutive windows share `stride` passage tokens
    covered = sorted({o for window in spans for o in window})
    assert covered[0][0] == 0 and covered[-1][1] == len(LONG)


def test_answers_are_whole_words_with_their_offsets_best_first(reader: Reader) -> None:
    passages = ["Sevilla está en Andalucía, a orillas del Guadalquivir.", LONG]
    reading = reader.read("¿Dónde está Sevilla?", passages, top_answers=10)
    assert len(reading.answers) == 10 and reading.windows > 5
    scores = [a.score for a in reading.answers]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert len({(a.passage, a.start, a.end) for a in reading.answers}) == 10
    for answer in reading.answers:
        text = passages[answer.passage]
        assert text[answer.start:answer.end] == answer.text and answer.text.strip() == answer.text
        # never a piece of a word: no letter or digit on both sides of either edge
        assert answer.start == 0 or not (text[answer.start - 1].isalnum() and text[answer.start].isalnum())
        assert answer.end == len(text) or not (text[answer.end - 1].isalnum() and text[answer.end].isalnum())


def test_batching_and_padding_do_not_change_the_answers(reader_dir: Path) -> None:
    questions = ["¿Dónde está Sevilla?", "¿Qué río pasa por Sevilla?", "¿Cuándo?"]
    passages = [["Sevilla está en Andalucía.", LONG], [LONG], ["En 1929 hubo una exposición.", "Corto."]]
    # fp32 on every device: on a GPU the fp16 default rounds differently in other batch shapes
    one = Reader.load(str(reader_dir), batch_size=1, precision="fp32").read_many(questions, passages, top_answers=3)
    many = Reader.load(str(reader_dir), batch_size=16, precision="fp32").read_many(questions, passages, top_answers=3)
    for a, b in zip(one, many):
        assert [(s.passage, s.start, s.end) for s in a.answers] == [(s.passage, s.start, s.end) for s in b.answers]
        assert [s.score for s in a.answers] == pytest.approx([s.score for s in b.answers], rel=1e-4)
        assert a.no_answer_score == pytest.approx(b.no_answer_score, rel=1e-4)


def test_no_answer_threshold(reader: Reader) -> None:
    passages = ["Sevilla está en Andalucía.", "Madrid es la capital de España."]
    free = reader.read("¿Dónde está Sevilla?", passages)
    assert not free.no_answer and free.no_answer_score is not None
    strict = reader.read("¿Dónde está Sevilla?", passages, no_answer_threshold=1.0)
    assert strict.no_answer and strict.answers == []
    null_only = reader.read("¿Dónde está Sevilla?", passages, no_answer_threshold=0.0)
    assert null_only.no_answer == (free.answers[0].score < free.no_answer_score)
    with pytest.raises(ReaderError, match="between 0 and 1"):
        reader.read("¿Dónde?", passages, no_answer_threshold=2.0)


def test_the_tiny_reader_is_deterministic_for_a_seed(tmp_path: Path, reader_dir: Path) -> None:
    again = make_tiny_reader(tmp_path / "again", seed=0)
    other = make_tiny_reader(tmp_path / "other", seed=1)
    weights = (reader_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights != (other / "model.safetensors").read_bytes()
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in again.iterdir()}


def test_loading_fails_fast_and_says_what_to_do(tiny_models: tuple[Path, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ReaderError, match="cannot load the reader 'nobody/no-such-reader'.*DPR_PG_READER_MODEL"):
        Reader.load("nobody/no-such-reader")
    with pytest.raises(ReaderError, match="does not exist"):
        Reader.load(str(tmp_path / "missing"))
    with pytest.raises(ReaderError, match="cannot load the reader"):
        Reader.load(str(tiny_models[0]))  # a DPR encoder has no span head
    monkeypatch.setenv("DPR_PG_READER_MODEL", "/from/the/environment")
    assert config.reader_model() == "/from/the/environment" and config.reader_model("arg") == "arg"
    monkeypatch.delenv("DPR_PG_READER_MODEL")
    assert config.reader_model() == config.DEFAULT_READER_MODEL


# ---- ask ------------------------------------------------------------------------------------------


@pytest.fixture
def guides(engine: Engine, fp32_pair: EncoderPair, tmp_path: Path) -> Engine:
    (tmp_path / "sevilla.md").write_text(markdown_text("Guía de Sevilla", SEVILLA), encoding="utf-8")
    (tmp_path / "madrid.md").write_text(markdown_text("Guía de Madrid", MADRID), encoding="utf-8")
    ingest(engine, fp32_pair, tmp_path, collection="guias")
    return engine


def test_ask_returns_the_span_its_offsets_and_its_passage(guides: Engine, fp32_pair: EncoderPair,
                                                          reader: Reader) -> None:
    result = ask(guides, "¿Dónde está la Giralda?", encoder=fp32_pair, reader=reader, collection="guias", k=3,
                 top_answers=2)
    assert len(result.answers) == 2 and not result.no_answer and len(result.passages) == 3
    best = result.answer
    assert best.passage.text[best.start:best.end] == best.text
    assert best.passage.metadata["source"] in {"sevilla.md", "madrid.md"} and best.passage.title.startswith("Guía de")
    as_dict = result.as_dict()
    assert set(as_dict["answers"][0]) == {"answer", "score", "start", "end", "passage"}
    assert {"id", "external_id", "title", "metadata"} <= set(as_dict["answers"][0]["passage"])
    json.dumps(as_dict)


def test_ask_honours_the_filter_and_the_no_answer_threshold(guides: Engine, fp32_pair: EncoderPair,
                                                            reader: Reader) -> None:
    result = ask(guides, "¿Qué hay en el Prado?", encoder=fp32_pair, reader=reader, collection="guias",
                 filter={"source": "madrid.md"}, top_answers=5)
    assert result.answers and {a.passage.metadata["source"] for a in result.answers} == {"madrid.md"}
    none = ask(guides, "¿Qué hay en el Prado?", encoder=fp32_pair, reader=reader, collection="guias",
               no_answer_threshold=1.0)
    assert none.no_answer and none.answer is None and none.as_dict()["answers"] == []
    with pytest.raises(ReaderError, match="question with some text"):
        ask(guides, "  ", encoder=fp32_pair, reader=reader)
    with pytest.raises(SearchError, match="at most 10000 characters, not 10001"):
        ask(guides, "x" * 10_001, encoder=fp32_pair, reader=reader)


def test_cli_ask(cli, database_url: str, guides: Engine, tiny_models: tuple[Path, Path], reader_dir: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1]),
           "DPR_PG_READER_MODEL": str(reader_dir)}
    result = cli("--database-url", database_url, "ask", "¿Dónde está la Giralda?", "--collection", "guias",
                 "--top-answers", "2", "--json", env=env)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert len(found["answers"]) == 2 and found["passages_read"] == 4
    answer = found["answers"][0]
    assert answer["passage"]["text"][answer["start"]:answer["end"]] == answer["answer"]

    for name, value in env.items():  # the rest in this process: the models are loaded already
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    table = runner.invoke(main, ["--database-url", database_url, "ask", "¿Dónde está la Giralda?",
                                 "--collection", "guias"])
    assert table.exit_code == 0 and ".md §" in table.output
    none = runner.invoke(main, ["--database-url", database_url, "ask", "¿Dónde?", "--no-answer-threshold", "1"])
    assert none.exit_code == 0 and "no answer" in none.output
    missing = runner.invoke(main, ["--database-url", database_url, "ask", "¿Dónde?", "--reader-model", "nobody/x"])
    assert missing.exit_code == 1 and "DPR_PG_READER_MODEL" in missing.output
    long = runner.invoke(main, ["--database-url", database_url, "ask", "x" * 10_001, "--reader-model", "nobody/x"])
    assert long.exit_code == 1 and "at most 10000 characters, not 10001" in long.output  # before any model loads
