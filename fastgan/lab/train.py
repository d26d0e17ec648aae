"""One lab run: train a small MLP GAN on a mixture with one objective, then measure it.

The discriminator is :class:`fastgan.MLPDiscriminator` and every discriminator update goes
through :func:`fastgan.discriminator_step` (the generator's through
:func:`fastgan.generator_step`), so ``backend`` picks the fused kernels (or the autograd
reference) exactly as in user code. On a CUDA device the whole training step (the
discriminator steps, the generator step and both Adam updates) is captured once in a CUDA
graph and replayed (:class:`fastgan.GraphedStep`); on the CPU it runs eagerly.

One training step, for an objective with ``d_steps = n``:

    n times:  real ~ p_r, fake = G(z) (no gradient), D <- Adam(D, grad of D's loss + penalty)
    once:     fake = G(z'), G <- Adam(G, grad of G's loss against the updated D)

with ``batch * pack`` fresh samples of each per update (the discriminator sees ``batch`` rows).
"""
from __future__ import annotations

import copy
import re
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
    """A GAN objective and the settings that belong to it: loss, gradient penalty, PacGAN
    packing, discriminator (critic) steps per generator step, its own Adam settings (None: the
    regime's), and unrolled look-ahead steps for the generator (0: none).

    ``penalty_per_variance``: the penalty's weight is ``penalty_weight`` times the data's
    variance per coordinate (``Mixture.std ** 2``), so that it means the same on every mixture.
    R1's gamma has the units of a squared distance (the logit's gradient scales as one over a
    length), so a weight fixed in absolute units flattens the discriminator over one mixture's
    modes and barely touches another's."""

    name: str
    loss: str
    penalty: str | None = None
    penalty_weight: float = 0.0
    penalty_per_variance: bool = False
    pack: int = 1
    d_steps: int = 1
    adam: tuple[float, float, tuple[float, float]] | None = None  # (lr G, lr D, betas)
    unrolled: int = 0
    unrolled_mode: str = "exact"
    logistic: bool = True  # the discriminator's logit estimates log p_r/p_g (divergences apply)

    def describe(self, mixtures: dict[str, Mixture] | None = None) -> str:
        """One line for the results; ``mixtures`` (name: mixture) spell out a per-variance weight."""
        parts = [self.loss.replace("_", "-") + " loss"]
        if self.penalty is not None:
            weight = f" {self.penalty_weight:g}"
            if self.penalty_per_variance:
                weight += " x the data's variance per coordinate"
                if mixtures:
                    weight += " (" + ", ".join(f"{name} {self.weight_on(m):g}" for name, m in mixtures.items()) + ")"
            parts.append({"r1": "R1 gamma", "gp": "gradient penalty (WGAN-GP) weight"}.get(self.penalty, self.penalty)
                         + weight)
        if self.pack > 1:
            parts.append(f"PacGAN packing {self.pack}")
        if self.d_steps > 1:
            parts.append(f"{self.d_steps} critic steps per generator step")
        if self.adam is not None:
            lr_g, lr_d, betas = self.adam
            parts.append(f"Adam lr G {lr_g:g} / D {lr_d:g}, betas {betas}")
        if self.unrolled:
            parts.append(f"generator unrolled through {self.unrolled} D steps ({self.unrolled_mode})")
        return ", ".join(parts)

    def weight_on(self, mixture: Mixture) -> float:
        """The penalty's weight on ``mixture``."""
        return self.penalty_weight * (mixture.std ** 2 if self.penalty_per_variance else 1.0)

    def make_penalty(self, mixture: Mixture):
        if self.penalty is None:
            return None
        return fastgan.PENALTIES[self.penalty](self.weight_on(mixture))


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("ns", "non_saturating"),
    Objective("minimax", "minimax"),
    # R1's gamma is 100 std^2: 0.01 on the ring (std 0.01, modes 0.77 apart) lets the discriminator
    # resolve its modes, where gamma 1 flattens it over the whole ring and R1's samples stay spread
    # between the modes; 0.25 on the grid (std 0.05), where the ring's 0.01 leaves R1 behind plain
    # NS (docs/lab/collapse-search.md, batches 26-28 and 39)
    Objective("ns-r1", "non_saturating", "r1", 100.0, penalty_per_variance=True),
    # the WGAN-GP toy setting: 5 critic steps per generator step, Adam 1e-4, betas (0.5, 0.9)
    Objective("wgan-gp", "wasserstein", "gp", 0.1, d_steps=5, adam=(1e-4, 1e-4, (0.5, 0.9)), logistic=False),
    Objective("ns-pack2", "non_saturating", pack=2),
)}
DEFAULT_OBJECTIVES = ("ns", "ns-r1", "wgan-gp", "ns-pack2")
UNROLLED = re.compile(r"ns-unrolled(?:-(\d+))?(-fo)?")
UNROLLED_STEPS = 5  # k when the name gives none (the unrolled-GAN paper's 2-D experiments)


