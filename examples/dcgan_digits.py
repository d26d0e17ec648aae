"""A DCGAN-style convolutional GAN with R1 on real images that need no download.

The data are scikit-learn's bundled 8x8 handwritten digits (1,797 images), upsampled to 16x16.
The discriminator is an ordinary ``nn.Module`` of convolutions and LeakyReLU:
``fastgan.discriminator_step`` gives it the same loss + R1 objective as an MLP discriminator
(``fastgan.explain(D)`` says which path runs). At the end a logistic-regression classifier fitted
on the real digits reads the generated ones: how many of the ten digits the generator draws.

    python examples/dcgan_digits.py             # about a minute on 2 CPU cores
    python examples/dcgan_digits.py --smoke     # a few seconds: checks that it runs
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import fastgan


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as (N, 1, 16, 16) images in [-1, 1], and their labels."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # pixels 0..16
    return F.interpolate(x, size=16, mode="bilinear", align_corners=False), torch.tensor(data.target)


class Generator(nn.Module):
    def __init__(self, latent: int = 32):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(latent, 64 * 4 * 4), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),  # 8x8
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1), nn.Tanh())                     # 16x16

    def forward(self, z):
        return self.up(self.project(z).view(-1, 64, 4, 4))


def discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),   # 8x8
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 4x4
        nn.Flatten(), nn.Linear(64 * 4 * 4, 1), nn.Flatten(0))          # one logit per image


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="a few steps only")
    args = p.parse_args(argv)
    steps = 5 if args.smoke else args.steps
    torch.manual_seed(0)
    images, labels = digits()

    G, D = Generator(), discriminator()
    loss = fastgan.NonSaturatingLoss()
    r1 = fastgan.R1Penalty(gamma=1.0)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.99))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.99))
    print(f"discriminator step: {fastgan.explain(D).path} ({fastgan.explain(D).reason})")

    for step in range(1, steps + 1):
        real = images[torch.randint(len(images), (args.batch,))]
        z = torch.randn(args.batch, 32)

        opt_d.zero_grad(set_to_none=True)
        _, parts = fastgan.discriminator_step(D, real, G(z).detach(), loss=loss, penalty=r1,
                                              backward=True, return_parts=True)
        opt_d.step()

        opt_g.zero_grad(set_to_none=True)
        fastgan.generator_step(D, G(z), loss=loss).backward()
        opt_g.step()
        if step % max(steps // 5, 1) == 0:
            print(f"step {step:4d}  D loss {parts.loss.item():.3f}  R1 {parts.penalty.item():.4f}  "
                  f"D(real) {parts.real_logit_mean.item():+.2f}  D(fake) {parts.fake_logit_mean.item():+.2f}")

    from sklearn.linear_model import LogisticRegression
    small = lambda x: F.avg_pool2d(x, 2).flatten(1).numpy()  # noqa: E731  back to 8x8
    reader = LogisticRegression(max_iter=2000).fit(small(images), labels.numpy())
    G.eval()
    with torch.no_grad():
        drawn = reader.predict(small(G(torch.randn(1000, 32))))
    counts = torch.bincount(torch.tensor(drawn), minlength=10)
    print(f"digits drawn (of 1000 samples, as read by a classifier of the real ones): {counts.tolist()}; "
          f"{int((counts >= 20).sum())} of 10 digits at 2% or more")


if __name__ == "__main__":
    main()
