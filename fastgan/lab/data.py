"""The lab's data: 2-D Gaussian mixtures with equal weights (the PacGAN benchmarks).

``ring``: 8 modes at (cos 2 pi k/8, sin 2 pi k/8), k = 0..7 (8 distinct angles: not
``linspace(0, 2 pi, 8)``, whose last point repeats the first), std 0.01 per coordinate.
``grid``: 25 modes at {-4, -2, 0, 2, 4}^2, std 0.05.

Samples are fresh on every call and come only from the ``torch.Generator`` passed in, so a
seeded generator gives the same stream on every run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Mixture:
    """An equal-weight mixture of isotropic Gaussians in 2-D."""

    name: str
    means: torch.Tensor  # (K, 2) float64
    std: float

    @property
    def modes(self) -> int:
        return self.means.shape[0]

    def to(self, device: str | torch.device) -> "Mixture":
        """The same mixture with its means on ``device`` (samples are drawn there)."""
        return Mixture(self.name, self.means.to(device), self.std)

    def sample(self, n: int, generator: torch.Generator | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n`` samples (n, 2) on the means' device: a uniform mode index, then
        mean + std * N(0, I), in float64, then cast to ``dtype``. ``generator`` None: the
        device's default generator."""
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n must be a positive integer, got {n!r}")
        device = self.means.device
        k = torch.randint(self.modes, (n,), generator=generator, device=device)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64, device=device)
        return (self.means[k] + self.std * noise).to(dtype)


def ring() -> Mixture:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return Mixture("ring", torch.stack([torch.cos(angles), torch.sin(angles)], dim=1), 0.01)


def grid() -> Mixture:
    axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0], dtype=torch.float64)
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return Mixture("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), 0.05)


DATASETS = {"ring": ring, "grid": grid}


def get_dataset(name: str) -> Mixture:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]()
