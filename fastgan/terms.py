"""The elementwise maths every backend shares, as specifications and in plain torch ops.

Mirrors ``csrc/loss_terms.h`` (native kernels) and ``fastgan/kernels/`` (Triton).

A loss term is ``scale * phi(sign * x + shift)`` with ``phi`` one of softplus, relu, identity
and ``z**2 / 2``; every GAN loss here is one or two such terms on the logits (or, for the
relativistic loss, on the paired difference ``real - fake``). A gradient penalty is a function
of each row's input-gradient norm ``n``: ``weight * n**2 / 2`` (R1, R2) or
``weight * (n - center)**2`` (WGAN-GP, DRAGAN), averaged over rows.
"""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Phi(IntEnum):
    SOFTPLUS = 0
    RELU = 1
    IDENTITY = 2
    HALF_SQUARE = 3


class Reduction(IntEnum):
    NONE = 0
    MEAN = 1
    SUM = 2


class PenaltyKind(IntEnum):
    SQUARED = 0   # weight * |g|^2 / 2
    CENTERED = 1  # weight * (|g| - center)^2


class Term(NamedTuple):
    """``scale * phi(sign * x + shift)``."""

    phi: Phi
    sign: float = 1.0
    shift: float = 0.0
    scale: float = 1.0

    def scaled(self, factor: float) -> "Term":
        return self._replace(scale=self.scale * factor)

    def as_list(self) -> list[float]:
        """The ``[phi, sign, shift, scale]`` list the fused native operators take."""
        return [float(int(self.phi)), float(self.sign), float(self.shift), float(self.scale)]  # int(): dynamo-safe


def term_value(x: torch.Tensor, t: Term) -> torch.Tensor:
    z = t.sign * x + t.shift if (t.sign, t.shift) != (1.0, 0.0) else x
    if t.phi == Phi.SOFTPLUS:
        v = F.softplus(z)  # torch's softplus is exact for large |z|
    elif t.phi == Phi.RELU:
        v = F.relu(z)
    elif t.phi == Phi.IDENTITY:
        v = z
    else:
        v = 0.5 * z * z
    return v * t.scale if t.scale != 1.0 else v


def term_derivative(x: torch.Tensor, t: Term) -> torch.Tensor:
    """d term / dx, differentiable (used for double backward through the kernels)."""
    z = t.sign * x + t.shift
    if t.phi == Phi.SOFTPLUS:
        d = torch.sigmoid(z)
    elif t.phi == Phi.RELU:
        d = (z <= 0).logical_not().to(x.dtype)  # 1 at NaN, as torch's relu backward
    elif t.phi == Phi.IDENTITY:
        d = torch.ones_like(x)
    else:
        d = z
    return d * (t.scale * t.sign)


def reduce(v: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == Reduction.MEAN:
        return v.mean()
    if reduction == Reduction.SUM:
        return v.sum()
    return v


def penalty_rows(g: torch.Tensor, kind: PenaltyKind, weight: float, center: float) -> torch.Tensor:
    """Per-row penalty of input gradients ``g`` of shape (rows, features), in torch ops.

    The norm's gradient at zero is zero (no NaN), as for ``torch.linalg.vector_norm``.
    """
    if kind == PenaltyKind.SQUARED:
        return 0.5 * weight * g.pow(2).sum(dim=1)
    return weight * (torch.linalg.vector_norm(g, dim=1) - center).pow(2)


def penalty_row_gradient(g: torch.Tensor, kind: PenaltyKind, weight: float, center: float) -> torch.Tensor:
    """d penalty_row / d g, differentiable; zero for rows with a zero norm (NaN where the norm is
    NaN or Inf, as torch's norm backward)."""
    if kind == PenaltyKind.SQUARED:
        return weight * g
    n = torch.linalg.vector_norm(g, dim=1, keepdim=True)
    nonzero = n != 0
    safe = torch.where(nonzero, n, torch.ones_like(n))
    return torch.where(nonzero, 2 * weight * (safe - center) / safe, torch.zeros_like(n)) * g
