"""The ``cuda`` fused MLP step (csrc/mlp_step.cu) against the reference composition.

Ground truth, in float64 with autograd::

    loss.discriminator_loss(D(real), D(fake)) + penalty(D, real, fake, eps=eps)   then .backward()

and for the generator ``loss.generator_loss(D(fake), D(real))`` differentiated w.r.t. ``fake``.
``torch.ops.fastgan.mlp_disc_step`` / ``mlp_gen_step`` must give the same stats and gradients on
both CUDA paths (``FASTGAN_CUDA_MLP_PATH=fused``: the small-width shared-memory kernel;
``wide``: ATen products + custom epilogues), for every loss and penalty, odd shapes, 1 and 3
rows. Errors are measured norm-wise: |actual - expected| / |expected| per tensor.
"""
from __future__ import annotations

import copy

import pytest
import torch

from fastgan import _dispatch, _native
from fastgan.losses import LOSSES, get_loss
from fastgan.mlp import MLPDiscriminator
from fastgan.penalties import PENALTIES
from fastgan.reference import penalties as ref_penalties


def _cuda_op_available() -> bool:
    if not torch.cuda.is_available():
        return False
    module, _ = _native.load()
    return module is not None and bool(module.cuda_compiled)


pytestmark = pytest.mark.skipif(not _cuda_op_available(), reason="needs a GPU and fastgan built with CUDA")

DEVICE = "cuda"
SIDE = {None: -1, "r1": 0, "r2": 1, "gp": 2, "dragan": 2}

# (in_features, hidden, bias, negative_slope): small widths take the fused kernel under
# "auto", the last one the wide path; every case also runs with each path forced.
WIDE = (37, (200, 130), True, 0.1)  # never fits the fused kernel's shared memory
ARCHS = [
    (5, (7,), True, 0.2),
    (13, (9, 11, 6), False, 0.0),
    (3, (64, 64, 64, 64), True, 0.2),
    WIDE,
]
# (real rows, fake rows); paired losses use (n, n).
ROWS = [(1, 1), (3, 3), (50, 37), (300, 211)]


@pytest.fixture(params=["fused", "wide", "auto"])
def path(request, monkeypatch):
    monkeypatch.setenv("FASTGAN_CUDA_MLP_PATH", request.param)
    return request.param


def _poison_allocator(dtype):
    """Fill freed blocks of the caching allocator (small and large pools, many sizes) with NaN,
    so an output element that the op allocates but forgets to write most likely shows."""
    blocks = [torch.full((n,), float("nan"), device=DEVICE, dtype=dtype)
              for n in (1 << 22, 1 << 18, 1 << 14, 1 << 10, 64, 8, 1) for _ in range(8)]
    del blocks
    torch.cuda.synchronize()


def _make(arch, rows, dtype, loss_name, pen_name=None, seed=0, device=DEVICE):
    """A discriminator and real/fake rows (paired losses and WGAN-GP get as many fake as real rows)."""
    in_features, hidden, bias, slope = arch
    torch.manual_seed(seed)
    D = MLPDiscriminator(in_features, hidden, negative_slope=slope, bias=bias).to(device, dtype)
    nr, nf = rows
    if LOSSES[loss_name].paired or pen_name == "gp":  # paired rows; WGAN-GP interpolates real and fake
        nf = nr
    real = torch.randn(nr, in_features, device=device).to(dtype)
    fake = (0.5 * torch.randn(nf, in_features, device=device) + 0.3).to(dtype)
    return D, real, fake


def _terms(loss, nr, nf):
    """The op's term lists: the loss's terms with the mean's 1/N folded into scale."""
    t_real, t_fake = loss.discriminator_terms()
    tr = t_real.scaled(1.0 / nr).as_list()
    tf = [] if t_fake is None else t_fake.scaled(1.0 / nf).as_list()
    return tr, tf


def _penalty_setup(name, real, fake):
    """(penalty module, eps, penalty_input for the op in real's dtype or None, rows)."""
    if name is None:
        return None, None, None, 0
    pen = PENALTIES[name](backend="reference")
    gen = torch.Generator(device=real.device).manual_seed(1)
    if name == "gp":
        eps = torch.rand(real.shape[0], device=real.device, dtype=torch.float64, generator=gen)
        x = ref_penalties.interpolate(real.double(), fake.double(), eps)
    elif name == "dragan":
        eps = torch.rand(real.shape, device=real.device, dtype=torch.float64, generator=gen)
        x = ref_penalties.perturb(real.double(), eps, pen.scale)
    else:
        eps, x = None, None
    rows = {"r1": real.shape[0], "r2": fake.shape[0]}.get(name, real.shape[0])
    return pen, eps, (None if x is None else x.to(real.dtype)), rows


