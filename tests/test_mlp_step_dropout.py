"""Dropout on the fused step: masks drawn in Python (fastgan.mlp.dropout_masks) reach the kernels
as multiplier tensors; with the same RNG state every backend that takes masks matches the reference
(autograd double backward through ``MLPDiscriminator.forward``, which draws through the same helper
in the same order). The op-level tests run every path of each backend (triton: the fused and
the wide kernels; cuda: tests/test_mlp_step_cuda.py and, on the CPU, the emulator in
tests/test_mlp_step_cuda_emulated.py). Backends that take no masks yet are never handed any:
"auto" runs the step on a backend that does, an explicit request raises."""
from __future__ import annotations

import copy
import functools

import harness
import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import fused, step_spec
from fastgan.mlp import dropout_generator, dropout_masks
from conftest import backend_params
from harness import Case

MASK_BACKENDS = [p for p in backend_params("cpu") if p.values[0] in fused.DROPOUT_BACKENDS]
PATHS = {"triton": ("fused", "wide")}  # the op's path option per backend (others: "auto" only)
GEN_PATHS = {"triton": ("wide",)}

PENALTIES = {
    **{k: v for k, v in harness.PENALTIES.items()},
    "r1+r2": lambda: [fastgan.R1Penalty(gamma=3.0), fastgan.R2Penalty(gamma=2.0)],
    "lazy r1": lambda: fastgan.R1Penalty(gamma=3.0, every=2),
    "lazy gp + r2": lambda: [fastgan.GradientPenalty(weight=5.0, center=0.8, every=2), fastgan.R2Penalty(gamma=2.0)],
}


def make_D(dtype=torch.float64, hidden=(8, 6), pack=2, p=0.4, seed=0):
    torch.manual_seed(seed)
    return fastgan.MLPDiscriminator(3, hidden, pack=pack, dropout=p).to(dtype)


def inputs(dtype, rows=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3, generator=g, dtype=dtype), torch.randn(rows, 3, generator=g, dtype=dtype)


def disc_run(D, real, fake, loss, penalty, backend, backward, seed=7, calls=1):
    """Total, parts and D's gradients after ``calls`` steps (fresh penalty modules, grads summed)."""
    D = copy.deepcopy(D)
    pen = penalty() if penalty is not None else None
    g = torch.Generator().manual_seed(seed)
    out = {}
    for call in range(calls):
        total, parts = fastgan.discriminator_step(D, real, fake, loss=loss, penalty=pen, backend=backend,
                                                  generator=g, return_parts=True, backward=backward)
        if not backward:
            total.backward()
        out[f"total {call}"] = total.detach()
        out.update({f"{k} {call}": v for k, v in parts._asdict().items()})
    out.update({f"grad {n}": p.grad for n, p in D.named_parameters()})
    return out


@pytest.mark.parametrize("backward", [True, False], ids=["backward=True", "backward()"])
@pytest.mark.parametrize("pen_name", list(PENALTIES))
@pytest.mark.parametrize("loss", harness.LOSS_NAMES)
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_step_matches_the_reference_with_the_same_masks(backend, dtype, loss, pen_name, backward):
    D = make_D(torch.float64)
    real, fake = inputs(torch.float64)
    calls = 2 if pen_name.startswith("lazy") else 1

    def reference(D, real, fake):
        return disc_run(D, real, fake, loss, PENALTIES[pen_name], "reference", backward, calls=calls)

    want, base = harness.expected(reference, (D, real, fake), dtype)
    got = disc_run(D.to(dtype), real.to(dtype), fake.to(dtype), loss, PENALTIES[pen_name], backend, backward,
                   calls=calls)
    harness.assert_close(got, want, base, dtype, f"{backend} {loss} {pen_name}")


