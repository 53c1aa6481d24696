"""Length-sorted, dynamically padded batches: the inference loop shared by both encoders."""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dpr_pg import config
from dpr_pg.encoders import cuda_graphs, onnx_runtime
from dpr_pg.encoders.loading import output_dim, token_limit
from dpr_pg.encoders.precision import apply_precision, forward_context, resolve_precision
from dpr_pg.errors import EncoderError

log = logging.getLogger(__name__)

CPU_BATCH_SIZE = 16  # sorted by length, small CPU batches lose nothing and pad less
GPU_BATCH_SIZE = 256


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch running out of device (or host) memory."""
    import torch

    message = str(error)
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError  # torch < 2.5: cuda only
    return (isinstance(error, oom) or "out of memory" in message.lower()
            or "ALLOC_FAILED" in message)  # cuBLAS failing to get its workspace


class EncodeResult(NamedTuple):
    """Embeddings in input order, and which inputs were cut at the model's max length."""

    embeddings: np.ndarray
    truncated: list[int]


def _default_device(precision: str | None = None, runtime: str | None = None) -> str:
    """cuda when there is a GPU, unless a CPU-only mode (int8, or ONNX Runtime) was asked for by name."""
    import torch

    if precision == "int8" or runtime == "onnx":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class BatchingEncoder:
    """Shared machinery: tokenize, sort by length, batch with dynamic padding, restore order."""

    kind = ""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        revision: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        runtime: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        import torch

        self.name = name
        self.revision = revision
        self.device = torch.device(device or _default_device(precision, runtime))
        self.precision = resolve_precision(precision, self.device, kind=self.kind, runtime=runtime,
                                           cache_dir=cache_dir)
        self.batch_size = batch_size or (GPU_BATCH_SIZE if self.device.type == "cuda" else CPU_BATCH_SIZE)
        if self.batch_size < 1:
            raise EncoderError(f"batch_size must be at least 1, not {self.batch_size}")
        model_limit = int(model.config.max_position_embeddings)
        self.max_length = int(max_length or token_limit(model.config, tokenizer))
        if not 2 < self.max_length <= model_limit:
            raise EncoderError(f"max_length must be between 3 and {model_limit}, not {self.max_length}")
        self.dim = output_dim(model.config)
        self.tokenizer = tokenizer
        self.model = apply_precision(model.eval().to(self.device), self.precision, self.device)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.last_truncated = 0
        self.runtime = onnx_runtime.resolve_runtime(runtime, kind=self.kind, device=self.device, precision=self.precision)
        self._runtime_asked = runtime not in (None, "auto")  # asked for by name: failing to build it is an error
        self._cache_dir = Path(config.cache_dir(cache_dir))
        self._onnx: onnx_runtime.OnnxRunner | None = None  # exported or read on first use: ingest never needs questions
        self._onnx_lock = threading.Lock()
        self._graphs = self._graph_runner(cuda_graphs)

    def __repr__(self) -> str:
        graphs = ", cuda_graphs=True" if self._graphs is not None else ""
        return (f"{type(self).__name__}({self.name!r}, device={self.device.type!r}, "
                f"precision={self.precision!r}, runtime={self.runtime!r}{graphs}, dim={self.dim})")

    @property
    def cuda_graphs(self) -> bool:
        """Whether short batches replay CUDA graphs (see :mod:`dpr_pg.encoders.cuda_graphs`)."""
        return self._graphs is not None

    def _graph_runner(self, cuda_graphs: bool | None) -> cuda_graphs.BucketedRunner | None:
        """The CUDA graphs of this encoder: by default for questions on a CUDA device, on torch.

        They are captured here, at load, so that no question pays for it. When a capture fails
        the default warns and stays eager; ``cuda_graphs=True`` raises the EncoderError instead.
        """
        asked = cuda_graphs is True
        if cuda_graphs is None:
            cuda_graphs = self.kind == "question" and self.device.type == "cuda" and self.runtime == "torch"
        if not cuda_graphs:
            return None
        if self.device.type != "cuda" or self.runtime != "torch":
            raise EncoderError(f"cuda_graphs=True needs a CUDA device and runtime 'torch', not "
                               f"{self.device.type!r} and {self.runtime!r}")
        lengths = [n for n in cuda_graphs.LENGTHS if n <= self.max_length] or [self.max_length]
        runner = cuda_graphs.BucketedRunner(self.model, device=self.device, pad_id=self.pad_id, lengths=lengths)
        try:
            runner.capture_all()
        except EncoderError as e:
            if asked:
                raise
            warnings.warn(f"{e}. Encoding eagerly instead (the same vectors, slower per question).",
                          RuntimeWarning, stacklevel=4)
            return None
        return runner

    # -- tokenization ---------------------------------------------------------------------------

    def _tokenize(self, first: list[str], second: list[str] | None) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """Token ids and token type ids per input, and the indices that had to be truncated."""
        full = self.tokenizer(first, second, truncation=False, padding=False,
                              return_attention_mask=False, verbose=False)
        ids, types = list(full["input_ids"]), list(full["token_type_ids"])
        truncated = [i for i, row in enumerate(ids) if len(row) > self.max_length]
        for i in truncated:
            # Keep the title, cut the end of the text (as DPR does); fall back when the title alone is too long.
            strategy = "only_second" if second is not None else "longest_first"
            pair = (first[i], second[i]) if second is not None else (first[i],)
            try:
                cut = self.tokenizer(*pair, truncation=strategy, max_length=self.max_length)
            except Exception:
                cut = self.tokenizer(*pair, truncation="longest_first", max_length=self.max_length)
            ids[i], types[i] = cut["input_ids"], cut["token_type_ids"]
        return ids, types, truncated

    # -- inference ------------------------------------------------------------------------------

    def _embed(self, ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        order = np.argsort([-len(row) for row in ids], kind="stable")  # longest first: OOM shows early
        runner = self._runner_or_torch() if self.runtime == "onnx" else None
        start, size = 0, self.batch_size
        with self._forward_context(runner):
            while start < len(order):
                batch = order[start:start + size]
                width = len(ids[batch[0]])
                input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
                token_types = np.zeros((len(batch), width), dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, index in enumerate(batch):
                    length = len(ids[index])
                    input_ids[row, :length] = ids[index]
                    token_types[row, :length] = types[index]
                    mask[row, :length] = 1
                try:
                    out[batch] = self._forward(runner, input_ids, mask, token_types)
                except Exception as e:
                    if size == 1 or not _out_of_memory(e):
                        raise
                    # The longest batches come first: halve, encode the same rows again, go on.
                    size = max(1, size // 2)
                    self._free_device_memory()
                    log.warning("%s encoder: out of memory on %d x %d tokens; batches of %d from here on",
                                self.kind, len(batch), width, size)
                    continue
                start += len(batch)
        return out

    def _free_device_memory(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm_up(self) -> None:
        """Encode one short input now, so that the first real call does not pay the setup.

        With ONNX Runtime that is the export or the cache read and the session build (0.6 to 10 s
        for BERT-base); call it when a server starts rather than on its first request.

        Example:
            >>> pair.question.warm_up()  # doctest: +SKIP
        """
        self._encode(["¿Qué?"], None if self.kind == "question" else ["Texto."])

    def onnx_runner(self) -> onnx_runtime.OnnxRunner:
        """The ONNX Runtime session of this encoder, exported (or read from the cache) on first use."""
        if self.runtime != "onnx":
            raise EncoderError(f"this {self.kind} encoder runs on {self.runtime}, not onnx")
        with self._onnx_lock:
            if self._onnx is None:
                import torch

                facts = onnx_runtime.cache_facts(kind=self.kind, source=self.name, revision=self.revision,
                                          max_length=self.max_length)
                self._onnx = onnx_runtime.load_runner(self.model, facts=facts, cache_dir=self._cache_dir,
                                               threads=torch.get_num_threads(), companions=self._companions())
            return self._onnx

    def _companions(self) -> dict[str, str]:
        """The tokenizer and settings kept beside an exported graph (see dpr_pg.encoders.question_side)."""
        settings = {"name": self.name, "revision": self.revision, "dim": self.dim, "max_length": self.max_length,
                    "pad_id": self.pad_id}
        return {"tokenizer.json": self.tokenizer.backend_tokenizer.to_str(),
                "encoder.json": json.dumps(settings, sort_keys=True, indent=1)}

    def _runner_or_torch(self) -> onnx_runtime.OnnxRunner | None:
        """The ONNX runner; None once the default runtime fell back to torch because it could not be built."""
        try:
            return self.onnx_runner()
        except EncoderError as e:
            if self._runtime_asked:
                raise
            warnings.warn(f"{e}. Encoding on torch instead (the same vectors, slower per question).",
                          RuntimeWarning, stacklevel=5)
            self.runtime = "torch"
            return None

    @contextmanager
    def _forward_context(self, runner: onnx_runtime.OnnxRunner | None) -> Iterator[None]:
        if runner is not None:
            yield
            return
        import torch

        with torch.inference_mode(), forward_context(self.precision, self.device):
            yield

    def _forward(self, runner: onnx_runtime.OnnxRunner | None, input_ids: np.ndarray, mask: np.ndarray,
                 token_types: np.ndarray) -> np.ndarray:
        """``pooler_output`` of one padded batch, as float32 on the host."""
        if runner is not None:
            return runner.run(input_ids, mask, token_types)
        if self._graphs is not None and self._graphs.covers(*input_ids.shape):
            return self._graphs.run(input_ids, mask, token_types)
        import torch

        pooled = self.model(
            input_ids=self._to_device(torch.from_numpy(input_ids)),
            attention_mask=self._to_device(torch.from_numpy(mask)),
            token_type_ids=self._to_device(torch.from_numpy(token_types)),
        ).pooler_output
        return pooled.float().cpu().numpy()

    def _to_device(self, tensor: Any) -> Any:
        """``tensor`` on the model's device; to a GPU through pinned (page-locked) host memory.

        A copy from pageable memory goes through a staging buffer and blocks; from pinned memory
        the DMA engine copies on its own (``non_blocking``) and torch's caching host allocator
        reuses the pinned blocks, so pinning costs one host memcpy per batch.
        """
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _encode(self, first: list[str], second: list[str] | None) -> EncodeResult:
        if not first:
            self.last_truncated = 0
            return EncodeResult(np.empty((0, self.dim), dtype=np.float32), [])
        ids, types, truncated = self._tokenize(first, second)
        result = EncodeResult(self._embed(ids, types), truncated)
        self.last_truncated = len(truncated)
        return result