def _reference_disc(D, real, fake, loss_name, pen_name):
    """Stats and parameter gradients of the reference composition, in float64."""
    D64 = copy.deepcopy(D).double()
    D64.zero_grad(set_to_none=True)
    loss = get_loss(loss_name, backend="reference")
    pen, eps, _, _ = _penalty_setup(pen_name, real, fake)
    r64, f64 = real.double(), fake.double()
    with _dispatch.use_backend("reference"):
        ro, fo = D64(r64), D64(f64)
        value = loss.discriminator_loss(ro, fo)
        p = pen(D64, r64, f64, eps=eps) if pen is not None else value.new_zeros(())
        (value + p).backward()
    stats = torch.stack([value.detach(), p.detach(), ro.detach().mean(), fo.detach().mean()])
    grads = [layer.weight.grad for layer in D64.layers]
    if D64.bias:
        grads += [layer.bias.grad for layer in D64.layers]
    grads.append(D64.out.weight.grad)
    if D64.bias:
        grads.append(D64.out.bias.grad)
    return stats, grads


def _op_disc(D, real, fake, loss_name, pen_name, allow_tf32=False):
    loss = get_loss(loss_name)
    tr, tf = _terms(loss, real.shape[0], fake.shape[0])
    pen, _, x_pen, pen_rows = _penalty_setup(pen_name, real, fake)
    kind = int(pen.kind) if pen is not None else 0
    weight = pen.weight / pen_rows if pen is not None else 0.0
    center = pen.center if pen is not None else 0.0
    weights = [layer.weight.detach() for layer in D.layers]
    biases = [layer.bias.detach() for layer in D.layers] if D.bias else []
    b_out = D.out.bias.detach() if D.bias else None
    _poison_allocator(real.dtype)
    return torch.ops.fastgan.mlp_disc_step(
        real, fake, x_pen, weights, biases, D.out.weight.detach(), b_out, D.negative_slope, tr, tf,
        loss.paired, SIDE[pen_name], kind, weight, center, allow_tf32)


def _assert_rel(actual, expected, rtol, what):
    actual = actual.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values {actual}"
    # Scalars (loss, penalty, mean logits, db_out = sum of c) are sums of O(1) terms that may
    # cancel to ~0 (hinge's db_out), so their error is measured against 1.
    scale = expected.norm().item()
    err = (actual - expected).norm().item()
    assert err <= rtol * max(scale, 1.0 if expected.numel() == 1 else 1e-3), f"{what}: |error| {err:.3e} vs |expected| {scale:.3e} (rtol {rtol})"


def _skip_unfit(path, arch):
    if path == "fused" and arch is WIDE:
        pytest.skip("the wide architecture does not fit the fused kernel (see test_forced_fused_path_refuses...)")


def _check_disc(path, arch, rows, dtype, loss_name, pen_name, rtol, allow_tf32=False):
    _skip_unfit(path, arch)
    D, real, fake = _make(arch, rows, dtype, loss_name, pen_name)
    out = _op_disc(D, real, fake, loss_name, pen_name, allow_tf32)
    stats, grads = _reference_disc(D, real, fake, loss_name, pen_name)
    assert len(out) == 1 + len(grads)
    assert all(t.dtype == dtype and t.device.type == "cuda" for t in out)
    for i, name in enumerate(["loss", "penalty", "mean real logit", "mean fake logit"]):
        _assert_rel(out[0][i], stats[i], rtol, name)
    for i, (a, e) in enumerate(zip(out[1:], grads)):
        _assert_rel(a, e, rtol, f"gradient {i}")


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("pen_name", [None, "r1", "r2", "gp", "dragan"])
@pytest.mark.parametrize("arch", ARCHS[:3])
def test_disc_float64_every_loss_and_penalty(path, arch, loss_name, pen_name):
    _check_disc(path, arch, (50, 37), torch.float64, loss_name, pen_name, 1e-10)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss_name,pen_name", [("non_saturating", "r1"), ("wasserstein", "gp"),
                                                ("relativistic", "r2"), ("hinge", None)])
def test_disc_float64_shapes(path, arch, rows, loss_name, pen_name):
    _check_disc(path, arch, rows, torch.float64, loss_name, pen_name, 1e-10)


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("pen_name", [None, "r1", "gp", "dragan"])
@pytest.mark.parametrize("arch", [ARCHS[1], ARCHS[3]])
def test_disc_float32_highest(path, arch, loss_name, pen_name):
    _check_disc(path, arch, (50, 37), torch.float32, loss_name, pen_name, 1e-5, allow_tf32=False)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("loss_name,pen_name", [("non_saturating", "r1"), ("wasserstein", "gp")])
