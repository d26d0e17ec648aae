"""The discriminator step with exact gradient penalties for any discriminator, without double
backward.

``discriminator_step(D, real, fake, loss=..., penalties=[(penalty, scale), ...])`` returns
``(total, parts)``; ``total.backward()`` leaves in D's ``.grad`` what

    loss.discriminator_loss(D(real), D(fake)) + sum(scale * penalty(D, real, fake, eps=eps))

followed by ``.backward()`` would, with the penalties' input gradients taken at the loss passes'
points (R1 on the real pass, R2 on the fake pass: no extra forward, and the same dropout masks).

How (:mod:`fastgan.linearize`): for a penalty on ``g = grad_x sum(D(x))`` with per-row
coefficient ``c_r`` (``weight * scale / rows`` for R1/R2, ``weight * scale / rows * 2(|g_r| -
center)/|g_r|`` for WGAN-GP/DRAGAN), the parameter gradient is that of the surrogate
``sum(J_x D . v)`` at ``v = c * g`` held fixed: D's forward linearised at x applied to v. Per
penalised side:

1. the primal pass D(x) (for R1/R2 the loss pass itself), recording masks and primal values;
2. ``g`` by a first-order backward to the input only (``torch.autograd.grad``, no graph);
3. the tangent pass on ``v``, differentiable with respect to D's parameters;

and then ``total = loss + penalty.detach() + (surrogate - surrogate.detach())``: the value is
exact and one ordinary backward gives loss and penalty gradients together (so
DistributedDataParallel all-reduces them: a DDP-wrapped D runs the step inside its forward).

If a node of D has neither a rule nor working forward-mode AD, the step falls back to
``autograd.grad(create_graph=True)`` on the same passes, with one warning naming the node.

Under ``torch.compile(fullgraph=True)``: call :func:`prepare` on D first (torch.fx tracing
cannot run inside a compiled region); ``g`` then comes from ``torch.func.vjp`` (dynamo does not
trace ``torch.autograd.grad``) and the loss's terms run as plain torch ops. Pass ``eps`` for
WGAN-GP / DRAGAN (random draws inside a compiled graph follow the compiler's RNG). The
forward-AD and double-backward fallbacks are eager-only (forward AD is not traced).

State: parametrized weights (spectral / weight norm) are computed once per step, before the
passes, inside ``torch.nn.utils.parametrize.cached()``; hook-based weight reparametrizations run
their pre-hooks once per step. Buffers such as BatchNorm's running statistics are updated once
per primal pass (the real and fake passes and one per built-point penalty): R1 and R2 add no
pass. Forward (post) hooks of D's layers do not run. ``backward=True`` backpropagates to D's
parameters only (``inputs=``), so no input gradient is computed.

Conditions (conditional ``D(x, y)``): ``condition=(c_real, c_fake)`` (or
``{"real": ..., "fake": ...}``), each a tensor (one extra positional argument), a tuple
(positional arguments) or a dict (keyword arguments) whose tensors have one row per sample. They
travel with real and fake; the penalty points built from both (WGAN-GP's interpolates) and
DRAGAN's perturbed reals take the real rows' condition.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from fastgan import _validate
from fastgan.fused import StepParts, unwrap
from fastgan.linearize import LinearizationError, Linearized, Record, StepState
from fastgan.piecewise import Piecewise, RowsMixed, surrogate
from fastgan.losses import GANLoss, apply_term
from fastgan.penalties import GradientPenaltyBase, discriminator_pack
from fastgan.step_spec import PenaltySide
from fastgan.terms import PenaltyKind, penalty_rows

__all__ = ["discriminator_step", "linearized", "prepare", "step"]

_PLANS: dict[int, tuple | None] = {}
"""id(module) -> (weak reference to it, {train/eval configuration: Linearized}), None once it died."""






def linearized(module: nn.Module) -> Linearized:
    """The traced :class:`~fastgan.linearize.Linearized` of ``module`` (cached per module and
    per train/eval configuration of its submodules: fx bakes ``self.training`` branches in)."""
    key = tuple(m.training for m in module.modules())
    entry = _PLANS.get(id(module))
    if entry is None or entry[0]() is not module:
        entry = _PLANS[id(module)] = (weakref.ref(module, _forget(id(module))), {})
    plans = entry[1]
    plan = plans.get(key)
    if plan is None:
        if torch.compiler.is_compiling():
            raise RuntimeError(f"the generic step traces {type(module).__name__} with torch.fx, which cannot run inside "
                               "torch.compile: call fastgan.generic_step.prepare(D) (or run one eager step) first, "
                               "in the train/eval mode the compiled step will use")
        plan = plans[key] = Linearized(module)
        plan.double_backward = None  # the node that sent it to double backward, once found
        plan.piecewise = Piecewise(plan)
    return plan


def _forget(key: int):
    """A weakref callback that drops a dead module's plans but keeps its key: torch.compile guards
    index the registry's keys, so keys are never removed (a reused id overwrites the entry)."""
    def callback(_ref):
        if key in _PLANS and _PLANS[key] is not None and _PLANS[key][0] is _ref:
            _PLANS[key] = None
    return callback


