"""The generic discriminator step (fastgan.generic_step) against the double-backward composition.

For every discriminator of the zoo (fastgan/bench/zoo.py) x penalty x loss, the value and every
parameter gradient equal those of

    loss.discriminator_loss(D(real), D(fake)) + scale * penalty(D, real, fake, eps=eps)

followed by ``.backward()`` (the penalty's ``autograd.grad(create_graph=True)``), with the
harness's bound (tests/harness.py): float64 to 1e-10 relative, float32 within K x the reference
composition's own float32 error. Dropout is compared in eval mode, plus a dedicated test that the
penalty uses the loss pass's masks.
"""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fastgan
import fastgan.generic_step
import harness
from fastgan.bench import zoo
from fastgan.generic_step import discriminator_step
from fastgan.penalties import discriminator_pack
from fastgan.step_spec import PenaltySide

PENALTIES = {
    "r1": lambda: fastgan.R1Penalty(gamma=3.0),
    "r2": lambda: fastgan.R2Penalty(gamma=2.0),
    "gp": lambda: fastgan.GradientPenalty(weight=5.0, center=0.8),
    "dragan": lambda: fastgan.DRAGANPenalty(weight=4.0, center=0.5),
}
ROWS = 4
_FALLBACK = r"fastgan: .*(double backward|torch\.fx)"
SCALE = 2.0


class _Bound(nn.Module):
    """D with its condition bound and its packing as ``pack`` (what the penalty modules read)."""

    def __init__(self, D, cond=None, pack=1):
        super().__init__()
        self.D, self.cond, self.pack = D, cond, pack

    def forward(self, x):
        return self.D(x) if self.cond is None else self.D(x, self.cond)


def _eps(name, penalty, real, dtype):
    gen = torch.Generator().manual_seed(7)
    rows = real.shape[0] // zoo.ZOO[name].pack
    if isinstance(penalty, fastgan.GradientPenalty):
        return torch.rand(rows, generator=gen, dtype=torch.float64).to(dtype)
    if isinstance(penalty, fastgan.DRAGANPenalty):
        return torch.rand(real.shape, generator=gen, dtype=torch.float64).to(dtype)
    return None


def reference_total(D, real, fake, loss, penalties, eps, cond, pack):
    """The double-backward composition (the specification)."""
    cr, cf = cond if cond is not None else (None, None)
    call = (lambda x, y: D(x)) if cond is None else (lambda x, y: D(x, y))
    total = loss.discriminator_loss(call(real, cr), call(fake, cf))
    for p, s in penalties:
        if s:
            y = cf if p.side == PenaltySide.FAKE else cr
            total = total + s * p(_Bound(D, y, pack), real, fake, eps=eps)
    return total


def _grads(D, total):
    D.zero_grad(set_to_none=True)
    total.backward()
    out = {"total": total.detach()}
    for n, p in D.named_parameters():
        out[n] = p.grad if p.grad is not None else torch.zeros_like(p)
    return out


def _problem(name, dtype, pen, train=False):
    D = zoo.build(name, dtype=dtype)
    D.train(train)
    real, fake, cond = zoo.batch(name, ROWS, dtype=dtype)
    return D, real, fake, cond, _eps(name, pen, real, dtype)


def _ours(D, real, fake, loss, penalties, eps, cond):
    total, _ = discriminator_step(D, real, fake, loss=loss, penalties=penalties, eps=eps, condition=cond)
    return _grads(D, total)


def _reference(D, real, fake, loss, penalties, eps, cond, pack):
    with parametrize.cached():
        total = reference_total(D, real, fake, loss, penalties, eps, cond, pack)
    return _grads(D, total)


@pytest.mark.parametrize("loss_name", ["non_saturating", "hinge"])
@pytest.mark.parametrize("pen_name", list(PENALTIES))
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_matches_double_backward_fp64(name, pen_name, loss_name):
    pen = PENALTIES[pen_name]()
    D, real, fake, cond, eps = _problem(name, torch.float64, pen)
    loss = fastgan.LOSSES[loss_name]()
    got = _ours(D, real, fake, loss, [(pen, SCALE)], eps, cond)
    want = _reference(copy.deepcopy(D), real, fake, loss, [(PENALTIES[pen_name](), SCALE)], eps, cond,
                      zoo.ZOO[name].pack)
    harness.assert_close(got, want, None, torch.float64, f"{name} {pen_name} {loss_name}")


