"""Correctness before timing: one step of a provider against one step of ``reference``.

Error = max over the value and every gradient of ``|a - b| / max(|b|, tiny)`` in the 2-norm
(relative, per tensor). Tolerance by precision: float64 1e-8; float32 with full-precision
matmuls 1e-4; float32 with TF32 allowed ('high'/'medium') 1e-2; bfloat16/float16 5e-2.
"""
from __future__ import annotations

import torch


def tolerance(dtype: torch.dtype, precision: str = "highest") -> float:
    if dtype == torch.float64:
        return 1e-8
    if dtype == torch.float32:
        return 1e-4 if precision == "highest" else 1e-2
    return 5e-2


def relative_error(got: list[torch.Tensor | None], want: list[torch.Tensor | None]) -> float:
    """Largest per-tensor relative 2-norm error; inf on a missing tensor or a shape mismatch."""
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for a, b in zip(got, want):
        if a is None or b is None:
            if a is not b:
                return float("inf")
            continue
        if a.shape != b.shape:
            return float("inf")
        a, b = a.detach().double(), b.detach().double()
        err = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
        if err != err:  # NaN
            return float("inf")
        worst = max(worst, err)
    return worst
