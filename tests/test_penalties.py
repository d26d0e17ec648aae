"""Gradient penalties: R1, R2, WGAN-GP and DRAGAN x backend against ``backend="reference"`` on
small discriminators (values and parameter gradients), per-row norms with PacGAN packing,
gradcheck/gradgradcheck, zero-norm rows, eps/generator reproducibility, lazy regularisation,
the raw penalty kernels against ``fastgan.terms.penalty_rows``, and bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastgan
import harness
from fastgan.ops import penalty as penalty_op
from fastgan.terms import PenaltyKind, penalty_rows

PENALTIES = {
    "r1": lambda **kw: fastgan.R1Penalty(gamma=3.0, **kw),
    "r2": lambda **kw: fastgan.R2Penalty(gamma=0.5, **kw),
    "gp": lambda **kw: fastgan.GradientPenalty(weight=2.0, center=0.8, **kw),
    "dragan": lambda **kw: fastgan.DRAGANPenalty(weight=1.5, center=1.0, scale=0.3, **kw),
}


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def sequential_mlp(dtype=torch.float64):
    """A plain nn.Sequential on (B, 2, 3) inputs; tanh so second derivatives are non-zero."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 1)).to(dtype)


def mlp_discriminator(pack, dtype=torch.float64):
    torch.manual_seed(1)
    return fastgan.MLPDiscriminator(3, hidden=(5, 4), pack=pack).to(dtype)


DISCRIMINATORS = {
    # name: (constructor, shape of one batch of samples)
    "sequential": (sequential_mlp, (6, 2, 3)),
    "mlp-pack1": (lambda dtype=torch.float64: mlp_discriminator(1, dtype), (5, 3)),
    "mlp-pack3": (lambda dtype=torch.float64: mlp_discriminator(3, dtype), (9, 3)),
}


def batch(disc, dtype=torch.float64, seed=0):
    """(D, real, fake) for a discriminator name."""
    make, shape = DISCRIMINATORS[disc]
    return make(dtype=dtype), randn(*shape, dtype=dtype, seed=seed), randn(*shape, dtype=dtype, seed=seed + 1)


