"""A whole GAN training step captured in one CUDA graph, and under
``torch.compile(mode="reduce-overhead")``, with the fused step (GPU only).

The recipe the README gives: static input buffers, ``Adam(capturable=True)``, a step of
``zero_grad`` + ``discriminator_step(..., backward=True)`` + ``opt.step()`` (and the generator's
step) handed to :class:`fastgan.GraphedStep` (warm-up on a side stream, capture, replay). Replays must give what the same steps give
eagerly. Lazy penalties (``every=k``) take one graph per phase; WGAN-GP draws its eps inside the
graph from the default CUDA generator, whose Philox offset advances on every replay.
"""
from __future__ import annotations

import copy

import pytest
import torch

import fastgan

pytestmark = pytest.mark.gpu

BACKENDS = ("cuda", "triton")


def _require(backend: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    status = {s.name: s for s in fastgan.available_backends()}[backend]
    if not status.available:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")


def _models(seed: int = 0):
    torch.manual_seed(seed)
    D = fastgan.MLPDiscriminator(2, (64, 64), negative_slope=0.2).cuda()
    G = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).cuda()
    return D, G


class Trainer:
    """One simultaneous GAN step (D then G) on static buffers ``real`` and ``z``."""

    def __init__(self, D, G, backend, penalty):
        self.D, self.G, self.backend, self.penalty = D, G, backend, penalty
        self.loss = fastgan.NonSaturatingLoss()
        self.opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9), capturable=True)
        self.opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.9), capturable=True)
        self.real = torch.empty(256, 2, device="cuda")
        self.z = torch.empty(256, 8, device="cuda")

    def step(self):
        self.opt_d.zero_grad(set_to_none=True)
        fake = self.G(self.z)
        fastgan.discriminator_step(self.D, self.real, fake.detach(), loss=self.loss, penalty=self.penalty,
                                   backend=self.backend, backward=True)
        self.opt_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        fastgan.generator_step(self.D, self.G(self.z), loss=self.loss, backend=self.backend).backward()
        self.opt_g.step()


def _batches(n):
    gen = torch.Generator(device="cuda").manual_seed(1)
    return [(torch.randn(256, 2, device="cuda", generator=gen), torch.randn(256, 8, device="cuda", generator=gen))
            for _ in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("every", [1, 4])
def test_captured_training_step_matches_eager(backend, every):
    """From identical states, replaying the captured phases gives the parameters the same
    steps give eagerly (lazy R1 every `every` steps: one graph per phase)."""
    _require(backend)
    D, G = _models()
    eager = Trainer(copy.deepcopy(D), copy.deepcopy(G), backend, fastgan.R1Penalty(gamma=1.0, every=every))
    graphed = Trainer(D, G, backend, fastgan.R1Penalty(gamma=1.0, every=every))
    batches = _batches(2 * every + 1)
    for t in (eager, graphed):
        t.real.copy_(batches[0][0])
        t.z.copy_(batches[0][1])
    for _ in range(every):  # the graphed trainer's warm-up: `every` steps on batch 0
        eager.step()
    replay = fastgan.GraphedStep(graphed.step, phases=every, warmup=every)
    replay.capture()  # capturing runs nothing and leaves the phase where it was
    for real, z in batches[1:]:
        for t in (eager, graphed):
            t.real.copy_(real)
            t.z.copy_(z)
        eager.step()
        replay()
    torch.cuda.synchronize()
    for a, b in zip(list(eager.D.parameters()) + list(eager.G.parameters()),
                    list(graphed.D.parameters()) + list(graphed.G.parameters())):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wgan_gp_draws_fresh_eps_on_every_replay(backend):
    """eps comes from the default CUDA generator inside the graph: two replays on the same
    inputs give different penalties (fresh draws), both finite."""
    _require(backend)
    D, _ = _models()
    gp = fastgan.GradientPenalty(weight=10.0)
    loss = fastgan.WassersteinLoss()
    real, fake = torch.randn(256, 2, device="cuda"), torch.randn(256, 2, device="cuda")
    out = {}

    def step():
        D.zero_grad(set_to_none=True)
        out["total"], out["parts"] = fastgan.discriminator_step(D, real, fake, loss=loss, penalty=gp, backend=backend,
                                                                backward=True, return_parts=True)

    replay = fastgan.GraphedStep(step, warmup=1)
    replay.capture()
    replay()
    first = out["parts"].penalty.clone()
    replay()
    second = out["parts"].penalty.clone()
    torch.cuda.synchronize()
    assert torch.isfinite(first) and torch.isfinite(second)
    assert first != second


@pytest.mark.parametrize("backend", BACKENDS)
def test_reduce_overhead_compile(backend):
    _require(backend)
    torch._dynamo.reset()
    D, _ = _models()
    ref = copy.deepcopy(D)
    loss, r1 = fastgan.NonSaturatingLoss(), fastgan.R1Penalty(gamma=1.0)
    real, fake = torch.randn(256, 2, device="cuda"), torch.randn(256, 2, device="cuda")

    @torch.compile(fullgraph=True, mode="reduce-overhead")
    def objective(real, fake):
        return fastgan.discriminator_step(D, real, fake, loss=loss, penalty=r1, backend=backend)

    for _ in range(3):
        D.zero_grad(set_to_none=True)
        torch.compiler.cudagraph_mark_step_begin()
        objective(real, fake).backward()
    ref.zero_grad(set_to_none=True)
    fastgan.discriminator_step(ref, real, fake, loss=loss, penalty=r1, backend=backend).backward()
    for a, b in zip(D.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
