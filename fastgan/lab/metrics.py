"""The published mode metrics (PacGAN, Lin et al. 2018) and their mean +- standard error.

Each generated sample is assigned to its nearest mode; it is *high quality* if its Euclidean
distance to that mode is at most ``3 * std``. With ``n_k`` high-quality samples at mode k
(k = 1..K) and ``p_k = n_k / sum_j n_j``:

- modes captured: #{k : n_k >= 1};
- high-quality %: 100 * sum_k n_k / (number of samples);
- reverse KL of the high-quality histogram against uniform: sum_{k: p_k > 0} p_k log(K p_k)
  (0 when every mode has the same count, log K when one mode has them all; undefined, NaN,
  when there is no high-quality sample).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastgan.lab.data import Mixture


@dataclass(frozen=True)
class ModeMetrics:
    modes_captured: int
    high_quality_pct: float
    reverse_kl: float  # NaN when no sample is high quality


def mode_counts(samples: torch.Tensor, mixture: Mixture, n_std: float = 3.0) -> tuple[torch.Tensor, int]:
    """(high-quality samples per mode (K,), number of samples)."""
    if samples.dim() != 2 or samples.shape[1] != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must have shape (n, 2) with n >= 1, got {tuple(samples.shape)}")
    x = samples.detach().to(torch.float64)
    dist = (x[:, None, :] - mixture.means[None]).pow(2).sum(dim=2).sqrt()  # exact, unlike cdist's matmul form
    nearest, k = dist.min(dim=1)
    hq = nearest <= n_std * mixture.std
    return torch.bincount(k[hq], minlength=mixture.modes), x.shape[0]


def mode_metrics(samples: torch.Tensor, mixture: Mixture, n_std: float = 3.0) -> ModeMetrics:
    counts, n = mode_counts(samples, mixture, n_std)
    total = int(counts.sum())
    if total == 0:
        rkl = math.nan
    else:
        p = counts[counts > 0].double() / total
        rkl = float((p * torch.log(mixture.modes * p)).sum())
    return ModeMetrics(int((counts > 0).sum()), 100.0 * total / n, rkl)


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)) of the finite values; NaN where undefined
    (no finite value; the standard error of a single value)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan
    m = sum(v) / len(v)
    if len(v) == 1:
        return m, math.nan
    var = sum((x - m) ** 2 for x in v) / (len(v) - 1)
    return m, math.sqrt(var / len(v))
