"""fastgan.discriminator_step / generator_step (fused MLP step) against the autograd reference.

Ground truth: ``loss.discriminator_loss(D(real), D(fake.detach())) + penalty(D, real, fake)``
then ``.backward()`` in float64 under the ``reference`` backend. Every fused backend whose
implementation exists here is tested (torch always; cpu / triton once their kernels are in;
the others are skipped with the reason). Architectures are a seeded sample of the space
(in_features 1..40, widths 1..300, depth 1..5, pack 1..4, down to one row, bias on/off,
ReLU and LeakyReLU), spread over every loss x penalty combination.
"""
from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

import fastgan
from fastgan import fused
from fastgan.fused import discriminator_step, generator_step

BACKENDS = ("torch", "cpu", "triton")
PENALTIES = {
    "none": lambda: None,
    "r1": lambda: fastgan.R1Penalty(gamma=3.0),
    "r2": lambda: fastgan.R2Penalty(gamma=2.0),
    "gp": lambda: fastgan.GradientPenalty(weight=5.0),
    "dragan": lambda: fastgan.DRAGANPenalty(weight=4.0, center=0.5),
    "r1_every2": lambda: fastgan.R1Penalty(gamma=3.0, every=2),
    "gp_every2": lambda: fastgan.GradientPenalty(weight=5.0, every=2),
}
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def require(backend: str) -> None:
    """Skip unless ``backend`` implements the fused step for CPU tensors here."""
    try:
        fused._resolve(backend, "cpu")
    except (ValueError, RuntimeError) as err:
        pytest.skip(f"fused step backend {backend!r} unavailable: {err}")


def _archs(n: int, seed: int, max_width: int = 300) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        depth = rng.randint(1, 5)
        out.append(dict(
            in_features=rng.choice([1, 2, 3, 7, 16, 33, 40, rng.randint(1, 40)]),
            hidden=tuple(rng.choice([1, 2, 5, 31, 64, 100, 128, max_width, rng.randint(1, max_width)])
                         for _ in range(depth)),
            pack=rng.randint(1, 4), rows=rng.choice([1, 1, 2, 3, 5, 8]),
            bias=rng.random() < 0.75, negative_slope=rng.choice([0.0, 0.2]),
        ))
    return out


ARCHS = _archs(24, seed=1234)
CASES = [(loss, pen) for loss in fastgan.LOSSES for pen in PENALTIES]


def make_case(arch: dict, loss_name: str, pen_name: str, reduction: str, seed: int):
    """(D in float64, real, fake, loss, penalty factory, eps or None) for one case."""
    torch.manual_seed(seed)
    D = fastgan.MLPDiscriminator(arch["in_features"], arch["hidden"], arch["negative_slope"], arch["pack"],
                                 arch["bias"]).double()
    pack, rows = arch["pack"], arch["rows"]
    if pen_name == "dragan" and rows * pack * arch["in_features"] == 1:
        rows = 2  # DRAGAN scales by std(real): NaN for a single number, in the reference too
    equal = loss_name == "relativistic" or pen_name.startswith("gp")
    real = torch.randn(rows * pack, arch["in_features"], dtype=torch.float64)
    fake = torch.randn((rows if equal else rows + 1) * pack, arch["in_features"], dtype=torch.float64)
    loss = fastgan.LOSSES[loss_name](reduction=reduction)
    eps = None
    if pen_name.startswith("gp"):
        eps = torch.rand(rows, dtype=torch.float64)
    elif pen_name == "dragan":
        eps = torch.rand(real.shape, dtype=torch.float64)
    return D, real, fake, loss, PENALTIES[pen_name], eps


def reference_grads(D, real, fake, loss, penalty, eps):
    """(total, parts, grads) of the plain autograd composition (float64)."""
    D = copy.deepcopy(D)
    with fastgan.use_backend("reference"):
        r, f = D(real), D(fake.detach())
        value = loss.discriminator_loss(r, f)
        pen = penalty(D, real, fake, eps=eps) if penalty is not None else value.new_zeros(())
        (value + pen).backward()
    parts = (value.detach(), pen.detach(), r.detach().mean(), f.detach().mean())
    return (value + pen).detach(), parts, [p.grad for p in D.parameters()]


def assert_grads_close(got, want, rtol):
    scale = max(max(w.abs().max().item() for w in want), 1e-2)  # floor: all-dead ReLU nets have ~0 grads
    for i, (g, w) in enumerate(zip(got, want)):
        assert g is not None, f"parameter {i} got no gradient"
        torch.testing.assert_close(g.double(), w, rtol=rtol, atol=rtol * scale, msg=lambda m: f"param {i}: {m}")


def assert_scalars_close(got, want, rtol):
    scale = max(abs(w.item()) for w in want) + 1e-30
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=rtol, atol=rtol * scale)


# ---- discriminator step vs reference ----------------------------------------------------------

