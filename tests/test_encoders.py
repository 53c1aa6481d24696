"""DPR encoders on tiny offline models: encode() contract, batching, runtimes, fingerprint, cache.

The tests run on the device the encoders pick (cuda when there is one): inputs go to the model's
device, and defaults are compared with that device's own. CPU-only modes (int8, ONNX Runtime)
run on the CPU everywhere. Precision agreement, on a trained pair, is in test_precision.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dpr_pg
from dpr_pg import (
    EncoderError,
    EncoderFingerprint,
    EncoderMismatchError,
    EncoderPair,
    PassageEncoder,
    QuestionEncoder,
    check_encoder,
    fingerprint_of,
    make_tiny_models,
    register_encoder,
)
from dpr_pg.encoders import onnx_runtime
from dpr_pg.encoders.tiny import spanish_sentences

from _devices import ON_GPU, pooled, tolerance

QUESTIONS = ["¿Quién escribió Cien años de soledad?", "¿Qué órgano produce la insulina?", "¿Dónde está Sevilla?"]


def corpus() -> list[tuple[str, str]]:
    """Passages of 1 to 12 sentences, titled by their first words."""
    sentences = spanish_sentences()
    passages = []
    for i in range(48):
        body = " ".join(sentences[(i * 7 + j) % len(sentences)] for j in range(1 + i % 12))
        passages.append((" ".join(body.split()[:2]), body))
    return passages


@pytest.fixture(scope="session")
def pair(tiny_models: tuple[Path, Path]) -> EncoderPair:
    question_dir, passage_dir = tiny_models
    return EncoderPair.load(str(question_dir), str(passage_dir), precision="fp32", batch_size=4)


def test_list_gives_float32_matrix_and_single_gives_vector(pair: EncoderPair) -> None:
    matrix = pair.question.encode(QUESTIONS)
    single = pair.question.encode(QUESTIONS[1])
    assert matrix.shape == (3, 768) and matrix.dtype == np.float32
    assert single.shape == (768,) and single.dtype == np.float32
    np.testing.assert_allclose(single, matrix[1], **tolerance(pair.question))
    passage = pair.passage.encode(("Sevilla", "Sevilla está a orillas del Guadalquivir."))
    assert passage.shape == (768,)
    assert pair.passage.encode([]).shape == (0, 768)


def test_order_preserved_after_length_sorting(pair: EncoderPair) -> None:
    passages = corpus()  # lengths from 1 to 12 sentences, interleaved
    together = pair.passage.encode(passages)  # batch_size=4: 12 length-sorted batches
    one_by_one = np.stack([pair.passage.encode(p) for p in passages])
    np.testing.assert_allclose(together, one_by_one, **tolerance(pair.passage))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(permutation=st.permutations(range(12)))
def test_permuting_inputs_permutes_outputs(pair: EncoderPair, permutation: list[int]) -> None:
    passages = corpus()[:12]
    baseline = pair.passage.encode(passages)
    shuffled = pair.passage.encode([passages[i] for i in permutation])
    np.testing.assert_allclose(shuffled, baseline[permutation], **tolerance(pair.passage))


def test_passages_are_encoded_as_title_text_pairs(pair: EncoderPair) -> None:
    title, text = "Insulina", "La insulina es una hormona producida por el páncreas."
    encoder = pair.passage
    features = encoder.tokenizer(title, text, return_tensors="pt")
    expected = pooled(encoder, features)[0]  # the model itself, on its device
    assert features["token_type_ids"][0].tolist().count(1) > 0  # the text is segment 1
    np.testing.assert_allclose(encoder.encode((title, text)), expected, **tolerance(encoder))
    assert not np.allclose(encoder.encode((title, text)), encoder.encode(("", f"{title} {text}")), atol=1e-4)


def test_long_passages_are_truncated_and_counted(pair: EncoderPair) -> None:
    long_text = " ".join(spanish_sentences()) * 3  # thousands of tokens
    passages = [("Corto", "Un pasaje breve."), ("Largo", long_text), ("Otro", long_text)]
    result = pair.passage.encode_result(passages)
    assert result.truncated == [1, 2]
    assert pair.passage.last_truncated == 2
    assert np.isfinite(result.embeddings).all()
    # The title is kept and the end of the text is cut, at exactly max_length tokens.
    cut = pair.passage.tokenizer("Largo", long_text, truncation="only_second", max_length=512)
    np.testing.assert_allclose(result.embeddings[1], pooled(pair.passage, cut)[0], **tolerance(pair.passage))
    pair.passage.encode([("Corto", "Un pasaje breve.")])
    assert pair.passage.last_truncated == 0


class RoomFor(torch.nn.Module):
    """The encoder's model on a device with memory for ``rows`` inputs at a time: more raise torch's OOM."""

    def __init__(self, model: torch.nn.Module, rows: int) -> None:
        super().__init__()
        self.inner, self.config, self.rows, self.calls = model, model.config, rows, []

    def forward(self, **features: torch.Tensor) -> object:
        self.calls.append(len(features["input_ids"]))
        if len(features["input_ids"]) > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(**features)


def test_out_of_memory_halves_the_batch_and_drops_no_passage(tiny_models: tuple[Path, Path], pair: EncoderPair,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    encoder = PassageEncoder.load(str(tiny_models[1]), precision="fp32", batch_size=16, device=pair.passage.device.type)
    encoder.model = tight = RoomFor(encoder.model, rows=3)
    passages = corpus()[:20]
    with caplog.at_level("WARNING", logger="dpr_pg.encoders.batching"):
        vectors = encoder.encode(passages)
    assert tight.calls[:3] == [16, 8, 4] and set(tight.calls[3:]) == {2} and sum(tight.calls[3:]) == 20
    np.testing.assert_allclose(vectors, pair.passage.encode(passages), **tolerance(pair.passage))
    assert "out of memory on 4 x" in caplog.text and "batches of 2 from here on" in caplog.text
    assert len(encoder.encode(passages[:4])) == 4  # the next call starts from the full batch size again
    assert tight.calls[-3:] == [4, 2, 2]
    encoder.model = RoomFor(tight.inner, rows=0)  # not even one passage fits: the error reaches the caller
    with pytest.raises(torch.OutOfMemoryError):
        encoder.encode(passages[:2])


def test_repeated_question_comes_from_the_cache(tiny_models: tuple[Path, Path]) -> None:
    encoder = QuestionEncoder.load(str(tiny_models[0]), precision="fp32", cache_size=2)
    first = encoder.encode("¿Qué es el ADN?")
    first[:] = 0  # the caller's copy; the cache must not change
    again = encoder.encode("¿Qué es el ADN?")
    assert encoder.cache_info().hits == 1 and encoder.cache_info().misses == 1
    assert np.abs(again).sum() > 0
    encoder.encode(["¿Uno?", "¿Dos?"])  # evicts the least recently used entry
    encoder.encode("¿Qué es el ADN?")
    info = encoder.cache_info()
    assert (info.hits, info.misses, info.currsize, info.maxsize) == (1, 4, 2, 2)


def test_tiny_models_spread_passages_like_a_trained_encoder(pair: EncoderPair) -> None:
    vectors = pair.passage.encode(corpus())
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    pairwise = (unit @ unit.T)[np.triu_indices(len(unit), 1)]
    assert pairwise.mean() < 0.97  # BERT's std-0.02 init would give ~0.9999: neighbours by rounding noise


def test_unknown_or_unsupported_precision_is_refused(tiny_models: tuple[Path, Path]) -> None:
    with pytest.raises(EncoderError, match="precision must be one of"):
        QuestionEncoder.load(str(tiny_models[0]), precision="fp8")
    with pytest.raises(EncoderError, match="needs a GPU"):
        QuestionEncoder.load(str(tiny_models[0]), precision="fp16", device="cpu")


def test_torch_thread_count_is_respected(tiny_models: tuple[Path, Path]) -> None:
    before = torch.get_num_threads()
    encoder = PassageEncoder.load(str(tiny_models[1]), precision="int8")
    encoder.encode(corpus()[:5])
    assert torch.get_num_threads() == before


def test_onnx_runtime_gives_the_torch_vectors(tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    dirs = [str(d) for d in tiny_models]
    on_torch = EncoderPair.load(*dirs, runtime="torch", batch_size=4, device="cpu", precision="fp32")
    on_onnx = EncoderPair.load(*dirs, runtime="onnx", batch_size=4)  # fp32 on the CPU, even beside a GPU
    assert (on_onnx.passage.device.type, on_onnx.passage.precision) == ("cpu", "fp32")
    questions = QUESTIONS + ["¿Y?", " ".join(spanish_sentences()[:40])]  # padded batches, one truncated
    passages = corpus() + [("Largo", "palabra " * 900)]
    assert (on_torch.question.runtime, on_onnx.question.runtime, on_onnx.passage.runtime) == ("torch", "onnx", "onnx")
    np.testing.assert_allclose(on_onnx.question.encode(questions), on_torch.question.encode(questions), atol=1e-4)
    np.testing.assert_allclose(on_onnx.passage.encode(passages), on_torch.passage.encode(passages), atol=1e-4)
    assert on_onnx.passage.last_truncated == on_torch.passage.last_truncated == 1
    assert on_onnx.fingerprint == on_torch.fingerprint


def test_default_runtime_is_onnx_for_cpu_fp32_questions_only(tiny_models: tuple[Path, Path]) -> None:
    dirs = [str(d) for d in tiny_models]
    default = EncoderPair.load(*dirs)
    if ON_GPU:  # the GPU's own defaults: fp16 on torch, batches of 256, questions replayed as CUDA graphs
        assert (default.question.precision, default.question.runtime, default.question.cuda_graphs) == (
            "fp16", "torch", True)
        assert (default.passage.precision, default.passage.runtime, default.passage.batch_size) == ("fp16", "torch", 256)
    else:  # ONNX Runtime wherever the question side runs fp32, torch for the rest
        expected = "onnx" if default.question.precision == "fp32" else "torch"
        assert (default.question.runtime, default.passage.runtime) == (expected, "torch")
        assert f"runtime={expected!r}" in repr(default.question)
        assert default.passage.batch_size == 16 and not default.question.cuda_graphs
    fp32 = QuestionEncoder.load(dirs[0], device="cpu", precision="fp32")
    assert fp32.runtime == "onnx"
    options = fp32.onnx_runner().session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # no busy idle threads
    int8 = QuestionEncoder.load(dirs[0], precision="int8")
    assert (int8.runtime, int8.device.type) == ("torch", "cpu")
    with pytest.raises(EncoderError, match="runs on torch, not onnx"):
        int8.onnx_runner()
    with pytest.raises(EncoderError, match="runtime must be one of torch, onnx"):
        QuestionEncoder.load(dirs[0], runtime="tensorrt")
    with pytest.raises(EncoderError, match="runtime 'onnx' runs fp32 on CPU only, not int8"):
        QuestionEncoder.load(dirs[0], runtime="onnx", precision="int8")


def test_exported_graph_is_cached_and_a_corrupt_one_is_exported_again(tiny_models: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    first = QuestionEncoder.load(str(tiny_models[0]), runtime="onnx", cache_dir=tmp_path, cache_size=0)
    assert not (tmp_path / "onnx").exists()  # nothing is exported before the first question
    first.warm_up()  # what a server calls at start
    assert len(list((tmp_path / "onnx").glob("*/model.onnx"))) == 1
    reference = first.encode(QUESTIONS)
    (graph,) = (tmp_path / "onnx").glob("*/model.onnx")
    written = graph.stat().st_mtime_ns
    again = QuestionEncoder.load(str(tiny_models[0]), runtime="onnx", cache_dir=tmp_path, cache_size=0)
    again.onnx_runner()
    assert graph.stat().st_mtime_ns == written  # read, not exported again
    graph.write_bytes(b"half a file")  # a killed export, a full disk
    repaired = QuestionEncoder.load(str(tiny_models[0]), runtime="onnx", cache_dir=tmp_path, cache_size=0)
    repaired.onnx_runner()
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [graph.parent.name]  # no staging folders left
    assert graph.stat().st_size > 1000
    np.testing.assert_array_equal(again.encode(QUESTIONS), reference)
    np.testing.assert_array_equal(repaired.encode(QUESTIONS), reference)


def test_default_runtime_falls_back_to_torch_when_the_cache_is_unwritable(tiny_models: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    # fp32 on the CPU: where ONNX Runtime is the default
    default = QuestionEncoder.load(str(tiny_models[0]), device="cpu", precision="fp32", cache_dir=not_a_folder,
                                   cache_size=0)
    with pytest.warns(RuntimeWarning, match="cannot write the ONNX cache folder .* Encoding on torch instead"):
        vectors = default.encode(QUESTIONS)
    assert default.runtime == "torch"
    on_torch = QuestionEncoder.load(str(tiny_models[0]), runtime="torch", device="cpu", precision="fp32", cache_size=0)
    np.testing.assert_allclose(vectors, on_torch.encode(QUESTIONS), atol=1e-6)
    asked = QuestionEncoder.load(str(tiny_models[0]), runtime="onnx", cache_dir=not_a_folder, cache_size=0)
    with pytest.raises(EncoderError, match="set DPR_PG_CACHE_DIR to a writable folder"):
        asked.encode(QUESTIONS)


def test_onnx_cache_keeps_one_graph_per_model(tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    other_question, _ = make_tiny_models(tmp_path / "other", dim=768, seed=1)
    QuestionEncoder.load(str(tiny_models[0]), runtime="onnx", cache_dir=cache).warm_up()
    QuestionEncoder.load(str(other_question), runtime="onnx", cache_dir=cache).warm_up()
    assert len(list((cache / "onnx").glob("*/model.onnx"))) == 2  # two models, two graphs
    (other_question / "extra.txt").write_text("a new revision of the same folder")
    QuestionEncoder.load(str(other_question), runtime="onnx", cache_dir=cache).warm_up()
    sources = sorted(json.loads(f.read_text())["source"] for f in (cache / "onnx").glob("*/facts.json"))
    assert sources == sorted([str(tiny_models[0]), str(other_question)])  # the older revision's graph is gone
    assert onnx_runtime.cache_facts(kind="question", source="org/model", revision=None, max_length=512) is None


def test_fingerprint_of_names_the_pair_without_loading_its_weights(tiny_models: tuple[Path, Path], pair: EncoderPair,
                                                                    tmp_path: Path) -> None:
    assert fingerprint_of(str(tiny_models[0]), str(tiny_models[1])) == pair.fingerprint
    unreadable = []
    for folder in tiny_models:
        copy = tmp_path / folder.name
        shutil.copytree(folder, copy)
        (copy / "model.safetensors").write_bytes(b"not weights")  # loading them would fail
        unreadable.append(str(copy))
    with pytest.raises(EncoderError, match="cannot load the question encoder"):
        EncoderPair.load(*unreadable)
    light = fingerprint_of(*unreadable)
    assert (light.question_model, light.dim, light.max_length) == (unreadable[0], 768, pair.fingerprint.max_length)
    assert light.tokenizer_hash == pair.fingerprint.tokenizer_hash
    assert light.passage_revision != pair.fingerprint.passage_revision  # the folder's files changed
    with pytest.raises(EncoderError, match="outputs 768 dimensions but the passage encoder"):
        fingerprint_of(str(tiny_models[0]), str(make_tiny_models(tmp_path / "small", dim=32)[1]))
    config_file = Path(unreadable[0]) / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_type": "bert"}))
    with pytest.raises(EncoderError, match="its config is a 'bert' model, not 'dpr'"):
        fingerprint_of(*unreadable)


def test_missing_model_error_names_model_reason_and_fix() -> None:
    with pytest.raises(EncoderError) as caught:
        QuestionEncoder.load("IIC/no-such-dpr-model")  # HF_HUB_OFFLINE=1 in the test environment
    message = str(caught.value)
    assert "'IIC/no-such-dpr-model'" in message
    assert "couldn't connect" in message or "offline" in message.lower()
    assert "DPR_PG_QUESTION_MODEL=/path/to/folder" in message
    with pytest.raises(EncoderError, match="does not exist.*DPR_PG_PASSAGE_MODEL"):
        PassageEncoder.load("/no/such/folder/passage")


def test_swapped_question_and_passage_models_are_refused(tiny_models: tuple[Path, Path]) -> None:
    with pytest.raises(EncoderError, match="weights are missing.*DPRQuestionEncoder checkpoint"):
        QuestionEncoder.load(str(tiny_models[1]))


def test_model_names_come_from_argument_then_environment(
    tiny_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPR_PG_QUESTION_MODEL", str(tiny_models[0]))
    monkeypatch.setenv("DPR_PG_PASSAGE_MODEL", "IIC/not-used-because-the-argument-wins")
    pair = EncoderPair.load(passage_model=str(tiny_models[1]), precision="fp32")
    assert pair.question.name == str(tiny_models[0].resolve())
    assert pair.passage.name == str(tiny_models[1].resolve())
    monkeypatch.delenv("DPR_PG_QUESTION_MODEL")
    with pytest.raises(EncoderError, match="IIC/dpr-spanish-question_encoder-allqa-base"):
        EncoderPair.load(passage_model=str(tiny_models[1]))


def test_fingerprint_identifies_the_pair(pair: EncoderPair, tiny_models: tuple[Path, Path]) -> None:
    fingerprint = pair.fingerprint
    assert fingerprint.question_revision.startswith("sha256:")
    assert (fingerprint.dim, fingerprint.max_length, fingerprint.pooling) == (768, 512, "pooler_output")
    assert len(fingerprint.id) == 64 and fingerprint.id == pair.fingerprint.id
    assert fingerprint.as_row()["fingerprint"] == fingerprint.id
    relative = EncoderPair.load(
        str(Path(tiny_models[0]).relative_to(Path.cwd(), walk_up=True)) if sys.version_info >= (3, 12)
        else str(tiny_models[0]),
        str(tiny_models[1]), precision="int8",
    )
    assert relative.fingerprint.id == fingerprint.id


def insert_passage(conn: sa.Connection, collection: str, encoder_id: int) -> None:
    conn.execute(
        sa.text("INSERT INTO dpr_pg.passages (collection, external_id, text, content_hash, embedding, encoder_id) "
                "VALUES (:c, 'p1', 'texto', 'h', :v, :e)"),
        {"c": collection, "v": "[" + ",".join(["0.5"] * 768) + "]", "e": encoder_id},
    )


def test_fingerprint_mismatch_is_refused_naming_both_pairs(
    engine: sa.Engine, pair: EncoderPair, tmp_path: Path
) -> None:
    other_dirs = make_tiny_models(tmp_path / "other", dim=768, seed=1)
    other = EncoderPair.load(str(other_dirs[0]), str(other_dirs[1]), precision="fp32")
    with engine.begin() as conn:
        encoder_id = register_encoder(conn, pair.fingerprint)
        assert register_encoder(conn, pair.fingerprint) == encoder_id  # once per fingerprint
        insert_passage(conn, "wiki", encoder_id)
    check_encoder(engine, pair.fingerprint, collection="wiki")  # same pair: accepted
    check_encoder(engine, other.fingerprint, collection="empty")  # nothing stored: accepted
    with pytest.raises(EncoderMismatchError) as caught:
        check_encoder(engine, other.fingerprint, collection="wiki")
    message = str(caught.value)
    assert pair.fingerprint.id[:12] in message and other.fingerprint.id[:12] in message
    assert str(other_dirs[0].resolve()) in message and pair.question.name in message
    with engine.connect() as conn, pytest.raises(EncoderMismatchError, match="this database"):
        check_encoder(conn, other.fingerprint)


@pytest.mark.parametrize("options", [
    {}, {"collection": "wiki"}, {"filter": {"lang": "es"}}, {"collection": "wiki", "mode": "hybrid"},
    {"collection": "wiki", "mode": "exact"}, {"collection": "wiki", "exact_threshold": 0, "exact_selectivity": 0},
], ids=["unfiltered", "collection", "filter", "hybrid", "exact", "iterative"])
def test_a_search_refuses_another_pairs_vectors_on_every_path_and_leaves_the_callers_settings(
        engine: sa.Engine, pair: EncoderPair, tmp_path: Path, options: dict) -> None:
    # With a filter or a collection, the check rides on the planner's first round trip; it must still
    # come first: the other pair's 384-d question would otherwise fail on its dimension.
    other_dirs = make_tiny_models(tmp_path / "other", dim=384, seed=1)
    other = EncoderPair.load(str(other_dirs[0]), str(other_dirs[1]), precision="fp32")
    with engine.begin() as conn:
        insert_passage(conn, "wiki", register_encoder(conn, pair.fingerprint))
        conn.execute(sa.text("UPDATE dpr_pg.passages SET metadata = '{\"lang\": \"es\"}'"))
    with engine.connect() as conn:
        with pytest.raises(EncoderMismatchError, match="collection 'wiki'" if "collection" in options
                           else "this database"):
            dpr_pg.search(conn, "¿Dónde está Sevilla?", encoder=other, k=3, **options)
        settings = conn.execute(sa.text(
            "SELECT current_setting('hnsw.iterative_scan'), current_setting('hnsw.ef_search'), "
            "current_setting('plan_cache_mode')")).one()
        assert tuple(settings) == ("off", "40", "auto")
        hits = dpr_pg.search(conn, "¿Dónde está Sevilla?", encoder=pair, k=3, **options)
    assert [h.external_id for h in hits] == ["p1"]


def test_register_encoder_writes_the_fingerprint_row(engine: sa.Engine, pair: EncoderPair) -> None:
    with engine.begin() as conn:
        encoder_id = register_encoder(conn, pair.fingerprint)
        row = conn.execute(sa.text("SELECT * FROM dpr_pg.encoders WHERE id = :i"), {"i": encoder_id}).mappings().one()
    expected = pair.fingerprint.as_row()
    assert {k: row[k] for k in expected} == expected
    assert EncoderFingerprint(**{k: row[k] for k in expected if k != "fingerprint"}).id == row["fingerprint"]


def test_tiny_models_command_writes_a_hub_shaped_pair(cli, tmp_path: Path) -> None:
    result = cli("tiny-models", str(tmp_path / "m"), "--dim", "16", check=True)
    assert "question encoder" in result.stdout
    config = json.loads((tmp_path / "m" / "passage" / "config.json").read_text())
    assert config["projection_dim"] == 16 and config["architectures"] == ["DPRContextEncoder"]
    encoder = QuestionEncoder.load(str(tmp_path / "m" / "question"), precision="fp32")
    tokens = encoder.tokenizer.tokenize("¿Quién pintó el Guernica?")
    assert "[UNK]" not in tokens and "guernica" in "".join(tokens).replace("##", "")
    assert encoder.encode("¿Quién pintó el Guernica?").shape == (16,)


def test_importing_dpr_pg_does_not_import_torch() -> None:
    code = "import sys, dpr_pg; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