@pytest.mark.parametrize("pen_name", ["r1", "gp"])
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_matches_double_backward_fp32(name, pen_name):
    """float32: within K x the float32 reference composition's error against float64."""
    pen = PENALTIES[pen_name]()
    D, real, fake, cond, eps = _problem(name, torch.float64, pen)
    loss = fastgan.NonSaturatingLoss()
    pack = zoo.ZOO[name].pack
    c64 = cond

    def ref(D_, real_, fake_, eps_):
        return _reference(D_, real_, fake_, loss, [(PENALTIES[pen_name](), SCALE)], eps_, c64, pack)

    truth, base = harness.expected(ref, (D, real, fake, eps), torch.float32)
    D32 = copy.deepcopy(D).float()
    got = _ours(D32, real.float(), fake.float(), loss, [(pen, SCALE)], None if eps is None else eps.float(), cond)
    harness.assert_close(got, truth, base, torch.float32, f"{name} {pen_name} fp32")


def _no_double_backward(monkeypatch):
    grad = torch.autograd.grad

    def guarded(*args, **kwargs):
        if kwargs.get("create_graph"):
            raise AssertionError("double backward used")
        return grad(*args, **kwargs)
    monkeypatch.setattr(torch.autograd, "grad", guarded)


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_no_double_backward(name, monkeypatch):
    pen = PENALTIES["gp"]()
    D, real, fake, cond, eps = _problem(name, torch.float64, pen)
    _no_double_backward(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=_FALLBACK)  # no fallback warning either
        total, _ = discriminator_step(D, real, fake, loss=fastgan.NonSaturatingLoss(),
                                      penalties=[(fastgan.R1Penalty(1.0), 1), (fastgan.R2Penalty(1.0), 1), (pen, 1)],
                                      eps=eps, condition=cond)
    total.backward()


def test_multiple_penalties_r3gan():
    """RelativisticLoss + R1 + R2 (R3GAN) and a third penalty at built points, in one step."""
    r1, r2, gp = fastgan.R1Penalty(1.5), fastgan.R2Penalty(0.5), fastgan.GradientPenalty(2.0)
    D, real, fake, cond, _ = _problem("residual64", torch.float64, r1)
    eps = torch.rand(ROWS, dtype=torch.float64)
    loss = fastgan.RelativisticLoss()
    pens = [(r1, 1), (r2, 3), (gp, 2)]
    got = _ours(D, real, fake, loss, pens, eps, cond)
    ref_pens = [(fastgan.R1Penalty(1.5), 1), (fastgan.R2Penalty(0.5), 3), (fastgan.GradientPenalty(2.0), 2)]
    want = _reference(copy.deepcopy(D), real, fake, loss, ref_pens, eps, cond, 1)
    harness.assert_close(got, want, None, torch.float64, "r3gan")