@pytest.mark.parametrize("arch", [ARCHS[2], WIDE])
def test_disc_float32_tf32(path, arch, rows, loss_name, pen_name):
    # TF32 rounds every product operand to 10 mantissa bits (~5e-4); chains of up to 2L+1
    # products on the wide path make ~1e-3 typical, hence 1e-2 as the bound.
    _check_disc(path, arch, rows, torch.float32, loss_name, pen_name, 1e-2, allow_tf32=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", [ARCHS[2], ARCHS[3]])
@pytest.mark.parametrize("loss_name,pen_name", [("non_saturating", "r1"), ("wasserstein", "gp")])
def test_disc_low_precision(path, dtype, arch, loss_name, pen_name):
    # Inputs and weights are rounded to 16 bits for both sides (the reference upcasts the same
    # values); accumulation is fp32, intermediates of the wide path are stored in 16 bits.
    _check_disc(path, arch, (300, 211), dtype, loss_name, pen_name, 3e-2)


def _reference_gen(D, fake, real, loss_name):
    D64 = copy.deepcopy(D).double().requires_grad_(False)
    loss = get_loss(loss_name, backend="reference")
    f64 = fake.double().requires_grad_(True)
    with _dispatch.use_backend("reference"):
        fo = D64(f64)
        ro = D64(real.double()) if loss.paired else None
        value = loss.generator_loss(fo, ro)
    (grad,) = torch.autograd.grad(value, f64)
    return torch.stack([value.detach(), fo.detach().mean()]), grad


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_gen(path, arch, loss_name, dtype, rtol):
    _skip_unfit(path, arch)
    for rows in [(1, 1), (3, 3), (120, 77)]:
        D, real, fake = _make(arch, rows, dtype, loss_name)
        loss = get_loss(loss_name)
        term = loss.generator_term().scaled(1.0 / fake.shape[0]).as_list()
        weights = [layer.weight.detach() for layer in D.layers]
        biases = [layer.bias.detach() for layer in D.layers] if D.bias else []
        b_out = D.out.bias.detach() if D.bias else None
        _poison_allocator(dtype)
        stats, grad = torch.ops.fastgan.mlp_gen_step(
            fake, real if loss.paired else None, weights, biases, D.out.weight.detach(), b_out, D.negative_slope,
            term, loss.paired, False)
        ref_stats, ref_grad = _reference_gen(D, fake, real, loss_name)
        assert stats.dtype == dtype and grad.dtype == dtype and grad.shape == fake.shape
        _assert_rel(stats[0], ref_stats[0], rtol, "generator loss")
        _assert_rel(stats[1], ref_stats[1], rtol, "mean fake logit")
        _assert_rel(grad, ref_grad, rtol, "d loss / d fake")


def _args(D, real, fake):
    weights = [layer.weight.detach() for layer in D.layers]
    biases = [layer.bias.detach() for layer in D.layers]
    return dict(real=real, fake=fake, penalty_input=None, weights=weights, biases=biases,
                w_out=D.out.weight.detach(), b_out=D.out.bias.detach(), negative_slope=0.2,
                term_real=[0.0, -1.0, 0.0, 1.0], term_fake=[0.0, 1.0, 0.0, 1.0], paired=False,
                penalty_side=-1, penalty_kind=0, penalty_weight=0.0, penalty_center=0.0, allow_tf32=False)


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(fake=a["fake"].double()), "dtype"),
    (lambda a: a.update(fake=a["fake"].cpu()), "CUDA"),
    (lambda a: a.update(fake=a["fake"][:, :2]), "fake must be"),
    (lambda a: a.update(real=a["real"][:0]), "rows >= 1"),
    (lambda a: a.update(w_out=a["w_out"].t()), "w_out must be"),
    (lambda a: a.update(biases=a["biases"][:1]), "biases must be empty or one per layer"),
    (lambda a: a.update(weights=[a["weights"][0].t(), a["weights"][1]]), "weights[0] must be"),
    (lambda a: a.update(penalty_side=2), "penalty_input must be given exactly when"),
    (lambda a: a.update(penalty_side=3), "penalty_side must be"),
    (lambda a: a.update(penalty_kind=5, penalty_side=0), "penalty_kind must be"),
    (lambda a: a.update(term_real=[7.0, 1.0, 0.0, 1.0]), "phi"),
    (lambda a: a.update(term_fake=[0.0, 1.0]), "term_fake must be"),
    (lambda a: a.update(paired=True), "paired losses"),
    (lambda a: a.update(negative_slope=-0.1), "negative_slope"),
])
def test_disc_bad_input_raises(change, message):
    D, real, fake = _make(ARCHS[1][:1] + ((9, 11),) + (True, 0.2), (4, 3), torch.float32, "non_saturating")
    args = _args(D, real, fake)
    change(args)
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("(", r"\(")):
        torch.ops.fastgan.mlp_disc_step(*args.values())


def test_forced_fused_path_refuses_networks_that_do_not_fit(monkeypatch):
    monkeypatch.setenv("FASTGAN_CUDA_MLP_PATH", "fused")
    D, real, fake = _make((8, (1024, 1024), True, 0.2), (4, 4), torch.float32, "non_saturating")
    with pytest.raises(RuntimeError, match="does not fit"):
        torch.ops.fastgan.mlp_disc_step(*_args(D, real, fake).values())
