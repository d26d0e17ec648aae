"""One lab run: train a small MLP GAN on a mixture with one objective, then measure it.

The discriminator is :class:`fastgan.MLPDiscriminator` and every update goes through
:func:`fastgan.discriminator_step` / :func:`fastgan.generator_step`, so ``backend`` picks the
fused kernels (or the autograd reference) exactly as in user code.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
from torch import nn

import fastgan
from fastgan import divergences
from fastgan.lab.data import Mixture
from fastgan.lab.metrics import ModeMetrics, mode_metrics


@dataclass(frozen=True)
class Objective:
    """A GAN objective: loss, optional gradient penalty, PacGAN packing."""

    name: str
    loss: str
    penalty: str | None = None
    penalty_weight: float = 0.0
    pack: int = 1
    logistic: bool = True  # the discriminator's logit estimates log p_r/p_g (divergences apply)

    def describe(self) -> str:
        parts = [self.loss.replace("_", "-") + " loss"]
        if self.penalty is not None:
            parts.append({"r1": "R1 gamma", "gp": "gradient penalty (WGAN-GP) weight"}.get(self.penalty, self.penalty)
                         + f" {self.penalty_weight:g}")
        if self.pack > 1:
            parts.append(f"PacGAN packing {self.pack}")
        return ", ".join(parts)

    def make_penalty(self):
        if self.penalty is None:
            return None
        return fastgan.PENALTIES[self.penalty](self.penalty_weight)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("ns", "non_saturating"),
    Objective("minimax", "minimax"),
    Objective("ns-r1", "non_saturating", "r1", 1.0),  # gamma 0.1 did not stop the collapse (3 seeds)
    Objective("wgan-gp", "wasserstein", "gp", 1.0, logistic=False),
    Objective("ns-pack2", "non_saturating", pack=2),
    Objective("ns-pack4", "non_saturating", pack=4),
)}


@dataclass(frozen=True)
class Regime:
    """Sizes and optimiser of a run. Each step draws ``batch * pack`` fresh real samples and as
    many generated ones (the discriminator always sees ``batch`` rows), takes one
    discriminator step, then one generator step on fresh noise.

    The default pits a two-hidden-layer generator against a *weaker* discriminator (one hidden
    layer of 64 units), the setting in which mode collapse is reproducible on CPU: on the ring,
    with 3 seeds, the plain ``ns`` and ``minimax`` generators end in one narrow clump (no
    high-quality mode), while R1 (gamma 1) and PacGAN packing recover all 8 modes (the same on
    seeds 3-5). With the previous default (D 2-128-128-1, 1,000 steps) no logistic objective
    dropped a ring mode; a two-layer D of 64 units, or no learning-rate decay with a two-layer
    D, did not collapse either. Limits: WGAN-GP (one critic step per generator step, weights
    0.1, 1 and 10 tried) does not converge here, and the grid is too hard for this small
    discriminator: no objective gets more than a few percent of high-quality samples on it."""

    steps: int = 3000
    batch: int = 128
    latent: int = 2
    g_hidden: tuple[int, ...] = (128, 128)
    d_hidden: tuple[int, ...] = (64,)
    lr_g: float = 2e-3
    lr_d: float = 2e-3
    betas: tuple[float, float] = (0.5, 0.9)
    lr_decay: bool = True  # both learning rates decay linearly to zero over the run
    eval_samples: int = 2500
    dtype: str = "float32"

    def describe(self) -> str:
        g = "-".join(map(str, (self.latent,) + self.g_hidden + (2,)))
        d = "-".join(map(str, (2,) + self.d_hidden + (1,)))
        return (f"G MLP {g} (ReLU, N(0, I) noise), D MLPDiscriminator {d} (LeakyReLU 0.2; first layer "
                f"2*pack inputs), Adam lr G {self.lr_g:g} / D {self.lr_d:g}, betas {self.betas}, "
                f"{'linear decay to 0, ' if self.lr_decay else ''}batch {self.batch} rows, "
                f"{self.steps} steps of 1 D + 1 G update, {self.dtype}")


DEFAULT = Regime()
FULL = replace(DEFAULT, steps=6000)


class Generator(nn.Module):
    """MLP from N(0, I_latent) noise to the plane: ReLU hidden layers, linear output."""

    def __init__(self, latent: int, hidden: tuple[int, ...]):
        super().__init__()
        widths = (latent,) + tuple(hidden)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 2))
        self.latent = latent

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass
class RunResult:
    dataset: str
    objective: str
    seed: int
    metrics: ModeMetrics
    divergences: dict[str, float] = field(default_factory=dict)  # empty unless the objective is logistic
    seconds: float = 0.0
    samples: torch.Tensor | None = None  # (eval_samples, 2), float32

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "objective": self.objective, "seed": self.seed,
                **asdict(self.metrics), "divergences": self.divergences, "seconds": self.seconds}


def train_run(mixture: Mixture, objective: Objective, seed: int, regime: Regime = DEFAULT,
              backend: str | None = None, on_step: Callable[[int], None] | None = None) -> RunResult:
    """Train from ``seed`` and measure 2,500 (``regime.eval_samples``) generator samples.

    Bitwise reproducible on CPU for a fixed seed, backend and thread count: parameters are
    initialised under ``torch.manual_seed(seed)`` (the caller's global RNG state is restored)
    and all data, noise and penalty randomness comes from one seeded ``torch.Generator``.
    ``on_step(n)`` is called with the number of steps just done (for progress bars).
    """
    dtype = getattr(torch, regime.dtype)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(regime.latent, regime.g_hidden).to(dtype)
        D = fastgan.MLPDiscriminator(2, regime.d_hidden, pack=objective.pack).to(dtype)
    rng = torch.Generator().manual_seed(seed)
    loss = fastgan.get_loss(objective.loss)
    penalty = objective.make_penalty()
    opt_g = torch.optim.Adam(G.parameters(), lr=regime.lr_g, betas=regime.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=regime.lr_d, betas=regime.betas)
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / regime.steps)
                 for opt in (opt_g, opt_d)] if regime.lr_decay else []
    n = regime.batch * objective.pack
    noise = lambda: torch.randn(n, regime.latent, generator=rng, dtype=dtype)  # noqa: E731

    for step in range(regime.steps):
        real = mixture.sample(n, rng, dtype)
        with torch.no_grad():
            fake = G(noise())
        opt_d.zero_grad(set_to_none=True)
        fastgan.discriminator_step(D, real, fake, loss=loss, penalty=penalty, backend=backend,
                                   generator=rng).backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        fastgan.generator_step(D, G(noise()), loss=loss, backend=backend).backward()
        opt_g.step()
        for schedule in schedules:
            schedule.step()
        if on_step is not None and (step + 1) % 50 == 0:
            on_step(50)
    if on_step is not None and regime.steps % 50:
        on_step(regime.steps % 50)

    metrics, divs, samples = evaluate(G, D, mixture, objective, regime, rng)
    return RunResult(mixture.name, objective.name, seed, metrics, divs, time.perf_counter() - start, samples)


@torch.no_grad()
def evaluate(G: Generator, D: fastgan.MLPDiscriminator, mixture: Mixture, objective: Objective,
             regime: Regime, rng: torch.Generator):
    """Mode metrics of ``eval_samples`` generator samples, and the divergences D's logits imply
    (on as many fresh real samples; packed discriminators see rows of ``pack`` samples, so their
    estimates are between the ``pack``-fold product distributions)."""
    dtype = getattr(torch, regime.dtype)
    samples = G(torch.randn(regime.eval_samples, regime.latent, generator=rng, dtype=dtype))
    metrics = mode_metrics(samples, mixture)
    divs: dict[str, float] = {}
    if objective.logistic:
        rows = regime.eval_samples - regime.eval_samples % objective.pack
        real = mixture.sample(rows, rng, torch.float64)
        D64 = copy.deepcopy(D).double()
        divs = divergences.from_logits(D64(real), D64(samples[:rows].double()))
    return metrics, divs, samples.float()
