"""Precision modes of the encoders: fp32, bf16, int8 (CPU), fp16 (GPU).

The default is the fastest mode that kept cosine >= 0.999 to fp32 and top-10 neighbour agreement
>= 99% in bench/bench_encoders.py on a BERT-base-shaped DPR (figures in README.md). On CPU that is
fp32: int8 is 2x faster but fell short of the neighbour bar, and bf16 both fell short and, on a
CPU without native bf16 (AVX512_BF16/AMX), ran slower than fp32. Both stay available by name.
On GPU the default is fp16 (not measured here: no GPU was available).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from dpr_pg.errors import EncoderError

PRECISIONS = ("fp32", "bf16", "int8", "fp16")
DEFAULT_CPU_PRECISION = "fp32"
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


def cpu_has_vnni() -> bool:
    """True when the CPU has VNNI int8 dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8; Linux only).

    Example:
        >>> isinstance(cpu_has_vnni(), bool)
        True
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _use_full_activation_range(model: Any) -> None:
    """Quantize activations to 8 bits instead of torch's default 7 (``reduce_range=True``).

    torch keeps one bit free so that pre-VNNI int16 accumulation cannot saturate; with VNNI the
    kernels accumulate in int32, and the full range halves the rounding error (measured on the
    tiny models: top-10 agreement 0.94 -> 0.98, cosine 0.9992 -> 0.9996).
    """
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    full_range = _full_range_linear_class()
    for module in model.modules():
        if type(module) is DynamicLinear and module._packed_params.dtype == torch.qint8:
            module.__class__ = full_range


@functools.cache
def _full_range_linear_class() -> type:
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)

    return type("FullRangeDynamicLinear", (DynamicLinear,), {"forward": forward})


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
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        if cpu_has_vnni():
            _use_full_activation_range(quantized)
        return quantized
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
