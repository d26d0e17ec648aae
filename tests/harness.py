"""The one test harness: cases, the float64 reference, and the one error bound.

Every test that compares a backend against the specification uses this module, on every device
and in every precision (docs/DESIGN.md section 5). Three parts:

**Cases.** :class:`Case` is one fused-step problem: an :class:`~fastgan.MLPDiscriminator`
architecture (odd widths, widths that are not powers of two, 1-row batches, packing, bias on/off,
ReLU / LeakyReLU), a loss (any of ``fastgan.LOSSES``), a penalty (:data:`PENALTIES`) and a
reduction. :func:`cases` gives a seeded sample that covers every loss x penalty (the fast default);
:func:`every_combination` gives the full product loss x penalty x pack x dtype (mark it ``slow``,
see :func:`case_params`). :meth:`Case.build` makes a :class:`Problem`: the discriminator, the rows
and the penalty's fixed randomness (WGAN-GP's eps per row, DRAGAN's noise), rounded to the working
dtype so that the float64 reference sees exactly the numbers the backend sees. ``dropout=p``
gives D dropout in training mode; every function here that runs a step or builds op arguments
does it under :meth:`Problem.draws` (the case's seed, masks drawn on the CPU), so all of them
see the same masks, in every dtype and on every device.

**Reference.** The specification is the library's own ``backend="reference"`` path (plain autograd
with ``create_graph=True``): :func:`reference_disc` / :func:`reference_gen` call
``fastgan.discriminator_step`` / ``generator_step`` with ``backend="reference"``; nothing here
re-implements the maths. :func:`expected` runs a reference function twice: in float64 (the truth)
and in the working dtype under the same precision settings (the *baseline*: what the same PyTorch
composition achieves on this machine's BLAS / GPU, TF32 allowed or not).

**The bound** (the rule flash-attention's tests use). Errors are measured one way everywhere,
:func:`error`::

    error(got, want) = max over tensors t of  max_i |got_t[i] - want_t[i]| / scale_t
    scale_t          = max( max_i |want_t[i]|,  max over all tensors s and i of |want_s[i]| / 8 )

(a relative max-norm error per tensor; a tensor whose reference is zero or tiny next to the
others, e.g. the output bias gradient of a loss whose terms cancel, is measured at 1/8 of the
largest magnitude among all outputs instead of its own: its rounding error comes from summing
terms of that size). A backend passes when::

    error(backend, fp64) <= K * error(baseline, fp64) + FLOOR[dtype]

with ``K = 4`` and ``FLOOR`` 16 units of roundoff of the dtype (float32 ~1e-6; float64: ``1e-10``,
for which the baseline is the reference itself and contributes 0). Measured over 240 random
float32 cases with up to 200 rows (``python tools/accuracy_scan.py``, seeds 777 and 4242;
benchmarks/results/accuracy-scan-cpu-2026-11-30.md): the ``cpu`` backend used at most 0.47 of
this bound and the ``torch`` closed form at most 0.68. Before it
summed its bias and output-weight gradients as autograd does (cascade sums rather than
matrix-vector products), the closed form went to 1.6 x the bound on one of them (test_mlp_step's
``LONG_SUMS``): a precision loss of that backend, not of K. So the bound follows the machine:
another BLAS, TF32 or bf16 widen the baseline and the bound with it, while a defect (a wrong term,
a missing row, an unwritten element) gives an error of order 1 and fails on every machine.
:func:`assert_close` applies it and names the worst tensor in its message.

Op-level tests build the raw operators' keyword arguments with the library's own translation
(:func:`disc_op_args` / :func:`gen_op_args` call ``fastgan.step_spec``) and never re-derive it;
:func:`op_order` lists D's parameters in the operators' gradient order.

Use::

    import harness                                   # tests/ is on sys.path (conftest.py)
    from harness import Case

    @pytest.mark.parametrize("case", harness.case_params(harness.cases()))
    def test_step(case):                             # fused step, any backend
        harness.check_disc(case.build(torch.float32), "cpu")

    problem = Case(17, (600, 601), rows_real=700, penalty="gp").build(torch.float32, "cuda")
    harness.check_disc_op(problem, torch.ops.fastgan.mlp_disc_step, allow_tf32=True)  # raw op
    harness.check_gen_op(problem, torch.ops.fastgan.mlp_gen_step)

    # anything else: a reference function of the inputs, run in float64 and in the working dtype
    truth, base = harness.expected(lambda x: reference_fn(x), (x,), x.dtype)
    harness.assert_close(backend_fn(x), truth, base, x.dtype)
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import random
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import pytest
import torch

import fastgan
import fastgan.mlp

# --------------------------------------------------------------------------------- the bound ----
K = 4
"""Allowed multiple of the baseline's error (the same PyTorch composition in the working dtype)."""

