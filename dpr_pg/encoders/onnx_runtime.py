"""The ONNX Runtime path of an encoder: the same weights, exported once, run by onnxruntime on CPU.

At batch 1 a BERT-base forward pass is bound by reading its 340 MB of fp32 weights. PyTorch's
``linear`` repacks every weight matrix on each call; onnxruntime packs them once when the session
is built, so a question encodes 2.4x faster on this project's 2-core CPU (30 ms against 73 ms,
bench/bench_encoders.py) with the same fp32 arithmetic (cosine to torch 1.00000). For long
padded passage batches torch stays faster, so by default only the question encoder runs here
(see :func:`resolve_runtime`).

The exported graph is cached under ``cache_dir/onnx/<key>/model.onnx``, where the key covers the
model's source and resolved revision (the Hub commit, or the sha256 of a local folder's files),
the side, and the torch and transformers versions that traced it. A model without a revision is
exported to a temporary folder instead. A new export is checked against torch before it is
kept and replaces the older graphs of the same model, and a cache file onnxruntime cannot read
is exported again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dpr_pg.errors import EncoderError

RUNTIMES = ("torch", "onnx")
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_TOLERANCE = 1e-3  # max |onnx - torch| on the export check; fp32 reordering differs by ~1e-6


def onnx_available() -> bool:
    """Whether onnxruntime (to run) and onnx (to export) can be imported.

    Example:
        >>> isinstance(onnx_available(), bool)
        True
    """
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))  # no import


def resolve_runtime(runtime: str | None, *, kind: str, device: Any, precision: str) -> str:
    """``"torch"`` or ``"onnx"``: ``runtime`` checked, or the default for this encoder.

    The default is ONNX Runtime for the question encoder on CPU in fp32 when onnxruntime is
    installed (2.4x faster per question, same vectors), and torch otherwise: torch is faster on
    long padded passage batches, and the other precisions are torch's.

    Example:
        >>> resolve_runtime("torch", kind="question", device=torch.device("cpu"), precision="fp32")  # doctest: +SKIP
        'torch'
    """
    if runtime in (None, "auto"):
        use_onnx = kind == "question" and device.type == "cpu" and precision == "fp32" and onnx_available()
        return "onnx" if use_onnx else "torch"
    if runtime not in RUNTIMES:
        raise EncoderError(f"runtime must be one of {', '.join(RUNTIMES)} or 'auto', not {runtime!r}")
    if runtime == "onnx":
        if device.type != "cpu" or precision != "fp32":
            raise EncoderError(f"runtime 'onnx' runs fp32 on CPU only, not {precision} on {device.type}; "
                               "use runtime='torch' for the other precisions and for GPUs")
        if not onnx_available():
            raise EncoderError("runtime 'onnx' needs the onnxruntime and onnx packages: "
                               "pip install onnxruntime onnx (or use runtime='torch')")
    return runtime


def cache_facts(*, kind: str, source: str, revision: str | None, max_length: int) -> dict[str, Any] | None:
    """What identifies one exported graph, or None when the weights have no revision to name them by."""
    if not revision:
        return None
    # The installed versions, read without importing either: a search that finds its graph cached
    # runs without torch (see dpr_pg.encoders.question_side).
    return {"kind": kind, "source": source, "revision": revision, "max_length": max_length, "opset": OPSET,
            "torch": importlib.metadata.version("torch"), "transformers": importlib.metadata.version("transformers")}


def cached_folder(cache_dir: Path, facts: dict[str, Any]) -> Path:
    """The folder of the graph that ``facts`` identify (it may not exist yet)."""
    return cache_dir / "onnx" / _key(facts)


def _key(facts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode("utf-8")).hexdigest()[:32]


class OnnxRunner:
    """An onnxruntime session over one exported encoder: ``run(ids, mask, types)`` gives ``pooler_output``."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:  # the torch thread count is respected; None: onnxruntime's (the physical cores)
            options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no notices on stderr
        # Idle pool threads would otherwise spin after each run, taking the cores from whatever runs
        # next (the database, the passage encoder): torch work right after a question ran 73 ms
        # instead of 41 ms on 2 cores, and the question itself is no faster with spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        feed = dict(zip(INPUTS, (input_ids, attention_mask, token_type_ids), strict=True))
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