def prepare(module: nn.Module) -> Linearized:
    """Trace D for the generic step now (needed before ``torch.compile`` of a step; eager steps
    trace on first use). Unwraps DistributedDataParallel / DataParallel."""
    return linearized(unwrap(module))


def _split_condition(condition, real, fake):
    if condition is None:
        return ((), {}), ((), {})
    if isinstance(condition, dict):
        if set(condition) != {"real", "fake"}:
            raise ValueError(f"condition as a dict needs exactly the keys 'real' and 'fake', got {sorted(condition)}")
        pair = (condition["real"], condition["fake"])
    elif isinstance(condition, (tuple, list)) and len(condition) == 2:
        pair = tuple(condition)
    else:
        raise ValueError("condition must be (c_real, c_fake) or {'real': c_real, 'fake': c_fake}, each a tensor, "
                         "a tuple of positional arguments or a dict of keyword arguments for D")
    out = []
    for side, c, x in (("real", pair[0], real), ("fake", pair[1], fake)):
        if isinstance(c, torch.Tensor):
            args, kwargs = (c,), {}
        elif isinstance(c, (tuple, list)):
            args, kwargs = tuple(c), {}
        elif isinstance(c, dict):
            args, kwargs = (), dict(c)
        else:
            raise ValueError(f"condition for {side} must be a tensor, a tuple or a dict, got {type(c).__name__}")
        named = [(f"condition {side}[{i}]", a) for i, a in enumerate(args)] + \
                [(f"condition {side}[{k!r}]", a) for k, a in kwargs.items()]
        for name, a in named:
            if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] != x.shape[0]:
                raise ValueError(f"{name} has {a.shape[0]} rows but {side} has {x.shape[0]} samples; "
                                 "a condition needs one row per sample")
        out.append((args, kwargs))
    return out[0], out[1]


def _check_output(out, x: torch.Tensor, pack: int, name: str, D: nn.Module) -> torch.Tensor:
    rows = x.shape[0] // pack
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{type(D).__name__} returned a {type(out).__name__} on {name}; the step needs one logit "
                        "per row as a tensor of shape (rows,) or (rows, 1): wrap D so that it returns the logits only")
    if tuple(out.shape) not in ((rows,), (rows, 1)):
        raise ValueError(f"{type(D).__name__} returned shape {tuple(out.shape)} on {name} ({x.shape[0]} samples, "
                         f"pack={pack}); the step needs one logit per row: ({rows},) or ({rows}, 1) (set D's `pack` "
                         "attribute for PacGAN, or reshape D's output)")
    return out


class _Side:
    """One penalised point set: its primal pass, its penalties and their row coefficients."""

    __slots__ = ("x", "out", "rec", "g", "penalties")

    def __init__(self, x, out, rec, g):
        self.x, self.out, self.rec, self.g, self.penalties = x, out, rec, g, []


