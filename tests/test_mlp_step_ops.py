"""The raw fused operators ``torch.ops.fastgan.mlp_disc_step`` / ``mlp_gen_step`` on CPU tensors
(csrc/mlp_step_cpu.cpp) against the specification: an :class:`MLPDiscriminator`, the loss module,
the penalty module with a fixed eps, and autograd (``create_graph=True``) on the reference backend.

The test translates losses and penalties into the operators' arguments itself (the contract in
csrc/bindings.cpp): terms with the mean's 1/N folded into their scale, the penalty side, kind and
per-row weight (weight * lazy factor / rows), and the penalty-input rows for WGAN-GP and DRAGAN.
"""
from __future__ import annotations

import random

import pytest
import torch

from fastgan import _dispatch, _native
from fastgan.losses import LOSSES, GANLoss, LeastSquaresLoss
from fastgan.mlp import MLPDiscriminator
from fastgan.penalties import DRAGANPenalty, GradientPenalty, R1Penalty, R2Penalty
from fastgan.reference import penalties as reference_penalties
from fastgan.terms import PenaltyKind

_EXT, _WHY = _native.load()
pytestmark = pytest.mark.skipif(_EXT is None, reason=f"fastgan._C did not load: {_WHY}")

PENALTIES = {"none": None, "r1": R1Penalty, "r2": R2Penalty, "gp": GradientPenalty, "dragan": DRAGANPenalty}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


# ---------------------------------------------------------------- the specification (autograd) ----
def make_case(in_features, hidden, pack, rows_real, rows_fake, bias, slope, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    D = MLPDiscriminator(in_features, hidden, slope, pack=pack, bias=bias).to(torch.float64)
    with torch.no_grad():  # biases large enough that both sides of every LeakyReLU occur
        for p in D.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / max(1, p.shape[-1]) ** 0.5)
    real = torch.randn(rows_real * pack, in_features, generator=gen, dtype=torch.float64)
    fake = torch.randn(rows_fake * pack, in_features, generator=gen, dtype=torch.float64) + 0.5
    return D.to(dtype), real.to(dtype), fake.to(dtype)