@pytest.mark.parametrize("pen_name", ["r1", "gp", "r1+r2"])
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_wide_networks_match_the_reference(backend, dtype, pen_name):
    """Widths whose weights take the native kernels' wide path (tiled products, row-split steps)."""
    D = make_D(torch.float64, hidden=(384, 384), pack=1, p=0.5)
    real, fake = inputs(torch.float64, rows=40)

    def reference(D, real, fake):
        return disc_run(D, real, fake, "non_saturating", PENALTIES[pen_name], "reference", True)

    want, base = harness.expected(reference, (D, real, fake), dtype)
    got = disc_run(D.to(dtype), real.to(dtype), fake.to(dtype), "non_saturating", PENALTIES[pen_name], backend, True)
    harness.assert_close(got, want, base, dtype, f"{backend} wide {pen_name}")


@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("loss", harness.LOSS_NAMES)
@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_generator_step_matches_the_reference_with_the_same_masks(backend, loss, dtype):
    D = make_D(torch.float64, hidden=(7,), pack=3)
    real, fake = inputs(torch.float64, rows=9)

    def run(D, real, fake, backend=None):
        fake = fake.clone().requires_grad_()
        value = fastgan.generator_step(D, fake, loss=loss, real=real, backend=backend or "reference",
                                       generator=torch.Generator().manual_seed(5))
        value.backward()
        return {"loss": value.detach(), "d fake": fake.grad}

    want, base = harness.expected(run, (D, real, fake), dtype)
    got = run(D.to(dtype), real.to(dtype), fake.to(dtype), backend)
    harness.assert_close(got, want, base, dtype, f"{backend} {loss}")


@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_the_op_takes_the_masks_of_three_separate_calls(backend):
    """The op's masks are what D(real), D(fake) and the penalty's D(x) draw, in that order."""
    D = make_D()
    real, fake = inputs(torch.float64)
    args = step_spec.disc_step_op_args(D, real, fake, loss=fastgan.get_loss("hinge"), penalty=fastgan.R1Penalty(),
                                       generator=torch.Generator().manual_seed(3))
    assert args["penalty_side"] == step_spec.PenaltySide.INPUT  # R1 on its own pass
    g = torch.Generator().manual_seed(3)
    for name, rows in (("masks_real", 6), ("masks_fake", 6), ("masks_penalty", 6)):
        expect = dropout_masks(D, rows, like=real, generator=g)
        assert all(torch.equal(a, b) for a, b in zip(args[name], expect)), name
    assert torch.equal(args["penalty_input"], args["real"])


def _backend_paths(paths):
    """(backend, path) per mask backend and each of its paths, skipped where the backend is."""
    return [pytest.param(p.values[0], path, id=f"{p.values[0]}-{path}", marks=p.marks)
            for p in MASK_BACKENDS for path in paths.get(p.values[0], ("auto",))]


def _op(backend, path, which):
    """The backend's registered operator; for triton its Python function with ``poison=True`` (an
    option beyond the schema: an element no kernel writes shows as NaN)."""
    op = fused.step_ops(backend)[which]
    options = {"path": path} if path != "auto" else {}
    if backend == "triton":
        from fastgan.kernels import mlp_step
        op = (mlp_step.mlp_disc_step, mlp_step.mlp_gen_step)[which]
        options["poison"] = True
    return functools.partial(op, **options)


# Odd widths, bias on and off, ReLU and LeakyReLU, depth 1 to 3, several row counts and p.
OP_CASES = [Case(3, (8, 6), pack=2, rows_real=7, rows_fake=5, dropout=0.4),
            Case(5, (7,), bias=False, slope=0.0, rows_real=4, rows_fake=4, dropout=0.5),
            Case(4, (9, 11, 6), rows_real=6, rows_fake=3, dropout=0.3, seed=2)]
OP_PAIRS = [("non_saturating", "r1"), ("wasserstein", "gp"), ("relativistic", "r2"), ("hinge", "dragan"),
            ("least_squares", "none")]


@pytest.mark.parametrize("loss_name,pen_name", OP_PAIRS)
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: f"h{'x'.join(map(str, c.hidden))}")
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("backend,path", _backend_paths(PATHS))
def test_the_op_on_every_path_matches_the_reference(backend, path, dtype, case, loss_name, pen_name):
    problem = case.with_(loss=loss_name, penalty=pen_name).build(dtype)
    harness.check_disc_op(problem, _op(backend, path, 0))


