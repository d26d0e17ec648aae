"""fastgan.discriminator_step / generator_step (fused MLP step) against the autograd reference.

Ground truth: ``discriminator_step(..., backend="reference")`` (``loss.discriminator_loss(D(real),
D(fake.detach())) + penalty(D, real, fake)`` with autograd) in float64; cases, reference and the
error bound come from the shared harness (tests/harness.py). Every fused backend whose
implementation exists here is tested (torch always; cpu / triton where built; the others are
skipped with the reason). Architectures are the harness's seeded sample (in_features 1..40,
widths 1..300, depth 1..5, pack 1..4, down to one row, bias on/off, ReLU and LeakyReLU), one per
loss x penalty combination, plus lazy penalties (every=2).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastgan
import harness
from fastgan import fused
from fastgan.fused import discriminator_step, generator_step
from harness import Case

BACKENDS = ("torch", "cpu", "triton")
# every loss x penalty once (seeded architectures), plus the lazy schedule every=2 on two penalties
CASES = harness.cases(len(harness.LOSS_NAMES) * len(harness.PENALTY_NAMES), seed=1234)
CASES += [c.with_(every=2) for c in CASES if c.penalty in ("r1", "gp")][:4]


def require(backend: str) -> None:
    """Skip unless ``backend`` implements the fused step for CPU tensors here."""
    try:
        fused.resolve_backend(backend, "cpu")
    except (ValueError, RuntimeError) as err:
        pytest.skip(f"fused step backend {backend!r} unavailable: {err}")


def small(case: Case) -> Case:
    """The Triton interpreter is slow: at most 3 layers of width <= 64."""
    return case.with_(hidden=tuple(min(h, 64) for h in case.hidden[:3]))


def reference_grads(D, real, fake, loss, penalty, eps=None, generator=None):
    """Parameter gradients of ``discriminator_step(backend="reference")`` (float64)."""
    D = copy.deepcopy(D)
    discriminator_step(D, real, fake, loss=loss, penalty=penalty, backend="reference", eps=eps,
                       generator=generator).backward()
    return [p.grad for p in D.parameters()]


def assert_grads_close(D, want):
    """D's gradients equal the float64 reference's (the harness's float64 bound)."""
    assert all(p.grad is not None for p in D.parameters()), "a parameter got no gradient"
    harness.assert_close([p.grad for p in D.parameters()], want, None, torch.float64)


# ---- discriminator step vs reference ----------------------------------------------------------

def _step_params():
    """backend x case; the Triton interpreter is slow: a quarter of its cases run by default,
    the rest under ``-m slow``."""
    out = []
    for backend in BACKENDS:
        for i, case in enumerate(CASES):
            marks = pytest.mark.slow if backend == "triton" and i % 4 else ()
            out.append(pytest.param(backend, case, marks=marks, id=f"{backend}-{case.id}"))
    return out


@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("backend,case", _step_params())
def test_discriminator_step_matches_reference(backend, case, dtype):
    """Total, parts and gradients within the harness's bound; a lazy penalty (every=2) on its due
    call and on the idle call after it."""
    require(backend)
    problem = (small(case) if backend == "triton" else case).build(dtype)
    for calls in range(1, case.every + 1):
        harness.check_disc(problem, backend, calls=calls)


# Sums over hundreds of stacked rows (hidden-bias and output-weight gradients) must be as accurate as
# autograd's cascade sums: summed as matrix-vector products, the torch backend's first case was 1.6x
# the bound (float32, found by a scan of 240 random cases with up to 200 rows).
LONG_SUMS = [
    Case(1, (31, 2), pack=3, rows_real=100, rows_fake=200, loss="hinge", penalty="r2", reduction="sum", seed=869),
    Case(3, (1, 5, 5, 300), pack=3, rows_real=200, rows_fake=200, slope=0.0, loss="least_squares", penalty="gp",
         reduction="sum", seed=815),
]


@pytest.mark.parametrize("case", LONG_SUMS, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ("torch", "cpu"))
def test_long_row_sums_are_as_accurate_as_autograd(backend, case):
    require(backend)
    harness.check_disc(case.build(torch.float32), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pen_name", ["gp", "dragan"])
def test_generator_makes_penalty_rows_like_the_module(backend, pen_name):
    """eps=None: WGAN-GP / DRAGAN draw from ``generator`` exactly as the penalty module does."""
    require(backend)
    p = Case(6, (9, 4), pack=2, rows_real=5, loss="hinge", penalty=pen_name, seed=7).build()
    want = reference_grads(p.D, p.real, p.fake, p.loss(), p.penalty(), generator=torch.Generator().manual_seed(3))
    discriminator_step(p.D, p.real, p.fake, loss=p.loss(), penalty=p.penalty(), backend=backend,
                       generator=torch.Generator().manual_seed(3)).backward()
    assert_grads_close(p.D, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_accumulate(backend):
    require(backend)
    p = CASES[3].with_(loss="non_saturating", penalty="r1").build()
    want = reference_grads(p.D, p.real, p.fake, p.loss(), p.penalty())
    before = [torch.randn_like(q) for q in p.D.parameters()]
    for q, b in zip(p.D.parameters(), before):
        q.grad = b.clone()
    discriminator_step(p.D, p.real, p.fake, loss=p.loss(), penalty=p.penalty(), backend=backend).backward()
    harness.assert_close([q.grad - b for q, b in zip(p.D.parameters(), before)], want, None, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_scales_the_gradients(backend):
    require(backend)
    p = CASES[5].with_(loss="least_squares", penalty="r2").build()
    want = reference_grads(p.D, p.real, p.fake, p.loss(), p.penalty())
    (-2.5 * discriminator_step(p.D, p.real, p.fake, loss=p.loss(), penalty=p.penalty(), backend=backend)).backward()
    assert_grads_close(p.D, [-2.5 * w for w in want])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitwise_deterministic(backend):
    """Claim: every fused backend on CPU tensors (torch, cpu, triton under the interpreter) gives the
    same bits on every call at a fixed thread count. Across thread counts only ``cpu`` is claimed
    (by construction; asserted in test_mlp_step_native_ops.py): ``torch`` gave the same bits at 1, 2 and 3
    threads on the 2-core CI machine too, but it inherits ATen's BLAS, which does not promise it."""
    require(backend)
    p = Case(13, (300, 77, 5) if backend != "triton" else (64, 33, 5), pack=3, rows_real=40, loss="relativistic",
             penalty="gp", seed=11).build(torch.float32)
    results = []
    for _ in range(2):
        p.D.zero_grad(set_to_none=True)
        total = discriminator_step(p.D, p.real, p.fake, loss=p.loss(), penalty=p.penalty(), backend=backend,
                                   eps=p.eps)
        total.backward()
        results.append([total.detach()] + [q.grad.clone() for q in p.D.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_auto_picks_an_available_fused_backend():
    p = CASES[0].with_(loss="hinge", penalty="r1").build()
    assert fused.resolve_backend(None, "cpu") in fused.step_backends()
    want = reference_grads(p.D, p.real, p.fake, p.loss(), p.penalty())
    discriminator_step(p.D, p.real, p.fake, loss=p.loss(), penalty=p.penalty()).backward()
    assert_grads_close(p.D, want)


def test_other_modules_take_the_reference_path():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1), nn.Flatten(0)).double()
    real, fake = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    loss, eps = fastgan.WassersteinLoss(), torch.rand(5, dtype=torch.float64)
    D_ref = copy.deepcopy(D)
    with fastgan.use_backend("reference"):
        (loss.discriminator_loss(D_ref(real), D_ref(fake)) + fastgan.GradientPenalty()(D_ref, real, fake, eps=eps)
         ).backward()
    total, parts = discriminator_step(D, real, fake, loss=loss, penalty=fastgan.GradientPenalty(), eps=eps,
                                      return_parts=True)
    total.backward()
    assert_grads_close(D, [p.grad for p in D_ref.parameters()])


# ---- generator step ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("loss_name", harness.LOSS_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_step_matches_reference(backend, loss_name, dtype):
    require(backend)
    i = harness.LOSS_NAMES.index(loss_name)
    case = CASES[(7 * i + 1) % len(CASES)].with_(loss=loss_name, penalty="none",
                                                 reduction="sum" if i % 2 else "mean", seed=100 + i)
    harness.check_gen((small(case) if backend == "triton" else case).build(dtype), backend)


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
            fused.resolve_backend(name, "cpu")
        except (ValueError, RuntimeError) as err:
            with pytest.raises(type(err)):
                discriminator_step(D, real, fake, loss="hinge", backend=name)


# ---- several penalties in one step (R3GAN: relativistic loss + R1 + R2) ---------------------------

@pytest.mark.parametrize("every", [(1, 1), (2, 1), (1, 3)], ids=["both", "lazy R1", "lazy R2"])
@pytest.mark.parametrize("backward", [True, False], ids=["backward=True", "backward()"])
def test_several_penalties_sum_like_the_reference(backend, backward, every):
    require(backend)
    torch.manual_seed(0)
    D = fastgan.MLPDiscriminator(3, (7, 5), pack=2).double()
    real, fake = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    runs = {}
    for name in (backend, "reference"):
        model = copy.deepcopy(D)
        pens = [fastgan.R1Penalty(gamma=1.5, every=every[0]), fastgan.R2Penalty(gamma=0.5, every=every[1])]
        for _ in range(3):  # through the lazy phases
            model.zero_grad(set_to_none=True)
            total, parts = discriminator_step(model, real, fake, loss="relativistic", penalty=pens, backend=name,
                                              backward=backward, return_parts=True)
            if not backward:
                total.backward()
            runs.setdefault(name, []).append((total.detach(), parts, [p.grad.clone() for p in model.parameters()]))
        assert [p.calls for p in pens] == [3 % every[0], 3 % every[1]]
    for (total, parts, grads), (want_total, want_parts, want_grads) in zip(runs[backend], runs["reference"]):
        torch.testing.assert_close(total, want_total, rtol=1e-12, atol=1e-14)
        for got, want in zip(parts, want_parts):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        for got, want in zip(grads, want_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def test_a_penalty_listed_twice_is_an_error():
    D, real, fake = _small()
    r1 = fastgan.R1Penalty()
    with pytest.raises(ValueError, match="one penalty module twice"):
        discriminator_step(D, real, fake, loss="hinge", penalty=[r1, r1])
    with pytest.raises(TypeError, match="a list of them, or None, got str"):
        discriminator_step(D, real, fake, loss="hinge", penalty=[r1, "r2"])