FLOOR = {
    torch.float64: 1e-10,
    torch.float32: 16 * 2.0 ** -24,   # ~1e-6: a few ulps, where the baseline happens to be exact
    torch.float16: 16 * 2.0 ** -11,
    torch.bfloat16: 16 * 2.0 ** -8,
}
"""Small relative floor per working dtype (relative to the reference's scale, as :func:`error`)."""

SMALL_TENSOR = 8
"""A tensor's scale is at least the largest reference magnitude among all outputs / SMALL_TENSOR."""

Tensors = Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | torch.Tensor


def _named(ts: Tensors) -> dict[str, torch.Tensor]:
    if isinstance(ts, torch.Tensor):
        return {"output": ts}
    if isinstance(ts, Mapping):
        return dict(ts)
    return {f"output {i}": t for i, t in enumerate(ts)}


def errors(got: Tensors, want: Tensors) -> dict[str, float]:
    """Per tensor: max abs error over its elements / its scale (see the module docstring).
    Non-finite values in ``got`` count as an infinite error; shapes must agree."""
    got, want = _named(got), _named(want)
    assert list(got) == list(want), f"outputs {list(got)} != reference outputs {list(want)}"
    largest = max((w.detach().abs().max().item() for w in want.values() if w.numel()), default=0.0)
    out = {}
    for name, g in got.items():
        w = want[name].detach().double()
        g = g.detach().to(w.device).double()
        assert g.shape == w.shape, f"{name}: shape {tuple(g.shape)} != reference {tuple(w.shape)}"
        if g.numel() == 0:
            out[name] = 0.0
            continue
        if not torch.isfinite(g).all() and torch.isfinite(w).all():
            out[name] = float("inf")
            continue
        scale = max(w.abs().max().item(), largest / SMALL_TENSOR)
        err = (g - w).abs().max().item()
        out[name] = err / scale if scale > 0 else err
    return out


def error(got: Tensors, want: Tensors) -> float:
    """The one error measure: the largest of :func:`errors`."""
    return max(errors(got, want).values(), default=0.0)


def bound(baseline_error: float, dtype: torch.dtype) -> float:
    """``K * baseline_error + FLOOR[dtype]``."""
    return K * baseline_error + FLOOR[dtype]


def assert_close(got: Tensors, want: Tensors, baseline: Tensors | None, dtype: torch.dtype, what: str = "") -> None:
    """Assert ``error(got, want) <= K * error(baseline, want) + FLOOR[dtype]``.

    ``want`` is the float64 reference; ``baseline`` the same composition run in ``dtype`` (None for
    float64, or where the result must match the reference to the floor).
    """
    errs = errors(got, want)
    base = error(baseline, want) if baseline is not None else 0.0
    limit = bound(base, dtype)
    worst = max(errs, key=errs.get) if errs else None
    if worst is not None and not errs[worst] <= limit:
        raise AssertionError(
            f"{what + ': ' if what else ''}{worst}: error {errs[worst]:.3g} > bound {limit:.3g} "
            f"(= {K} x baseline {base:.3g} + floor {FLOOR[dtype]:.3g}, {dtype}); all errors: "
            + ", ".join(f"{k} {v:.2g}" for k, v in errs.items()))


