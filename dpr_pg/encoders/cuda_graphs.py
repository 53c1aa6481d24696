"""Static-shape question encoding on a GPU: padded length buckets, one CUDA graph per shape.

On a GPU a short question is bound by launching a BERT forward pass's few hundred small kernels
from Python (4.2 to 4.7 ms on an H200 in every precision), not by arithmetic. A CUDA graph
replays the whole pass with one launch. A graph has fixed shapes, so a batch of questions is
padded to the next length bucket (16, 32, 64 or 128 tokens) and the next batch size (1, 2, 4, 8,
16 or 32 rows); larger or longer batches run eagerly. Padding columns are masked out of
attention, so the [CLS] vector of a question does not depend on how far it was padded, up to
float rounding (the tests check it on CPU, where the same padding runs without a graph).
Padding rows repeat the first question: a row with no token to attend to could give NaN.

Every graph is checked against the eager model once, right after it is captured; a graph that
cannot be captured or disagrees raises :class:`~dpr_pg.errors.EncoderError`, and the encoder
then falls back to eager mode with a warning.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from dpr_pg.errors import EncoderError

LENGTHS = (16, 32, 64, 128)
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
_WARMUP_PASSES = 2  # eager passes on a side stream before capture: cuBLAS and autotuning set up off-graph


def bucket(value: int, sizes: Iterable[int]) -> int | None:
    """The smallest of ``sizes`` (sorted) that holds ``value``, or None when none does.

    Example:
        >>> bucket(17, (16, 32, 64)), bucket(65, (16, 32, 64))
        (32, None)
    """
    ordered = tuple(sizes)
    at = bisect.bisect_left(ordered, value)
    return ordered[at] if at < len(ordered) else None


def pad_batch(input_ids: np.ndarray, mask: np.ndarray, token_types: np.ndarray, *, rows: int, width: int,
              pad_id: int) -> np.ndarray:
    """One ``(3, rows, width)`` int64 array: ids, attention mask and token types, padded.

    Padding columns get ``pad_id``, mask 0 and type 0. Padding rows repeat the first row, so that
    every row attends to at least one token.

    Example:
        >>> ids, mask, types = np.array([[101, 7, 102]]), np.ones((1, 3), np.int64), np.zeros((1, 3), np.int64)
        >>> pad_batch(ids, mask, types, rows=2, width=4, pad_id=0)[1].tolist()
        [[1, 1, 1, 0], [1, 1, 1, 0]]
    """
    count, length = input_ids.shape
    if count > rows or length > width:
        raise EncoderError(f"expected a batch of at most {rows} x {width} tokens, not {count} x {length}")
    out = np.zeros((3, rows, width), dtype=np.int64)
    out[0].fill(pad_id)
    for plane, values in enumerate((input_ids, mask, token_types)):
        out[plane, :count, :length] = values
        out[plane, count:, :length] = values[0]
    return out


class _Shape:
    """Static inputs, output and (on a GPU) the captured graph of one (rows, width) shape."""

    def __init__(self, inputs: Any, output: Any, graph: Any) -> None:
        self.inputs = inputs
        self.output = output
        self.graph = graph


class BucketedRunner:
    """Runs ``model(...).pooler_output`` on batches padded to a few static shapes.

    With ``capture=True`` (a CUDA device) each shape is a CUDA graph, captured by
    :meth:`capture_all` or on first use, and replayed under a lock (the graphs share their
    static buffers and one memory pool). With ``capture=False`` the padded batch runs eagerly:
    the same padding, for checking it on any device.

    Example:
        >>> runner = BucketedRunner(model, device=torch.device("cuda"), pad_id=0)  # doctest: +SKIP
        >>> runner.capture_all()                                                  # doctest: +SKIP
        >>> runner.run(ids, mask, types).shape                                    # doctest: +SKIP
        (1, 768)
    """

    def __init__(self, model: Any, *, device: Any, pad_id: int, lengths: Iterable[int] = LENGTHS,
                 batch_sizes: Iterable[int] = BATCH_SIZES, capture: bool = True) -> None:
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.lengths = tuple(sorted(set(lengths)))
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        self.capture = capture
        if capture and device.type != "cuda":
            raise EncoderError(f"CUDA graphs need a CUDA device, not {device.type!r}")
        self._shapes: dict[tuple[int, int], _Shape] = {}
        self._lock = threading.Lock()
        self._pool: Any = None

    def covers(self, rows: int, width: int) -> bool:
        """Whether a batch of ``rows`` inputs of at most ``width`` tokens has a static shape."""
        return bucket(rows, self.batch_sizes) is not None and bucket(width, self.lengths) is not None

    def shape_for(self, rows: int, width: int) -> tuple[int, int]:
        """The padded ``(rows, width)`` of a batch; raises when it has none (see :meth:`covers`)."""
        padded_rows, padded_width = bucket(rows, self.batch_sizes), bucket(width, self.lengths)
        if padded_rows is None or padded_width is None:
            raise EncoderError(f"no static shape holds {rows} x {width} tokens (at most "
                               f"{self.batch_sizes[-1]} x {self.lengths[-1]}); encode it eagerly")
        return padded_rows, padded_width

    def run(self, input_ids: np.ndarray, mask: np.ndarray, token_types: np.ndarray) -> np.ndarray:
        """``pooler_output`` of the batch, float32 on the host, one row per input row."""
        import torch

        count, width = input_ids.shape
        rows, padded_width = self.shape_for(count, width)
        host = torch.from_numpy(pad_batch(input_ids, mask, token_types, rows=rows, width=padded_width,
                                          pad_id=self.pad_id))
        with torch.inference_mode():
            if not self.capture:
                return self._eager(host.to(self.device))[:count].cpu().numpy()
            with self._lock:
                shape = self._shapes.get((rows, padded_width)) or self._capture(rows, padded_width)
                shape.inputs.copy_(host)
                shape.graph.replay()
                return shape.output[:count].cpu().numpy()

    def capture_all(self) -> None:
        """Capture every shape now (largest first, so the smaller ones reuse its memory)."""
        if not self.capture:
            return
        import torch

        with torch.inference_mode(), self._lock:
            for rows in reversed(self.batch_sizes):
                for width in reversed(self.lengths):
                    if (rows, width) not in self._shapes:
                        self._capture(rows, width)

    @property
    def captured(self) -> int:
        """How many shapes have a graph."""
        return len(self._shapes)

    def _eager(self, inputs: Any) -> Any:
        return self.model(input_ids=inputs[0], attention_mask=inputs[1], token_type_ids=inputs[2]).pooler_output.float()

    def _capture(self, rows: int, width: int) -> _Shape:
        """Capture the graph of one shape (the lock is held) and check it against eager mode."""
        import torch

        example = torch.from_numpy(_example(rows, width, pad_id=self.pad_id,
                                            vocab_size=int(self.model.config.vocab_size)))
        inputs = example.to(self.device)
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(_WARMUP_PASSES):
                    expected = self._eager(inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA work of other threads (another encoder, a server) cannot spoil the capture
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                output = self._eager(inputs)
            graph.replay()
            error = float((output - expected).abs().max())
            scale = float(expected.abs().max())
        except Exception as e:
            raise EncoderError(f"could not capture a CUDA graph of {rows} x {width} tokens ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from e
        if not error <= 1e-2 * scale + 1e-3:
            raise EncoderError(f"the CUDA graph of {rows} x {width} tokens differs from eager mode by {error:.2g} "
                               f"(output scale {scale:.2g})")
        shape = _Shape(inputs, output, graph)
        self._shapes[(rows, width)] = shape
        return shape


def _example(rows: int, width: int, *, pad_id: int, vocab_size: int) -> np.ndarray:
    """A padded batch of random tokens, the last row shorter, as :func:`pad_batch` lays it out."""
    rng = np.random.default_rng(rows * 1000 + width)
    ids = rng.integers(min(5, vocab_size - 1), vocab_size, size=(rows, width), dtype=np.int64)
    mask = np.ones((rows, width), dtype=np.int64)
    short = max(1, width // 2)
    mask[-1, short:] = 0
    ids[-1, short:] = pad_id
    return np.stack([ids, mask, np.zeros((rows, width), dtype=np.int64)])
