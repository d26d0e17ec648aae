"""Reference GAN losses, written as the papers write them.

With ``r``, ``f`` the real and fake logits:

================  ===============================  =========================
loss              discriminator                    generator
================  ===============================  =========================
non_saturating    softplus(-r) + softplus(f)       softplus(-f)
minimax           softplus(-r) + softplus(f)       -softplus(f) = log(1 - sigmoid(f))
wasserstein       f - r                            -f
hinge             relu(1 - r) + relu(1 + f)        -f
least_squares     (r - b)^2/2 + (f - a)^2/2        (f - c)^2/2
relativistic      softplus(-(r - f))               softplus(-(f - r))
================  ===============================  =========================

'mean' averages each term over its own batch; 'sum' sums; 'none' returns the elementwise sum
of the real and fake terms (equal shapes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(parts: list[torch.Tensor], reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return sum(p.mean() for p in parts)
    if reduction == "sum":
        return sum(p.sum() for p in parts)
    return sum(parts)


def discriminator_loss(name: str, r: torch.Tensor, f: torch.Tensor, reduction: str = "mean",
                       a: float = 0.0, b: float = 1.0, c: float = 1.0) -> torch.Tensor:
    if name in ("non_saturating", "minimax"):
        parts = [F.softplus(-r), F.softplus(f)]
    elif name == "wasserstein":
        parts = [-r, f]
    elif name == "hinge":
        parts = [F.relu(1 - r), F.relu(1 + f)]
    elif name == "least_squares":
        parts = [(r - b) ** 2 / 2, (f - a) ** 2 / 2]
    elif name == "relativistic":
        parts = [F.softplus(-(r - f))]
    else:
        raise ValueError(f"unknown loss {name!r}")
    return _reduce(parts, reduction)


def generator_loss(name: str, f: torch.Tensor, r: torch.Tensor | None = None, reduction: str = "mean",
                   a: float = 0.0, b: float = 1.0, c: float = 1.0) -> torch.Tensor:
    if name == "non_saturating":
        part = F.softplus(-f)
    elif name == "minimax":
        part = -F.softplus(f)
    elif name in ("wasserstein", "hinge"):
        part = -f
    elif name == "least_squares":
        part = (f - c) ** 2 / 2
    elif name == "relativistic":
        part = F.softplus(-(f - r))
    else:
        raise ValueError(f"unknown loss {name!r}")
    return _reduce([part], reduction)