# Each backend's matmul also has an ``fp32_precision`` ("none" until set). On torch 2.15
# set_float32_matmul_precision overwrites it ("ieee" for "highest"), so restoring the precision
# alone leaves "ieee" where "none" was: a change torch.compile's global-state guard sees (a
# recompile of the next compiled call).
_MATMUL_BACKENDS = [b.matmul for b in (torch.backends.cuda, torch.backends.mkldnn)
                    if hasattr(getattr(b, "matmul", None), "fp32_precision")]


@contextlib.contextmanager
def precision(allow_tf32: bool):
    """float32 matmul precision for the block: 'high' (TF32 allowed) or 'highest'; the whole
    state restored after it."""
    before = torch.get_float32_matmul_precision()
    per_backend = [b.fp32_precision for b in _MATMUL_BACKENDS]
    torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
        for b, value in zip(_MATMUL_BACKENDS, per_backend):
            b.fp32_precision = value


def expected(reference: Callable[..., Tensors], inputs: Sequence, dtype: torch.dtype, allow_tf32: bool = False):
    """(float64 truth, baseline in ``dtype``) of ``reference(*inputs)``.

    ``inputs`` are tensors or modules (anything with ``.to``; None passes through); the truth runs on
    float64 copies, the baseline on ``dtype`` copies under :func:`precision`. For float64 the
    baseline is None (the bound is the floor).
    """
    def cast(x, dt):
        if x is None or not hasattr(x, "to"):
            return x
        if isinstance(x, torch.nn.Module):
            return copy.deepcopy(x).to(dt)
        return x.detach().to(dt) if x.is_floating_point() else x
    truth = reference(*[cast(x, torch.float64) for x in inputs])
    if dtype == torch.float64:
        return truth, None
    with precision(allow_tf32):
        base = reference(*[cast(x, dtype) for x in inputs])
    return truth, base


# ---------------------------------------------------------------------------------- the cases ----
PENALTIES: dict[str, Callable[[], object] | None] = {
    "none": None,
    "r1": lambda: fastgan.R1Penalty(gamma=3.0),
    "r2": lambda: fastgan.R2Penalty(gamma=2.0),
    "gp": lambda: fastgan.GradientPenalty(weight=5.0, center=0.8),
    "dragan": lambda: fastgan.DRAGANPenalty(weight=4.0, center=0.5),
}
"""Penalty factories by name (a fresh module per call: the lazy ``every`` schedule is stateful)."""

LOSS_NAMES = tuple(sorted(fastgan.LOSSES))
PENALTY_NAMES = tuple(PENALTIES)
DTYPES = (torch.float64, torch.float32)


@dataclasses.dataclass(frozen=True)
class Case:
    """One fused-step problem (see the module docstring)."""
    in_features: int
    hidden: tuple[int, ...]
    pack: int = 1
    rows_real: int = 3
    rows_fake: int = 3
    bias: bool = True
    slope: float = 0.2
    loss: str = "non_saturating"
    penalty: str = "none"
    reduction: str = "mean"
    seed: int = 0
    every: int = 1
    loss_kwargs: tuple[tuple[str, float], ...] = ()  # e.g. (("a", -1.0), ("b", 1.0)) for least squares
    dropout: float = 0.0  # D's dropout p (training mode): masks drawn after torch.manual_seed(seed)

    def __post_init__(self):
        # paired losses and WGAN-GP need as many fake rows as real rows; DRAGAN scales by std(real),
        # NaN for a single number (in the reference too)
        if fastgan.LOSSES[self.loss].paired or self.penalty == "gp":
            object.__setattr__(self, "rows_fake", self.rows_real)
        if self.penalty == "dragan" and self.rows_real * self.pack * self.in_features == 1:
            object.__setattr__(self, "rows_real", 2)

    @property
    def id(self) -> str:
        h = "x".join(map(str, self.hidden))
        return (f"{self.loss}-{self.penalty}{'-every%d' % self.every if self.every > 1 else ''}-{self.reduction}"
                f"-in{self.in_features}-h{h}-p{self.pack}-r{self.rows_real}x{self.rows_fake}"
                f"{'' if self.bias else '-nobias'}-s{self.slope:g}{'-drop%g' % self.dropout if self.dropout else ''}"
                f"-seed{self.seed}")

    def make_loss(self):
        return fastgan.LOSSES[self.loss](reduction=self.reduction, **dict(self.loss_kwargs))

    def with_(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)

    def weights(self) -> int:
        widths = (self.in_features * self.pack,) + self.hidden + (1,)
        return sum(a * b for a, b in zip(widths[:-1], widths[1:]))

    def build(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> "Problem":
        """The problem in ``dtype`` on ``device`` (drawn in float64 on the CPU, then rounded)."""
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        D = fastgan.MLPDiscriminator(self.in_features, self.hidden, self.slope, self.pack, self.bias,
                                     self.dropout).double()
        with torch.no_grad():  # both sides of every LeakyReLU occur; logits of order 1
            for p in D.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / max(1, p.shape[-1]) ** 0.5)
        real = torch.randn(self.rows_real * self.pack, self.in_features, generator=gen, dtype=torch.float64)
        fake = 0.8 * torch.randn(self.rows_fake * self.pack, self.in_features, generator=gen,
                                 dtype=torch.float64) + 0.3
        eps = None
        if self.penalty == "gp":
            eps = torch.rand(self.rows_real, generator=gen, dtype=torch.float64)
        elif self.penalty == "dragan":
            eps = torch.rand(real.shape, generator=gen, dtype=torch.float64)
        move = lambda t: t.to(device=device, dtype=dtype) if t is not None else None  # noqa: E731
        return Problem(self, D.to(device=device, dtype=dtype), move(real), move(fake), move(eps))


class Problem(NamedTuple):
    """A built :class:`Case`: D, real, fake, eps in one dtype and device."""
    case: Case
    D: fastgan.MLPDiscriminator
    real: torch.Tensor
    fake: torch.Tensor
    eps: torch.Tensor | None

    @property
    def dtype(self) -> torch.dtype:
        return self.real.dtype

    def loss(self):
        return self.case.make_loss()

    def penalty(self):
        """A fresh penalty module (None for 'none'), with the case's lazy schedule."""
        make = PENALTIES[self.case.penalty]
        if make is None:
            return None
        pen = make()
        pen.every = self.case.every
        return pen

    @contextlib.contextmanager
    def draws(self):
        """Within the block, the dropout masks of a step (its D(real), D(fake) and penalty passes,
        in that order) are the case's: torch's CPU RNG seeded with the case's seed, and the masks
        drawn on the CPU and moved to the rows' device, so that every backend, the reference and
        the op arguments see the same masks on every device (the CUDA generator draws other bits
        than the CPU's; the draw is float32 in every dtype). Nothing without dropout."""
        if not self.case.dropout:
            yield
            return
        draw = fastgan.mlp.dropout_masks

        def on_cpu(D, rows, *, like, generator=None):
            masks = draw(D, rows, like=torch.empty(0, dtype=like.dtype), generator=generator)
            return [m.to(like.device) for m in masks]

        torch.manual_seed(self.case.seed)
        fastgan.mlp.dropout_masks = on_cpu
        try:
            yield
        finally:
            fastgan.mlp.dropout_masks = draw

    def to(self, dtype: torch.dtype) -> "Problem":
        cast = lambda t: t.to(dtype) if t is not None else None  # noqa: E731
        return Problem(self.case, copy.deepcopy(self.D).to(dtype), cast(self.real), cast(self.fake), cast(self.eps))

    def inputs(self) -> tuple:
        """(D, real, fake, eps): the arguments of :func:`expected`'s reference functions."""
        return self.D, self.real, self.fake, self.eps


