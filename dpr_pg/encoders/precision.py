"""Precision modes of the encoders: fp32, bf16, int8 (CPU), fp16 (GPU).

The default is the fastest mode that keeps cosine >= 0.999 to fp32 and top-10 neighbour
agreement >= 0.99 with trained weights (bench/bench_precision.py on the trained all-MiniLM-L6-v2
pair; speed from bench/bench_encoders.py on a BERT-base shape; figures in docs/encoders.md):

- on a GPU, fp16 (not measured here: no GPU was available);
- on a CPU, fp32, with questions on ONNX Runtime; passages run bf16 where the CPU has native bf16
  (AVX512_BF16 or AMX) and a bf16 matmul measures faster than fp32 there (see
  :func:`default_precision`). bf16 agreed with fp32 at 0.996; int8 only at 0.79, so it stays
  opt-in.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from dpr_pg.encoders import bf16_probe
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


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products in hardware: AVX512_BF16 or AMX (x86).

    Without them oneDNN emulates bf16 with fp32 instructions and bf16 runs slower than fp32.

    Example:
        >>> isinstance(cpu_has_native_bf16(), bool)
        True
    """
    import torch

    try:  # cpuinfo's CPUID reading, through torch
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    """The feature flags of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        return set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return set()


def cpu_has_vnni() -> bool:
    """True when the CPU has VNNI int8 dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8; Linux only).

    Example:
        >>> isinstance(cpu_has_vnni(), bool)
        True
    """
    return bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


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


def default_precision(kind: str, device: Any, *, runtime: str | None = None,
                      cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The precision an encoder runs in when none is asked for.

    fp16 on a GPU. On a CPU: bf16 for passages where the CPU has native bf16
    (:func:`cpu_has_native_bf16`) and a bf16 matmul measures at least 1.25x as fast as fp32 on
    it (measured once per machine, :mod:`dpr_pg.encoders.bf16_probe`); fp32 otherwise, and always for
    questions, whose fp32 path runs on ONNX Runtime (faster per question than bf16 on torch where
    it was measured; docs/encoders.md, "Precision and speed"). bf16 keeps cosine >= 0.999 and top-10
    agreement >= 0.99 with fp32 on a trained pair; int8 does not, and is never a default.

    Example:
        >>> default_precision("passage", torch.device("cuda"))  # doctest: +SKIP
        'fp16'
    """
    if device.type == "cuda":
        return DEFAULT_GPU_PRECISION
    if kind == "passage" and runtime != "onnx" and cpu_has_native_bf16() and bf16_measures_faster(cache_dir):
        return "bf16"
    return DEFAULT_CPU_PRECISION


def bf16_measures_faster(cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether bf16 matmuls measure at least 1.25x as fast as fp32 on this CPU (see :mod:`dpr_pg.encoders.bf16_probe`)."""
    return bf16_probe.bf16_measures_faster(cache_dir)


def resolve_precision(precision: str | None, device: Any, *, kind: str = "", runtime: str | None = None,
                      cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The precision to run: ``precision`` checked against the device, or :func:`default_precision`.

    Example:
        >>> resolve_precision("fp32", torch.device("cpu"))  # doctest: +SKIP
        'fp32'
    """
    on_gpu = device.type == "cuda"
    if precision in (None, "auto"):
        return default_precision(kind, device, runtime=runtime, cache_dir=cache_dir)
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
    """The model converted for ``precision``: quantized (int8), cast (GPU fp16/bf16, CPU bf16 Linear weights), or as is."""
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
    if precision == "bf16":
        # CPU autocast would cast every Linear weight to bf16 on every call, reading and writing the
        # whole model each time (at batch 1 that costs more than bf16 saves). Cast them once: the
        # casts autocast then makes are no-ops, so the vectors are the same bits, and the weights
        # take half the memory. LayerNorm, softmax and the embeddings stay fp32, as under autocast.
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)
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
