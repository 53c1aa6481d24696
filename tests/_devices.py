"""One suite for every device: the device the encoders pick by default, inputs put on a model's
device, and how close two encodings of the same input must be in a given precision."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


def on_device(features: Any, encoder: Any) -> dict[str, torch.Tensor]:
    """Tokenizer output (lists or tensors) as batch tensors on ``encoder``'s device."""
    out = {}
    for name, value in dict(features).items():
        tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
        out[name] = (tensor if tensor.dim() == 2 else tensor.unsqueeze(0)).to(encoder.device)
    return out


def pooled(encoder: Any, features: Any) -> np.ndarray:
    """``encoder.model(**features).pooler_output`` as float32 on the host: the model called directly."""
    from dpr_pg.encoders.precision import forward_context

    with torch.inference_mode(), forward_context(encoder.precision, encoder.device):
        return encoder.model(**on_device(features, encoder)).pooler_output.float().cpu().numpy()


def tolerance(encoder: Any) -> dict[str, float]:
    """``assert_allclose`` bounds for two encodings of the same inputs in other batches.

    fp32 on CPU differs by the order of float additions only. On a GPU other batch shapes pick
    other kernels, and fp16/bf16 round every matmul input, so the bounds are wider there.
    """
    if encoder.precision == "fp32":
        return {"rtol": 1e-4, "atol": 1e-5} if encoder.device.type == "cpu" else {"rtol": 1e-3, "atol": 1e-4}
    return {"rtol": 5e-2, "atol": 5e-2}


def assert_same_vectors(got: np.ndarray, expected: np.ndarray, encoder: Any) -> None:
    """Equal up to ``encoder``'s rounding: close element-wise, and (low precision) cosine >= 0.999 per row."""
    np.testing.assert_allclose(got, expected, **tolerance(encoder))
    if encoder.precision != "fp32":
        got2, expected2 = np.atleast_2d(got), np.atleast_2d(expected)
        cosine = (got2 * expected2).sum(1) / (np.linalg.norm(got2, axis=1) * np.linalg.norm(expected2, axis=1))
        assert cosine.min() >= 0.999, cosine.min()