def _step_params():
    """backend x case; the Triton interpreter is slow: a quarter of its cases run by default,
    the rest under ``-m slow``."""
    out = []
    for backend in BACKENDS:
        for i, (loss_name, pen_name) in enumerate(CASES):
            marks = pytest.mark.slow if backend == "triton" and i % 4 else ()
            out.append(pytest.param(backend, loss_name, pen_name, marks=marks,
                                    id=f"{backend}-{loss_name}-{pen_name}"))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend,loss_name,pen_name", _step_params())
def test_discriminator_step_matches_reference(backend, loss_name, pen_name, dtype):
    require(backend)
    i = CASES.index((loss_name, pen_name))
    arch = ARCHS[i % len(ARCHS)]
    if backend == "triton":  # the interpreter: keep it small
        arch = dict(arch, hidden=tuple(min(h, 64) for h in arch["hidden"][:3]))
    reduction = "sum" if i % 3 == 2 else "mean"
    D, real, fake, loss, make_penalty, eps = make_case(arch, loss_name, pen_name, reduction, seed=i)
    ref_pen, pen = make_penalty(), make_penalty()
    Dx = copy.deepcopy(D).to(dtype)
    cast = (lambda t: t.to(dtype) if t is not None else None)
    for call in range(2 if pen_name.endswith("every2") else 1):  # lazy: a due call, then an idle one
        want_total, want_parts, want = reference_grads(D, real, fake, loss, ref_pen, eps)
        Dx.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in Dx.parameters())
        total, parts = discriminator_step(Dx, cast(real), cast(fake), loss=loss, penalty=pen, backend=backend,
                                          eps=cast(eps), return_parts=True)
        assert total.shape == () and total.dtype == dtype and total.requires_grad
        assert all(not p.requires_grad for p in parts)
        total.backward()
        assert_grads_close([p.grad for p in Dx.parameters()], want, RTOL[dtype])
        assert_scalars_close([total, *parts], [want_total, *want_parts], RTOL[dtype])
        if call == 1:
            assert parts.penalty.item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pen_name", ["gp", "dragan"])