def test_parts_and_lazy_scale_zero(monkeypatch):
    D, real, fake, _, _ = _problem("dcgan32", torch.float64, None)
    loss = fastgan.HingeLoss()
    r1 = fastgan.R1Penalty(10.0, every=4)
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    total, parts = discriminator_step(D, real, fake, loss=loss, penalties=[(r1, 0)])
    assert not calls  # a skipped penalty does no input-gradient work
    assert r1.calls == 0  # the caller's schedule is not advanced
    ref = loss.discriminator_loss(D(real), D(fake))
    torch.testing.assert_close(total, ref, rtol=1e-12, atol=0)
    assert parts.penalty == 0
    torch.testing.assert_close(parts.loss, ref.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(parts.real_logit_mean, D(real).mean().detach())
    torch.testing.assert_close(parts.fake_logit_mean, D(fake).mean().detach())
    total, parts = discriminator_step(D, real, fake, loss=loss, penalties=[(r1, 4)])
    torch.testing.assert_close(parts.penalty, 4 * fastgan.R1Penalty(10.0)(D, real, fake).detach())
    assert all(t.grad_fn is None for t in parts)


def test_backward_true_accumulates():
    pen = PENALTIES["gp"]()
    D, real, fake, _, eps = _problem("stylegan2_64", torch.float64, pen)
    loss = fastgan.NonSaturatingLoss()
    want = _ours(copy.deepcopy(D), real, fake, loss, [(pen, 1)], eps, None)
    for p in D.parameters():
        p.grad = torch.ones_like(p)
    total, _ = discriminator_step(D, real, fake, loss=loss, penalties=[(PENALTIES["gp"](), 1)], eps=eps,
                                  backward=True)
    assert total.grad_fn is None and not total.requires_grad
    torch.testing.assert_close(total, want["total"], rtol=1e-12, atol=0)
    for n, p in D.named_parameters():
        torch.testing.assert_close(p.grad, want[n] + 1, rtol=1e-10, atol=1e-12)
    assert real.grad is None and fake.grad is None


def test_frozen_parameters_get_no_grad():
    D, real, fake, _, _ = _problem("residual64", torch.float64, None)
    frozen = [D.blocks[0].conv1.weight, D.blocks[1].skip.bias, D.out.bias]
    for p in frozen:
        p.requires_grad_(False)
    loss = fastgan.NonSaturatingLoss()
    got = _ours(D, real, fake, loss, [(fastgan.R1Penalty(2.0), 1)], None, None)
    want = _reference(copy.deepcopy(D), real, fake, loss, [(fastgan.R1Penalty(2.0), 1)], None, None, 1)
    assert all(p.grad is None for p in frozen)
    harness.assert_close(got, want, None, torch.float64, "frozen")
    total, _ = discriminator_step(D, real, fake, loss=loss, penalties=[(fastgan.R1Penalty(2.0), 1)], backward=True)
    assert all(p.grad is None for p in frozen)


def test_penalty_uses_the_loss_pass_dropout_masks():
    """ctgan's D in training mode: R1's input gradient is taken on the loss pass (its masks) and
    R2's on the fake pass; the tangent passes draw nothing."""
    D = zoo.build("ctgan")
    D.train()
    real, fake, _ = zoo.batch("ctgan", ROWS)
    loss = fastgan.NonSaturatingLoss()
    D_ref = copy.deepcopy(D)
    torch.manual_seed(123)
    got = _ours(D, real, fake, loss, [(fastgan.R1Penalty(3.0), 1), (fastgan.R2Penalty(2.0), 1)], None, None)
    after = torch.rand(1)
    torch.manual_seed(123)
    xr = real.clone().requires_grad_(True)
    xf = fake.clone().requires_grad_(True)
    out_r, out_f = D_ref(xr), D_ref(xf)  # the same draws, in the same order
    (gr,) = torch.autograd.grad(out_r.sum(), xr, create_graph=True)
    (gf,) = torch.autograd.grad(out_f.sum(), xf, create_graph=True)
    total = (loss.discriminator_loss(out_r, out_f) + fastgan.reference.penalties.squared_penalty(gr.reshape(ROWS, -1), 3.0)
             + fastgan.reference.penalties.squared_penalty(gf.reshape(ROWS, -1), 2.0))
    assert torch.equal(torch.rand(1), after)  # no more randomness drawn than the two passes
    want = _grads(D_ref, total)
    harness.assert_close(got, want, None, torch.float64, "dropout masks")


def test_spectral_norm_power_iteration_once_per_step():
    D = zoo.build("spectral32")
    D.train()
    real, fake, _ = zoo.batch("spectral32", ROWS)
    D_one = copy.deepcopy(D)
    D_one(real)  # one forward: one power iteration per layer
    loss = fastgan.NonSaturatingLoss()
    D_ref = copy.deepcopy(D)
    got = _ours(D, real, fake, loss, [(fastgan.R1Penalty(3.0), 1)], None, None)
    for (n, b), (_, b1) in zip(D.named_buffers(), D_one.named_buffers()):
        torch.testing.assert_close(b, b1, rtol=0, atol=0, msg=n)
    want = _reference(D_ref, real, fake, loss, [(fastgan.R1Penalty(3.0), 1)], None, None, 1)  # cached(): once
    harness.assert_close(got, want, None, torch.float64, "spectral norm, training mode")


def test_hook_spectral_norm():
    torch.manual_seed(0)
    D = zoo.spectral_hook32(4).double()
    D_one, D_eval = copy.deepcopy(D), copy.deepcopy(D).eval()  # (after a forward, deepcopy fails)
    D_ref = copy.deepcopy(D_eval)
    real, fake, _ = zoo.batch("dcgan32", ROWS)
    loss = fastgan.NonSaturatingLoss()
    D_one(real)
    _ours(D, real, fake, loss, [(fastgan.R1Penalty(3.0), 1)], None, None)
    for (n, b), (_, b1) in zip(D.named_buffers(), D_one.named_buffers()):
        torch.testing.assert_close(b, b1, rtol=0, atol=0, msg=n)  # power iteration once per step
    got = _ours(D_eval, real, fake, loss, [(fastgan.R1Penalty(3.0), 1)], None, None)
    want = _reference(D_ref, real, fake, loss, [(fastgan.R1Penalty(3.0), 1)], None, None, 1)
    harness.assert_close(got, want, None, torch.float64, "hook-based spectral norm")


def test_conditional_gp_uses_real_condition():
    pen = fastgan.GradientPenalty(5.0)
    D, real, fake, cond, eps = _problem("projection32", torch.float64, pen)
    got = _ours(D, real, fake, fastgan.HingeLoss(), [(pen, 1)], eps, {"real": cond[0], "fake": cond[1]})
    want = _reference(copy.deepcopy(D), real, fake, fastgan.HingeLoss(), [(fastgan.GradientPenalty(5.0), 1)], eps,
                      cond, 1)
    harness.assert_close(got, want, None, torch.float64, "conditional")


# ---- fallbacks ----

class _Softsigns(nn.Module):
    """A layer without a rule (forward-mode AD)."""

    def forward(self, x):
        return nn.functional.softsign(x) + torch.erf(x)


class _NoJvp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g * x.abs()


class _NoJvpLayer(nn.Module):
    """A leaf (fx cannot trace the branch) whose op has no forward-mode AD."""

    def forward(self, x):
        return _NoJvp.apply(x) if x.dim() > 1 else x


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(6, 5)

    def forward(self, x):
        h = self.a(x) if x.sum() > 0 else self.b(x)  # not traceable by torch.fx
        return torch.tanh(h)


def _mlp(mid):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), mid, nn.Linear(6 if not isinstance(mid, _DataDependent) else 5, 1)).double()


