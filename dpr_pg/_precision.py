"""Precision modes of the encoders: fp32, bf16, int8 (CPU), fp16 (GPU).

The default on CPU is the fastest mode that kept cosine >= 0.999 to fp32 and top-10 neighbour
agreement >= 99% in bench/bench_encoders.py on a BERT-base-shaped DPR (figures in README.md).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from dpr_pg.errors import EncoderError

PRECISIONS = ("fp32", "bf16", "int8", "fp16")
DEFAULT_CPU_PRECISION = "int8"
DEFAULT_GPU_PRECISION = "fp16"


def cpu_supports_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls on this CPU (AVX-512 BW/VL/DQ or newer, or AMX).

    Example:
        >>> isinstance(cpu_supports_bf16(), bool)
        True
    """
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str | None, device: Any) -> str:
    """The precision to run: ``precision`` checked against the device, or the device's default.

    Example:
        >>> resolve_precision("fp32", torch.device("cpu"))  # doctest: +SKIP
        'fp32'
    """
    on_gpu = device.type == "cuda"
    if precision in (None, "auto"):
        return DEFAULT_GPU_PRECISION if on_gpu else DEFAULT_CPU_PRECISION
    if precision not in PRECISIONS:
        raise EncoderError(f"precision must be one of {', '.join(PRECISIONS)} or 'auto', not {precision!r}")
    if precision == "int8" and on_gpu:
        raise EncoderError("precision 'int8' (dynamic quantization) runs on CPU only; on GPU use 'fp16' or 'bf16'")
    if precision == "fp16" and not on_gpu:
        raise EncoderError("precision 'fp16' needs a GPU; on CPU use 'bf16', 'int8' or 'fp32'")
    if precision == "bf16" and not on_gpu and not cpu_supports_bf16():
        raise EncoderError("this CPU has no bf16 support (AVX-512 or AMX); use precision 'int8' or 'fp32'")
    return precision


def apply_precision(model: Any, precision: str, device: Any) -> Any:
    """The model converted for ``precision``: quantized (int8), cast (GPU fp16/bf16), or as is."""
    import torch

    if precision == "int8":
        # Dynamic quantization of the Linear layers: int8 weights, activations quantized per batch.
        # torch 2.1x warns that quantized tensors move to torchao; the kernels are still the fast path here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if device.type == "cuda" and precision in ("fp16", "bf16"):
        return model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
    return model


@contextlib.contextmanager
def forward_context(precision: str, device: Any) -> Iterator[None]:
    """bf16 autocast around the forward pass on CPU; nothing otherwise."""
    import torch

    if precision == "bf16" and device.type == "cpu":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield
