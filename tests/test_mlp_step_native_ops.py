"""The raw fused operators ``torch.ops.fastgan.mlp_disc_step`` / ``mlp_gen_step`` on CPU tensors
(csrc/mlp_step_cpu.cpp) against the specification, through the shared harness (tests/harness.py):
cases, the float64 reference (``backend="reference"``: the modules and autograd with
``create_graph=True``) and the one error bound. The operators' arguments come from the library's
own translation (``fastgan.step_spec``), so this tests the contract the library uses.

Determinism (measured, and asserted by ``test_bitwise_deterministic_across_calls_and_thread_counts``):
the ``cpu`` operators give the same bits run to run and at any thread count (1, 2, 3, ...), on the
small-width path and on the wide path: every reduction has a fixed order that does not depend on
how rows are split among threads.
"""
from __future__ import annotations

import pytest
import torch

import harness
from fastgan import _native
from harness import Case

_EXT, _WHY = _native.load()
pytestmark = pytest.mark.skipif(_EXT is None, reason=f"fastgan._C did not load: {_WHY}")

DISC = torch.ops.fastgan.mlp_disc_step if _EXT is not None else None
GEN = torch.ops.fastgan.mlp_gen_step if _EXT is not None else None

# random architectures with many rows (several row blocks); rows x weights capped so that the
# double-backward reference stays cheap
RANDOM = harness.cases(16, seed=7, rows=(1, 3, 17, 200, 511, 1023), max_work=int(2e7))


@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", harness.case_params(RANDOM))
def test_disc_random_architectures(case, dtype):
    harness.check_disc_op(case.build(dtype), DISC)


@pytest.mark.parametrize("case,dtype", harness.case_params(
    harness.every_combination(Case(5, (37, 64, 3), pack=2, rows_real=300, rows_fake=171)),
    slow=lambda i: i % 4 != 0))
def test_disc_every_loss_penalty_pack_and_dtype(case, dtype):
    """Odd widths, several row blocks, every loss x penalty x pack x dtype (a quarter by default,
    all under ``-m slow``)."""
    harness.check_disc_op(case.build(dtype), DISC)


@pytest.mark.parametrize("rows", [1, 3, 1023])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_disc_odd_row_counts_without_bias(rows, slope):
    arch = Case(3, (129, 31), rows_real=rows, rows_fake=rows, bias=False, slope=slope, seed=rows)
    harness.check_disc_op(arch.with_(loss="least_squares", loss_kwargs=(("a", -1.0), ("b", 1.0)),
                                     penalty="gp").build(torch.float64), DISC)
    harness.check_disc_op(arch.with_(loss="relativistic", penalty="r1").build(torch.float32), DISC)


@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("rows, pen_name, bias", [(3, "r1", True), (700, "gp", False), (700, "r2", True),
                                                  (301, "none", True), (1, "dragan", False)])
def test_disc_wide_network(rows, pen_name, bias, dtype):
    """Weights above the kernel's wide threshold (whole-batch tiled products, gradients added in
    place): a few rows, several row blocks, every penalty side, with and without biases."""
    case = Case(17, (600, 601), rows_real=rows, rows_fake=rows, bias=bias, penalty=pen_name, seed=rows,
                loss="relativistic" if pen_name == "r2" else "non_saturating")
    harness.check_disc_op(case.build(dtype), DISC)


def test_gen_step_wide_network():
    for loss in ("non_saturating", "relativistic"):
        case = Case(9, (600, 333, 600), rows_real=600, rows_fake=600, loss=loss, seed=2)
        harness.check_gen_op(case.build(torch.float64), GEN)


@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("loss_name", harness.LOSS_NAMES)
def test_gen_step(loss_name, dtype):
    for seed, (hidden, pack, rows) in enumerate([((7,), 1, 1), ((64, 129, 5), 3, 3), ((100, 100), 1, 777)]):
        case = Case(6, hidden, pack=pack, rows_real=rows, rows_fake=rows, bias=seed != 1, slope=0.2 * (seed != 2),
                    loss=loss_name, seed=seed)
        harness.check_gen_op(case.build(dtype), GEN)


def test_extreme_logits_are_finite_and_exact():
    for name in ("non_saturating", "relativistic", "hinge"):
        for pen, dtype in (("r1", torch.float64), ("gp", torch.float32)):
            problem = Case(4, (16, 16), rows_real=50, rows_fake=50, loss=name, penalty=pen, seed=11).build(dtype)
            with torch.no_grad():  # |logits| of order 1e4
                problem.D.out.weight.mul_(1e4 / problem.D(problem.real).abs().mean())
            harness.check_disc_op(problem, DISC)


def test_zero_norm_penalty_rows_give_zero_gradient_not_nan():
    """ReLU net whose rows with negative inputs have every unit off: |g| = 0 on those rows."""
    for name in ("gp", "dragan"):
        problem = Case(3, (8,), rows_real=20, rows_fake=20, bias=False, slope=0.0, loss="wasserstein",
                       penalty=name, seed=5).build(torch.float64)
        with torch.no_grad():
            problem.D.layers[0].weight.abs_()
            problem.real[:10] = -problem.real[:10].abs() - 0.1  # all pre-activations negative: g = 0
            problem.fake.copy_(-problem.fake.abs() - 0.1)
            if name == "dragan":
                problem.eps.zero_()  # keep the perturbed rows dead
        harness.check_disc_op(problem, DISC)
    with torch.no_grad():
        problem.D.out.weight.zero_()  # g = 0 on every row: the penalty is weight * center^2, its gradient 0
    out = DISC(**harness.disc_op_args(problem))
    assert torch.isfinite(torch.cat([o.flatten() for o in out])).all()
    pen = problem.penalty()
    assert out[0][1].item() == pytest.approx(pen.weight * pen.center ** 2)


@pytest.mark.parametrize("hidden", [(64, 96), (600, 700)], ids=["small", "wide"])
def test_bitwise_deterministic_across_calls_and_thread_counts(hidden):
    """Claim: the ``cpu`` operators return the same bits on every call and at every thread count
    (1, 2, 3 and the default), on both the small-width and the wide path, with and without a penalty
    on interpolated rows. (Measured on the 2-core CI machine; each reduction has a fixed order.)"""
    threads = torch.get_num_threads()
    counts = sorted({1, 2, 3, threads})
    for pen_name in ("r1", "gp"):
        problem = Case(32, hidden, rows_real=900, rows_fake=900 if pen_name == "gp" else 1023,
                       penalty=pen_name, seed=3).build(torch.float32)
        args = harness.disc_op_args(problem)
        gargs = harness.gen_op_args(problem.case.with_(loss="relativistic").build(torch.float32))
        results = []
        try:
            for n in counts + counts:  # each count twice: run to run and across counts
                torch.set_num_threads(n)
                results.append((n, DISC(**args), GEN(**gargs)))
        finally:
            torch.set_num_threads(threads)
        _, first, gfirst = results[0]
        for n, out, gout in results[1:]:
            assert all(torch.equal(a, b) for a, b in zip(first, out)), f"{pen_name}: {n} threads differ from 1"
            assert all(torch.equal(a, b) for a, b in zip(gfirst, gout)), f"gen: {n} threads differ from 1"