@pytest.mark.parametrize("loss_name", ["non_saturating", "relativistic"])
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: f"h{'x'.join(map(str, c.hidden))}")
@pytest.mark.parametrize("backend,path", _backend_paths(GEN_PATHS))
def test_the_generator_op_on_every_path_matches_the_reference(backend, path, case, loss_name):
    harness.check_gen_op(case.with_(loss=loss_name).build(torch.float64), _op(backend, path, 1))


@pytest.mark.parametrize("p", [0.3, 0.5, 0.375])  # a float32 uniform per mask; 1 and 3 random bits per mask
def test_masks_have_nn_dropouts_statistics(p):
    """Keep probability 1-p, kept values exactly 1/(1-p), no structure across rows or columns."""
    D = fastgan.MLPDiscriminator(4, (256, 128), dropout=p)
    masks = dropout_masks(D, 4000, like=torch.empty(0), generator=torch.Generator().manual_seed(11))
    assert [tuple(m.shape) for m in masks] == [(4000, 256), (4000, 128)]
    for m in masks:
        kept = m != 0
        assert torch.equal(m[kept], torch.full_like(m[kept], 1.0 / (1 - p)))
        n = m.numel()
        sigma = ((1 - p) * p / n) ** 0.5
        assert abs(kept.double().mean().item() - (1 - p)) < 6 * sigma  # false alarm ~2e-9 per draw
        # no structure across rows or columns: each row's / column's keep rate within 6 sigma
        for dim in (0, 1):
            rate = kept.double().mean(dim)
            k = m.shape[dim]
            assert ((rate - (1 - p)).abs() < 6 * ((1 - p) * p / k) ** 0.5).all()
    # the layers' masks are independent: their keep patterns agree no more than chance does
    a, b = (m[:, :128] != 0 for m in masks)
    agree = (a == b).double().mean().item()
    want = (1 - p) ** 2 + p ** 2
    assert abs(agree - want) < 6 * (want * (1 - want) / a.numel()) ** 0.5


@pytest.mark.parametrize("p", [0.4, 0.5])
def test_masks_are_the_same_in_every_dtype(p):
    """One seed, one set of masks, whatever the working dtype (the draw is float32 or bits)."""
    D = fastgan.MLPDiscriminator(4, (64, 32), dropout=p)
    draws = [dropout_masks(D, 20, like=torch.empty(0, dtype=dtype), generator=torch.Generator().manual_seed(5))
             for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)]
    for masks in draws:
        assert [m.dtype for m in masks] == [masks[0].dtype] * 2
        for m, ref in zip(masks, draws[-1]):
            assert torch.equal(m != 0, ref != 0)
    assert dropout_masks(D.eval(), 20, like=torch.empty(0)) == []


@pytest.mark.parametrize("p, bits", [(0.5, 1), (0.25, 2), (0.75, 2), (0.375, 3), (1 - 2 ** -8, 8), (0.3, None),
                                     (2 ** -9, None)])
def test_keep_bits_is_the_fewest_exact_bits(p, bits):
    assert fastgan.mlp.keep_bits(1 - p) == bits


def test_the_forward_is_the_nn_dropout_composition_with_its_masks():
    """MLPDiscriminator.forward with dropout is Linear -> LeakyReLU -> (times the mask) per layer,
    with the masks dropout_masks draws from the same RNG state."""
    D = fastgan.MLPDiscriminator(3, (16, 8), dropout=0.5)
    x = torch.randn(10, 3)
    torch.manual_seed(4)
    masks = dropout_masks(D, 10, like=x)
    want = D.out(F.leaky_relu(D.layers[1](F.leaky_relu(D.layers[0](x), 0.2) * masks[0]), 0.2) * masks[1]).squeeze(1)
    torch.manual_seed(4)
    assert torch.equal(D(x), want)
    assert not torch.equal(D(x), want)  # a fresh draw: other masks


