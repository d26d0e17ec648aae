"""A complete GAN on the 8-Gaussian ring with fastgan's fused discriminator step.

The discriminator is a ``fastgan.MLPDiscriminator``, so each discriminator update is one fused op
(``backward=True``: loss, lazy R1 penalty and every parameter gradient, no double backward). The
generator's update goes through ``fastgan.generator_step``. At the end it prints how many of the
eight modes the generator covers.

    python examples/mlp_ring.py             # about a minute on 2 CPU cores
    python examples/mlp_ring.py --smoke     # a few seconds: checks that it runs
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import fastgan


def ring(n: int, generator: torch.Generator, modes: int = 8, radius: float = 2.0, std: float = 0.02):
    """``n`` samples of a mixture of ``modes`` Gaussians on a circle, and the mode centres."""
    angles = torch.arange(modes) * (2 * math.pi / modes)
    centres = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    which = torch.randint(modes, (n,), generator=generator)
    return centres[which] + std * torch.randn(n, 2, generator=generator), centres


def generator() -> nn.Module:
    """A small MLP generator from 16-dimensional noise to the plane."""
    return nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))


def report_modes(G: nn.Module, centres: torch.Tensor) -> None:
    """How many modes 2,000 of G's samples cover (a sample within 0.1, 5 std, of a mode)."""
    with torch.no_grad():
        samples = G(torch.randn(2000, 16))
    distance, nearest = torch.cdist(samples, centres).min(dim=1)
    close = distance < 0.1
    print(f"modes covered: {nearest[close].unique().numel()} / {len(centres)}; "
          f"samples within 0.1 of a mode: {close.float().mean():.0%}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--smoke", action="store_true", help="a few steps only")
    args = p.parse_args(argv)
    steps = 20 if args.smoke else args.steps
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(0)

    G = generator()
    D = fastgan.MLPDiscriminator(in_features=2, hidden=(128, 128), negative_slope=0.2)
    loss = fastgan.NonSaturatingLoss()
    r1 = fastgan.R1Penalty(gamma=0.1, every=4)  # lazy R1: every 4th step, scaled by 4
    # StyleGAN2's lazy-regularisation adjustment: the penalised steps come every 4th step, so
    # the discriminator's Adam sees its rate and betas raised to the power 4/5
    c = r1.every / (r1.every + 1)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4 * c, betas=(0.5 ** c, 0.99 ** c))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.99))
    print(f"discriminator step: {fastgan.explain(D).reason}")
    last_r1 = float("nan")

    for step in range(1, steps + 1):
        real, _ = ring(args.batch, data)
        z = torch.randn(args.batch, 16)

        opt_d.zero_grad(set_to_none=True)
        total, parts = fastgan.discriminator_step(D, real, G(z).detach(), loss=loss, penalty=r1,
                                                  backward=True, return_parts=True)
        opt_d.step()
        if parts.penalty.item():
            last_r1 = parts.penalty.item() / r1.every  # the penalty itself, without the lazy factor

        opt_g.zero_grad(set_to_none=True)
        fastgan.generator_step(D, G(z), loss=loss).backward()
        opt_g.step()
        if step % max(steps // 5, 1) == 0:
            print(f"step {step:5d}  D loss {parts.loss.item():.3f}  R1 {last_r1:.4f}  "
                  f"D(real) {parts.real_logit_mean.item():+.2f}  D(fake) {parts.fake_logit_mean.item():+.2f}")

    report_modes(G, ring(1, data)[1])


if __name__ == "__main__":
    main()
