"""The differential fuzzer's cases and checks (tests/test_fuzz.py draws them with Hypothesis).

A :class:`Draw` is one complete problem, plain data with a readable repr: an
:class:`~fastgan.MLPDiscriminator` (odd widths, packing, bias on/off, ReLU / LeakyReLU), frozen
parameters, spectral / weight norm on some layers (hook form or parametrization, train or eval
mode), a subclass overriding ``forward`` or forward hooks, a loss (every ``fastgan.LOSSES``) and
penalty (every ``PENALTIES``, random weight / center, lazy ``every``), several consecutive steps,
the dtype, non-contiguous layouts of real / fake, NaN / Inf / extreme values, steps that add to
a ``.grad`` already there, and a seed for the random numbers. Everything is built from the draw alone (:meth:`Draw.build`), so each backend
gets its own identical discriminator (a fresh build, not ``copy.deepcopy``: a module with
hook-form spectral norm holds a non-leaf ``weight`` after a forward, which deepcopy refuses).

The checks compare a fused backend with the oracle, and raise ``AssertionError`` naming the
draw, the backend, the form (``.backward()`` or ``backward=True``), the step and what differed:

- :func:`check_disc`: ``discriminator_step`` for ``draw.steps`` consecutive steps (one penalty
  module per run, so its lazy phase carries over): the total and :class:`~fastgan.StepParts`
  (outputs ``total``, ``parts.loss``, ...),
  which parameters got a ``.grad`` (by name), every ``.grad``, the parameters (unchanged), the
  buffers (spectral norm's u / v), the penalty's lazy phase, that the phase survives
  ``state_dict()`` / ``load_state_dict()``, and, for WGAN-GP / DRAGAN, that a step which raises
  (eps of the wrong shape) leaves the phase where it was.
- :func:`check_gen`: ``generator_step``'s loss and d loss / d fake, no ``.grad`` on D, D's state.
- :func:`check_unrolled`: ``unrolled_generator_step(mode="first_order")`` against the same call
  with ``backend="reference"`` (with an optimiser over all of D's parameters, frozen ones too).

**The oracle** is ``backend="reference"`` (autograd with double backward) on its own build of
the draw. With spectral norm in train mode the planned semantics are one power iteration per
step, as one ``D(...)`` forward would do, and one effective weight for all of the step's passes:
the oracle advances the power iteration with one forward under ``no_grad`` and then runs the
reference step in eval mode (the weight computed from those u / v, gradients chained to the
original parameters), which is that composition written with torch's own modules. The reference
backend itself is checked against the oracle too (``check_disc(draw, "reference")``: its
``backward=True`` form, one power iteration per step, the lazy phase).

**Comparison.** Non-finite values must sit where the oracle (same dtype) has them, NaN for NaN
and +-Inf for +-Inf; finite values follow the harness bound (tests/harness.py): in float64 a
relative error of ``harness.FLOOR`` (1e-10), in float32 ``K x`` the error of the reference
composition in float32 against the float64 truth plus the float32 floor.

**Overrides.** A subclass that overrides ``forward`` or a module with forward hooks must never
silently take the fused path: a backend either matches the oracle (a generic path) or raises.

Repro: every failure message ends with a line to paste into ``python`` in tests/ (with
``TRITON_INTERPRET=1`` for the triton backend on CPU).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Callable

import torch
from torch import nn

import fastgan
import harness
from fastgan import fused as _fused

# ------------------------------------------------------------------------------- the vocabulary --
LOSS_NAMES = tuple(sorted(fastgan.LOSSES))
PENALTY_NAMES = ("none", "r1", "r2", "gp", "dragan", "r1+r2", "r2+gp", "dragan+r1")
"""One penalty, or a list of them joined by '+' (``penalty=[R1Penalty(), R2Penalty()]``, R3GAN's;
at most one of WGAN-GP / DRAGAN, whose eps shapes differ)."""
WIDTHS = (1, 2, 3, 5, 8, 17, 33)
IN_FEATURES = (1, 2, 3, 5, 17)
LAYOUTS = ("contiguous", "transposed", "sliced", "row_strided", "expanded")
NORMS = ("sn_hook", "sn_param", "wn_param", "wn_hook")
OVERRIDES = ("none", "subclass_input", "subclass_plain", "pre_hook", "post_hook", "layer_hook")
SPECIAL_VALUES = (math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30)
TARGETS = ("real", "fake", "param")
FORMS = ("backward()", "backward=True")


@dataclasses.dataclass(frozen=True)
class Draw:
    """One fuzzed problem (see the module docstring). ``rows_real`` / ``rows_fake`` count packed
    rows (the tensors have ``rows * pack`` samples)."""
    in_features: int = 2
    hidden: tuple[int, ...] = (3,)
    slope: float = 0.2
    pack: int = 1
    bias: bool = True
    rows_real: int = 2
    rows_fake: int = 2
    loss: str = "non_saturating"
    loss_kwargs: tuple[tuple[str, float], ...] = ()
    reduction: str = "mean"
    penalty: str = "none"
    weight: float = 1.0
    center: float = 1.0
    dragan_scale: float = 0.5
    every: int = 1
    steps: int = 1
    fail_step: int = -1            # WGAN-GP / DRAGAN: before this step, a call that raises (bad eps)
    dtype: str = "float64"
    layout_real: str = "contiguous"
    layout_fake: str = "contiguous"
    frozen: int = 0                # bit i: the i-th of D.named_parameters() has requires_grad False
    norms: tuple[tuple[int, str], ...] = ()   # (layer index, len(hidden) = the output layer; kind)
    train: bool = True             # D.training (spectral norm's power iteration)
    override: str = "none"
    special: tuple[tuple[str, int, float], ...] = ()  # (target, flat index mod numel, value)
    accumulate: bool = False       # each step adds to a .grad already there (every other trainable parameter)
    seed: int = 0

    def __post_init__(self):
        paired = fastgan.LOSSES[self.loss].paired
        if paired or "gp" in self.penalty_names:
            object.__setattr__(self, "rows_fake", self.rows_real)

    # ---- building -------------------------------------------------------------------------
    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def make_loss(self) -> fastgan.GANLoss:
        return fastgan.LOSSES[self.loss](reduction=self.reduction, **dict(self.loss_kwargs))

    @property
    def penalty_names(self) -> tuple[str, ...]:
        return () if self.penalty == "none" else tuple(self.penalty.split("+"))

    def make_penalty(self):
        """None, one penalty module, or a list of them (a fresh one per call: the phase is state)."""
        pens = [self._penalty(name) for name in self.penalty_names]
        return None if not pens else pens[0] if len(pens) == 1 else pens

    def _penalty(self, name: str):
        if name == "r1":
            return fastgan.R1Penalty(gamma=self.weight, every=self.every)
        if name == "r2":
            return fastgan.R2Penalty(gamma=self.weight, every=self.every)
        if name == "gp":
            return fastgan.GradientPenalty(weight=self.weight, center=self.center, every=self.every)
        return fastgan.DRAGANPenalty(weight=self.weight, center=self.center, every=self.every,
                                     scale=self.dragan_scale)

    def build(self, dtype: torch.dtype | None = None) -> "Built":
        """D, real, fake, eps (the draw's numbers; ``dtype`` None: the draw's dtype). Values are
        drawn in float64 and rounded to the draw's dtype, so a float64 build of a float32 draw
        (``dtype=torch.float64``) is the float32 problem's exact float64 truth."""
        work = self.torch_dtype
        gen = torch.Generator().manual_seed(self.seed)
        D = _CLASSES[self.override](self.in_features, self.hidden, self.slope, self.pack, self.bias).double()
        with torch.no_grad():  # both sides of every LeakyReLU occur; logits of order 1
            for p in D.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / max(1, p.shape[-1]) ** 0.5)
        n = self.pack * self.rows_real, self.pack * self.rows_fake
        real = torch.randn(n[0], self.in_features, generator=gen, dtype=torch.float64)
        fake = 0.8 * torch.randn(n[1], self.in_features, generator=gen, dtype=torch.float64) + 0.3
        eps = None
        if "gp" in self.penalty_names:
            eps = torch.rand(self.rows_real, generator=gen, dtype=torch.float64)
        elif "dragan" in self.penalty_names:
            eps = torch.rand(real.shape, generator=gen, dtype=torch.float64)
        params = list(D.parameters())
        with torch.no_grad():
            for target, index, value in self.special:
                t = {"real": real, "fake": fake}.get(target)
                if t is None:
                    flat = torch.cat([p.reshape(-1) for p in params])
                    index %= flat.numel()
                    for p in params:
                        if index < p.numel():
                            p.view(-1)[index] = value
                            break
                        index -= p.numel()
                else:
                    t.view(-1)[index % t.numel()] = value
        # round to the working dtype, then to the requested one (the truth of a float32 draw)
        D = D.to(work).to(dtype or work)
        cast = lambda t: None if t is None else t.to(work).to(dtype or work)  # noqa: E731
        real, fake, eps = cast(real), cast(fake), cast(eps)
        with torch.random.fork_rng(devices=[]):  # spectral norm draws u (and v) from the global RNG
            torch.manual_seed(self.seed)
            for index, kind in self.norms:
                _NORM[kind](D.layers[index] if index < len(D.layers) else D.out)
        for i, (_, p) in enumerate(D.named_parameters()):
            if self.frozen >> i & 1:
                p.requires_grad_(False)
        if not any(p.requires_grad for p in D.parameters()):  # keep one trainable parameter
            list(D.parameters())[-1].requires_grad_(True)
        _HOOKS[self.override](D)
        D.train(self.train)
        return Built(D, layout(real, self.layout_real), layout(fake, self.layout_fake), eps)

    def bad_eps(self, eps: torch.Tensor) -> torch.Tensor:
        """An eps of the wrong shape (the penalty raises on a due call)."""
        return torch.cat([eps, eps[:1]])

    @property
    def spectral_train(self) -> bool:
        return self.train and any(kind.startswith("sn") for _, kind in self.norms)

    def repro(self, what: str, backend: str) -> str:
        return f"import fuzz_cases as f; f.{what}(f.{self!r}, {backend!r})"


@dataclasses.dataclass
class Built:
    D: nn.Module
    real: torch.Tensor
    fake: torch.Tensor
    eps: torch.Tensor | None


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x``'s values in a (mostly) non-contiguous layout; 'expanded' repeats row 0 (stride 0)."""
    if kind == "contiguous":
        return x
    if kind == "transposed":
        return x.t().contiguous().t()
    if kind == "sliced":
        buf = torch.full((x.shape[0], 2 * x.shape[1]), 7.0, dtype=x.dtype)
        buf[:, ::2] = x
        return buf[:, ::2]
    if kind == "row_strided":
        buf = torch.full((2 * x.shape[0], x.shape[1]), 7.0, dtype=x.dtype)
        buf[::2] = x
        return buf[::2]
    if kind == "expanded":
        return x[:1].expand(x.shape)
    raise ValueError(kind)


# ---- overrides: a subclass of MLPDiscriminator or hooks on one -------------------------------
class DoubledInput(fastgan.MLPDiscriminator):
    """Overrides forward (and passes the fused callable on): D(x) = MLP(2x)."""

    def forward(self, x, **kwargs):
        return super().forward(2 * x, **kwargs)


class ShiftedLogits(fastgan.MLPDiscriminator):
    """Overrides forward with the usual signature: D(x) = MLP(x) + 0.25."""

    def forward(self, x):
        return super().forward(x) + 0.25