def cases(n: int = 24, seed: int = 1234, max_width: int = 300, max_weights: int | None = None,
          rows: Sequence[int] = (1, 1, 2, 3, 5, 8), max_work: int | None = None) -> list[Case]:
    """``n`` seeded cases; case i takes loss x penalty combination i (mod their number), so any
    ``n >= len(LOSS_NAMES) * len(PENALTY_NAMES)`` covers every combination. Architectures: depth 1-5,
    in_features 1-40, widths 1..max_width (odd, non-powers of two), pack 1-4, 1-8 rows (one row
    often; ``rows`` gives the choices), bias on/off, ReLU and LeakyReLU, reduction mean or sum.
    ``max_weights`` caps the weight count and ``max_work`` rows x weights (the interpreter and the
    double-backward reference are slow on big problems)."""
    rng = random.Random(seed)
    combos = list(itertools.product(LOSS_NAMES, PENALTY_NAMES))
    out = []
    for i in range(n):
        loss, pen = combos[i % len(combos)]
        while True:
            depth = rng.randint(1, 5)
            case = Case(
                in_features=rng.choice([1, 2, 3, 7, 16, 33, 40, rng.randint(1, 40)]),
                hidden=tuple(rng.choice([1, 2, 5, 31, 64, 100, 127, max_width, rng.randint(1, max_width)])
                             for _ in range(depth)),
                pack=rng.randint(1, 4), rows_real=rng.choice(rows),
                rows_fake=rng.choice(rows), bias=rng.random() < 0.75,
                slope=rng.choice([0.0, 0.2]), loss=loss, penalty=pen,
                reduction="sum" if i % 3 == 2 else "mean", seed=seed + i)
            if ((max_weights is None or case.weights() <= max_weights)
                    and (max_work is None or case.weights() * max(case.rows_real, case.rows_fake) <= max_work)):
                break
        out.append(case)
    return out


def every_combination(arch: Case | None = None) -> list[tuple[Case, torch.dtype]]:
    """The full product loss x penalty x pack (1, 3) x dtype on one odd architecture."""
    arch = arch or Case(in_features=5, hidden=(37, 13), rows_real=7, rows_fake=4, slope=0.2)
    return [(arch.with_(loss=loss, penalty=pen, pack=pack, seed=i), dtype)
            for i, (loss, pen, pack, dtype) in enumerate(itertools.product(LOSS_NAMES, PENALTY_NAMES, (1, 3), DTYPES))]


def case_params(items: Iterable, slow: Callable[[int], bool] = lambda i: False) -> list:
    """``pytest.param`` per case (or (case, dtype) tuple), id from the case; ``slow(i)`` marks the
    i-th ``slow`` (run with ``-m slow``)."""
    out = []
    for i, item in enumerate(items):
        values = item if isinstance(item, tuple) else (item,)
        ident = "-".join(v.id if isinstance(v, Case) else str(v).replace("torch.", "") for v in values)
        out.append(pytest.param(*values, id=ident, marks=pytest.mark.slow if slow(i) else ()))
    return out


# ------------------------------------------------------------------------------ the reference ----
class StepOutputs(NamedTuple):
    """A discriminator step's results: stats [loss, penalty, mean real logit, mean fake logit]
    and the parameter gradients (in ``D.parameters()`` order)."""
    stats: torch.Tensor
    grads: list[torch.Tensor]

    def named(self) -> dict[str, torch.Tensor]:
        return {"stats": self.stats, **{f"grad {i}": g for i, g in enumerate(self.grads)}}


def reference_disc(case: Case, calls: int = 1) -> Callable[..., dict[str, torch.Tensor]]:
    """A function (D, real, fake, eps) -> named outputs of ``discriminator_step(backend="reference")``
    for ``case``'s loss and penalty (for :func:`expected`). ``calls > 1`` runs the lazy schedule
    that many times on one penalty module and returns the last call."""
    def run(D, real, fake, eps):
        D = copy.deepcopy(D)
        problem = Problem(case, D, real, fake, eps)
        pen = problem.penalty()
        with problem.draws():
            for _ in range(calls):
                D.zero_grad(set_to_none=True)
                total, parts = fastgan.discriminator_step(
                    D, real, fake, loss=case.make_loss(), penalty=pen,
                    backend="reference", eps=eps, return_parts=True)
                total.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in D.parameters()]
        return StepOutputs(torch.stack(list(parts)), grads).named()
    return run


def reference_gen(case: Case) -> Callable[..., dict[str, torch.Tensor]]:
    """A function (D, real, fake, eps) -> {"stats": [loss, mean fake logit], "d fake"} of
    ``generator_step(backend="reference")`` (for :func:`expected`)."""
    def run(D, real, fake, eps=None):
        loss = case.make_loss()
        x = fake.detach().clone().requires_grad_(True)
        problem = Problem(case, D, real, fake, eps)
        with problem.draws():
            value = fastgan.generator_step(D, x, loss=loss, real=real if loss.paired else None, backend="reference")
        (grad,) = torch.autograd.grad(value, x)
        # the mean logit under D(fake)'s masks, the step's first draw
        with torch.no_grad(), fastgan.use_backend("reference"), problem.draws():
            mean_logit = D(fake).mean()
        return {"stats": torch.stack([value.detach(), mean_logit]), "d fake": grad}
    return run


def run_disc(problem: Problem, backend: str, calls: int = 1) -> dict[str, torch.Tensor]:
    """``discriminator_step`` on ``backend`` for the problem, in :func:`reference_disc`'s format."""
    D = copy.deepcopy(problem.D)
    pen = problem.penalty()
    with problem.draws():
        for _ in range(calls):
            D.zero_grad(set_to_none=True)
            total, parts = fastgan.discriminator_step(D, problem.real, problem.fake, loss=problem.loss(), penalty=pen,
                                                      backend=backend, eps=problem.eps, return_parts=True)
            assert total.shape == () and total.dtype == problem.dtype
            total.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in D.parameters()]
    return StepOutputs(torch.stack(list(parts)), grads).named()


def check_disc(problem: Problem, backend: str, calls: int = 1, allow_tf32: bool = False) -> None:
    """``discriminator_step`` on ``backend`` within the bound of the reference."""
    with precision(allow_tf32):
        got = run_disc(problem, backend, calls)
    truth, base = expected(reference_disc(problem.case, calls), problem.inputs(), problem.dtype, allow_tf32)
    assert_close(got, truth, base, problem.dtype, f"{backend} {problem.case.id}")


def check_gen(problem: Problem, backend: str, allow_tf32: bool = False) -> None:
    """``generator_step`` on ``backend`` (its loss and d loss / d fake) within the bound of the reference."""
    loss = problem.loss()
    x = problem.fake.detach().clone().requires_grad_(True)
    D = copy.deepcopy(problem.D)
    with precision(allow_tf32), problem.draws():
        value = fastgan.generator_step(D, x, loss=loss, real=problem.real if loss.paired else None, backend=backend)
        assert value.shape == () and value.dtype == problem.dtype
        value.backward()
    assert all(p.grad is None for p in D.parameters()), "generator_step wrote D's gradients"
    truth, base = expected(reference_gen(problem.case), problem.inputs(), problem.dtype, allow_tf32)
    pick = lambda out: None if out is None else {"loss": out["stats"][0], "d fake": out["d fake"]}  # noqa: E731
    assert_close({"loss": value.detach(), "d fake": x.grad}, pick(truth), pick(base), problem.dtype,
                 f"{backend} {problem.case.id}")


# ------------------------------------------------------------------- the operators' arguments ----
def op_order(D: fastgan.MLPDiscriminator) -> list[torch.Tensor]:
    """D's parameters in the operators' gradient order: W_1..W_L, b_1..b_L (if bias), w_out, b_out."""
    ps = [layer.weight for layer in D.layers]
    if D.bias:
        ps += [layer.bias for layer in D.layers]
    ps.append(D.out.weight)
    if D.bias:
        ps.append(D.out.bias)
    return ps


