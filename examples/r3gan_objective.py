"""R3GAN's objective (Huang et al. 2024): the relativistic pairing loss with both R1 and R2.

One ``fastgan.discriminator_step`` call takes the loss and both penalties
(``penalty=[r1, r2]``, gamma/2 each, as R3GAN writes them). The data are the 8-Gaussian ring of
``mlp_ring.py``; the generator's loss pairs its samples with real ones, so
``generator_step`` is given ``real`` too.

    python examples/r3gan_objective.py             # about a minute on 2 CPU cores
    python examples/r3gan_objective.py --smoke     # a few seconds: checks that it runs
"""
from __future__ import annotations

import argparse

import torch

import fastgan
from mlp_ring import generator, report_modes, ring


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
    loss = fastgan.RelativisticLoss()
    r1, r2 = fastgan.R1Penalty(gamma=0.1), fastgan.R2Penalty(gamma=0.1)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.99))  # R3GAN's betas
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.99))

    for step in range(1, steps + 1):
        real, _ = ring(args.batch, data)
        z = torch.randn(args.batch, 16)

        opt_d.zero_grad(set_to_none=True)
        _, parts = fastgan.discriminator_step(D, real, G(z).detach(), loss=loss, penalty=[r1, r2],
                                              backward=True, return_parts=True)
        opt_d.step()

        opt_g.zero_grad(set_to_none=True)
        fastgan.generator_step(D, G(z), loss=loss, real=real).backward()
        opt_g.step()
        if step % max(steps // 5, 1) == 0:
            print(f"step {step:5d}  D loss {parts.loss.item():.3f}  R1 + R2 {parts.penalty.item():.4f}  "
                  f"D(real) - D(fake) {(parts.real_logit_mean - parts.fake_logit_mean).item():+.2f}")

    report_modes(G, ring(1, data)[1])


if __name__ == "__main__":
    main()
