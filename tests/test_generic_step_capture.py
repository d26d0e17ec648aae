"""The linearised step for any discriminator (fastgan.generic_step) in a whole training step
captured in CUDA graphs (:class:`fastgan.GraphedStep`) and under
``torch.compile(mode="reduce-overhead")`` (GPU only; skipped without a CUDA device).

Replays must give the parameters the same steps give eagerly, on a convolutional, a residual and
a conditional (projection) discriminator, with R1 and with R3GAN's R1 + R2."""
from __future__ import annotations

import copy

import pytest
import torch

import fastgan
from fastgan.bench import zoo

pytestmark = pytest.mark.gpu

NETS = ("dcgan32", "residual64", "projection32")
ROWS = 16


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def _penalties(name: str):
    if name == "r1":
        return fastgan.R1Penalty(gamma=1.0)
    return [fastgan.R1Penalty(gamma=0.5), fastgan.R2Penalty(gamma=0.5)]


class Trainer:
    """A discriminator update on static buffers: zero_grad, the step with backward=True, Adam."""

    def __init__(self, net: str, D: torch.nn.Module, penalty):
        self.D, self.penalty = D, penalty
        self.loss = fastgan.RelativisticLoss() if isinstance(penalty, list) else fastgan.NonSaturatingLoss()
        self.opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9), capturable=True)
        real, fake, cond = zoo.batch(net, ROWS, dtype=torch.float32)
        self.real, self.fake = real.cuda(), fake.cuda()
        self.condition = tuple(c.cuda() for c in cond) if cond is not None else None

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        fastgan.discriminator_step(self.D, self.real, self.fake, loss=self.loss, penalty=self.penalty,
                                   backward=True, condition=self.condition)
        self.opt.step()

    def load(self, seed: int):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        self.real.copy_(torch.randn(self.real.shape, device="cuda", generator=gen))
        self.fake.copy_(torch.randn(self.fake.shape, device="cuda", generator=gen))


@pytest.mark.parametrize("pen", ["r1", "r1+r2"])
@pytest.mark.parametrize("net", NETS)
def test_captured_step_matches_eager(net, pen):
    D = zoo.build(net, width=8, dtype=torch.float32).cuda()
    assert fastgan.explain(D).path == "linearized"
    eager, graphed = Trainer(net, copy.deepcopy(D), _penalties(pen)), Trainer(net, D, _penalties(pen))
    eager.step()  # the graphed trainer's warm-up step, on the first batch
    replay = fastgan.GraphedStep(graphed.step, warmup=1)
    replay.capture()
    for seed in range(1, 4):
        for t in (eager, graphed):
            t.load(seed)
        eager.step()
        replay()
    torch.cuda.synchronize()
    for a, b in zip(eager.D.parameters(), graphed.D.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("net", NETS)
def test_reduce_overhead_compile(net):
    torch._dynamo.reset()
    D = zoo.build(net, width=8, dtype=torch.float32).cuda()
    ref = copy.deepcopy(D)
    t = Trainer(net, D, _penalties("r1"))
    fastgan.generic_step.prepare(D)

    @torch.compile(fullgraph=True, mode="reduce-overhead")
    def objective(real, fake, condition):
        return fastgan.discriminator_step(D, real, fake, loss=t.loss, penalty=t.penalty, condition=condition)

    for _ in range(3):
        D.zero_grad(set_to_none=True)
        torch.compiler.cudagraph_mark_step_begin()
        objective(t.real, t.fake, t.condition).backward()
    ref.zero_grad(set_to_none=True)
    fastgan.discriminator_step(ref, t.real, t.fake, loss=t.loss, penalty=_penalties("r1"), condition=t.condition,
                               backend="reference").backward()
    for a, b in zip(ref.parameters(), D.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5)
