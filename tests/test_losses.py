"""GAN losses: every loss x backend x reduction against ``backend="reference"`` (forward and
gradients), the raw loss-term kernels against ``fastgan.terms``, gradcheck, extreme logits and bad input."""
from __future__ import annotations

import pytest
import torch

import fastgan
import harness
from fastgan import LOSSES
from fastgan.terms import Phi, Reduction, Term, reduce, term_value

REDUCTIONS = ("mean", "sum", "none")
SHAPES = [(1,), (3,), (1023,), (5, 1), (2, 1, 3, 5)]
# Every loss, plus least squares with non-default targets.
CASES = [pytest.param(name, {}, id=name) for name in sorted(LOSSES)]
CASES.append(pytest.param("least_squares", {"a": -0.3, "b": 0.7, "c": 0.45}, id="least_squares-abc"))


def logits(shape, dtype=torch.float64, seed=0):
    """Logits spread over both sides of every kink (hinge at +-1, relu at 0)."""
    return 3 * torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def weights(shape, dtype, seed=1):
    """The random w of :func:`loss_and_grads` (drawn in float64: the same numbers in every dtype)."""
    return (0.5 + torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))).to(dtype)


def loss_and_grads(fn, *inputs, seed=1) -> dict:
    """``fn(*inputs)`` and the gradients of ``<w, fn(*inputs)>`` w.r.t. each input, for a random w."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*xs)
    grads = torch.autograd.grad(out, xs, grad_outputs=weights(out.shape, out.dtype, seed))
    return {"loss": out.detach(), **{f"d input {i}": g for i, g in enumerate(grads)}}


def assert_same(fn, ref_fn, inputs, dtype):
    """``fn`` against the reference ``ref_fn`` (values and gradients), by the harness's bound: the
    float64 reference, and the reference run in ``dtype`` as the baseline."""
    got = loss_and_grads(fn, *inputs)
    truth, base = harness.expected(lambda *xs: loss_and_grads(ref_fn, *xs), inputs, dtype)
    assert got["loss"].dtype == dtype
    harness.assert_close(got, truth, base, dtype)


# ---- the loss modules against the reference ------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, params", CASES)
def test_discriminator_loss_matches_reference(backend, name, params, reduction, shape, dtype):
    loss = LOSSES[name](reduction=reduction, backend=backend, **params)
    ref = LOSSES[name](reduction=reduction, backend="reference", **params)
    r, f = logits(shape, dtype, seed=2), logits(shape, dtype, seed=3)
    assert_same(loss.discriminator_loss, ref.discriminator_loss, (r, f), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, params", CASES)
def test_generator_loss_matches_reference(backend, name, params, reduction, shape, dtype):
    loss = LOSSES[name](reduction=reduction, backend=backend, **params)
    ref = LOSSES[name](reduction=reduction, backend="reference", **params)
    f, r = logits(shape, dtype, seed=4), logits(shape, dtype, seed=5)
    if loss.paired:
        assert_same(loss.generator_loss, ref.generator_loss, (f, r), dtype)
    else:
        assert_same(loss.generator_loss, ref.generator_loss, (f,), dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name, params", [c for c in CASES if c.values[0] != "relativistic"])
def test_real_and_fake_batches_may_differ(backend, name, params, reduction):
    loss = LOSSES[name](reduction=reduction, backend=backend, **params)
    ref = LOSSES[name](reduction=reduction, backend="reference", **params)
    r, f = logits((5,), seed=6), logits((7, 1), seed=7)
    assert_same(loss.discriminator_loss, ref.discriminator_loss, (r, f), torch.float64)


def test_mean_averages_each_term_over_its_own_batch(backend):
    r, f = logits((2,), seed=8), logits((6,), seed=9)
    d = fastgan.WassersteinLoss(backend=backend).discriminator_loss(r, f)
    harness.assert_close(d, f.mean() - r.mean(), None, torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, params", CASES)
def test_gradcheck_float64(backend, name, params, reduction):
    loss = LOSSES[name](reduction=reduction, backend=backend, **params)
    r, f = (logits((3,), seed=s).requires_grad_(True) for s in (10, 11))
    assert torch.autograd.gradcheck(loss.discriminator_loss, (r, f))
    assert torch.autograd.gradgradcheck(loss.discriminator_loss, (r, f), fast_mode=True)
    g_inputs = (f, r) if loss.paired else (f,)
    assert torch.autograd.gradcheck(loss.generator_loss, g_inputs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, params", CASES)
def test_extreme_logits_are_finite_and_exact(backend, name, params, reduction, dtype):
    loss = LOSSES[name](reduction=reduction, backend=backend, **params)
    ref = LOSSES[name](reduction=reduction, backend="reference", **params)
    r = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=dtype)
    f = torch.tensor([1e4, -1e4, -1e4, 1e4], dtype=dtype)
    assert all(torch.isfinite(t).all() for t in loss_and_grads(loss.discriminator_loss, r, f).values())
    assert_same(loss.discriminator_loss, ref.discriminator_loss, (r, f), dtype)
    g_inputs = (f, r) if loss.paired else (f,)
    assert_same(loss.generator_loss, ref.generator_loss, g_inputs, dtype)


def test_softplus_losses_at_extreme_logits_take_their_limits(backend):
    """softplus(-1e4) = 0 and softplus(1e4) = 1e4 exactly; sigmoid saturates to 0 or 1."""
    r = torch.tensor([1e4, -1e4], dtype=torch.float32)
    out = loss_and_grads(fastgan.NonSaturatingLoss(reduction="none", backend=backend).generator_loss, r)
    assert out["loss"].tolist() == [0.0, 1e4]
    assert out["d input 0"].tolist() == [0.0, -weights(2, torch.float32)[1].item()]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_functional_forms_match_the_modules(backend, name, reduction):
    r, f = logits((6,), seed=12), logits((6,), seed=13)
    module = LOSSES[name](reduction=reduction, backend=backend)
    d = fastgan.discriminator_loss(r, f, name, reduction=reduction, backend=backend)
    g = fastgan.generator_loss(f, r, name, reduction=reduction, backend=backend)
    assert torch.equal(d, module.discriminator_loss(r, f))
    assert torch.equal(g, module.generator_loss(f, r))


def test_functional_form_passes_loss_parameters(backend):
    r, f = logits((6,), seed=14), logits((6,), seed=15)
    d = fastgan.discriminator_loss(r, f, "least_squares", backend=backend, a=-0.3, b=0.7)
    expected = ((r - 0.7) ** 2 / 2).mean() + ((f + 0.3) ** 2 / 2).mean()
    harness.assert_close(d, expected, None, torch.float64)
    g = fastgan.generator_loss(f, loss="least_squares", backend=backend, c=0.45)
    harness.assert_close(g, ((f - 0.45) ** 2 / 2).mean(), None, torch.float64)


# ---- the raw loss-term kernels against fastgan.terms -----------------------------------------

def _term_kernels(backend):
    """The backend's registered loss-term operators (fastgan.ops.loss_term)."""
    from fastgan.ops import loss_term
    return loss_term.FORWARD.op(backend), loss_term.BACKWARD.op(backend)


