"""The benchmark configurations: a network shape, a batch and an objective.

Terms used in every table:

- ``depth``: the number of hidden layers (Linear + LeakyReLU). The output Linear (one logit) is
  not counted, so depth 4 has five Linear layers.
- ``batch``: rows per side B (real rows = fake rows = B). With PacGAN packing (``pack = m``)
  a row holds m samples, so each side has ``B * m`` samples of ``in_features`` values.
- ``P``: the number of weights (entries of the weight matrices W_1..W_L and w_out; biases are
  not counted), the same for every provider.
- useful work (docs/DESIGN.md section 4), the same count for every provider: 12BP for the plain
  step (hinge, no penalty), 14BP for non-saturating + R1, 20BP for Wasserstein + WGAN-GP, and
  4BP for the generator step (forward and input-gradient chain over B fake rows).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch

from fastgan.losses import GANLoss, HingeLoss, NonSaturatingLoss, WassersteinLoss
from fastgan.penalties import GradientPenalty, GradientPenaltyBase, R1Penalty


@dataclass(frozen=True)
class Network:
    """An :class:`~fastgan.MLPDiscriminator` shape: ``depth`` hidden layers of ``width``."""

    name: str
    in_features: int
    width: int
    depth: int
    pack: int = 1

    @property
    def hidden(self) -> tuple[int, ...]:
        return (self.width,) * self.depth

    @property
    def weights(self) -> int:
        """P: entries of W_1..W_L and w_out."""
        widths = (self.pack * self.in_features,) + self.hidden + (1,)
        return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


@dataclass(frozen=True)
class Objective:
    """What one step computes. ``gamma`` is R1's gamma or WGAN-GP's weight."""

    name: str
    loss: str
    penalty: str | None  # "r1", "gp" or None
    work: int  # useful work in units of B*P
    generator: bool = False
    gamma: float = 10.0

    def make_loss(self) -> GANLoss:
        return {"non_saturating": NonSaturatingLoss, "wasserstein": WassersteinLoss,
                "hinge": HingeLoss}[self.loss]()

    def make_penalty(self) -> GradientPenaltyBase | None:
        if self.penalty == "r1":
            return R1Penalty(gamma=self.gamma)
        if self.penalty == "gp":
            return GradientPenalty(weight=self.gamma)
        return None


OBJECTIVES = {
    "ns+r1": Objective("ns+r1", "non_saturating", "r1", 14),
    "w+gp": Objective("w+gp", "wasserstein", "gp", 20),
    "hinge": Objective("hinge", "hinge", None, 12),  # the plain step: R1/plain and GP/plain
    "gen": Objective("gen", "non_saturating", None, 4, generator=True),
}


@dataclass(frozen=True)
class Config:
    network: Network
    batch: int
    objective: Objective

    @property
    def flops(self) -> int:
        return self.objective.work * self.batch * self.network.weights

    @property
    def label(self) -> str:
        return f"{self.network.name} B={self.batch} {self.objective.name}"


# Networks by family. The targets come first: they are the sizes the project is judged on.
TARGETS = (Network("target", 32, 128, 4), Network("lab", 2, 64, 3))
WIDTHS = tuple(Network(f"width-{w}", 32, w, 4) for w in (64, 128, 512, 1024))
CTGAN = tuple(Network(f"ctgan-in{i}-p{p}", i, 256, 2, p) for i in (64, 256) for p in (1, 10))
FAMILIES = {"targets": TARGETS, "width": WIDTHS, "ctgan": CTGAN}

# (network, batch) pairs: the targets' own batches, then the sweep batches per device.
TARGET_BATCHES = {"target": (4096, 256), "lab": (4096,)}
SWEEP_BATCHES = {"cuda": (256, 4096, 65536), "cpu": (256, 4096)}
# CPU default: the targets at their batches and every sweep network at batch 256 only, so a
# default run finishes in a few minutes on 2 cores. --full runs the whole grid.
CPU_DEFAULT_SWEEP_BATCHES = (256,)


def _networks(patterns: list[str]) -> list[Network]:
    everything = [n for fam in FAMILIES.values() for n in fam]
    chosen: list[Network] = []
    for pat in patterns:
        found = list(FAMILIES[pat]) if pat in FAMILIES else [n for n in everything if fnmatch.fnmatch(n.name, pat)]
        if not found:
            names = ", ".join(list(FAMILIES) + [n.name for n in everything])
            raise ValueError(f"--configs: {pat!r} matches no family or network (have: {names})")
        chosen += [n for n in found if n not in chosen]
    return chosen


def select(device: str, configs: list[str] | None = None, batches: list[int] | None = None,
           objectives: list[str] | None = None, full: bool = False, quick: bool = False) -> list[Config]:
    """The configurations to run on ``device`` ('cpu' or 'cuda').

    ``configs``: family names (targets, width, ctgan) or network-name patterns (``width-*``);
    default every family. ``batches`` replaces the batch list of every chosen network.
    ``quick``: the targets only, at batches up to 4096. ``full``: every sweep batch (CPU default
    runs the sweep networks at batch 256 only).
    """
    objectives = objectives or list(OBJECTIVES)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f"--objectives: unknown {unknown}; choose from {list(OBJECTIVES)}")
    networks = _networks(configs or (["targets"] if quick else list(FAMILIES)))
    sweep = SWEEP_BATCHES[device]
    if device == "cpu" and not full:
        sweep = CPU_DEFAULT_SWEEP_BATCHES
    out: list[Config] = []
    seen: set[tuple] = set()
    for net in networks:
        for b in batches or TARGET_BATCHES.get(net.name, sweep):
            if quick and not batches and b > 4096:
                continue
            for o in objectives:
                key = (net.in_features, net.width, net.depth, net.pack, b, o)
                if key not in seen:  # target B=256 is width-128 B=256: keep the first name
                    seen.add(key)
                    out.append(Config(net, b, OBJECTIVES[o]))
    return out


@dataclass
class Inputs:
    """One configuration's data: samples per side ``batch * pack``; ``eps`` (rows,) fixes
    WGAN-GP's interpolation so every provider computes the same objective."""

    real: torch.Tensor
    fake: torch.Tensor
    eps: torch.Tensor


def make_inputs(config: Config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    n, k = config.batch * config.network.pack, config.network.in_features
    real = torch.randn(n, k, generator=g, dtype=torch.float64)
    fake = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.5 + 0.25
    eps = torch.rand(config.batch, generator=g, dtype=torch.float64)
    return Inputs(*(t.to(device=device, dtype=dtype) for t in (real, fake, eps)))


def make_discriminator(network: Network, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from fastgan.mlp import MLPDiscriminator

    torch.manual_seed(seed)
    D = MLPDiscriminator(network.in_features, network.hidden, pack=network.pack)
    return D.to(device=device, dtype=dtype)