_CLASSES = {"none": fastgan.MLPDiscriminator, "subclass_input": DoubledInput, "subclass_plain": ShiftedLogits,
            "pre_hook": fastgan.MLPDiscriminator, "post_hook": fastgan.MLPDiscriminator,
            "layer_hook": fastgan.MLPDiscriminator}


def _pre_hook(module, args):
    return (2 * args[0],) + tuple(args[1:])


def _post_hook(module, args, out):
    return 0.5 * out + 0.25


def _layer_hook(module, args, out):
    return 2 * out


_HOOKS: dict[str, Callable[[nn.Module], object]] = {
    "none": lambda D: None, "subclass_input": lambda D: None, "subclass_plain": lambda D: None,
    "pre_hook": lambda D: D.register_forward_pre_hook(_pre_hook),
    "post_hook": lambda D: D.register_forward_hook(_post_hook),
    "layer_hook": lambda D: D.layers[0].register_forward_hook(_layer_hook),
}

_NORM = {
    "sn_hook": lambda m: torch.nn.utils.spectral_norm(m),
    "sn_param": lambda m: torch.nn.utils.parametrizations.spectral_norm(m),
    "wn_param": lambda m: torch.nn.utils.parametrizations.weight_norm(m),
    "wn_hook": lambda m: _deprecated_weight_norm(m),
}


