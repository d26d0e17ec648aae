"""Reference gradient penalties for any discriminator: ``autograd.grad(create_graph=True)``.

Rows are the discriminator's output rows: with PacGAN packing (``pack = m``) a row is m
consecutive samples, and the norm is over everything in the row. The mean is over rows.

- R1 / R2:   gamma/2 * E |grad_x D(x)|^2 on real / on fake data
- WGAN-GP:   weight * E (|grad D(xhat)| - center)^2,  xhat = eps*real + (1-eps)*fake, eps ~ U[0,1] per row
- DRAGAN:    the same on real + scale * std(real) * u,  u ~ U[0,1) elementwise
"""
from __future__ import annotations

import torch


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, pack: int = 1) -> torch.Tensor:
    """``eps*real + (1-eps)*fake`` with one eps per row (``eps`` has shape (rows,))."""
    e = eps.repeat_interleave(pack).reshape((-1,) + (1,) * (real.dim() - 1)).to(real.dtype)
    return e * real + (1 - e) * fake


def perturb(real: torch.Tensor, noise: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """DRAGAN's perturbed real data: ``real + scale * real.std() * noise``."""
    return real + scale * real.std() * noise


def input_gradient(discriminator, x: torch.Tensor, pack: int = 1) -> torch.Tensor:
    """d sum(D(x)) / dx with a graph (``create_graph=True``), as (rows, features)."""
    x = x.detach().requires_grad_(True)
    out = discriminator(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return g.reshape(x.shape[0] // pack, -1)


def squared_penalty(g: torch.Tensor, gamma: float) -> torch.Tensor:
    return gamma / 2 * g.pow(2).sum(dim=1).mean()


def centered_penalty(g: torch.Tensor, weight: float, center: float) -> torch.Tensor:
    return weight * (g.norm(2, dim=1) - center).pow(2).mean()