def test_non_contiguous_arguments_give_identical_results():
    problem = Case(5, (12, 9), rows_real=40, rows_fake=30, loss="hinge", penalty="r2", seed=4).build(torch.float64)
    args = harness.disc_op_args(problem)
    strided = lambda t: t.t().contiguous().t() if t.dim() == 2 else torch.stack([t, t], 1)[:, 0]  # noqa: E731
    bent = dict(args, real=strided(args["real"]), fake=strided(args["fake"]), w_out=strided(args["w_out"]),
                weights=[strided(w) for w in args["weights"]], biases=[strided(b) for b in args["biases"]])
    assert not bent["real"].is_contiguous() and not bent["biases"][0].is_contiguous()
    for a, b in zip(DISC(**args), DISC(**bent)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    """16-bit inputs and outputs, float32 accumulation: within the bound of the same composition
    run in the 16-bit dtype."""
    harness.check_disc_op(Case(4, (16, 8), rows_real=30, rows_fake=30, penalty="r1", seed=9).build(dtype), DISC)


def test_bad_inputs_raise_clear_errors():
    problem = Case(3, (5, 4), rows_real=6, rows_fake=6, seed=1).build(torch.float64)
    args = harness.disc_op_args(problem)
    W, b, real, fake = args["weights"], args["biases"], args["real"], args["fake"]
    cases = [
        (dict(weights=[W[0], torch.zeros(4, 3, dtype=torch.float64)]), r"weights\[1\] must be \(H, 5\)"),
        (dict(weights=[W[0].t().contiguous(), W[1]]), r"weights\[0\] must be \(H, 3\)"),
        (dict(biases=[b[0]]), "biases must be empty or one per layer"),
        (dict(biases=[b[0], torch.zeros(5, dtype=torch.float64)]), r"biases\[1\] must have shape \(4,\)"),
        (dict(w_out=torch.zeros(1, 5, dtype=torch.float64)), r"w_out must have shape \(1, 4\)"),
        (dict(fake=fake.float()), "fake has dtype Float but the first input has Double"),
        (dict(weights=[W[0].float(), W[1]]), r"weights\[0\] has dtype Float"),
        (dict(fake=fake[:, :2]), "fake has 2 features per row"),
        (dict(term_real=[0.0, 1.0, 0.0]), r"term_real must be \[\] or \[phi, sign, shift, scale\]"),
        (dict(term_real=[7.0, 1.0, 0.0, 1.0]), "phi code"),
        (dict(negative_slope=-0.1), "negative_slope must be >= 0"),
        (dict(penalty_side=2), "penalty_side 2 needs penalty_input"),
        (dict(penalty_side=5), "penalty_side must be"),
        (dict(penalty_side=0, penalty_kind=3), "penalty_kind must be"),
        (dict(real=real[:0]), "real must have at least one row"),
    ]
    paired = harness.disc_op_args(problem.case.with_(loss="relativistic", rows_real=4).build(torch.float64))
    cases.append((dict(paired, fake=fake[:4], real=real), "as many real rows as fake rows, got 6 and 4"))
    for change, message in cases:
        with pytest.raises(RuntimeError, match=message):
            DISC(**{**args, **change})
    gargs = harness.gen_op_args(problem.case.with_(loss="relativistic").build(torch.float64))
    with pytest.raises(RuntimeError, match="as many real rows as fake rows"):
        GEN(**dict(gargs, fake=gargs["fake"][:4]))
    with pytest.raises(RuntimeError, match="needs real rows"):
        GEN(**dict(gargs, real=None))


@pytest.mark.parametrize("step", ["disc", "gen"])
def test_single_path_backends_take_auto_only(step):
    """``path`` is an op option (cuda/triton: "fused" | "wide" | "auto"); the cpu kernels and the
    torch closed form have one path and refuse a forced one, naming the argument."""
    from fastgan import closed_form
    problem = Case(5, (7, 6), rows_real=3, rows_fake=2).build(torch.float64)
    args = harness.disc_op_args(problem) if step == "disc" else harness.gen_op_args(problem)
    ops = [closed_form.mlp_disc_step if step == "disc" else closed_form.mlp_gen_step]
    ops += [DISC if step == "disc" else GEN] if _EXT is not None else []
    for op in ops:
        op(**args, path="auto")
        with pytest.raises((ValueError, RuntimeError), match="path must be 'auto'"):
            op(**args, path="fused")