@pytest.mark.parametrize("mid,warns,double", [(_Softsigns(), False, False), (_DataDependent(), True, False),
                                              (_NoJvpLayer(), True, True)], ids=["forward_ad", "untraceable", "no_jvp"])
def test_fallbacks(mid, warns, double, monkeypatch):
    D = _mlp(mid)
    real, fake = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    loss = fastgan.NonSaturatingLoss()
    pens = [(fastgan.R1Penalty(2.0), 1), (fastgan.GradientPenalty(3.0), 1)]
    eps = torch.rand(5, dtype=torch.float64)
    want = _reference(copy.deepcopy(D), real, fake, loss, [(fastgan.R1Penalty(2.0), 1), (fastgan.GradientPenalty(3.0), 1)],
                      eps, None, 1)
    if not double:
        _no_double_backward(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _ours(D, real, fake, loss, pens, eps, None)
    messages = [str(w.message) for w in caught if re.match(_FALLBACK, str(w.message))]
    assert bool(messages) == warns, messages
    if double:
        fell = [m for m in messages if "double backward" in m]
        assert len(fell) == 1 and "'1'" in fell[0], messages
    harness.assert_close(got, want, None, torch.float64, "fallback")


# ---- errors ----

class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 1)

    def forward(self, x):
        return {"logits": self.l(x)}


def test_bad_inputs():
    loss = fastgan.NonSaturatingLoss()
    x = torch.randn(4, 4)
    with pytest.raises(TypeError, match="wrap D"):
        discriminator_step(_DictOut(), x, x, loss=loss)
    with pytest.raises(ValueError, match=r"one logit per row"):
        discriminator_step(nn.Linear(4, 2), x, x, loss=loss)
    with pytest.raises(TypeError, match="GANLoss"):
        discriminator_step(nn.Linear(4, 1), x, x, loss="hinge")
    with pytest.raises(TypeError, match="pairs"):
        discriminator_step(nn.Linear(4, 1), x, x, loss=loss, penalties=[fastgan.R1Penalty()])
    D, real, fake, cond, _ = _problem("projection32", torch.float64, None)
    with pytest.raises(ValueError, match=r"condition fake\[0\] has 3 rows"):
        discriminator_step(D, real, fake, loss=loss, condition=(cond[0], cond[1][:3]))
    with pytest.raises(ValueError, match="pack=10"):
        discriminator_step(zoo.build("ctgan"), torch.randn(15, 7, dtype=torch.float64),
                           torch.randn(15, 7, dtype=torch.float64), loss=loss)
    with pytest.raises(ValueError, match="needs fake"):
        discriminator_step(nn.Linear(4, 1), x, None, loss=loss) if False else \
            fastgan.R2Penalty().check_inputs(x, None, 1)
    assert discriminator_pack(zoo.build("ctgan")) == 10


def test_inputs_and_state_untouched():
    D, real, fake, _, _ = _problem("stylegan2_64", torch.float64, None)
    before = {k: v.clone() for k, v in D.state_dict().items()}
    r, f = real.clone(), fake.clone()
    total, _ = discriminator_step(D, real, fake, loss=fastgan.NonSaturatingLoss(),
                                  penalties=[(fastgan.R1Penalty(1.0), 1)], backward=True)
    assert torch.equal(real, r) and torch.equal(fake, f) and real.grad is None
    for k, v in D.state_dict().items():
        assert torch.equal(v, before[k]), k


