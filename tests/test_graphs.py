"""Static-shape batches for CUDA graphs: padding a question to a length bucket keeps its vector.

The CUDA graphs themselves need a GPU; the padding they rely on is device-independent and runs
here eagerly (``capture=False``) on the encoder's own device, with real trained weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpr_pg import EncoderError, EncoderPair, QuestionEncoder
from dpr_pg.encoders.cuda_graphs import BATCH_SIZES, LENGTHS, BucketedRunner, bucket, pad_batch
from dpr_pg.encoders.tiny import spanish_sentences

from _devices import assert_same_vectors


@pytest.fixture(scope="module")
def trained_fp32(trained_models: tuple[Path, Path]) -> EncoderPair:
    return EncoderPair.load(str(trained_models[0]), str(trained_models[1]), precision="fp32", runtime="torch",
                            cuda_graphs=False, cache_size=0)


def padded_features(encoder: QuestionEncoder, questions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, mask and token types of ``questions``, padded to the longest, as the encoder lays them out."""
    features = encoder.tokenizer(questions, padding=True, return_tensors="np")
    return (features["input_ids"].astype(np.int64), features["attention_mask"].astype(np.int64),
            features["token_type_ids"].astype(np.int64))


def eager(encoder: QuestionEncoder, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        tensors = [torch.from_numpy(a).to(encoder.device) for a in (ids, mask, types)]
        return encoder.model(input_ids=tensors[0], attention_mask=tensors[1],
                             token_type_ids=tensors[2]).pooler_output.float().cpu().numpy()


@given(value=st.integers(1, 200))
def test_bucket_is_the_smallest_size_that_holds_the_value(value: int) -> None:
    chosen = bucket(value, LENGTHS)
    if value > LENGTHS[-1]:
        assert chosen is None
    else:
        assert chosen is not None and chosen >= value
        assert all(size < value for size in LENGTHS if size < chosen)


def test_pad_batch_masks_padding_columns_and_repeats_the_first_row() -> None:
    ids = np.array([[101, 7, 8, 102], [101, 9, 102, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=np.int64)
    types = np.zeros_like(ids)
    out = pad_batch(ids, mask, types, rows=4, width=6, pad_id=0)
    assert out.shape == (3, 4, 6) and out.dtype == np.int64
    assert out[0, 1].tolist() == [101, 9, 102, 0, 0, 0]
    assert out[1, 1].tolist() == [1, 1, 1, 0, 0, 0]
    assert out[0, 3].tolist() == out[0, 0].tolist() and out[1, 2].tolist() == [1, 1, 1, 1, 0, 0]
    with pytest.raises(EncoderError, match="at most 1 x 6 tokens, not 2 x 4"):
        pad_batch(ids, mask, types, rows=1, width=6, pad_id=0)


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, 86), min_size=1, max_size=9), words=st.integers(1, 40))
def test_padding_to_a_bucket_keeps_each_question_vector(trained_fp32: EncoderPair, picks: list[int],
                                                        words: int) -> None:
    sentences = spanish_sentences()
    encoder = trained_fp32.question
    questions = [" ".join(sentences[i].split()[:words]) for i in picks]
    ids, mask, types = padded_features(encoder, questions)
    runner = BucketedRunner(encoder.model, device=encoder.device, pad_id=encoder.pad_id, capture=False)
    assert runner.covers(*ids.shape) == (ids.shape[1] <= LENGTHS[-1] and ids.shape[0] <= BATCH_SIZES[-1])
    if not runner.covers(*ids.shape):
        return
    rows, width = runner.shape_for(*ids.shape)
    bucketed = runner.run(ids, mask, types)
    assert bucketed.shape == (len(questions), encoder.dim) and bucketed.dtype == np.float32
    # DPR pools the [CLS] state; masked padding must not move it beyond float rounding.
    np.testing.assert_allclose(bucketed, eager(encoder, ids, mask, types), rtol=1e-4, atol=2e-5)
    assert width >= ids.shape[1] and rows >= len(questions)


def test_bucketed_vectors_equal_the_encoders_own_one_by_one(trained_fp32: EncoderPair) -> None:
    encoder = trained_fp32.question
    questions = ["¿Qué?", "¿Dónde está Sevilla?", " ".join(spanish_sentences()[:3])]
    runner = BucketedRunner(encoder.model, device=encoder.device, pad_id=encoder.pad_id, capture=False)
    for question in questions:
        ids, mask, types = padded_features(encoder, [question])
        assert runner.shape_for(*ids.shape)[1] in LENGTHS
        np.testing.assert_allclose(runner.run(ids, mask, types)[0], encoder.encode(question), rtol=1e-4, atol=2e-5)


def test_a_batch_beyond_the_largest_shape_is_not_covered(trained_fp32: EncoderPair) -> None:
    encoder = trained_fp32.question
    runner = BucketedRunner(encoder.model, device=encoder.device, pad_id=encoder.pad_id, capture=False)
    assert not runner.covers(1, LENGTHS[-1] + 1) and not runner.covers(BATCH_SIZES[-1] + 1, 8)
    with pytest.raises(EncoderError, match="no static shape holds 1 x 129 tokens"):
        runner.shape_for(1, 129)


def test_cuda_graphs_follow_the_device(trained_models: tuple[Path, Path]) -> None:
    default = QuestionEncoder.load(str(trained_models[0]), runtime="torch")
    assert default.cuda_graphs == (default.device.type == "cuda")  # on by default on a GPU, for questions
    if default.cuda_graphs:
        assert default._graphs.captured == len(LENGTHS) * len(BATCH_SIZES)  # warmed at load
    with pytest.raises(EncoderError, match="cuda_graphs=True needs a CUDA device"):
        QuestionEncoder.load(str(trained_models[0]), device="cpu", cuda_graphs=True)
    assert not BucketedRunner(default.model, device=torch.device("cpu"), pad_id=0, capture=False).captured
    with pytest.raises(EncoderError, match="CUDA graphs need a CUDA device"):
        BucketedRunner(default.model, device=torch.device("cpu"), pad_id=0)


def test_questions_encode_alike_with_and_without_graphs(trained_models: tuple[Path, Path]) -> None:
    graphed = QuestionEncoder.load(str(trained_models[0]), runtime="torch", cache_size=0)  # graphs on a GPU
    eager = QuestionEncoder.load(str(trained_models[0]), runtime="torch", cache_size=0, cuda_graphs=False,
                                 precision=graphed.precision)
    sentences = spanish_sentences()
    questions = ["¿Qué?", "¿Dónde está Sevilla?", " ".join(sentences[:2]), " ".join(sentences[:12])]  # the last > 128
    assert len(graphed.tokenizer(questions[-1])["input_ids"]) > LENGTHS[-1]  # eager even with graphs
    for question in questions:
        assert_same_vectors(graphed.encode(question), eager.encode(question), graphed)
    assert_same_vectors(graphed.encode(questions[:3]), eager.encode(questions[:3]), graphed)
    assert_same_vectors(graphed.encode(questions), eager.encode(questions), graphed)
