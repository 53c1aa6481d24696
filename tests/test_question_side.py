"""What a search loads: the question side from the ONNX cache without torch, the same vectors and fingerprint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpr_pg import EncoderPair, QuestionEncoder, load_question_side
from dpr_pg.encoders.fingerprint import folder_revision
from dpr_pg.encoders.question_side import OnnxQuestionEncoder

QUESTIONS = ["¿Quién pintó el Guernica?", "¿DÓNDE está Sevilla, España?", "ñandú   pingüino ¿¡qué!?", "",
             " ".join(["palabra"] * 700)]  # the last one is cut at 512 tokens


@pytest.fixture
def models(tiny_models: tuple[Path, Path], tmp_path: Path) -> tuple[str, str]:
    """A private copy of the tiny pair, so a test may change it."""
    question, passage = tmp_path / "question", tmp_path / "passage"
    shutil.copytree(tiny_models[0], question)
    shutil.copytree(tiny_models[1], passage)
    return str(question), str(passage)


def test_the_second_load_runs_from_the_cache_with_the_same_vectors_and_fingerprint(
        models: tuple[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_question_side(*models, cache_dir=cache)  # loads on torch, exports the graph
    second = load_question_side(*models, cache_dir=cache)
    assert isinstance(first.question, QuestionEncoder) and first.question.runtime == "onnx"
    assert isinstance(second.question, OnnxQuestionEncoder)
    pair = EncoderPair.load(*models, runtime="torch", cache_dir=cache)
    assert first.fingerprint == second.fingerprint == pair.fingerprint
    expected = pair.question.encode(QUESTIONS)
    np.testing.assert_allclose(second.question.encode(QUESTIONS), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(second.question.encode(QUESTIONS[0]), expected[0], rtol=1e-4, atol=1e-5)


def test_cached_token_ids_are_those_of_the_transformers_tokenizer(models: tuple[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    torch_side = load_question_side(*models, cache_dir=cache)
    cached = load_question_side(*models, cache_dir=cache).question
    reference = torch_side.question
    for question in QUESTIONS:
        expected = reference.tokenizer(question, truncation=True, max_length=reference.max_length)["input_ids"]
        assert cached._token_ids([question]) == [expected]
    assert len(cached._token_ids([QUESTIONS[-1]])[0]) == 512


def test_a_changed_model_folder_misses_the_cache(models: tuple[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_question_side(*models, cache_dir=cache)
    before = load_question_side(*models, cache_dir=cache)
    (Path(models[0]) / "README.md").write_text("a new revision of the same folder")
    after = load_question_side(*models, cache_dir=cache)
    assert isinstance(before.question, OnnxQuestionEncoder) and not isinstance(after.question, OnnxQuestionEncoder)
    assert after.fingerprint.question_revision != before.fingerprint.question_revision


def test_the_cached_path_imports_neither_torch_nor_transformers(models: tuple[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_question_side(*models, cache_dir=cache)
    probe = (f"import sys, dpr_pg; side = dpr_pg.load_question_side({models[0]!r}, {models[1]!r}, cache_dir={str(cache)!r}); "
             "side.question.encode('¿Qué?'); "
             "print(type(side.question).__name__, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a CPU run whatever the machine has
    printed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout
    assert printed.strip() == "OnnxQuestionEncoder []"


def test_other_precisions_and_runtimes_load_on_torch(models: tuple[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_question_side(*models, cache_dir=cache)
    assert load_question_side(*models, cache_dir=cache, runtime="torch").question.runtime == "torch"
    assert load_question_side(*models, cache_dir=cache, precision="int8").question.precision == "int8"


def test_folder_revision_is_kept_until_a_file_changes(models: tuple[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = folder_revision(models[0], cache_dir=cache)
    (record,) = (cache / "folder_digests").glob("*.json")
    assert json.loads(record.read_text())["revision"] == first
    assert folder_revision(models[0], cache_dir=cache) == first
    weights = Path(models[0]) / "config.json"
    stat = weights.stat()
    text = weights.read_text()
    weights.write_text(text.replace("{", "{ ", 1)[:-1])  # other bytes, the same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime: ctime still tells
    assert len(weights.read_text()) == len(text)
    changed = folder_revision(models[0], cache_dir=cache)
    assert changed != first and changed == folder_revision(models[0], cache_dir=tmp_path / "fresh")
