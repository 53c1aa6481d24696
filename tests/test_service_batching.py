"""QuestionBatcher: concurrent questions share encoder calls, bounded in size; results equal unbatched ones."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from dpr_pg.encoders.pair import QuestionEncoder
from dpr_pg.service.batching import QuestionBatcher

from _devices import assert_same_vectors


class GatedEncoder:
    """The real tiny encoder; its first call waits at a gate, so the next questions queue meanwhile."""

    def __init__(self, inner: QuestionEncoder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def cached(self, question: str) -> np.ndarray | None:
        return self.inner.cached(question)

    def encode(self, questions: list[str]) -> np.ndarray:
        self.calls.append(list(questions))
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(120)
        return self.inner.encode(questions)


@pytest.fixture
def question_encoder(tiny_models: tuple[Path, Path]) -> QuestionEncoder:
    return QuestionEncoder.load(str(tiny_models[0]))


def test_questions_queued_behind_a_busy_encoder_go_in_bounded_batches(question_encoder: QuestionEncoder,
                                                                      tiny_models: tuple[Path, Path]) -> None:
    gated = GatedEncoder(question_encoder)
    questions = [f"¿Pregunta número {i}?" for i in range(10)]

    async def scenario() -> list[np.ndarray]:
        batcher = QuestionBatcher(gated, max_batch=4, max_wait=0.0)
        first = asyncio.create_task(batcher.encode(questions[:1]))
        while not gated.entered.is_set():  # the encoder thread holds the first question
            await asyncio.sleep(0.005)
        rest = [asyncio.create_task(batcher.encode([q])) for q in questions[1:]]
        rest.append(asyncio.create_task(batcher.encode([questions[1]])))  # the same question twice in flight
        await asyncio.sleep(0)  # every request has queued its question
        gated.gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return [r[0] for r in results]

    vectors = asyncio.run(scenario())
    assert [len(call) for call in gated.calls] == [1, 4, 4, 1]  # 9 distinct questions behind the first, 4 at most
    assert sorted(q for call in gated.calls for q in call) == sorted(questions)  # the duplicate encoded once
    unbatched = QuestionEncoder.load(str(tiny_models[0]), cache_size=0)
    expected = np.stack([unbatched.encode(q) for q in [*questions, questions[1]]])
    assert_same_vectors(np.stack(vectors), expected, unbatched)  # batched, not alone: the device's rounding


def test_a_cached_question_skips_the_queue(question_encoder: QuestionEncoder) -> None:
    gated = GatedEncoder(question_encoder)
    gated.gate.set()

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        batcher = QuestionBatcher(gated, max_batch=8)
        first = await batcher.encode(["¿Dónde está Sevilla?"])
        second = await batcher.encode(["¿Dónde está Sevilla?"])
        await batcher.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert len(gated.calls) == 1
    np.testing.assert_array_equal(first, second)
    assert question_encoder.cache_info().hits == 1


def test_an_encoder_error_reaches_every_request_of_its_batch(question_encoder: QuestionEncoder) -> None:
    class Broken(GatedEncoder):
        def encode(self, questions: list[str]) -> np.ndarray:
            raise RuntimeError("the encoder failed")

    async def scenario() -> list[BaseException | np.ndarray]:
        batcher = QuestionBatcher(Broken(question_encoder), max_batch=8)
        results = await asyncio.gather(batcher.encode(["a"]), batcher.encode(["b"]), return_exceptions=True)
        await batcher.close()
        return results

    assert [str(r) for r in asyncio.run(scenario())] == ["the encoder failed"] * 2