def eps_for(name, real, pack, seed=5):
    """Explicit randomness, so every backend sees the same penalty points."""
    g = torch.Generator().manual_seed(seed)
    if name == "gp":
        return torch.rand(real.shape[0] // pack, dtype=real.dtype, generator=g)
    if name == "dragan":
        return torch.rand(real.shape, dtype=real.dtype, generator=g)
    return None


def value_and_param_grads(penalty, D, real, fake, eps):
    value = penalty(D, real, fake, eps=eps)
    return value.detach(), torch.autograd.grad(value, list(D.parameters()), allow_unused=True, materialize_grads=True)


def named_value_and_grads(make_penalty):
    """(D, real, fake, eps) -> {"value", "grad i"}: a function for ``harness.expected``."""
    def run(D, real, fake, eps):
        value, grads = value_and_param_grads(make_penalty(), D, real, fake, eps)
        return {"value": value, **{f"grad {i}": g for i, g in enumerate(grads)}}
    return run


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("disc", DISCRIMINATORS)
@pytest.mark.parametrize("name", PENALTIES)
def test_penalty_matches_reference(backend, name, disc, dtype):
    D, real, fake = batch(disc, dtype)
    eps = eps_for(name, real, getattr(D, "pack", 1))
    got = named_value_and_grads(lambda: PENALTIES[name](backend=backend))(D, real, fake, eps)
    assert got["value"].dtype == dtype and got["value"].shape == ()
    assert got["value"] > 0
    truth, base = harness.expected(named_value_and_grads(lambda: PENALTIES[name](backend="reference")),
                                   (D, real, fake, eps), dtype)
    harness.assert_close(got, truth, base, dtype)


@pytest.mark.parametrize("pack", [1, 3])
def test_norms_are_per_packed_row(backend, pack):
    """WGAN-GP by hand: one norm per discriminator row (pack samples), not per sample or per batch."""
    D, real, fake = batch(f"mlp-pack{pack}")
    eps = eps_for("gp", real, pack)
    value = fastgan.GradientPenalty(weight=2.0, center=0.8, backend=backend)(D, real, fake, eps=eps)
    xhat = (eps.repeat_interleave(pack)[:, None] * real + (1 - eps.repeat_interleave(pack)[:, None]) * fake)
    xhat.requires_grad_(True)
    (g,) = torch.autograd.grad(D(xhat).sum(), xhat)
    rows = g.reshape(real.shape[0] // pack, pack * real.shape[1])
    per_row = 2.0 * ((rows.norm(dim=1) - 0.8) ** 2).mean()
    harness.assert_close(value, per_row, None, torch.float64)
    per_batch = 2.0 * (g.norm() - 0.8) ** 2
    assert not torch.isclose(value.detach(), per_batch)
    if pack > 1:
        per_sample = 2.0 * ((g.norm(dim=1) - 0.8) ** 2).mean()
        assert not torch.isclose(value.detach(), per_sample)


class _WithParameter(nn.Module):
    """``D`` with one parameter replaced by a given tensor (the variable of a gradcheck)."""

    def __init__(self, D, name, value):
        super().__init__()
        self.D, self.name, self.value, self.pack = D, name, value, getattr(D, "pack", 1)

    def forward(self, x):
        return torch.func.functional_call(self.D, {self.name: self.value}, (x,))


@pytest.mark.parametrize("disc, param", [("sequential", "3.weight"), ("mlp-pack3", "layers.1.weight")])
@pytest.mark.parametrize("name", PENALTIES)
def test_gradcheck_and_gradgradcheck_wrt_a_parameter(backend, name, disc, param):
    D, real, fake = batch(disc)
    eps = eps_for(name, real, getattr(D, "pack", 1))
    penalty = PENALTIES[name](backend=backend)
    w = dict(D.named_parameters())[param].detach().clone().requires_grad_(True)

    def f(w):
        return penalty(_WithParameter(D, param, w), real, fake, eps=eps)

    assert torch.autograd.gradcheck(f, (w,))
    assert torch.autograd.gradgradcheck(f, (w,))


@pytest.mark.parametrize("name", PENALTIES)
def test_penalty_from_gradient_gradcheck_wrt_the_input_gradient(backend, name):
    from fastgan.penalties import penalty_from_gradient
    p = PENALTIES[name]()
    g = randn(3, 5, seed=2).requires_grad_(True)

    def f(g):
        return penalty_from_gradient(g, p.kind, p.weight, p.center, backend)

    assert torch.autograd.gradcheck(f, (g,))
    assert torch.autograd.gradgradcheck(f, (g,))


class _Quadratic(nn.Module):
    """D(x) = sum_j w_j x_j^2 per row: its input gradient 2 w x vanishes on zero rows."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))

    def forward(self, x):
        return (self.w * x * x).sum(dim=1)


@pytest.mark.parametrize("name", PENALTIES)
def test_zero_norm_rows_give_no_nan(backend, name):
    D = _Quadratic()
    real = torch.zeros(4, 3, dtype=torch.float64)
    real[1] = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    fake = torch.zeros_like(real)
    eps = eps_for(name, real, 1)
    if name == "dragan":
        eps = torch.zeros_like(real)  # keep the zero rows at zero
    value, (grad_w,) = value_and_param_grads(PENALTIES[name](backend=backend), D, real, fake, eps)
    expected, (expected_w,) = value_and_param_grads(PENALTIES[name](backend="reference"), D, real, fake, eps)
    assert torch.isfinite(value) and torch.isfinite(grad_w).all()
    harness.assert_close([value, grad_w], [expected, expected_w], None, torch.float64)


@pytest.mark.parametrize("name", ["gp", "dragan"])
def test_eps_and_generator_make_the_penalty_reproducible(backend, name):
    D, real, fake = batch("mlp-pack1")
    penalty = PENALTIES[name](backend=backend)
    state = torch.get_rng_state()
    a = penalty(D, real, fake, generator=torch.Generator().manual_seed(7))
    b = penalty(D, real, fake, generator=torch.Generator().manual_seed(7))
    c = penalty(D, real, fake, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state), "a given generator must not consume the global RNG"
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The generator's draw is the eps: passing that eps explicitly gives the same penalty.
    g = torch.Generator().manual_seed(7)
    eps = (torch.rand(real.shape[0], dtype=real.dtype, generator=g) if name == "gp"
           else torch.rand(real.shape, dtype=real.dtype, generator=g))
    assert torch.equal(penalty(D, real, fake, eps=eps), a)


@pytest.mark.parametrize("name", PENALTIES)
def test_lazy_regularisation(backend, name):
    D, real, fake = batch("mlp-pack1")
    eps = eps_for(name, real, 1)
    every_call = PENALTIES[name](backend=backend)(D, real, fake, eps=eps)
    lazy = PENALTIES[name](backend=backend, every=3)
    values = [lazy(D, real, fake, eps=eps) for _ in range(7)]
    for i, v in enumerate(values):
        if i % 3 == 0:
            harness.assert_close(v, 3 * every_call, None, torch.float64)
            assert v.grad_fn is not None
        else:
            assert v.item() == 0.0 and v.grad_fn is None and not v.requires_grad
            assert v.dtype == real.dtype and v.shape == ()


# ---- the raw penalty kernels against fastgan.terms.penalty_rows -----------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (33, 4), (7, 130)], ids=str)
@pytest.mark.parametrize("kind, weight, center", [(PenaltyKind.SQUARED, 3.0, 0.0),
                                                  (PenaltyKind.CENTERED, 0.7, 1.3)], ids=["squared", "centered"])
def test_penalty_kernels_match_penalty_rows(backend, kind, weight, center, shape, dtype):
    forward, backward = penalty_op.FORWARD.op(backend), penalty_op.BACKWARD.op(backend)
    g = randn(*shape, dtype=dtype, seed=3)
    g[0] = 0  # a zero-norm row
    grad_out = torch.tensor(0.6, dtype=dtype)

    def spec(g, grad_out):  # fastgan.terms.penalty_rows, differentiated by autograd
        gr = g.clone().requires_grad_(True)
        value = penalty_rows(gr, kind, weight, center).mean()
        (grad,) = torch.autograd.grad(value, gr, grad_out)
        return {"value": value.detach(), "grad": grad}
    out = forward(g, int(kind), weight, center)
    assert out.shape == () and out.dtype == dtype
    grad = backward(grad_out, g, int(kind), weight, center)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    truth, base = harness.expected(spec, (g, grad_out), dtype)
    harness.assert_close({"value": out, "grad": grad}, truth, base, dtype)


def test_penalty_kernels_reject_bad_input(backend):
    if backend == "torch":
        pytest.skip("the torch backend's operator is fastgan.terms.penalty_rows itself: it checks nothing")
    forward, backward = penalty_op.FORWARD.op(backend), penalty_op.BACKWARD.op(backend)
    g = randn(3, 4)
    with pytest.raises((RuntimeError, ValueError), match=r"grad must be \(rows, features\)"):
        forward(g.reshape(12), 0, 1.0, 0.0)
    with pytest.raises((RuntimeError, ValueError), match="empty"):
        forward(g[:0], 0, 1.0, 0.0)
    with pytest.raises((RuntimeError, TypeError), match="floating point"):
        forward(torch.ones(3, 4, dtype=torch.int64), 0, 1.0, 0.0)
    with pytest.raises((RuntimeError, ValueError), match="kind"):
        forward(g, 2, 1.0, 0.0)
    with pytest.raises((RuntimeError, ValueError), match="grad_out must be a scalar"):
        backward(torch.ones(3, dtype=g.dtype), g, 0, 1.0, 0.0)


# ---- bad input at the module level ------------------------------------------------------------

def test_penalty_arguments_are_validated():
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        fastgan.R1Penalty(every=0)
    with pytest.raises(ValueError, match="weight must be non-negative"):
        fastgan.GradientPenalty(weight=-1.0)
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'gpu'"):
        fastgan.R1Penalty(backend="gpu")
    assert repr(fastgan.R1Penalty(gamma=2.0, every=4)) == "R1Penalty(gamma=2.0, every=4)"


@pytest.mark.parametrize("name", PENALTIES)
def test_bad_samples_raise_naming_the_argument(backend, name):
    D, real, fake = batch("mlp-pack3")
    penalty = PENALTIES[name](backend=backend)
    with pytest.raises(ValueError, match="real has 8 rows, not divisible by the discriminator's pack=3"):
        penalty(D, real[:8], fake[:8])
    with pytest.raises(ValueError, match="real must not be empty"):
        penalty(D, real[:0], fake)
    with pytest.raises(TypeError, match="fake has dtype torch.float32 but real has torch.float64"):
        penalty(D, real, fake.float())
    with pytest.raises(TypeError, match="real must be a floating-point tensor"):
        penalty(D, real.long(), fake)
    with pytest.raises(ValueError, match="fake is on meta but real is on cpu"):
        penalty(D, real, fake.to("meta"))
    if name in ("r2", "gp"):
        with pytest.raises(ValueError, match="needs fake samples"):
            penalty(D, real)
    if name == "gp":
        with pytest.raises(ValueError, match=r"real \(9, 3\) and fake \(6, 3\) must have the same shape"):
            penalty(D, real, fake[:6])
        with pytest.raises(ValueError, match=r"eps must have shape \(3,\) \(one value per row\), got \(9,\)"):
            penalty(D, real, fake, eps=torch.rand(9, dtype=real.dtype))
        with pytest.raises(ValueError, match="eps is on meta but real is on cpu"):
            penalty(D, real, fake, eps=torch.rand(3, dtype=real.dtype, device="meta"))
    if name == "dragan":
        with pytest.raises(ValueError, match=r"eps must have real's shape \(9, 3\), got \(3,\)"):
            penalty(D, real, fake, eps=torch.rand(3, dtype=real.dtype))
        with pytest.raises(ValueError, match="eps is on meta but real is on cpu"):
            penalty(D, real, fake, eps=torch.rand(9, 3, dtype=real.dtype, device="meta"))