def load_runner(model: Any, *, facts: dict[str, Any] | None, cache_dir: Path, threads: int,
                companions: dict[str, str] | None = None) -> OnnxRunner:
    """The runner for ``model``: from the cache when its graph is there, else exported (and cached).

    A new graph replaces the cached ones of the same model source (an older revision, or older
    torch/transformers versions), so the cache holds one 440 MB graph per BERT-base model.
    ``companions`` are files kept beside the graph (the tokenizer, the encoder's settings): with
    them a later process encodes from the cache alone.
    """
    if facts is None:
        scratch = Path(tempfile.mkdtemp(prefix="dpr_pg_onnx_"))
        try:
            return _export_checked(model, scratch / "model.onnx", threads)  # the session holds the graph in memory
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    key = _key(facts)
    target = cache_dir / "onnx" / key / "model.onnx"
    if target.is_file():
        try:
            runner = OnnxRunner(target, threads)
        except Exception:  # truncated or corrupt (a killed export, a full disk): export it again
            shutil.rmtree(target.parent, ignore_errors=True)
        else:
            _write_missing(target.parent, companions or {})  # a graph cached before they were kept
            return runner
    try:
        target.parent.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent.parent))
    except OSError as e:
        raise EncoderError(f"cannot write the ONNX cache folder {str(cache_dir)!r} ({e.strerror or e}); "
                           "set DPR_PG_CACHE_DIR to a writable folder, or use runtime='torch'") from e
    try:
        # The session is built (and checked) from the staging copy: it no longer needs any file, so
        # neither a process that wins the race below nor one that prunes this graph can pull it away.
        runner = _export_checked(model, staging / "model.onnx", threads)
        for name, text in (companions or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / "facts.json").write_text(json.dumps(facts, sort_keys=True, indent=1), encoding="utf-8")
        with contextlib.suppress(OSError):  # another process won the race: its copy is the same
            os.replace(staging, target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _forget_older_graphs(target.parent.parent, facts, keep=key)
    return runner


def _write_missing(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        target = folder / name
        if target.exists():
            continue
        with contextlib.suppress(OSError):  # without them the next process loads torch, nothing worse
            staging = folder / f".{name}.{os.getpid()}"
            staging.write_text(text, encoding="utf-8")
            os.replace(staging, target)


def _forget_older_graphs(folder: Path, facts: dict[str, Any], *, keep: str) -> None:
    """Delete the cached graphs of the same kind and source under other keys."""
    for facts_file in folder.glob("*/facts.json"):
        if facts_file.parent.name == keep:
            continue
        try:
            other = json.loads(facts_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (other.get("kind"), other.get("source")) == (facts["kind"], facts["source"]):
            shutil.rmtree(facts_file.parent, ignore_errors=True)


def _export_checked(model: Any, path: Path, threads: int) -> OnnxRunner:
    """Export ``model`` to ``path``; its runner, once its output matches torch's on a padded batch."""
    import torch

    example = _example_batch(model)
    try:
        _export(model, example, path)
    except Exception as e:
        raise EncoderError(f"could not export the encoder to ONNX ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}); "
                           "use runtime='torch'") from e
    with torch.inference_mode():
        expected = model(**{name: torch.from_numpy(value) for name, value in example.items()}).pooler_output.numpy()
    runner = OnnxRunner(path, threads)
    error = float(np.max(np.abs(runner.run(*(example[name] for name in INPUTS)) - expected)))
    if not error <= _TOLERANCE:
        raise EncoderError(f"the ONNX export of the encoder differs from torch by {error:.2g} (more than "
                           f"{_TOLERANCE}); use runtime='torch'")
    return runner


def _example_batch(model: Any) -> dict[str, np.ndarray]:
    """Two rows of different lengths: the trace must keep the padding mask and dynamic sizes."""
    rng = np.random.default_rng(0)
    vocab = int(model.config.vocab_size)
    ids = rng.integers(5, vocab, size=(2, 9), dtype=np.int64)
    mask = np.ones((2, 9), dtype=np.int64)
    mask[1, 6:] = 0
    ids[1, 6:] = int(model.config.pad_token_id or 0)
    types = np.zeros((2, 9), dtype=np.int64)
    types[:, 4:] = 1
    types[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _pooled(model: Any) -> Any:
    """``model(**features).pooler_output`` as a Module of three positional inputs, for the exporter."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).pooler_output

    return Pooled().eval()


def _export(model: Any, example: dict[str, np.ndarray], path: Path) -> None:
    import torch

    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS} | {"pooler_output": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notices about the TorchScript exporter
        torch.onnx.export(
            _pooled(model), tuple(torch.from_numpy(example[name]) for name in INPUTS), str(path),
            input_names=list(INPUTS), output_names=["pooler_output"], dynamic_axes=axes,
            opset_version=OPSET, dynamo=False,
        )
