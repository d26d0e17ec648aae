"""Correctness before timing: one step of a provider against one step of ``reference``.

Error = max over the value and every gradient tensor of ``||a - b|| / max(||b||, 0.01 * S)``
(2-norms, S = the largest reference norm among them): relative per tensor, but a tensor that
(nearly) vanishes in the reference, such as the output bias's gradient under a hinge loss whose
rows all sit in the linear part, is compared against the scale of the others instead of zero.
The gate catches a wrong step, not rounding: tolerance 1e-8 in float64, 1e-3 in float32 with
full-precision matmuls, 1e-2 with TF32 allowed ('high'/'medium'), 1e-1 in bfloat16/float16.
The backends' own tests hold them to much tighter bounds.
"""
from __future__ import annotations

import torch


def tolerance(dtype: torch.dtype, precision: str = "highest") -> float:
    if dtype == torch.float64:
        return 1e-8
    if dtype == torch.float32:
        return 1e-3 if precision == "highest" else 1e-2
    return 1e-1


def relative_error(got: list[torch.Tensor | None], want: list[torch.Tensor | None]) -> float:
    """The error above; inf on a missing tensor, a shape mismatch or a NaN."""
    if len(got) != len(want):
        return float("inf")
    pairs = []
    for a, b in zip(got, want):
        if a is None or b is None:
            if a is not b:
                return float("inf")
            continue
        if a.shape != b.shape:
            return float("inf")
        pairs.append((a.detach().double(), b.detach().double()))
    scale = max((b.norm().item() for _, b in pairs), default=0.0)
    floor = max(0.01 * scale, 1e-30)
    worst = 0.0
    for a, b in pairs:
        err = ((a - b).norm() / max(b.norm().item(), floor)).item()
        if err != err:  # NaN
            return float("inf")
        worst = max(worst, err)
    return worst