def _deprecated_weight_norm(module: nn.Module) -> nn.Module:
    """torch.nn.utils.weight_norm, the hook form (deprecated in torch, still in use): its FutureWarning
    is expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module)


# ------------------------------------------------------------------------------ the comparison --
def _masks(t: torch.Tensor):
    return torch.isnan(t), torch.isposinf(t), torch.isneginf(t)


def _finite_errors(got: dict, want: dict) -> dict[str, float]:
    """harness.errors on the elements finite in both (placement is checked separately)."""
    finite = {k: torch.isfinite(w.detach().double()) & torch.isfinite(got[k].detach().double()) for k, w in want.items()}
    largest = max((w.detach().double()[finite[k]].abs().max().item() for k, w in want.items() if finite[k].any()),
                  default=0.0)
    out = {}
    for k, w in want.items():
        m = finite[k]
        if not m.any():
            out[k] = 0.0
            continue
        g, w = got[k].detach().double()[m], w.detach().double()[m]
        scale = max(w.abs().max().item(), largest / harness.SMALL_TENSOR)
        err = (g - w).abs().max().item()
        out[k] = err / scale if scale > 0 else err
    return out


def compare(got: dict, want: dict, truth: dict | None, dtype: torch.dtype, what: str) -> None:
    """``got`` against the oracle ``want`` (same dtype; ``truth``: its float64 run for float32)."""
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != oracle's {sorted(want)}"
    for k in want:
        g, w = got[k].detach(), want[k].detach()
        assert g.shape == w.shape, f"{what}: {k} has shape {tuple(g.shape)}, oracle {tuple(w.shape)}"
        for name, mg, mw in zip(("NaN", "+Inf", "-Inf"), _masks(g), _masks(w)):
            if not torch.equal(mg, mw):
                raise AssertionError(f"{what}: non-finite placement differs in {k}: {name} at "
                                     f"{_where(mg)}, oracle at {_where(mw)}; got {_short(g)}, oracle {_short(w)}")
    if dtype == torch.float64 or truth is None:
        errs, base = _finite_errors(got, want), 0.0
    else:
        errs, base = _finite_errors(got, truth), max(_finite_errors(want, truth).values(), default=0.0)
    limit = harness.bound(base, dtype)
    worst = max(errs, key=errs.get) if errs else None
    if worst is not None and not errs[worst] <= limit:
        raise AssertionError(f"{what}: {worst}: error {errs[worst]:.3g} > bound {limit:.3g} ({dtype}); "
                             f"got {_short(got[worst])}, oracle {_short(want[worst])}")


def _where(mask: torch.Tensor) -> str:
    where = [tuple(i) if len(i) > 1 else i[0] for i in mask.nonzero().tolist()]
    return f"{where[:8]}{' ...' if len(where) > 8 else ''}"


def _short(t: torch.Tensor) -> str:
    flat = t.detach().reshape(-1)
    vals = ", ".join(f"{v:.6g}" for v in flat[:6].tolist())
    return f"[{vals}{', ...' if flat.numel() > 6 else ''}]"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


# ---------------------------------------------------------------------------------- the phase --
def phase(penalty) -> tuple[bool, ...] | None:
    """A lazy penalty's phase, observed: which of the next ``every`` direct calls (on a copy, a
    tiny linear D) compute the penalty. None without a penalty."""
    if penalty is None:
        return None
    if isinstance(penalty, list):
        return tuple(phase(p) for p in penalty)
    pen = copy.deepcopy(penalty)
    pen.weight, pen.center = 1.0, 0.0
    D = fastgan.MLPDiscriminator(1, (1,), negative_slope=1.0).double()
    with torch.no_grad():
        for p in D.parameters():
            p.fill_(0.5)
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    eps = torch.full((2,) if isinstance(pen, fastgan.GradientPenalty) else (2, 1), 0.5, dtype=torch.float64)
    with fastgan.use_backend("reference"):
        return tuple(bool(pen(D, x, x, eps=eps) != 0) for _ in range(pen.every))


def phase_after_reload(draw: Draw, penalty) -> tuple[bool, ...] | None:
    """The phase of a fresh penalty of the draw after ``load_state_dict(penalty.state_dict())``."""
    if penalty is None:
        return None
    fresh = draw.make_penalty()
    for new, old in zip(fresh if isinstance(fresh, list) else [fresh], penalty if isinstance(penalty, list) else [penalty]):
        new.load_state_dict(old.state_dict())
    return phase(fresh)


# ------------------------------------------------------------------------------ running steps --
@dataclasses.dataclass
class StepRecord:
    """One step's observable results (``error``: the exception it raised, else None)."""
    error: BaseException | None = None
    outputs: dict = dataclasses.field(default_factory=dict)  # "total", "parts.<field>", "grad <param>"
    with_grad: frozenset = frozenset()
    params: dict = dataclasses.field(default_factory=dict)
    buffers: dict = dataclasses.field(default_factory=dict)
    phase: tuple | None = None
    reload_phase: tuple | None = None
    failed_call: str = ""          # the injected failing call: "" (none), "raised", or what went wrong
    phase_after_failure: tuple | None = None