def disc_op_args(problem: Problem, allow_tf32: bool = False) -> dict:
    """Keyword arguments of ``mlp_disc_step`` for the problem, from the library's translation
    (``fastgan.step_spec.disc_step_op_args``)."""
    from fastgan import step_spec
    p = problem
    pen = p.penalty()
    with p.draws():
        args = step_spec.disc_step_op_args(p.D, p.real, p.fake, loss=p.loss(), penalty=pen, eps=p.eps,
                                           allow_tf32=allow_tf32,
                                           penalty_scale=pen.next_scale() if pen is not None else 1)
    return _detached(args)


def _detached(args: dict) -> dict:
    """The raw operators take plain tensors (no autograd): D's parameters detached."""
    def detach(v):
        if isinstance(v, torch.Tensor):
            return v.detach()
        if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            return [t.detach() for t in v]
        return v
    return {k: detach(v) for k, v in args.items()}


def gen_op_args(problem: Problem, allow_tf32: bool = False) -> dict:
    """Keyword arguments of ``mlp_gen_step`` for the problem (``fastgan.step_spec.gen_step_op_args``)."""
    from fastgan import step_spec
    p = problem
    loss = p.loss()
    with p.draws():
        return _detached(step_spec.gen_step_op_args(p.D, p.fake, loss=loss, real=p.real if loss.paired else None,
                                                    allow_tf32=allow_tf32))


def reference_disc_op(case: Case) -> Callable[..., dict[str, torch.Tensor]]:
    """Like :func:`reference_disc`, with the gradients in :func:`op_order` (the operators' outputs)."""
    plain = reference_disc(case)

    def run(D, real, fake, eps):
        out = plain(D, real, fake, eps)
        index = {id(p): i for i, p in enumerate(D.parameters())}
        grads = [out[f"grad {i}"] for i in range(len(index))]
        return StepOutputs(out["stats"], [grads[index[id(p)]] for p in op_order(D)]).named()
    return run


def op_outputs(out: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``mlp_disc_step`` result (stats, *gradients) in :func:`reference_disc_op`'s format."""
    return StepOutputs(out[0], list(out[1:])).named()


def gen_op_outputs(out: Sequence[torch.Tensor], fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """An ``mlp_gen_step`` result (stats, packed d fake) in :func:`reference_gen`'s format."""
    return {"stats": out[0], "d fake": out[1].reshape(fake.shape)}


def check_disc_op(problem: Problem, op: Callable, allow_tf32: bool = False, **changes) -> list[torch.Tensor]:
    """``op(**disc_op_args(problem))`` (``changes`` replace arguments) within the bound of the
    reference; returns the op's outputs."""
    args = {**disc_op_args(problem, allow_tf32), **changes}
    out = op(**args)
    assert len(out) == 1 + len(op_order(problem.D)) and all(o.dtype == problem.dtype for o in out)
    truth, base = expected(reference_disc_op(problem.case), problem.inputs(), problem.dtype, allow_tf32)
    assert_close(op_outputs(out), truth, base, problem.dtype, problem.case.id)
    return out


def check_gen_op(problem: Problem, op: Callable, allow_tf32: bool = False, **changes) -> list[torch.Tensor]:
    """``op(**gen_op_args(problem))`` (``changes`` replace arguments) within the bound of the
    reference; returns the op's outputs."""
    out = op(**{**gen_op_args(problem, allow_tf32), **changes})
    assert len(out) == 2 and all(o.dtype == problem.dtype for o in out)
    truth, base = expected(reference_gen(problem.case), problem.inputs(), problem.dtype, allow_tf32)
    assert_close(gen_op_outputs(out, problem.fake), truth, base, problem.dtype, problem.case.id)
    return out