@pytest.mark.parametrize("reduction", list(Reduction), ids=lambda r: r.name.lower())
@pytest.mark.parametrize("term", [Term(Phi.SOFTPLUS, -1.0), Term(Phi.SOFTPLUS, 1.0, 0.0, -1.0),
                                  Term(Phi.RELU, -1.0, 1.0), Term(Phi.RELU, 1.0, 1.0),
                                  Term(Phi.IDENTITY, -1.0), Term(Phi.HALF_SQUARE, 1.0, -0.7, 0.3)],
                         ids=["softplus-", "minus-softplus", "relu-hinge-real", "relu-hinge-fake", "identity",
                              "half-square"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_loss_term_kernels_match_terms(backend, term, reduction, dtype):
    forward, backward = _term_kernels(backend)
    x = logits((37, 71), dtype, seed=16).t()  # non-contiguous, more than one 1024-element block
    args = (int(term.phi), term.sign, term.shift, term.scale, int(reduction))
    # grad_out: 0-dim for mean/sum, an expanded (non-contiguous) tensor for none.
    grad_out = (torch.tensor(0.75, dtype=dtype) if reduction != Reduction.NONE
                else logits((37,), dtype, seed=17).expand(71, 37))

    def spec(x, grad_out):  # fastgan.terms: the terms' definition, differentiated by autograd
        xr = x.clone().requires_grad_(True)
        value = reduce(term_value(xr, term), reduction)
        (grad,) = torch.autograd.grad(value, xr, grad_out)
        return {"value": value.detach(), "grad": grad}
    out = forward(x, *args)
    assert out.dtype == dtype
    truth, base = harness.expected(spec, (x, grad_out), dtype)
    harness.assert_close({"value": out, "grad": backward(grad_out, x, *args)}, truth, base, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
def test_loss_term_kernels_low_precision(backend, dtype):
    if backend == "torch":
        pytest.skip("the torch backend's operator is fastgan.terms itself: it checks no codes")
    if backend == "triton" and dtype != torch.float32:
        pytest.skip("the Triton interpreter has no bf16/fp16 arithmetic on CPU tensors")
    forward, backward = _term_kernels(backend)
    x = logits((257,), torch.float32, seed=18).to(dtype)
    term = Term(Phi.SOFTPLUS, -1.0)
    mean = forward(x, int(term.phi), term.sign, term.shift, term.scale, int(Reduction.MEAN))
    assert mean.dtype == dtype
    truth, base = harness.expected(lambda x: reduce(term_value(x, term), Reduction.MEAN), (x,), dtype)
    harness.assert_close(mean, truth, base, dtype)
    grad = backward(torch.tensor(1.0, dtype=dtype), x, int(term.phi), term.sign, term.shift, term.scale,
                    int(Reduction.MEAN))
    assert grad.dtype == dtype and grad.shape == x.shape


def test_triton_two_stage_sum_over_many_partials(backend):
    """The deterministic final sum of fastgan/kernels/_common.py over more partials than one block holds."""
    if backend != "triton":
        pytest.skip("Triton's own helper")
    import triton.language as tl

    from fastgan.kernels._common import finish_sum
    partials = logits((3001,), seed=20)
    out = finish_sum(partials, 0.3, torch.float64, tl.float64)
    harness.assert_close(out, 0.3 * partials.sum(), None, torch.float64)
    assert torch.equal(out, finish_sum(partials, 0.3, torch.float64, tl.float64))  # deterministic


def test_loss_term_kernels_reject_bad_codes(backend):
    if backend == "torch":
        pytest.skip("the torch backend's operator is fastgan.terms itself: it checks no codes")
    forward, backward = _term_kernels(backend)
    x = logits((4,), seed=19)
    with pytest.raises((RuntimeError, ValueError), match="reduction"):
        forward(x, 0, 1.0, 0.0, 1.0, 3)
    with pytest.raises((RuntimeError, ValueError), match="phi"):
        forward(x, 7, 1.0, 0.0, 1.0, 1)
    with pytest.raises((RuntimeError, TypeError), match="floating point"):
        forward(torch.arange(4), 0, 1.0, 0.0, 1.0, 1)
    with pytest.raises((RuntimeError, ValueError), match="empty"):
        forward(x[:0], 0, 1.0, 0.0, 1.0, 1)
    with pytest.raises((RuntimeError, ValueError), match="grad_out"):
        backward(torch.ones(3, dtype=x.dtype), x, 0, 1.0, 0.0, 1.0, 0)
    with pytest.raises((RuntimeError, ValueError), match="grad_out"):
        backward(torch.ones(4, dtype=x.dtype), x, 0, 1.0, 0.0, 1.0, 1)


# ---- the modules' own behaviour --------------------------------------------------------------

def test_module_repr_and_reduction_validation():
    assert repr(fastgan.HingeLoss(reduction="sum")) == "HingeLoss(reduction='sum')"
    assert repr(fastgan.LeastSquaresLoss(a=-1, b=1, c=0, backend="torch")) == \
        "LeastSquaresLoss(a=-1.0, b=1.0, c=0.0, reduction='mean', backend='torch')"
    with pytest.raises(ValueError, match=r"reduction must be one of .* got 'avg'"):
        fastgan.NonSaturatingLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'gpu'"):
        fastgan.NonSaturatingLoss(backend="gpu")
    with pytest.raises(ValueError, match="loss must be a GANLoss or one of"):
        fastgan.discriminator_loss(logits((2,)), logits((2,)), "vanilla")
    assert isinstance(fastgan.get_loss("hinge"), torch.nn.Module)
    assert set(LOSSES) == {"non_saturating", "minimax", "wasserstein", "hinge", "least_squares", "relativistic"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_none_reduction_needs_equal_shapes(backend, name):
    loss = LOSSES[name](reduction="none", backend=backend)
    with pytest.raises(ValueError, match=r"real_logits \(3,\) and fake_logits \(4,\) must have the same shape"):
        loss.discriminator_loss(logits((3,)), logits((4,)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_relativistic_needs_paired_logits(backend, reduction):
    loss = fastgan.RelativisticLoss(reduction=reduction, backend=backend)
    with pytest.raises(ValueError, match="real_logits .* fake_logits .* same shape .*pairs"):
        loss.discriminator_loss(logits((3,)), logits((4,)))
    with pytest.raises(ValueError, match="real_logits .* fake_logits .* same shape"):
        loss.generator_loss(logits((3,)), logits((4,)))
    with pytest.raises(ValueError, match="needs real_logits"):
        loss.generator_loss(logits((3,)))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_logits_raise_naming_the_argument(backend, name):
    loss = LOSSES[name](backend=backend)
    good = logits((3,))
    with pytest.raises(ValueError, match="fake_logits must not be empty"):
        loss.discriminator_loss(good, good[:0])
    with pytest.raises(ValueError, match="real_logits must not be empty"):
        loss.discriminator_loss(good[:0], good)
    with pytest.raises(TypeError, match="fake_logits has dtype torch.float32 but real_logits has torch.float64"):
        loss.discriminator_loss(good, good.float())
    with pytest.raises(TypeError, match="real_logits must be a floating-point tensor, got dtype torch.int64"):
        loss.discriminator_loss(torch.arange(3), good)
    with pytest.raises(TypeError, match="fake_logits must be a torch.Tensor, got list"):
        loss.discriminator_loss(good, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="fake_logits is on meta but real_logits is on cpu"):
        loss.discriminator_loss(good, torch.empty(3, dtype=good.dtype, device="meta"))
    with pytest.raises(ValueError, match="fake_logits must not be empty"):
        loss.generator_loss(good[:0], good)
    with pytest.raises(TypeError, match="fake_logits must be a floating-point tensor"):
        loss.generator_loss(torch.ones(3, dtype=torch.int32), good)