def _record_state(rec: StepRecord, D: nn.Module, draw: Draw, pen) -> None:
    rec.params = {n: p.detach().clone() for n, p in D.named_parameters()}
    rec.buffers = {n: b.detach().clone() for n, b in D.named_buffers()}
    rec.phase = phase(pen)
    rec.reload_phase = phase_after_reload(draw, pen)


def _eps_penalty_due(pen) -> bool:
    """Whether the penalty that takes eps (WGAN-GP / DRAGAN) computes on the next call."""
    for p in pen if isinstance(pen, list) else [pen]:
        if isinstance(p, (fastgan.GradientPenalty, fastgan.DRAGANPenalty)):
            return phase(p)[0]
    return False


def _advance_power_iteration(D: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        D(x)


def run_disc(draw: Draw, backend: str, form: str, dtype: torch.dtype | None = None,
             oracle: bool = False) -> list[StepRecord]:
    """``draw.steps`` consecutive discriminator steps on a fresh build; ``oracle``: the oracle's
    composition (backend must be 'reference'; see the module docstring)."""
    b = draw.build(dtype)
    D, pen, loss = b.D, draw.make_penalty(), draw.make_loss()
    records = []
    for step in range(draw.steps):
        rec = StepRecord()
        if step == draw.fail_step and b.eps is not None and _eps_penalty_due(pen):
            before = phase(pen)
            try:
                fastgan.discriminator_step(D, b.real, b.fake, loss=loss, penalty=pen, backend=backend,
                                           eps=draw.bad_eps(b.eps), backward=form == "backward=True")
                rec.failed_call = "did not raise"
            except (ValueError, RuntimeError):
                rec.failed_call = "raised"
            rec.phase_after_failure = phase(pen)
            if rec.phase_after_failure != before:
                rec.failed_call += f" and moved the phase from {before} to {rec.phase_after_failure}"
            D.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        if draw.accumulate:
            trainable = [p for p in D.parameters() if p.requires_grad]
            for i, p in enumerate(trainable[::2]):
                p.grad = torch.full_like(p, 0.25 * (i + 1))
        spectral = oracle and draw.spectral_train
        try:
            if spectral:
                _advance_power_iteration(D, b.real)
                D.eval()
            try:
                total, parts = fastgan.discriminator_step(D, b.real, b.fake, loss=loss, penalty=pen, backend=backend,
                                                          eps=b.eps, return_parts=True,
                                                          backward=form == "backward=True")
                if form == "backward()":
                    total.backward()
            finally:
                D.train(draw.train)
            rec.outputs["total"] = total.detach().reshape(1)
            for name, value in parts._asdict().items():
                rec.outputs[f"parts.{name}"] = value.detach().reshape(1)
            rec.with_grad = frozenset(n for n, p in D.named_parameters() if p.grad is not None)
            for n, p in D.named_parameters():
                if p.grad is not None:
                    rec.outputs[f"grad {n}"] = p.grad.detach().clone()
        except Exception as e:  # noqa: BLE001 - compared with the oracle's outcome
            rec.error = e
        _record_state(rec, D, draw, pen)
        records.append(rec)
        if rec.error is not None:
            break
    return records


def run_gen(draw: Draw, backend: str, dtype: torch.dtype | None = None, oracle: bool = False) -> StepRecord:
    """``generator_step`` on a fresh build; outputs: the loss and d loss / d fake (on the
    contiguous leaf that ``fake``'s layout is a view of)."""
    b = draw.build(dtype)
    D, loss = b.D, draw.make_loss()
    rec = StepRecord()
    leaf = b.fake.detach().clone().requires_grad_(True)
    fake = layout(leaf, draw.layout_fake)
    try:
        if oracle and draw.spectral_train:
            _advance_power_iteration(D, b.fake)
            D.eval()
        try:
            value = fastgan.generator_step(D, fake, loss=loss, real=b.real if loss.paired else None, backend=backend)
            value.backward()
        finally:
            D.train(draw.train)
        rec.outputs = {"loss": value.detach().reshape(1), "d fake": leaf.grad}
        rec.with_grad = frozenset(n for n, p in D.named_parameters() if p.grad is not None)
    except Exception as e:  # noqa: BLE001
        rec.error = e
    _record_state(rec, D, draw, None)
    return rec


def run_unrolled(draw: Draw, backend: str, optimizer: str, steps: int, dtype: torch.dtype | None = None) -> StepRecord:
    """``unrolled_generator_step(mode="first_order")`` with an optimiser over all of D's parameters."""
    b = draw.build(dtype)
    D, loss, pen = b.D, draw.make_loss(), draw.make_penalty()
    params = list(D.parameters())
    opt = (torch.optim.Adam(params, lr=1e-2) if optimizer == "adam"
           else torch.optim.SGD(params, lr=1e-2, momentum=0.9))
    rec = StepRecord()
    leaf = b.fake.detach().clone().requires_grad_(True)
    fake = layout(leaf, draw.layout_fake)
    try:
        value = fastgan.unrolled_generator_step(D, b.real, fake, loss=loss, optimizer=opt, penalty=pen,
                                                steps=steps, mode="first_order", backend=backend,
                                                generator=torch.Generator().manual_seed(draw.seed))
        value.backward()
        rec.outputs = {"loss": value.detach().reshape(1), "d fake": leaf.grad}
        rec.with_grad = frozenset(n for n, p in D.named_parameters() if p.grad is not None)
    except Exception as e:  # noqa: BLE001
        rec.error = e
    _record_state(rec, D, draw, pen)
    return rec


# --------------------------------------------------------------------------------- the checks --
def _describe(draw: Draw, backend: str, form: str, step: int | None = None) -> str:
    where = f"{backend} vs oracle, {form}" + (f", step {step + 1}/{draw.steps}" if step is not None else "")
    return where


def _check_record(got: StepRecord, want: StepRecord, truth: StepRecord | None, draw: Draw, what: str,
                  originals: dict, may_raise: bool) -> bool:
    """One step's comparison; returns False when both raised (nothing more to compare)."""
    if want.error is not None:
        assert got.error is not None, (f"{what}: the oracle raised {type(want.error).__name__}: {want.error}; "
                                       "the backend did not")
        return False
    if got.error is not None:
        if may_raise:
            return False
        raise AssertionError(f"{what}: raised {type(got.error).__name__}: {got.error}") from got.error
    frozen = {n for n in originals if n not in want.with_grad}
    if got.with_grad != want.with_grad:
        raise AssertionError(f"{what}: parameters with a .grad differ: extra {sorted(got.with_grad - want.with_grad)}"
                             f", missing {sorted(want.with_grad - got.with_grad)} (oracle without: {sorted(frozen)})")
    compare(got.outputs, want.outputs, truth.outputs if truth is not None else None, draw.torch_dtype, what)
    for n, p in got.params.items():
        assert n in originals and _same(p, originals[n]), f"{what}: parameter {n} changed"
    assert set(got.buffers) == set(want.buffers), f"{what}: buffers {sorted(got.buffers)} != {sorted(want.buffers)}"
    if got.buffers:
        compare({f"buffer {k}": v for k, v in got.buffers.items()},
                {f"buffer {k}": v for k, v in want.buffers.items()},
                {f"buffer {k}": v for k, v in truth.buffers.items()} if truth is not None else None,
                draw.torch_dtype, what)
    return True


def _disc_form(draw: Draw, backend: str, form: str, want: list, truth: list | None, originals: dict,
               may_raise: bool) -> None:
    got = run_disc(draw, backend, form)
    for step, w in enumerate(want):
        what = _describe(draw, backend, form, step)
        assert step < len(got), f"{what}: stopped after step {len(got)} ({got[-1].error!r})"
        g = got[step]
        if w.failed_call or g.failed_call:
            assert g.failed_call == w.failed_call == "raised", (
                f"{what}: a step with eps of the wrong shape: {g.failed_call or 'not made'} (oracle: "
                f"{w.failed_call or 'not made'}); the lazy phase must advance only after a successful step")
        if not _check_record(g, w, truth[step] if truth is not None else None, draw, what, originals, may_raise):
            return
        assert g.phase == w.phase, f"{what}: lazy phase {g.phase} != oracle's {w.phase} (the next `every` calls)"
        assert g.reload_phase == g.phase, (f"{what}: the lazy phase {g.phase} does not survive state_dict(): "
                                           f"a fresh penalty after load_state_dict has {g.reload_phase}")


def check_disc(draw: Draw, backend: str) -> None:
    """Every form of ``discriminator_step`` on ``backend`` against the oracle (see the module
    docstring); raises AssertionError naming the draw."""
    __tracebackhide__ = True
    try:
        want = run_disc(draw, "reference", "backward()", oracle=True)
        truth = (run_disc(draw, "reference", "backward()", dtype=torch.float64, oracle=True)
                 if draw.torch_dtype != torch.float64 else None)
        originals = {n: p.detach().clone() for n, p in draw.build().D.named_parameters()}
        may_raise = draw.override != "none"
        for form in FORMS:
            _disc_form(draw, backend, form, want, truth, originals, may_raise and backend != "reference")
    except AssertionError as e:
        raise AssertionError(f"{e}\n  draw: {draw!r}\n  repro: {draw.repro('check_disc', backend)}") from None


def check_gen(draw: Draw, backend: str) -> None:
    """``generator_step`` on ``backend`` against the oracle."""
    __tracebackhide__ = True
    try:
        want = run_gen(draw, "reference", oracle=True)
        truth = run_gen(draw, "reference", dtype=torch.float64, oracle=True) \
            if draw.torch_dtype != torch.float64 else None
        originals = {n: p.detach().clone() for n, p in draw.build().D.named_parameters()}
        what = f"generator_step: {backend} vs oracle"
        got = run_gen(draw, backend)
        assert not got.with_grad, f"{what}: generator_step wrote .grad of {sorted(got.with_grad)}"
        _check_record(got, want, truth, draw, what, originals, may_raise=draw.override != "none")
    except AssertionError as e:
        raise AssertionError(f"{e}\n  draw: {draw!r}\n  repro: {draw.repro('check_gen', backend)}") from None


def check_unrolled(draw: Draw, backend: str, optimizer: str = "adam", steps: int = 2) -> None:
    """``unrolled_generator_step(mode="first_order")`` on ``backend`` against the same call with
    ``backend="reference"``; D, its .grad and the penalty's phase unchanged."""
    __tracebackhide__ = True
    try:
        want = run_unrolled(draw, "reference", optimizer, steps)
        truth = run_unrolled(draw, "reference", optimizer, steps, dtype=torch.float64) \
            if draw.torch_dtype != torch.float64 else None
        originals = {n: p.detach().clone() for n, p in draw.build().D.named_parameters()}
        what = f"unrolled_generator_step(first_order, {optimizer}, steps={steps}): {backend} vs reference"
        got = run_unrolled(draw, backend, optimizer, steps)
        assert not got.with_grad, f"{what}: wrote D's .grad of {sorted(got.with_grad)}"
        if _check_record(got, want, truth, draw, what, originals, may_raise=False):
            fresh = phase(draw.make_penalty())
            assert got.phase == fresh, f"{what}: the penalty's phase moved to {got.phase} (from {fresh})"
    except AssertionError as e:
        raise AssertionError(f"{e}\n  draw: {draw!r}\n  repro: "
                             f"import fuzz_cases as f; f.check_unrolled(f.{draw!r}, {backend!r}, {optimizer!r}, "
                             f"{steps})") from None


# ------------------------------------------------------------------------------- the backends --
def fused_backends() -> list[tuple[str, str]]:
    """(name, why it cannot run here or '') for every fused backend of this installation that
    serves CPU tensors (triton: under TRITON_INTERPRET=1)."""
    from fastgan import _dispatch
    out = []
    implemented = _fused.step_backends()
    for status in fastgan.available_backends():
        if status.name == "reference" or status.name == "cuda":
            continue
        why = status.reason
        if status.name not in implemented:
            why = why or "no fused-step implementation in this installation"
        if not why and not _dispatch.serves_device(status.name, torch.device("cpu")):
            why = "does not run on CPU tensors here (set TRITON_INTERPRET=1)"
        out.append((status.name, why))
    return out