def _forward(plan: Linearized, x: torch.Tensor, cond, state: StepState, want_g: bool):
    """The primal pass at ``x`` and, if ``want_g``, ``g = grad_x sum(D(x))`` by a first-order
    backward to the input only: ``torch.autograd.grad`` in eager mode (the graph is kept for the
    loss's backward), ``torch.func.vjp`` under ``torch.compile`` (which does not trace
    ``autograd.grad``). Returns (output, record, the input used, g or None)."""
    if not want_g:
        out, rec = plan.primal((x,) + cond[0], cond[1], state)
        return out, rec, x, None
    if torch.compiler.is_compiling():
        skeleton = []

        def f(x_):
            out_, rec_ = plan.primal((x_,) + cond[0], cond[1], state)
            tensors, skel = rec_.split()
            skeleton.append(skel)
            return out_, tensors
        out, pullback, tensors = torch.func.vjp(f, x, has_aux=True)
        (g,) = pullback(torch.ones_like(out))
        # the pullback is differentiable in D's parameters (the outer autograd level): v = c * g
        # is held fixed, so cut that graph (no double backward)
        return out, Record.join(tensors, skeleton[0]), x, g.detach()
    x = x.requires_grad_(True)
    out, rec = plan.primal((x,) + cond[0], cond[1], state)
    (g,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    return out, rec, x, g


def _effective_weights(module: nn.Module) -> None:
    """Compute every parametrized tensor once, now (inside ``parametrize.cached()``): the step's
    passes then share it, spectral norm's power iteration advances once per step, and under
    ``torch.compile`` the cached weight is made outside the ``torch.func.vjp`` transform."""
    for m in module.modules():
        if parametrize.is_parametrized(m):
            for name in m.parametrizations:
                getattr(m, name)


def _loss_value(loss: GANLoss, real_logits, fake_logits):
    """``loss.discriminator_loss``; under ``torch.compile`` its terms in plain torch ops (the
    backend choice reads a context variable, which dynamo does not trace)."""
    if not torch.compiler.is_compiling():
        return loss.discriminator_loss(real_logits, fake_logits)
    t_real, t_fake = loss.discriminator_terms()
    if loss.paired:
        return apply_term(real_logits - fake_logits, t_real, loss.reduction, "torch")
    return (apply_term(real_logits, t_real, loss.reduction, "torch")
            + apply_term(fake_logits, t_fake, loss.reduction, "torch"))


def _coefficients(g_rows: torch.Tensor, penalty: GradientPenaltyBase, scale: float):
    """(penalty value, per-row coefficient c_r (rows, 1)) for rows of g (detached)."""
    rows = g_rows.shape[0]
    kind, weight, center = PenaltyKind(penalty.kind), float(penalty.weight), float(penalty.center)
    value = penalty_rows(g_rows, kind, weight, center).mean() * scale
    if kind == PenaltyKind.SQUARED:
        return value, weight * scale / rows
    n = torch.linalg.vector_norm(g_rows, dim=1, keepdim=True)
    nonzero = n > 0
    safe = torch.where(nonzero, n, torch.ones_like(n))
    c = torch.where(nonzero, 2 * weight * scale / rows * (safe - center) / safe, torch.zeros_like(n))
    return value, c


def _tangent_input(g_rows: torch.Tensor, penalties) -> tuple[list, Any]:
    """(the penalties' values, their summed per-row coefficient) for rows of g."""
    values, coeff = [], 0
    for p, s in penalties:
        v_p, c_p = _coefficients(g_rows, p, s)
        values.append(v_p)
        coeff = coeff + c_p
    return values, coeff


def _loss_and_coefficients(loss: GANLoss, out_r, out_f):
    """The loss's value on the (detached) logits and ``d loss / d logits`` of each side, for the
    fast path of fastgan.piecewise: (value, c_real, c_fake), the loss evaluated once."""
    def fn(r, f):
        return _loss_value(loss, r, f)
    if torch.compiler.is_compiling():
        value, pull = torch.func.vjp(fn, out_r.detach(), out_f.detach())
        c_r, c_f = pull(torch.ones_like(value))
    else:
        r, f = out_r.detach().requires_grad_(True), out_f.detach().requires_grad_(True)
        value = fn(r, f)
        c_r, c_f = torch.autograd.grad(value, (r, f))
        value = value.detach()
    return value, c_r, c_f


def _rng_states(x: torch.Tensor):
    states = [torch.random.get_rng_state()]
    if x.is_cuda:
        states.append(torch.cuda.get_rng_state(x.device))
    return states


def _set_rng_states(x: torch.Tensor, states) -> None:
    torch.random.set_rng_state(states[0])
    if x.is_cuda:
        torch.cuda.set_rng_state(states[1], x.device)


def _run_piecewise(plan: Linearized, pw: Piecewise, inner, real, fake, loss, active, eps, generator, cond_real,
                   cond_fake, state, pack, check: bool):
    """The step on the fast path of fastgan.piecewise: no side builds an autograd graph. A
    penalised side's loss backward and penalty gradient are folded into one weight-gradient
    product per layer; an unpenalised side's loss backward runs by the same layer rules. Autograd
    gets the gradients through the surrogate alone, so under torch.compile no activation is saved
    for a backward graph (Inductor would save LeakyReLU's sign as a bool tensor: slow on AMD
    CPUs, benchmarks/NOTES.md)."""
    def primal(x, cond, name):
        out, rec = plan.primal((x,) + cond[0], cond[1], state, pw, x.shape[0] // pack if check else None)
        return _check_output(out, x, pack, name, inner), rec

    xr, xf = real.detach(), fake.detach()
    out_r, rec_r = primal(xr, cond_real, "real")
    out_f, rec_f = primal(xf, cond_fake, "fake")
    value, c_r, c_f = _loss_and_coefficients(loss, out_r, out_f)

    groups: dict = {"real": (xr, out_r, rec_r, c_r, []), "fake": (xf, out_f, rec_f, c_f, [])}
    for p, s in active:
        side = PenaltySide(p.side)
        if side == PenaltySide.REAL:
            groups["real"][4].append((p, s))
        elif side == PenaltySide.FAKE:
            groups["fake"][4].append((p, s))
        else:
            xp = p.penalty_input(xr, xf, pack, eps=eps, generator=generator).detach()
            out_p, rec_p = primal(xp, cond_real, "the penalty's points")
            groups[len(groups)] = (xp, out_p, rec_p, None, [(p, s)])

    pen_value = value.new_zeros(())
    acc: dict = {}
    for x, out, rec, c, pens in groups.values():
        if not pens:
            pw.backward(rec, c, acc)
            continue
        rows = x.shape[0] // pack
        g, deltas = pw.backward(rec, torch.ones_like(out))
        g_rows = (g if g is not None else torch.zeros_like(x)).reshape(rows, -1)
        values, coeff = _tangent_input(g_rows, pens)
        for v_p in values:
            pen_value = pen_value + v_p
        pw.weight_grads(rec, (g_rows * coeff).reshape(x.shape), deltas, c, rows, acc)
    total = value + pen_value.detach()
    s = surrogate(acc)
    if s is not None:
        total = total + (s - s.detach())
    parts = StepParts(value.detach(), pen_value.detach(), out_r.detach().mean(), out_f.detach().mean())
    return total, parts


_ONEDNN = torch.backends.mkldnn.is_available()  # (dynamo does not trace the call)


def _compiled_layout(plan: Linearized, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory layout that Inductor gives the convolutions of a compiled step.

    On the CPU with oneDNN, Inductor's layout optimisation runs every convolution channels-last,
    while the step is traced with the input's strides. Every tensor that a convolution's
    backward reads is then kept in the traced layout, so each activation gets transposed away
    from channels-last and back in the generated kernels. Tracing on a channels-last input
    makes the two layouts agree. Eager steps, other devices, and a compile with
    ``torch._inductor.config.layout_optimization`` off keep the input's layout."""
    if (not torch.compiler.is_compiling() or x.device.type != "cpu" or x.dim() not in (4, 5)
            or x.dim() - 2 not in plan.conv_ranks):  # channels-last layouts exist for 2-D and 3-D images
        return x
    from torch._inductor import config
    if not (config.layout_optimization and torch.backends.mkldnn.enabled and _ONEDNN):
        return x
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def _run(inner: nn.Module, real, fake, loss, penalties, eps, generator, cond_real, cond_fake):
    plan = linearized(inner)
    real, fake = _compiled_layout(plan, real), _compiled_layout(plan, fake)
    pack = discriminator_pack(inner)
    active = [(p, s) for p, s in penalties if s != 0]
    sides = {PenaltySide(p.side) for p, _ in active}
    state = StepState()
    with torch.enable_grad(), parametrize.cached():
        _effective_weights(inner)
        pw = plan.piecewise
        if active and pw.ok and plan.double_backward is None:
            compiling = torch.compiler.is_compiling()
            key = (tuple(real.shape), tuple(fake.shape))
            check = compiling or key not in pw.verified
            rng = _rng_states(real) if check and pw.random and not compiling else None
            try:
                done = _run_piecewise(plan, pw, inner, real, fake, loss, active, eps, generator, cond_real,
                                      cond_fake, state, pack, check)
            except RowsMixed as err:  # the general path below, from now on
                pw.reason = str(err)
                if rng is not None:
                    _set_rng_states(real, rng)
            else:
                if check and not compiling:
                    pw.verified.add(key)
                return done
        out_r, rec_r, xr, g_r = _forward(plan, real.detach(), cond_real, state, PenaltySide.REAL in sides)
        out_r = _check_output(out_r, xr, pack, "real", inner)
        out_f, rec_f, xf, g_f = _forward(plan, fake.detach(), cond_fake, state, PenaltySide.FAKE in sides)
        out_f = _check_output(out_f, xf, pack, "fake", inner)
        value = _loss_value(loss, out_r, out_f)

        groups: list[_Side] = []
        real_side = fake_side = None
        for p, s in active:
            side = PenaltySide(p.side)
            if side == PenaltySide.REAL:
                if real_side is None:
                    real_side = _Side(xr, out_r, rec_r, g_r)
                    groups.append(real_side)
                real_side.penalties.append((p, s))
            elif side == PenaltySide.FAKE:
                if fake_side is None:
                    fake_side = _Side(xf, out_f, rec_f, g_f)
                    groups.append(fake_side)
                fake_side.penalties.append((p, s))
            else:
                xp = p.penalty_input(real.detach(), fake.detach(), pack, eps=eps, generator=generator)
                out_p, rec_p, xp, g_p = _forward(plan, xp.detach(), cond_real, state, True)
                out_p = _check_output(out_p, xp, pack, "the penalty's points", inner)
                grp = _Side(xp, out_p, rec_p, g_p)
                grp.penalties.append((p, s))
                groups.append(grp)

        pen_value = value.new_zeros(())
        surrogate = None
        for grp in groups:
            x = grp.x
            rows = x.shape[0] // pack
            if plan.double_backward is None:
                g_rows = grp.g.reshape(rows, -1)
                values, coeff = _tangent_input(g_rows, grp.penalties)
                try:
                    t = plan.tangent(grp.rec, (g_rows * coeff).reshape(x.shape))
                except LinearizationError as err:
                    plan.double_backward = err.where
                    warnings.warn(f"fastgan: {type(inner).__name__}: {err}; the penalty falls back to double "
                                  "backward (autograd.grad with create_graph=True)", stacklevel=3)
                else:
                    for v_p in values:
                        pen_value = pen_value + v_p
                    if isinstance(t, torch.Tensor) and t.requires_grad:
                        surrogate = t.sum() if surrogate is None else surrogate + t.sum()
                    continue
            (g,) = torch.autograd.grad(grp.out.sum(), x, retain_graph=True, create_graph=True)
            g_rows = g.reshape(rows, -1)
            for p, s in grp.penalties:
                pen_value = pen_value + penalty_rows(g_rows, PenaltyKind(p.kind), float(p.weight),
                                                     float(p.center)).mean() * s

        total = value + pen_value.detach() if not pen_value.requires_grad else value + pen_value
        if surrogate is not None:
            total = total + (surrogate - surrogate.detach())
    parts = StepParts(value.detach(), pen_value.detach(), out_r.detach().mean(), out_f.detach().mean())
    return total, parts


def _check_args(D, real, fake, loss, penalties):
    if not isinstance(D, nn.Module):
        raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
    if not isinstance(loss, GANLoss):
        raise TypeError(f"loss must be a fastgan GANLoss (e.g. NonSaturatingLoss()), got {type(loss).__name__}")
    if loss.reduction == "none":
        raise ValueError("discriminator_step needs a scalar loss: use reduction 'mean' or 'sum'")
    _validate.tensors(real=real, fake=fake)
    if loss.paired:
        _validate.same_shape("real", real, "fake", fake, f"{type(loss).__name__} pairs real and fake")
    out = []
    for item in penalties or ():
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"penalties must be (penalty, scale) pairs, got {item!r}")
        p, s = item
        if not isinstance(p, GradientPenaltyBase):
            raise TypeError(f"a penalty must be a fastgan penalty (e.g. R1Penalty()), got {type(p).__name__}")
        s = float(s)
        if s < 0:
            raise ValueError(f"a penalty's scale must be non-negative, got {s}")
        out.append((p, s))
    pack = discriminator_pack(D)
    for name, x in (("real", real), ("fake", fake)):
        if x.shape[0] % pack:
            raise ValueError(f"{name} has {x.shape[0]} samples, not divisible by the discriminator's pack={pack}")
    for p, s in out:
        if s:
            p.check_inputs(real, fake, pack)
    return out


def discriminator_step(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, loss: GANLoss,
                       penalties: Sequence[tuple[GradientPenaltyBase, float]] = (),
                       eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       backward: bool = False, condition: Any = None):
    """One discriminator objective with exact gradient penalties and no double backward.

    Args:
        D: any discriminator module returning one logit per row, ``(rows,)`` or ``(rows, 1)``
            (rows = samples / D's ``pack`` or ``pac``), possibly wrapped in
            DistributedDataParallel (the step then runs inside its forward).
        real, fake: data (no gradient flows into them).
        loss: a :class:`~fastgan.GANLoss`; ``loss.discriminator_loss(D(real), D(fake))``.
        penalties: ``(penalty, scale)`` pairs; ``scale`` is the lazy factor the caller decided
            (0 skips the penalty; the penalty's own schedule is not advanced here).
        eps, generator: for the penalties' points (WGAN-GP's per-row eps, DRAGAN's noise).
        backward: also run the backward (gradients accumulate into ``.grad``) and return a
            detached total.
        condition: ``(c_real, c_fake)`` extra arguments of a conditional D (module docstring).

    Returns:
        ``(total, parts)``: the scalar total and :class:`~fastgan.fused.StepParts` (detached).
    """
    return step(D, real, fake, loss=loss, penalties=_check_args(D, real, fake, loss, penalties), eps=eps,
                generator=generator, backward=backward, condition=condition)


def step(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, loss: GANLoss,
         penalties: Sequence[tuple[GradientPenaltyBase, float]], eps=None, generator=None, backward: bool = False,
         condition: Any = None):
    """:func:`discriminator_step` on arguments already checked (``fastgan.discriminator_step``
    checks them once, before it calls this)."""
    cond_real, cond_fake = _split_condition(condition, real, fake)
    inner = unwrap(D)
    if not isinstance(D, nn.parallel.DistributedDataParallel):
        D = inner  # DataParallel: the step runs on the wrapped module (no replicas)
    run = lambda: _run(inner, real, fake, loss, penalties, eps, generator, cond_real, cond_fake)  # noqa: E731
    if inner is not D:
        total, parts = _through_wrapper(D, inner, run)
    else:
        total, parts = run()
    if backward:
        params = [p for p in inner.parameters() if p.requires_grad]
        if total.requires_grad:
            if params and inner is D:
                torch.autograd.backward(total, inputs=params)
            else:
                total.backward()
        total = total.detach()
    return total, parts


def _through_wrapper(D: nn.Module, inner: nn.Module, run):
    """Run the step inside the wrapper's forward (DistributedDataParallel prepares its gradient
    all-reduce there): the inner module's forward is replaced for that one call."""
    def forward(*_args, **_kwargs):
        del inner.forward  # back to the class's forward before anything calls it
        return run()
    inner.forward = forward
    try:
        return D(torch.empty(0))
    finally:
        if "forward" in inner.__dict__:
            del inner.forward