def test_generator_makes_penalty_rows_like_the_module(backend, pen_name):
    """eps=None: WGAN-GP / DRAGAN draw from ``generator`` exactly as the penalty module does."""
    require(backend)
    arch = dict(in_features=6, hidden=(9, 4), pack=2, rows=5, bias=True, negative_slope=0.2)
    D, real, fake, loss, make_penalty, _ = make_case(arch, "hinge", pen_name, "mean", seed=7)
    with fastgan.use_backend("reference"):
        D_ref = copy.deepcopy(D)
        total = (loss.discriminator_loss(D_ref(real), D_ref(fake))
                 + make_penalty()(D_ref, real, fake, generator=torch.Generator().manual_seed(3)))
        total.backward()
    got = discriminator_step(D, real, fake, loss=loss, penalty=make_penalty(), backend=backend,
                             generator=torch.Generator().manual_seed(3))
    got.backward()
    assert_grads_close([p.grad for p in D.parameters()], [p.grad for p in D_ref.parameters()], 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_accumulate(backend):
    require(backend)
    D, real, fake, loss, make_penalty, _ = make_case(ARCHS[3], "non_saturating", "r1", "mean", seed=3)
    *_, want = reference_grads(D, real, fake, loss, make_penalty(), None)
    before = [torch.randn_like(p) for p in D.parameters()]
    for p, b in zip(D.parameters(), before):
        p.grad = b.clone()
    discriminator_step(D, real, fake, loss=loss, penalty=make_penalty(), backend=backend).backward()
    assert_grads_close([p.grad - b for p, b in zip(D.parameters(), before)], want, 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_scales_the_gradients(backend):
    require(backend)
    D, real, fake, loss, make_penalty, _ = make_case(ARCHS[5], "least_squares", "r2", "mean", seed=5)
    *_, want = reference_grads(D, real, fake, loss, make_penalty(), None)
    (-2.5 * discriminator_step(D, real, fake, loss=loss, penalty=make_penalty(), backend=backend)).backward()
    assert_grads_close([p.grad for p in D.parameters()], [-2.5 * w for w in want], 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitwise_deterministic(backend):
    require(backend)
    arch = dict(in_features=13, hidden=(300, 77, 5), pack=3, rows=40, bias=True, negative_slope=0.2)
    D, real, fake, loss, make_penalty, eps = make_case(arch, "relativistic", "gp", "mean", seed=11)
    D = D.float()
    results = []
    for _ in range(2):
        D.zero_grad(set_to_none=True)
        total = discriminator_step(D, real.float(), fake.float(), loss=loss, penalty=make_penalty(),
                                   backend=backend, eps=eps.float())
        total.backward()
        results.append([total.detach()] + [p.grad.clone() for p in D.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_auto_picks_an_available_fused_backend():
    D, real, fake, loss, make_penalty, _ = make_case(ARCHS[0], "hinge", "r1", "mean", seed=0)
    assert fused._resolve(None, "cpu") in fused._step_backends()
    *_, want = reference_grads(D, real, fake, loss, make_penalty(), None)
    discriminator_step(D, real, fake, loss=loss, penalty=make_penalty()).backward()
    assert_grads_close([p.grad for p in D.parameters()], want, 1e-9)


def test_other_modules_take_the_reference_path():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1), nn.Flatten(0)).double()
    real, fake = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    loss, eps = fastgan.WassersteinLoss(), torch.rand(5, dtype=torch.float64)
    *_, want = reference_grads(D, real, fake, loss, fastgan.GradientPenalty(), eps)
    total, parts = discriminator_step(D, real, fake, loss=loss, penalty=fastgan.GradientPenalty(), eps=eps,
                                      return_parts=True)
    total.backward()
    assert_grads_close([p.grad for p in D.parameters()], want, 1e-12)


# ---- generator step ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss_name", list(fastgan.LOSSES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_step_matches_reference(backend, loss_name, dtype):
    require(backend)
    i = list(fastgan.LOSSES).index(loss_name)
    arch = ARCHS[(7 * i + 1) % len(ARCHS)]
    if backend == "triton":
        arch = dict(arch, hidden=tuple(min(h, 64) for h in arch["hidden"][:3]))
    reduction = "sum" if i % 2 else "mean"
    D, real, fake, loss, *_ = make_case(arch, loss_name, "none", reduction, seed=100 + i)
    real = real[: fake.shape[0]] if fake.shape[0] <= real.shape[0] else torch.cat([real, real])[: fake.shape[0]]
    fake_ref = fake.clone().requires_grad_(True)
    with fastgan.use_backend("reference"):
        want = loss.generator_loss(D(fake_ref), D(real) if loss.paired else None)
    (want_grad,) = torch.autograd.grad(want, fake_ref)
    Dx = copy.deepcopy(D).to(dtype)
    x = fake.to(dtype).requires_grad_(True)
    got = generator_step(Dx, x, loss=loss, real=real.to(dtype), backend=backend)
    assert got.shape == () and got.dtype == dtype
    got.backward()
    rtol = RTOL[dtype]
    torch.testing.assert_close(got.double(), want.detach(), rtol=rtol, atol=rtol * (abs(want.item()) + 1e-30))
    torch.testing.assert_close(x.grad.double(), want_grad, rtol=rtol, atol=rtol * want_grad.abs().max().item())
    assert all(p.grad is None for p in Dx.parameters())


# ---- bad input --------------------------------------------------------------------------------

def _small():
    torch.manual_seed(0)
    return fastgan.MLPDiscriminator(3, (4,), pack=2), torch.randn(4, 3), torch.randn(4, 3)


@pytest.mark.parametrize("backend", [None, "torch", "reference"])
def test_bad_input_raises_clearly(backend):
    D, real, fake = _small()
    with pytest.raises(ValueError, match=r"real must have shape \(batch, 3\)"):
        discriminator_step(D, torch.randn(4, 5), fake, loss="hinge", backend=backend)
    with pytest.raises(ValueError, match="not divisible by pack=2"):
        discriminator_step(D, real, torch.randn(3, 3), loss="hinge", backend=backend)
    with pytest.raises(ValueError, match="fake is on meta"):
        discriminator_step(D, real, fake.to("meta"), loss="hinge", backend=backend)
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        discriminator_step(D, real, fake, loss=fastgan.HingeLoss(reduction="none"), backend=backend)
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        generator_step(D, fake, loss=fastgan.HingeLoss(reduction="none"), backend=backend)
    with pytest.raises(ValueError, match="RelativisticLoss pairs real and fake"):
        discriminator_step(D, real, torch.randn(6, 3), loss="relativistic", backend=backend)
    with pytest.raises(ValueError, match="WGAN-GP interpolates"):
        discriminator_step(D, real, torch.randn(6, 3), loss="hinge", penalty=fastgan.GradientPenalty(),
                           backend=backend)
    with pytest.raises(ValueError, match="pass real="):
        generator_step(D, fake, loss="relativistic", backend=backend)
    with pytest.raises(ValueError, match="loss must be a GANLoss"):
        discriminator_step(D, real, fake, loss=nn.MSELoss(), backend=backend)


def test_non_mlp_with_a_fused_backend_raises():
    D = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    real = torch.randn(4, 3)
    for backend in ("torch", "cpu", "cuda", "triton"):
        with pytest.raises(ValueError, match="needs an MLPDiscriminator"):
            discriminator_step(D, real, real, loss="hinge", backend=backend)
        with pytest.raises(ValueError, match="needs an MLPDiscriminator"):
            generator_step(D, real, loss="hinge", backend=backend)


def test_dtype_mismatch_raises():
    D, real, fake = _small()
    with pytest.raises(ValueError, match="D's parameters are torch.float32"):
        discriminator_step(D, real.double(), fake.double(), loss="hinge", backend="torch")


def test_missing_backend_raises():
    D, real, fake = _small()
    for name in ("cpu", "triton", "cuda"):
        try:
            fused._resolve(name, "cpu")
        except (ValueError, RuntimeError) as err:
            with pytest.raises(type(err)):
                discriminator_step(D, real, fake, loss="hinge", backend=name)