@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_reproducible_from_a_generator(backend):
    D = make_D()
    real, fake = inputs(torch.float64)
    a = disc_run(D, real, fake, "hinge", PENALTIES["gp"], backend, True, seed=3)
    b = disc_run(D, real, fake, "hinge", PENALTIES["gp"], backend, True, seed=3)
    c = disc_run(D, real, fake, "hinge", PENALTIES["gp"], backend, True, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_the_default_rng_draws_the_same_masks_on_both_paths(backend):
    D = make_D()
    real, fake = inputs(torch.float64)
    out = {}
    for name in ("reference", backend):
        Dc = copy.deepcopy(D)
        torch.manual_seed(9)
        fastgan.discriminator_step(Dc, real, fake, loss="wasserstein", penalty=fastgan.GradientPenalty(),
                                   backend=name).backward()
        out[name] = [p.grad for p in Dc.parameters()]
    harness.assert_close(out[backend], out["reference"], None, torch.float64)


@pytest.mark.parametrize("backend", ["reference"] + [p.values[0] for p in MASK_BACKENDS])
def test_eval_mode_draws_nothing(backend):
    D = make_D().eval()
    D0 = copy.deepcopy(D)
    D0.dropout = 0.0
    real, fake = inputs(torch.float64)
    state = torch.get_rng_state()
    a = disc_run(D, real, fake, "hinge", PENALTIES["r1"], backend, True)
    assert torch.equal(state, torch.get_rng_state())
    b = disc_run(D0, real, fake, "hinge", PENALTIES["r1"], backend, True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fastgan.explain(D).path == "fused"


def test_explain_says_fused_for_a_training_dropout_D():
    D = make_D()
    for name in fused.DROPOUT_BACKENDS:
        try:
            fastgan.explain(copy.deepcopy(D).eval(), backend=name)
        except (ValueError, RuntimeError):
            continue  # the backend cannot run here (cuda without a GPU)
        assert fastgan.explain(D, backend=name) == fastgan.StepPlan("fused", name, fastgan.explain(D, backend=name).reason)
    plan = fastgan.explain(D)
    assert plan.path == "fused" and plan.backend in fused.DROPOUT_BACKENDS


def test_a_backend_without_masks_is_never_handed_any(monkeypatch):
    """A backend left out of DROPOUT_BACKENDS (every backend takes masks today, so one is left out
    here) is never handed masks: an explicit request raises naming dropout (no silent mask-free
    step), "auto" runs the step on the torch backend."""
    monkeypatch.setattr(fused, "DROPOUT_BACKENDS", ("torch",))
    D = make_D()
    real, fake = inputs(torch.float64)
    assert fastgan.explain(D.eval(), backend="cpu").backend == "cpu"
    D.train()
    with pytest.raises(ValueError, match="dropout"):
        fastgan.explain(D, backend="cpu")
    with pytest.raises(ValueError, match="dropout"):
        fastgan.discriminator_step(D, real, fake, loss="hinge", backend="cpu")
    with pytest.raises(ValueError, match="dropout"):
        fastgan.generator_step(D, fake, loss="hinge", backend="cpu")
    plan = fastgan.explain(D)
    assert plan == fastgan.StepPlan("fused", "torch", plan.reason) and "dropout" in plan.reason


@pytest.mark.parametrize("backend", MASK_BACKENDS)
def test_bad_masks_raise_clearly(backend):
    D = make_D()
    real, fake = inputs(torch.float64)
    args = step_spec.disc_step_op_args(D, real, fake, loss=fastgan.get_loss("hinge"))
    op = fused.step_ops(backend)[0]
    for name, bad in (("masks_real", args["masks_real"][:1]),
                      ("masks_fake", [m[:-1] for m in args["masks_fake"]]),
                      ("masks_real", [m.float() for m in args["masks_real"]])):
        with pytest.raises((ValueError, RuntimeError), match=name):
            op(**{k: ([t.detach() for t in v] if k in ("weights", "biases") else v) for k, v in args.items()}
               | {name: bad})


def test_a_standalone_penalty_draws_masks_after_eps_from_its_generator():
    D = make_D()
    real, fake = inputs(torch.float64)
    pen = fastgan.GradientPenalty()
    a = pen(D, real, fake, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    eps = torch.rand(real.shape[0] // D.pack, dtype=real.dtype, generator=g)
    with dropout_generator(g):
        b = fastgan.GradientPenalty()(D, real, fake, eps=eps)
    assert torch.equal(a, b)