def get_objective(name: str) -> Objective:
    """An objective of ``OBJECTIVES`` or ``ns-unrolled[-<k>][-fo]``: the non-saturating generator
    differentiating through k look-ahead Adam updates of D (:mod:`fastgan.unrolled`; Metz et al.
    2017; k = 5 when the name gives none), exactly, or first-order with the ``-fo`` suffix. The
    objective's name always carries k (``ns-unrolled`` is ``ns-unrolled-5``)."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    match = UNROLLED.fullmatch(name)
    k = (int(match[1]) if match[1] else UNROLLED_STEPS) if match else 0
    if k < 1:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)} or ns-unrolled[-<k>][-fo] (k >= 1), "
                         f"got {name!r}")
    return Objective(f"ns-unrolled-{k}{match[2] or ''}", "non_saturating", unrolled=k,
                     unrolled_mode="first_order" if match[2] else "exact")


@dataclass(frozen=True)
class Regime:
    """Network sizes, initialisation, optimiser and length of a run (compare objectives only
    within one).

    The generator is an MLP (:class:`Generator`); the discriminator is
    :class:`fastgan.MLPDiscriminator` (LeakyReLU), the network the fused step runs. The settings
    tried in search of a regime where plain ``ns`` collapses are in docs/lab/collapse-search.md."""

    name: str
    steps: int
    batch: int = 512
    latent: int = 256
    g_hidden: tuple[int, ...] = (128, 128)
    d_hidden: tuple[int, ...] = (128, 128)
    lr_g: float = 1e-3
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    eval_samples: int = 2500
    dtype: str = "float32"
    g_activation: str = "tanh"  # the generator's hidden activation: "tanh" or "relu"
    g_batchnorm: bool = False  # batch normalisation before each of the generator's hidden activations
    init_std: float | None = None  # N(0, init_std) weights and zero biases for G and D (None: PyTorch's init)
    d_slope: float = 0.2  # the discriminator's LeakyReLU slope (0: ReLU)
    # multiplies the learning rates an objective sets itself (WGAN-GP's published 1e-4 is tuned for
    # its published length; the shortened CPU regime raises it)
    objective_lr_scale: float = 1.0
    # every learning rate rises linearly from 0 over this first fraction of the steps (0: none)
    lr_warmup: float = 0.0
    # every learning rate falls linearly to 0 over this last fraction of the steps (0: constant)
    lr_decay: float = 0.0
    # steps that train the grid in this regime, where measured (0: not measured); not a training
    # setting: ``fastgan lab`` names it when it leaves the grid out or runs it shorter
    grid_steps: int = 0

    def __post_init__(self):
        for name in ("lr_warmup", "lr_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")

    def lr_factor(self, step: int) -> float:
        """The learning rates' multiplier at training step ``step`` (1-based): rising linearly
        over the first ``lr_warmup`` fraction of the steps, 1, then falling linearly over the last
        ``lr_decay`` fraction (1 / (that many steps) at the first and the last step)."""
        factor = 1.0
        if self.lr_warmup:
            factor = min(factor, step / (self.steps * self.lr_warmup))
        if self.lr_decay:
            factor = min(factor, max(0.0, (self.steps - step + 1) / (self.steps * self.lr_decay)))
        return factor

    def lr_schedule(self, rise: str = "rising", fall: str = "falling") -> str:
        """The warm-up and decay in words (empty when the rates are constant)."""
        parts = []
        if self.lr_warmup:
            parts.append(f"{rise} linearly from 0 over the first {self.lr_warmup:.0%} of the steps")
        if self.lr_decay:
            parts.append(f"{fall} linearly to 0 over the last {self.lr_decay:.0%}"
                         + ("" if self.lr_warmup else " of the steps"))
        return " and ".join(parts)

    def adam(self, objective: "Objective") -> tuple[float, float, tuple[float, float]]:
        """(lr G, lr D, betas) of ``objective`` in this regime."""
        if objective.adam is None:
            return self.lr_g, self.lr_d, self.betas
        lr_g, lr_d, betas = objective.adam
        return lr_g * self.objective_lr_scale, lr_d * self.objective_lr_scale, betas

    def describe(self) -> str:
        g = "-".join(map(str, (self.latent,) + self.g_hidden + (2,)))
        d = "-".join(map(str, (2,) + self.d_hidden + (1,)))
        g_act = self.g_activation + (" with batch norm" if self.g_batchnorm else "")
        init = "" if self.init_std is None else f", weights N(0, {self.init_std:g}) and zero biases"
        decay = f", every learning rate {self.lr_schedule()}" if self.lr_warmup or self.lr_decay else ""
        return (f"{self.name}: G MLP {g} ({g_act}, N(0, I) noise), D MLPDiscriminator {d} ("
                f"{f'LeakyReLU {self.d_slope:g}' if self.d_slope else 'ReLU'}; first layer 2*pack inputs){init}, "
                f"Adam lr G {self.lr_g:g} / D {self.lr_d:g}, betas {self.betas} "
                f"(unless the objective sets its own{self._scale_note()}){decay}, batch {self.batch} rows, "
                f"{self.steps} steps, {self.dtype}")

    def _scale_note(self) -> str:
        return "" if self.objective_lr_scale == 1 else f", then times {self.objective_lr_scale:g}"


# The small-MLP regime of the unrolled-GAN / VEEGAN / GDPP experiments, at its published length.
UNROLLED_GAN_FULL = Regime("unrolled-GAN MLP regime", steps=25_000)
# The same networks and optimiser, shortened to fit 2 CPU cores in 5 minutes: batch 128 and 3,000
# steps. WGAN-GP at its published Adam 1e-4 is far from converged after 3,000 steps (2,000 steps,
# seed 0: 8 modes but 2.4% high-quality samples; with 1e-3: 71%), so objectives' own learning
# rates are 10x here.
UNROLLED_GAN = replace(UNROLLED_GAN_FULL, name="unrolled-GAN MLP regime, shortened for CPU", steps=3000, batch=128,
                       objective_lr_scale=10.0)

# PacGAN's 2-D ring experiment (Lin et al. 2018; its published code): G 2-400-400-400-400-2, ReLU
# with batch norm, z ~ N(0, I_2); D 2-200-200-200-1 (maxout with 5 pieces there, the fused
# LeakyReLU network here); weights N(0, 0.02), zero biases; Adam 1e-4, beta1 0.8; batch 100;
# 400 epochs of 100,000 samples = 400,000 steps (simultaneous updates there, alternating here).
# The regime in which the paper's plain GAN captures 6.3 of 8 ring modes and PacGAN2 7.9 (means
# over 10 runs).
PACGAN_FULL = Regime("PacGAN toy regime", steps=400_000, batch=100, latent=2, g_hidden=(400,) * 4,
                     d_hidden=(200,) * 3, lr_g=1e-4, lr_d=1e-4, betas=(0.8, 0.999), g_activation="relu",
                     g_batchnorm=True, init_std=0.02)
# The same kind of networks narrowed and shortened to fit two CPU cores in five minutes: G 3 x 256,
# D 3 x 128, 6,000 steps; learning rates G 3e-3 / D 1e-3 (the objectives' own 10x), rising linearly
# over the first 10% of the steps and falling linearly to 0 over the second half. The generator
# learns 3x faster than the discriminator, as the paper's wider generator does: there plain ``ns``
# keeps sharp samples but fills the modes unevenly (some nearly or wholly empty), R1 and WGAN-GP
# fill all eight evenly, and packing partly (docs/lab/collapse-search.md, batches 29-37;
# docs/lab/seeds-0-3/). The grid needs 20,000 steps (docs/lab/grid/: at 6,000 the logistic
# objectives are under 7% high quality there, docs/lab/grid-probe/).
PACGAN = replace(PACGAN_FULL, name="PacGAN toy regime, narrowed and shortened for CPU", steps=6000,
                 g_hidden=(256,) * 3, d_hidden=(128,) * 3, lr_g=3e-3, lr_d=1e-3, objective_lr_scale=10.0,
                 lr_warmup=0.1, lr_decay=0.5, grid_steps=20_000)
# name -> (the default length, the published length) (``fastgan lab --regime``)
REGIMES: dict[str, tuple[Regime, Regime]] = {"pacgan": (PACGAN, PACGAN_FULL),
                                             "unrolled-gan": (UNROLLED_GAN, UNROLLED_GAN_FULL)}

# Discriminators a regime can take (``fastgan lab --discriminator``): the published two hidden
# layers of 128, or one hidden layer of 128, the depth of the unrolled-GAN paper's discriminator
# (Metz et al. 2017, appendix A; LeakyReLU 0.2 here, without the paper's input scaling). With one
# layer plain ``ns`` drops modes (docs/lab/one-layer-d/), the regime the unrolled GAN was made for.
DISCRIMINATORS: dict[str, tuple[int, ...]] = {"2x128": (128, 128), "1x128": (128,)}


def with_discriminator(regime: Regime, name: str) -> Regime:
    """``regime`` with the discriminator ``DISCRIMINATORS[name]`` (named in the regime's name
    unless it is the regime's own)."""
    if name not in DISCRIMINATORS:
        raise ValueError(f"discriminator must be one of {sorted(DISCRIMINATORS)}, got {name!r}")
    hidden = DISCRIMINATORS[name]
    if hidden == regime.d_hidden:
        return regime
    return replace(regime, name=f"{regime.name}, discriminator {name}", d_hidden=hidden)


class Generator(nn.Module):
    """MLP from N(0, I_latent) noise to the plane: tanh (or ReLU) hidden layers, linear output.
    ``batchnorm``: each hidden layer is Linear (no bias) -> BatchNorm1d -> activation; the
    generator then normalises with the statistics of the batch it is given (training mode), also
    when the lab draws samples to measure it."""

    ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}

    def __init__(self, latent: int, hidden: tuple[int, ...], activation: str = "tanh", batchnorm: bool = False):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self.ACTIVATIONS)}, got {activation!r}")
        widths = (latent,) + tuple(hidden)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers.append(nn.Linear(a, b, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(self.ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 2))
        self.latent = latent

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@torch.no_grad()
def gaussian_init(net: nn.Module, std: float) -> None:
    """N(0, std) weights and zero biases for every ``nn.Linear`` of ``net``, in module order
    (batch norm keeps its unit scale and zero shift)."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()


@dataclass
class RunResult:
    dataset: str
    objective: str
    seed: int
    metrics: ModeMetrics
    divergences: dict[str, float] = field(default_factory=dict)  # empty unless the objective is logistic
    seconds: float = 0.0  # the whole run: set-up, training, evaluation
    steps: int = 0
    train_seconds: float = 0.0  # the training steps only
    samples: torch.Tensor | None = None  # (eval_samples, 2), float32, CPU
    history: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, samples) snapshots

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "objective": self.objective, "seed": self.seed,
                **asdict(self.metrics), "divergences": self.divergences, "seconds": self.seconds,
                "steps": self.steps, "train_seconds": self.train_seconds}


def make_step(G: nn.Module, D: fastgan.MLPDiscriminator, opt_g, opt_d, mixture: Mixture, objective: Objective,
              regime: Regime, backend: str | None, rng: torch.Generator | None) -> Callable[[], None]:
    """One training step as a closure (no host synchronisation, so it can be graph-captured).
    ``rng``: the source of every random draw (None: the device's default generator)."""
    param = next(G.parameters())
    dtype, device = param.dtype, param.device
    mixture = mixture.to(device)
    loss = fastgan.get_loss(objective.loss)
    penalty = objective.make_penalty(mixture)
    n = regime.batch * objective.pack

    def noise():
        return torch.randn(n, regime.latent, generator=rng, dtype=dtype, device=device)

    def step() -> None:
        for _ in range(objective.d_steps):
            real = mixture.sample(n, rng, dtype)
            with torch.no_grad():
                fake = G(noise())
            opt_d.zero_grad(set_to_none=True)
            fastgan.discriminator_step(D, real, fake, loss=loss, penalty=penalty, backend=backend,
                                       generator=rng, backward=True)
            opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        if objective.unrolled:
            from fastgan.unrolled import unrolled_generator_step
            g_loss = unrolled_generator_step(D, mixture.sample(n, rng, dtype), G(noise()), loss=loss,
                                             optimizer=opt_d, penalty=penalty, steps=objective.unrolled,
                                             mode=objective.unrolled_mode, backend=backend, generator=rng)
        else:
            g_loss = fastgan.generator_step(D, G(noise()), loss=loss, backend=backend)
        g_loss.backward()
        opt_g.step()

    return step


def train_run(mixture: Mixture, objective: Objective, seed: int, regime: Regime = PACGAN,
              backend: str | None = None, device: str | torch.device = "cpu",
              on_step: Callable[[int], None] | None = None, snapshots: int = 0) -> RunResult:
    """Train from ``seed`` and measure ``regime.eval_samples`` generator samples.

    Bitwise reproducible on CPU for a fixed seed, backend and thread count: parameters are
    initialised under ``torch.manual_seed(seed)`` (the caller's global RNG state is restored)
    and all data, noise and penalty randomness comes from one seeded ``torch.Generator``. On
    CUDA the draws come from the device's default generator, seeded with ``seed`` (what a
    captured graph can replay). ``snapshots = k`` also keeps the samples of one fixed noise
    batch after k evenly spaced steps (``RunResult.history``; from a separate generator, so the
    run is the same with or without them). ``on_step(n)`` is called with the number of steps
    just done (for progress bars). Both Adam optimisers' learning rates follow
    ``regime.lr_factor`` (set before each step); on the CPU they are PyTorch's fused Adam.
    """
    device = torch.device(device)
    dtype = getattr(torch, regime.dtype)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(regime.latent, regime.g_hidden, regime.g_activation, regime.g_batchnorm)
        D = fastgan.MLPDiscriminator(2, regime.d_hidden, negative_slope=regime.d_slope, pack=objective.pack)
        if regime.init_std is not None:
            for net in (G, D):
                gaussian_init(net, regime.init_std)
        G, D = G.to(device, dtype), D.to(device, dtype)
    lr_g, lr_d, betas = regime.adam(objective)
    cuda = device.type == "cuda"
    # a decaying rate inside a CUDA graph must be a device tensor the replays read (set in place)
    as_lr = (lambda lr: torch.tensor(lr, device=device)) if cuda and (regime.lr_warmup or regime.lr_decay) \
        else float
    # CUDA: capturable, for the graph; CPU: the fused kernel (one pass over each parameter)
    adam = {"capturable": True} if cuda else {"fused": True}
    opt_g = torch.optim.Adam(G.parameters(), lr=as_lr(lr_g), betas=betas, **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=as_lr(lr_d), betas=betas, **adam)
    if cuda:
        torch.cuda.manual_seed(seed)
        rng = None
    else:
        rng = torch.Generator().manual_seed(seed)
    step = make_step(G, D, opt_g, opt_d, mixture, objective, regime, backend, rng)
    if cuda and not objective.unrolled:  # the look-ahead copies D on the host: not capturable
        step = fastgan.GraphedStep(step)

    watch = torch.Generator().manual_seed(seed + 1_000_003)
    z_watch = torch.randn(regime.eval_samples, regime.latent, generator=watch, dtype=dtype).to(device)
    marks = {round(regime.steps * (i + 1) / snapshots) for i in range(snapshots)} if snapshots else set()
    history = []
    loop_start = time.perf_counter()
    factor = 1.0  # the optimisers' learning rates now, as a multiple of the regime's
    for i in range(1, regime.steps + 1):
        if (now := regime.lr_factor(i)) != factor:
            factor = now
            set_lr((opt_g, opt_d), (lr_g, lr_d), factor)
        step()
        if i in marks:
            with torch.no_grad():
                history.append((i, G(z_watch).float().cpu()))
        if on_step is not None and i % 50 == 0:
            on_step(50)
    if on_step is not None and regime.steps % 50:
        on_step(regime.steps % 50)
    if cuda:
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - loop_start

    eval_rng = torch.Generator().manual_seed(seed + 2_000_003)
    metrics, divs, samples = evaluate(G, D, mixture, objective, regime, eval_rng)
    return RunResult(mixture.name, objective.name, seed, metrics, divs, time.perf_counter() - start,
                     regime.steps, train_seconds, samples, history)


def set_lr(optimizers, rates, factor: float) -> None:
    """Each optimiser's learning rate = its rate * ``factor`` (in place when it is a tensor).

    Not ``torch.optim.lr_scheduler.LambdaLR``: it updates a tensor rate in place only in recent
    PyTorch releases (older ones, within this package's ``torch>=2.4``, assign a new tensor), and a
    captured CUDA graph keeps reading the tensor it was recorded with."""
    for opt, lr in zip(optimizers, rates):
        for group in opt.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr * factor)
            else:
                group["lr"] = lr * factor


@torch.no_grad()
def evaluate(G: Generator, D: fastgan.MLPDiscriminator, mixture: Mixture, objective: Objective,
             regime: Regime, rng: torch.Generator):
    """Mode metrics of ``eval_samples`` generator samples, and the divergences D's logits imply
    (on as many fresh real samples; packed discriminators see rows of ``pack`` samples, so their
    estimates are between the ``pack``-fold product distributions). Runs on the CPU in float64
    for the divergences."""
    G, D = copy.deepcopy(G).cpu(), copy.deepcopy(D).cpu()
    dtype = next(G.parameters()).dtype
    samples = G(torch.randn(regime.eval_samples, regime.latent, generator=rng, dtype=dtype))
    metrics = mode_metrics(samples, mixture)
    divs: dict[str, float] = {}
    if objective.logistic:
        rows = regime.eval_samples - regime.eval_samples % objective.pack
        real = mixture.sample(rows, rng, torch.float64)
        D64 = D.double()
        divs = divergences.from_logits(D64(real), D64(samples[:rows].double()))
    return metrics, divs, samples.float()