class _ActivationsEverywhere(nn.Module):
    """A LeakyReLU on the input itself, one after a conv whose output nothing else reads, one
    after a conv whose output the skip reads too, and F.relu after a linear."""

    def __init__(self):
        super().__init__()
        self.act0, self.act1, self.act2 = nn.LeakyReLU(0.2), nn.LeakyReLU(0.2), nn.LeakyReLU(0.1)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.lin, self.out = nn.Linear(4 * 8 * 8, 5), nn.Linear(5, 1)

    def forward(self, x):
        h = self.act1(self.conv1(self.act0(x)))
        z = self.conv2(h)
        h = self.act2(z) + z
        return self.out(nn.functional.relu(self.lin(h.flatten(1)))).squeeze(1)


@pytest.mark.parametrize("pen_name", ["r1", "r2", "gp"])
def test_activations_run_in_place_only_where_nothing_else_reads_their_input(pen_name):
    """The primal runs an activation in place only on a fresh layer output with no other reader:
    the input rows and the skip's conv output keep their values, and the step stays exact."""
    from fastgan import linearize
    torch.manual_seed(0)
    D = _ActivationsEverywhere().double()
    chosen = sorted(st.where for st in linearize.Linearized(D).steps if getattr(st.primal, "in_place", False))
    assert len(chosen) == 2 and any("act1" in w for w in chosen) and any("relu" in w for w in chosen)
    real, fake = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randn(6, 3, 8, 8, dtype=torch.float64)
    r, f = real.clone(), fake.clone()
    pen = PENALTIES[pen_name]()
    eps = torch.rand(6, dtype=torch.float64) if pen_name == "gp" else None
    loss = fastgan.NonSaturatingLoss()
    got = _ours(D, real, fake, loss, [(pen, 1.0)], eps, None)
    assert torch.equal(real, r) and torch.equal(fake, f)
    want = _reference(copy.deepcopy(D), real, fake, loss, [(PENALTIES[pen_name](), 1.0)], eps, None, 1)
    harness.assert_close(got, want, None, torch.float64, pen_name)


# ---- torch.compile ----

@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_fullgraph(compiler):
    """The whole step compiles as one graph (no autograd.grad inside) and matches the reference."""
    torch._dynamo.reset()
    gp = fastgan.GradientPenalty(5.0, 0.8)
    D, real, fake, _, eps = _problem("dcgan32", torch.float64, gp)
    loss = fastgan.NonSaturatingLoss()
    pens = [(fastgan.R1Penalty(3.0), 2), (gp, 1)]

    def step(real_, fake_, eps_):
        return discriminator_step(D, real_, fake_, loss=loss, penalties=pens, eps=eps_)[0]
    want = _reference(copy.deepcopy(D), real, fake, loss, [(fastgan.R1Penalty(3.0), 2),
                                                            (fastgan.GradientPenalty(5.0, 0.8), 1)], eps, None, 1)
    fastgan.generic_step.prepare(D)  # fx tracing runs outside the compiled region
    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    for _ in range(2):  # the second call reuses the graph
        got = _grads(D, compiled(real, fake, eps))
        harness.assert_close(got, want, None, torch.float64, f"compiled ({compiler})")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
def test_a_compiled_cpu_step_traces_its_convolutions_channels_last():
    """Inductor runs a CPU graph's convolutions channels-last (oneDNN); the compiled step takes
    its inputs in that layout. Eager steps, networks without a convolution of the input's rank
    and compiles with Inductor's layout optimisation off keep the input's layout."""
    from torch._inductor import config

    from fastgan.generic_step import _compiled_layout
    conv = fastgan.generic_step.prepare(zoo.build("dcgan32", width=4, dtype=torch.float32))
    mlp = fastgan.generic_step.prepare(nn.Sequential(nn.Flatten(), nn.Linear(12, 1)))
    x = torch.randn(2, 3, 2, 2)

    def layout(plan):
        torch._dynamo.reset()
        y = torch.compile(lambda t: _compiled_layout(plan, t) * 1, fullgraph=True, backend="eager")(x)
        assert torch.equal(y, x)
        return y.is_contiguous(memory_format=torch.channels_last), y.is_contiguous()
    assert _compiled_layout(conv, x) is x
    assert layout(conv) == (True, False)
    assert layout(mlp) == (False, True)
    conv1d = fastgan.generic_step.prepare(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(2, 1)))
    x1 = torch.randn(2, 1, 3)  # no channels-last layout for 1-D convolutions: left as it is
    y1 = torch.compile(lambda t: _compiled_layout(conv1d, t) * 1, fullgraph=True, backend="eager")(x1)
    assert torch.equal(y1, x1) and y1.is_contiguous()
    with config.patch(layout_optimization=False):
        assert layout(conv) == (False, True)