def make_penalty(name, gen_seed, real, pack):
    """The penalty module and its fixed eps (WGAN-GP: per row; DRAGAN: real's shape)."""
    if name == "none":
        return None, None
    gen = torch.Generator().manual_seed(gen_seed)
    pen = PENALTIES[name](2.5) if name in ("r1", "r2") else PENALTIES[name](3.0, center=0.7)
    if name == "gp":
        eps = torch.rand(real.shape[0] // pack, generator=gen, dtype=torch.float64).to(real.dtype)
    elif name == "dragan":
        eps = torch.rand(real.shape, generator=gen, dtype=torch.float64).to(real.dtype)
    else:
        eps = None
    return pen, eps


def parameters_in_op_order(D):
    """[W_1..W_L, b_1..b_L (if bias), w_out, b_out (if bias)]: the order of the operator's gradients."""
    ps = [layer.weight for layer in D.layers]
    if D.bias:
        ps += [layer.bias for layer in D.layers]
    ps.append(D.out.weight)
    if D.bias:
        ps.append(D.out.bias)
    return ps


def reference_disc(D, real, fake, loss, pen, eps):
    """stats (loss, penalty, mean real logit, mean fake logit) and the parameter gradients."""
    D.zero_grad(set_to_none=True)
    with _dispatch.use_backend("reference"):
        r, f = D(real), D(fake.detach())
        value = loss.discriminator_loss(r, f)
        p = pen(D, real, fake, eps=eps) if pen is not None else value.new_zeros(())
    (value + p).backward()
    stats = torch.stack([value.detach(), p.detach(), r.detach().mean(), f.detach().mean()])
    return stats, [q.grad for q in parameters_in_op_order(D)]


def reference_gen(D, real, fake, loss):
    fake = fake.detach().requires_grad_(True)
    with _dispatch.use_backend("reference"):
        params = {k: v.detach() for k, v in D.named_parameters()}
        call = lambda x: torch.func.functional_call(D, params, (x,))  # noqa: E731
        f = call(fake)
        value = loss.generator_loss(f, call(real) if loss.paired else None)
    value.backward()
    return torch.stack([value.detach(), f.detach().mean()]), fake.grad


# ------------------------------------------------------- translation into the operator's arguments --
def term_lists(loss: GANLoss, rows_real: int, rows_fake: int):
    t_real, t_fake = loss.discriminator_terms()
    mean = loss.reduction == "mean"
    real = t_real.scaled(1 / rows_real) if mean else t_real
    fake = (t_fake.scaled(1 / rows_fake) if mean else t_fake) if t_fake is not None else None
    return real.as_list(), fake.as_list() if fake is not None else []


def penalty_args(pen, eps, real, fake, pack):
    """(penalty_input, side, kind, weight per row, center)."""
    if pen is None:
        return None, -1, 0, 0.0, 0.0
    rows_r, rows_f = real.shape[0] // pack, fake.shape[0] // pack
    if isinstance(pen, R2Penalty):
        return None, 1, int(PenaltyKind.SQUARED), pen.weight * pen.every / rows_f, 0.0
    if isinstance(pen, R1Penalty):
        return None, 0, int(PenaltyKind.SQUARED), pen.weight * pen.every / rows_r, 0.0
    if isinstance(pen, GradientPenalty):
        x = reference_penalties.interpolate(real, fake, eps, pack)
    else:
        x = reference_penalties.perturb(real, eps, pen.scale)
    return x.reshape(rows_r, -1), 2, int(pen.kind), pen.weight * pen.every / rows_r, pen.center


def disc_args(D, real, fake, loss, pen, eps):
    pack = D.pack
    rows_r, rows_f = real.shape[0] // pack, fake.shape[0] // pack
    t_real, t_fake = term_lists(loss, rows_r, rows_f)
    pin, side, kind, weight, center = penalty_args(pen, eps, real, fake, pack)
    detach = lambda ps: [p.detach() for p in ps]  # noqa: E731
    return (real.reshape(rows_r, -1), fake.reshape(rows_f, -1), pin, detach(l.weight for l in D.layers),
            detach(l.bias for l in D.layers) if D.bias else [], D.out.weight.detach(),
            D.out.bias.detach() if D.bias else None, D.negative_slope, t_real, t_fake, loss.paired,
            side, kind, weight, center, False)


def gen_args(D, real, fake, loss):
    pack = D.pack
    rows = fake.shape[0] // pack
    term = loss.generator_term()
    term = term.scaled(1 / rows) if loss.reduction == "mean" else term
    return (fake.reshape(rows, -1), real.reshape(real.shape[0] // pack, -1) if loss.paired else None,
            [l.weight.detach() for l in D.layers], [l.bias.detach() for l in D.layers] if D.bias else [],
            D.out.weight.detach(), D.out.bias.detach() if D.bias else None, D.negative_slope,
            term.as_list(), loss.paired, False)


def assert_close(got, want, tol, what, floor=0.0):
    """Max error within tol of the reference's max magnitude (at least floor: a gradient that is
    exactly zero in the reference, e.g. db_out of a paired loss, is compared at the model's scale)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(got).any(), f"{what}: NaN in the operator's output"
    scale = max(want.abs().max().item(), floor)
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * max(scale, 1e-30) + 1e-300, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def check_disc(D, real, fake, loss, pen, eps, dtype):
    """The operator on (D, real, fake) in dtype against the float64 specification on the same
    (dtype-rounded) numbers."""
    rounded = lambda t: t.to(dtype).double() if t is not None else None  # noqa: E731
    D.to(dtype).double()
    real, fake, eps = rounded(real), rounded(fake), rounded(eps)
    stats_ref, grads_ref = reference_disc(D, real, fake, loss, pen, eps)
    out = torch.ops.fastgan.mlp_disc_step(*disc_args(D.to(dtype), real.to(dtype), fake.to(dtype), loss, pen,
                                                     eps.to(dtype) if eps is not None else None))
    D.double()
    assert len(out) == 1 + len(grads_ref)
    assert all(o.dtype == dtype for o in out)
    assert_close(out[0], stats_ref, TOL[dtype], "stats")
    typical = torch.cat([r.flatten() for r in grads_ref]).abs().mean().item()
    for i, (g, r) in enumerate(zip(out[1:], grads_ref)):
        assert_close(g, r, TOL[dtype], f"gradient {i}", floor=typical)


def random_case(seed):
    rng = random.Random(seed)
    depth = rng.randint(1, 5)
    hidden = tuple(rng.choice([1, 2, 3, 7, 31, 64, 100, 129, 300, rng.randint(1, 300)]) for _ in range(depth))
    in_features, pack = rng.randint(1, 40), rng.choice([1, 1, 2, 3])
    loss_name = rng.choice(sorted(LOSSES))
    pen_name = rng.choice(sorted(PENALTIES))
    rows_r = rng.choice([1, 3, rng.randint(1, 1023), rng.randint(200, 1023)])
    # keep the double-backward reference cheap
    weights = in_features * pack * hidden[0] + sum(a * b for a, b in zip(hidden[:-1], hidden[1:]))
    rows_r = max(1, min(rows_r, int(2e7 // weights)))
    same = loss_name == "relativistic" or pen_name == "gp"
    rows_f = rows_r if same else rng.choice([1, 3, rows_r, rng.randint(1, 1023)])
    rows_f = max(1, min(rows_f, int(2e7 // weights)))
    bias, slope = rng.random() < 0.7, rng.choice([0.0, 0.2])
    loss = LOSSES[loss_name](reduction=rng.choice(["mean", "mean", "sum"]))
    return dict(in_features=in_features, hidden=hidden, pack=pack, rows_r=rows_r, rows_f=rows_f, bias=bias,
                slope=slope, loss=loss, pen_name=pen_name)


def run_case(c, dtype, seed):
    D, real, fake = make_case(c["in_features"], c["hidden"], c["pack"], c["rows_r"], c["rows_f"], c["bias"],
                              c["slope"], torch.float64, seed)
    pen, eps = make_penalty(c["pen_name"], seed + 1, real, c["pack"])
    check_disc(D, real, fake, c["loss"], pen, eps, dtype)


# ---------------------------------------------------------------------------------------- tests --
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(16))
def test_disc_random_architectures(seed, dtype):
    run_case(random_case(seed), dtype, seed)


@pytest.mark.parametrize("pen_name", sorted(PENALTIES))
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_disc_every_loss_and_penalty(loss_name, pen_name):
    """Odd widths, 3 hidden layers, packing, several row blocks, every loss and penalty side."""
    loss = LOSSES[loss_name]()
    rows_f = 300 if loss.paired or pen_name == "gp" else 171
    D, real, fake = make_case(5, (37, 64, 3), 2, 300, rows_f, True, 0.2, torch.float64, 7)
    pen, eps = make_penalty(pen_name, 8, real, 2)
    check_disc(D, real, fake, loss, pen, eps, torch.float64)


@pytest.mark.parametrize("rows", [1, 3, 1023])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_disc_odd_row_counts_without_bias(rows, slope):
    D, real, fake = make_case(3, (129, 31), 1, rows, rows, False, slope, torch.float64, rows)
    pen, eps = make_penalty("gp", 3, real, 1)
    check_disc(D, real, fake, LeastSquaresLoss(a=-1.0, b=1.0), pen, eps, torch.float64)
    check_disc(D, real, fake, LOSSES["relativistic"](), *make_penalty("r1", 3, real, 1), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows, pen_name, bias", [(3, "r1", True), (700, "gp", False), (700, "r2", True),
                                                  (301, "none", True), (1, "dragan", False)])
def test_disc_wide_network(rows, pen_name, bias, dtype):
    """Weights above the kernel's wide threshold (whole-batch tiled products, gradients added in
    place): a few rows, several row blocks, every penalty side, with and without biases."""
    loss = LOSSES["relativistic" if pen_name == "r2" else "non_saturating"]()
    D, real, fake = make_case(17, (600, 601), 1, rows, rows, bias, 0.2, torch.float64, rows)
    check_disc(D, real, fake, loss, *make_penalty(pen_name, 5, real, 1), dtype)


def test_gen_step_wide_network():
    D, real, fake = make_case(9, (600, 333, 600), 1, 600, 600, True, 0.2, torch.float64, 2)
    for loss in (LOSSES["non_saturating"](), LOSSES["relativistic"]()):
        stats_ref, dfake_ref = reference_gen(D, real, fake, loss)
        out = torch.ops.fastgan.mlp_gen_step(*gen_args(D, real, fake, loss))
        assert_close(out[0], stats_ref, TOL[torch.float64], "stats")
        assert_close(out[1], dfake_ref, TOL[torch.float64], "d loss / d fake")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_gen_step(loss_name, dtype):
    loss = LOSSES[loss_name]()
    for seed, (hidden, pack, rows) in enumerate([((7,), 1, 1), ((64, 129, 5), 3, 3), ((100, 100), 1, 777)]):
        D, real, fake = make_case(6, hidden, pack, rows, rows, seed != 1, 0.2 * (seed != 2), torch.float64, seed)
        D.to(dtype).double()
        real, fake = real.to(dtype).double(), fake.to(dtype).double()
        stats_ref, dfake_ref = reference_gen(D, real, fake, loss)
        out = torch.ops.fastgan.mlp_gen_step(*gen_args(D.to(dtype), real.to(dtype), fake.to(dtype), loss))
        assert len(out) == 2 and all(o.dtype == dtype for o in out)
        assert_close(out[0], stats_ref, TOL[dtype], "stats")
        assert_close(out[1], dfake_ref.reshape(rows, -1), TOL[dtype], "d loss / d fake")


def test_extreme_logits_are_finite_and_exact():
    D, real, fake = make_case(4, (16, 16), 1, 50, 50, True, 0.2, torch.float64, 11)
    with torch.no_grad():
        D.out.weight.mul_(1e4 / D(real).abs().mean())  # |logits| of order 1e4
    for name in ("non_saturating", "relativistic", "hinge"):
        check_disc(D, real, fake, LOSSES[name](), *make_penalty("r1", 1, real, 1), torch.float64)
        check_disc(D, real, fake, LOSSES[name](), *make_penalty("gp", 1, real, 1), torch.float32)


def test_zero_norm_penalty_rows_give_zero_gradient_not_nan():
    """ReLU net whose rows with negative inputs have every unit off: |g| = 0 on those rows."""
    D, real, fake = make_case(3, (8,), 1, 20, 20, False, 0.0, torch.float64, 5)
    with torch.no_grad():
        D.layers[0].weight.abs_()
    real[:10] = -real[:10].abs() - 0.1  # all pre-activations negative: g = 0
    fake = -fake.abs() - 0.1
    for name in ("gp", "dragan"):
        pen, eps = make_penalty(name, 2, real, 1)
        if name == "dragan":
            eps = torch.zeros_like(real)  # keep the perturbed rows dead
        check_disc(D, real, fake, LOSSES["wasserstein"](), pen, eps, torch.float64)
    args = list(disc_args(D, real, fake, LOSSES["wasserstein"](), *make_penalty("gp", 2, real, 1)))
    with torch.no_grad():
        D.out.weight.zero_()  # g = 0 on every row: the penalty is weight * center^2, its gradient 0
    args[5] = D.out.weight.detach()
    out = torch.ops.fastgan.mlp_disc_step(*args)
    assert torch.isfinite(torch.cat([o.flatten() for o in out])).all()
    assert out[0][1].item() == pytest.approx(3.0 * 0.7 ** 2)


@pytest.mark.parametrize("hidden", [(64, 96), (600, 700)])
def test_bitwise_deterministic_across_calls_and_thread_counts(hidden):
    D, real, fake = make_case(32, hidden, 1, 1023, 900, True, 0.2, torch.float32, 3)
    for pen_name in ("r1", "gp"):
        real_ = real[:900] if pen_name == "gp" else real  # WGAN-GP pairs real and fake rows
        args = disc_args(D, real_, fake, LOSSES["non_saturating"](), *make_penalty(pen_name, 4, real_, 1))
        threads = torch.get_num_threads()
        try:
            first = torch.ops.fastgan.mlp_disc_step(*args)
            again = torch.ops.fastgan.mlp_disc_step(*args)
            torch.set_num_threads(1)
            single = torch.ops.fastgan.mlp_disc_step(*args)
            torch.set_num_threads(max(3, threads))
            more = torch.ops.fastgan.mlp_disc_step(*args)
        finally:
            torch.set_num_threads(threads)
        for other in (again, single, more):
            assert all(torch.equal(a, b) for a, b in zip(first, other))
    gargs = gen_args(D, real[:900], fake, LOSSES["relativistic"]())
    assert all(torch.equal(a, b) for a, b in zip(torch.ops.fastgan.mlp_gen_step(*gargs),
                                                 torch.ops.fastgan.mlp_gen_step(*gargs)))


def test_non_contiguous_arguments_give_identical_results():
    D, real, fake = make_case(5, (12, 9), 1, 40, 30, True, 0.2, torch.float64, 4)
    args = disc_args(D, real, fake, LOSSES["hinge"](), *make_penalty("r2", 1, real, 1))
    strided = lambda t: t.t().contiguous().t() if t.dim() == 2 else torch.stack([t, t], 1)[:, 0]  # noqa: E731
    bent = list(args)
    for i in (0, 1, 5):
        bent[i] = strided(args[i])
    bent[3], bent[4] = [strided(w) for w in args[3]], [strided(b) for b in args[4]]
    assert not bent[0].is_contiguous() and not bent[4][0].is_contiguous()
    for a, b in zip(torch.ops.fastgan.mlp_disc_step(*args), torch.ops.fastgan.mlp_disc_step(*bent)):
        assert torch.equal(a, b)


def test_half_precision_inputs_are_computed_in_float32():
    D, real, fake = make_case(4, (16, 8), 1, 30, 30, True, 0.2, torch.float64, 9)
    pen, eps = make_penalty("r1", 1, real, 1)
    stats_ref, grads_ref = reference_disc(D, real, fake, LOSSES["non_saturating"](), pen, eps)
    for dtype in (torch.bfloat16, torch.float16):
        Dd = MLPDiscriminator(4, (16, 8), 0.2).to(dtype)
        Dd.load_state_dict(D.state_dict())
        out = torch.ops.fastgan.mlp_disc_step(*disc_args(Dd, real.to(dtype), fake.to(dtype),
                                                         LOSSES["non_saturating"](), pen, eps))
        assert all(o.dtype == dtype for o in out)
        for g, r in zip(out, [stats_ref] + grads_ref):
            assert_close(g, r, 0.1, f"{dtype}")


def test_opcheck():
    D, real, fake = make_case(3, (5, 4), 2, 4, 4, True, 0.2, torch.float64, 1)
    for pen_name in ("none", "gp"):
        args = disc_args(D, real, fake, LOSSES["relativistic"](), *make_penalty(pen_name, 1, real, 2))
        torch.library.opcheck(torch.ops.fastgan.mlp_disc_step.default, args)
    torch.library.opcheck(torch.ops.fastgan.mlp_gen_step.default, gen_args(D, real, fake, LOSSES["relativistic"]()))


def _bad(args, i, value):
    args = list(args)
    args[i] = value
    return args


def test_bad_inputs_raise_clear_errors():
    D, real, fake = make_case(3, (5, 4), 1, 6, 6, True, 0.2, torch.float64, 1)
    args = disc_args(D, real, fake, LOSSES["non_saturating"](), None, None)
    W = args[3]
    op = torch.ops.fastgan.mlp_disc_step
    cases = [
        (_bad(args, 3, [W[0], torch.zeros(4, 3, dtype=torch.float64)]), r"weights\[1\] must be \(H, 5\)"),
        (_bad(args, 3, [W[0].t().contiguous(), W[1]]), r"weights\[0\] must be \(H, 3\)"),
        (_bad(args, 4, [args[4][0]]), "biases must be empty or one per layer"),
        (_bad(args, 4, [args[4][0], torch.zeros(5, dtype=torch.float64)]), r"biases\[1\] must have shape \(4,\)"),
        (_bad(args, 5, torch.zeros(1, 5, dtype=torch.float64)), r"w_out must have shape \(1, 4\)"),
        (_bad(args, 1, fake.float()), "fake has dtype Float but the first input has Double"),
        (_bad(args, 3, [W[0].float(), W[1]]), r"weights\[0\] has dtype Float"),
        (_bad(args, 1, fake[:, :2]), "fake has 2 features per row"),
        (_bad(args, 8, [0.0, 1.0, 0.0]), r"term_real must be \[\] or \[phi, sign, shift, scale\]"),
        (_bad(args, 8, [7.0, 1.0, 0.0, 1.0]), "phi code"),
        (_bad(args, 7, -0.1), "negative_slope must be >= 0"),
        (_bad(args, 11, 2), "penalty_side 2 needs penalty_input"),
        (_bad(args, 11, 5), "penalty_side must be"),
        (_bad(_bad(args, 11, 0), 12, 3), "penalty_kind must be"),
        (_bad(args, 0, real[:0]), "real must have at least one row"),
    ]
    paired = list(disc_args(D, real, fake[:4], LOSSES["relativistic"](), None, None))
    cases.append((paired, "as many real rows as fake rows, got 6 and 4"))
    for bad, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*bad)
    gargs = list(gen_args(D, real, fake[:4], LOSSES["relativistic"]()))
    with pytest.raises(RuntimeError, match="as many real rows as fake rows"):
        torch.ops.fastgan.mlp_gen_step(*gargs)
    with pytest.raises(RuntimeError, match="needs real rows"):
        torch.ops.fastgan.mlp_gen_step(*_bad(gargs, 1, None))
