"""Whether bf16 is faster than fp32 on this CPU: measured once per machine, remembered in the cache.

Native bf16 instructions alone do not settle it. On this project's 2-core Intel Xeon
(AVX512_BF16, no AMX) oneDNN's bf16 matmuls ran at 0.6 to 0.7x MKL's fp32 ones, while AMX and
other cores run them several times faster. So the passage default is chosen by a measurement:
one BERT-base feed-forward matmul over 512 tokens, fp32 and bf16 in alternation (so that load
from other processes hits both alike), the median of the per-round ratios. It takes 0.2 to 1 s,
once: the answer is kept in ``cache_dir/cpu_bf16.json``, keyed by the CPU model, the torch version
and the thread count, and read back by later processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dpr_pg import config

# bf16 must measure this much faster than fp32: timing noise on a CPU where both run alike must
# not flip the default from one machine's first process to the next.
BF16_SPEEDUP = 1.25
_ROUNDS = 7
_CACHE_FILE = "cpu_bf16.json"
_answers: dict[tuple[str, str], bool] = {}
_lock = threading.Lock()


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def bf16_measures_faster(cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether a passage-sized bf16 matmul runs :data:`BF16_SPEEDUP` times as fast as fp32 here.

    Example:
        >>> isinstance(bf16_measures_faster(), bool)  # doctest: +SKIP
        True
    """
    import torch

    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    path = Path(config.cache_dir(cache_dir)) / _CACHE_FILE
    with _lock:
        if (str(path), key) in _answers:
            return _answers[str(path), key]
        known = _read(path)
        entry = known.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("speedup"), (int, float)):
            entry = {"speedup": round(measure_speedup(), 3), "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
            _write(path, {**known, key: entry})
        _answers[str(path), key] = entry["speedup"] >= BF16_SPEEDUP
        return _answers[str(path), key]


def measure_speedup() -> float:
    """fp32 time / bf16 time of one BERT-base feed-forward matmul over 512 tokens (median of rounds)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(512, 768, generator=generator)
    weight = torch.randn(3072, 768, generator=generator)
    operands = {dtype: (inputs.to(dtype), weight.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    ratios = []
    with torch.inference_mode():
        for x, w in operands.values():  # kernel selection and packing happen on the first call
            torch.nn.functional.linear(x, w)
        for _ in range(_ROUNDS):
            seconds = {}
            for dtype, (x, w) in operands.items():
                started = time.perf_counter()
                torch.nn.functional.linear(x, w)
                seconds[dtype] = time.perf_counter() - started
            ratios.append(seconds[torch.float32] / seconds[torch.bfloat16])
    return statistics.median(ratios)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace the cache file atomically; an unwritable cache only means measuring again next time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{_CACHE_FILE}-", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
            os.replace(staging, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staging)