# ---- DistributedDataParallel ----

def _ddp_rank(rank: int, workdir: str) -> None:
    import datetime
    import os
    import sys
    import traceback
    from pathlib import Path

    import torch.distributed as dist
    log = open(Path(workdir) / f"rank{rank}.log", "w", buffering=1)
    sys.stdout = sys.stderr = log
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", store=dist.FileStore(str(Path(workdir) / "store"), 2), rank=rank,
                               world_size=2, timeout=datetime.timedelta(seconds=60))
        try:
            for name, pens in (("dcgan32", [(fastgan.R1Penalty(3.0), 1)]),
                               ("residual64", [(fastgan.R1Penalty(1.0), 1), (fastgan.R2Penalty(2.0), 2)]),
                               ("projection32", [(fastgan.GradientPenalty(4.0), 1)])):
                D, real, fake, cond, _ = _problem(name, torch.float64, None)
                eps = torch.rand(ROWS, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
                D_ref = copy.deepcopy(D)
                ddp = nn.parallel.DistributedDataParallel(D)
                loss = fastgan.NonSaturatingLoss()
                total, _ = discriminator_step(D_ref, real, fake, loss=loss, penalties=pens, eps=eps, condition=cond)
                want = _grads(D_ref, total)
                h = slice(rank * ROWS // 2, (rank + 1) * ROWS // 2)
                my_cond = None if cond is None else (cond[0][h], cond[1][h])
                total, _ = discriminator_step(ddp, real[h], fake[h], loss=loss, penalties=pens, eps=eps[h],
                                              condition=my_cond)
                got = _grads(D, total)
                got["total"], want["total"] = got["total"] * 0, want["total"] * 0  # per-rank values differ
                harness.assert_close(got, want, None, torch.float64, f"DDP {name} rank {rank}")
                dist.barrier()
        finally:
            dist.destroy_process_group()
        (Path(workdir) / f"rank{rank}.ok").write_text("ok")
    except BaseException:  # noqa: BLE001 -- reported through the log
        traceback.print_exc(file=log)
    finally:
        log.flush()
        os._exit(0)


def test_ddp_matches_full_batch(tmp_path, monkeypatch):
    """gloo, 2 CPU ranks of half the batch: DDP's averaged gradients equal the single-process
    full batch's (the step runs inside the wrapper's forward, so DDP all-reduces it)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from pathlib import Path
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ddp_rank, args=(r, str(tmp_path)), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(10)
    if not all((tmp_path / f"rank{r}.ok").exists() for r in range(2)):
        logs = "\n".join(f"--- rank {r} ---\n" + ((tmp_path / f"rank{r}.log").read_text()
                                                  if (tmp_path / f"rank{r}.log").exists() else "(no log)")
                         for r in range(2))
        pytest.fail("DDP ranks failed:\n" + logs, pytrace=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spectral32", "projection32", "norms32", "stylegan2_64", "residual64"])
def test_compiled_zoo(name):
    """Parametrizations (cached weights made outside torch.func.vjp), conditions, norms and
    minibatch std under torch.compile(fullgraph=True) (aot_eager), R1 + R2, against eager."""
    D, real, fake, cond, _ = _problem(name, torch.float64, None, train=True)
    D_eager = copy.deepcopy(D)
    loss = fastgan.NonSaturatingLoss()
    pens = [(fastgan.R1Penalty(3.0), 1), (fastgan.R2Penalty(1.0), 2)]
    fastgan.generic_step.prepare(D)
    compiled = torch.compile(lambda r, f: discriminator_step(D, r, f, loss=loss, penalties=pens, condition=cond)[0],
                             fullgraph=True, backend="aot_eager")
    got = _grads(D, compiled(real, fake))
    want = _ours(D_eager, real, fake, loss, pens, None, cond)
    harness.assert_close(got, want, None, torch.float64, f"compiled {name}")
    for b, b_eager in zip(D.buffers(), D_eager.buffers()):
        torch.testing.assert_close(b, b_eager, rtol=1e-12, atol=0)  # spectral norm's u, v


class _Misc(nn.Module):
    """Layers the zoo does not cover: transposed conv, max / adaptive pooling (pass 1's indices),
    BatchNorm, padding, up-sampling, functional ReLU / dropout, more smooth activations, cat."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
        self.up = nn.ConvTranspose2d(4, 3, 4, 2, 1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.pad = nn.ZeroPad2d(1)
        self.amax = nn.AdaptiveMaxPool2d(3)
        self.aavg = nn.AdaptiveAvgPool2d(3)
        self.acts = nn.Sequential(nn.ELU(), nn.Softplus(beta=2.0), nn.Hardtanh(-2.0, 2.0))
        self.fc = nn.Linear(2 * 4 * 9, 1)

    def forward(self, x):
        h = nn.functional.relu(self.conv(x))
        h = self.bn(self.up(h))
        h = self.pool(nn.functional.dropout(h, 0.3, self.training and False))
        h = self.acts(torch.cat([self.pad(h), torch.nn.functional.interpolate(h, scale_factor=1.25)], 1))
        h = torch.cat([self.amax(h[:, :4]), self.aavg(h[:, 2:])], 1)
        return self.fc(h.flatten(1)) * 0.5 - 1.0


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("pen_name", ["r1", "gp"])
def test_misc_layers(pen_name, train, monkeypatch):
    torch.manual_seed(0)
    D = _Misc().double().train(train)
    with torch.no_grad():
        D.bn.running_mean.uniform_(-0.5, 0.5)
        D.bn.running_var.uniform_(0.5, 2.0)
    real, fake, _ = zoo.batch("dcgan32", ROWS)
    real, fake = real[..., :8, :8].contiguous(), fake[..., :8, :8].contiguous()
    pen = PENALTIES[pen_name]()
    eps = _eps("dcgan32", pen, real, torch.float64)
    loss = fastgan.WassersteinLoss()
    want = _reference(copy.deepcopy(D), real, fake, loss, [(PENALTIES[pen_name](), SCALE)], eps, None, 1)
    _no_double_backward(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=_FALLBACK)
        got = _ours(D, real, fake, loss, [(pen, SCALE)], eps, None)
    harness.assert_close(got, want, None, torch.float64, f"misc {pen_name} train={train}")


# ---- the piecewise-linear fast path (fastgan.piecewise) ----

class _Piecewise(nn.Module):
    """Every kind of node the fast path transposes by its own rules: convs with and without bias,
    in-place activations, max / average pooling, padding, up-sampling, a concatenation with a
    constant, slicing, permutes, products with constants and a buffer, clamps, dropout, sums and
    means over non-batch dimensions, reshapes and a Linear on a 3-d input."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(8, 5, 3, stride=2, padding=1, bias=False)
        self.c3 = nn.Conv1d(5, 4, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2, stride=1)
        self.drop = nn.Dropout(0.2)
        self.up = nn.Upsample(scale_factor=2)
        self.fc3 = nn.Linear(4, 3)
        self.fc = nn.Linear(3 * 4 + 4, 1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 5).view(1, 5, 1, 1))

    def forward(self, x):
        h = self.act(self.c1(x))                                           # (n, 6, 8, 8)
        h = torch.cat([h, torch.ones_like(h[:, :2])], 1)                  # (n, 8, 8, 8), a constant part
        h = self.pool(nn.functional.pad(h, (1, 1, 1, 1)))                  # (n, 8, 5, 5)
        h = self.c2(self.up(h)) * self.scale - 0.02 * h[:, 1:6].sum(1, keepdim=True).mean((2, 3), keepdim=True)
        h = nn.functional.hardtanh(torch.relu(self.avg(h)), 0.0, 0.3).clamp(max=0.25)  # (n, 5, 4, 4)
        h = self.drop(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
        h = torch.where(self.scale > 1, h, 1.0 - h).flatten(2)              # (n, 5, 16)
        t = self.fc3(nn.functional.relu6(self.c3(h)).transpose(1, 2))      # (n, 16, 3)
        t = t.reshape(t.shape[0], 4, 4, 3).sum(2).view(-1, 12)             # (n, 12)
        return self.fc(torch.cat([t, h[..., :4].mean(1)], 1))


class _MixesRows(nn.Module):
    """Piecewise linear but not row-wise (a mean over the batch): the general path."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 1)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(self.drop(h - h.mean(0, keepdim=True)))


def test_piecewise_eligibility():
    expect = {"dcgan32": True, "residual64": True, "ctgan": True, "spectral32": True, "weightnorm32": True,
              "stylegan2_64": False, "projection32": False, "smooth32": False, "norms32": False}
    for name, ok in expect.items():
        assert fastgan.generic_step.linearized(zoo.build(name)).piecewise.ok == ok, name
    assert fastgan.generic_step.linearized(zoo.spectral_hook32(4)).piecewise.ok


@pytest.mark.parametrize("loss_name", ["non_saturating", "relativistic"])
@pytest.mark.parametrize("pens", [("r1",), ("r2",), ("gp",), ("dragan",), ("r1", "r2", "gp")])
def test_piecewise_rules_fp64(pens, loss_name, monkeypatch):
    torch.manual_seed(0)
    D = _Piecewise().double().eval()
    real, fake, _ = zoo.batch("dcgan32", 5)
    real, fake = real[..., :8, :8].contiguous(), fake[..., :8, :8].contiguous()
    plan = fastgan.generic_step.linearized(D)
    assert plan.piecewise.ok, plan.piecewise.reason
    penalties = [(PENALTIES[p](), SCALE) for p in pens]
    eps = _eps("dcgan32", PENALTIES["gp"](), real, torch.float64) if "gp" in pens else \
        _eps("dcgan32", PENALTIES["dragan"](), real, torch.float64)
    loss = fastgan.LOSSES[loss_name]()
    want = _reference(copy.deepcopy(D), real, fake, loss, [(PENALTIES[p](), SCALE) for p in pens], eps, None, 1)
    _no_double_backward(monkeypatch)
    monkeypatch.setattr(plan, "tangent", None)  # the general path's tangent pass is not used
    got = _ours(D, real, fake, loss, penalties, eps, None)
    assert plan.piecewise.ok, plan.piecewise.reason
    assert all(want[n].abs().max() > 1e-4 for n in want if n.endswith("weight")), "a layer without gradient"
    harness.assert_close(got, want, None, torch.float64, f"piecewise {pens} {loss_name}")


def test_piecewise_rows_mixed_falls_back():
    """A row-mixing D takes the general path, exactly, with the same dropout draws as if it had
    never tried the fast path."""
    torch.manual_seed(0)
    D = _MixesRows().double().train()
    D_general = copy.deepcopy(D)
    real, fake = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
    loss = fastgan.NonSaturatingLoss()
    pens = [(fastgan.R1Penalty(2.0), 1), (fastgan.R2Penalty(1.0), 1)]
    assert fastgan.generic_step.linearized(D).piecewise.ok  # by its nodes; the rows are found mixed at run time
    torch.manual_seed(1)
    got = _ours(D, real, fake, loss, pens, None, None)
    after = torch.rand(1)
    assert "rows" in fastgan.generic_step.linearized(D).piecewise.reason
    fastgan.generic_step.linearized(D_general).piecewise.reason = "off"
    torch.manual_seed(1)
    want = _ours(D_general, real, fake, loss, pens, None, None)
    assert torch.equal(torch.rand(1), after)
    harness.assert_close(got, want, None, torch.float64, "rows mixed")
    D.eval()
    D_eval = copy.deepcopy(D)
    got = _ours(D, real, fake, loss, pens, None, None)
    want = _reference(D_eval, real, fake, loss, [(fastgan.R1Penalty(2.0), 1), (fastgan.R2Penalty(1.0), 1)], None,
                      None, 1)
    harness.assert_close(got, want, None, torch.float64, "rows mixed, eval")


@pytest.mark.slow
def test_piecewise_compiled(monkeypatch):
    """The fast path's own transposes (torch.func.vjp for the generic ones) under
    torch.compile(fullgraph=True), R1 + R2 + WGAN-GP, against eager."""
    torch.manual_seed(0)
    D = _Piecewise().double().eval()
    real, fake, _ = zoo.batch("dcgan32", 5)
    real, fake = real[..., :8, :8].contiguous(), fake[..., :8, :8].contiguous()
    eps = torch.rand(5, dtype=torch.float64)
    D_eager = copy.deepcopy(D)
    loss = fastgan.RelativisticLoss()
    pens = [(fastgan.R1Penalty(3.0), 1), (fastgan.R2Penalty(1.0), 2), (fastgan.GradientPenalty(2.0), 1)]
    monkeypatch.setattr(fastgan.generic_step.prepare(D), "tangent", None)  # the fast path only
    compiled = torch.compile(lambda r, f, e: discriminator_step(D, r, f, loss=loss, penalties=pens, eps=e)[0],
                             fullgraph=True, backend="aot_eager")
    got = _grads(D, compiled(real, fake, eps))
    want = _ours(D_eager, real, fake, loss, pens, eps, None)
    harness.assert_close(got, want, None, torch.float64, "compiled piecewise")
