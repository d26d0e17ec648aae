"""The fused discriminator and generator steps (docs/DESIGN.md section 4).

``discriminator_step(D, real, fake, loss=..., penalty=...)`` returns the scalar
``loss + penalty``; its ``.backward()`` leaves in D's ``.grad`` exactly what

    loss.discriminator_loss(D(real), D(fake.detach())) + penalty(D, real, fake)

followed by ``.backward()`` would (that composition is the ``reference`` backend). For an
:class:`~fastgan.MLPDiscriminator` the other backends compute the same gradients in closed form
without double backward; any other module goes through the reference path.

The fused path (docs/DESIGN.md section 4): rows are packed (``(B, in) -> (B/pack, pack*in)``), the
means' 1/N, the penalty's 1/rows and its lazy factor are folded into the term scales and the
penalty weight, and the chosen backend's ``mlp_disc_step`` operator (one contract, registered for
every backend in :mod:`fastgan.ops.mlp_step`) returns the loss with the parameter gradients. A first-order
``autograd.Function`` hands those to autograd, so ``torch.compile(fullgraph=True)`` and
DistributedDataParallel work (the step runs inside ``D.forward``, so DDP all-reduces it). The
inputs are data: no gradient flows to ``real`` or ``fake``. Under ``torch.compile`` the backend
and ``allow_tf32`` (``torch.get_float32_matmul_precision() != 'highest'``) are resolved when the
graph is traced (changing them later does not retrace); WGAN-GP/DRAGAN need ``eps`` there (random draws inside a compiled graph
follow the compiler's RNG).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import warnings
from typing import NamedTuple

import torch
from torch import nn

from fastgan import _dispatch, _native, _validate, parametrized, step_spec
from fastgan._dispatch import assume_constant_result as _assume_constant_result
from fastgan.ops import mlp_step as mlp_step_ops
from fastgan.losses import GANLoss, get_loss
from fastgan.mlp import MLPDiscriminator, dropout_generator
from fastgan.penalties import GradientPenaltyBase, discriminator_pack


class StepParts(NamedTuple):
    """Detached parts of a discriminator step, for logging."""

    loss: torch.Tensor
    penalty: torch.Tensor
    real_logit_mean: torch.Tensor
    fake_logit_mean: torch.Tensor


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else ``module``)."""
    return getattr(module, "module", module)  # DistributedDataParallel / DataParallel


def check_step_args(D, real, fake, loss, penalty, eps=None, generator=None):
    """Every check of a discriminator step's arguments, on every call (before any kernel runs)."""
    if not isinstance(D, nn.Module):
        raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
    if not isinstance(loss, GANLoss):
        raise TypeError(f"loss must be a fastgan GANLoss (e.g. NonSaturatingLoss()), got {type(loss).__name__}")
    penalties = penalty_list(penalty)
    _validate.tensors(real=real, fake=fake)
    _validate.generator(generator)
    if eps is not None and not isinstance(eps, torch.Tensor):
        raise TypeError(f"eps must be a torch.Tensor or None, got {type(eps).__name__}")
    inner = unwrap(D)
    if isinstance(inner, MLPDiscriminator):
        inner.check_input(real, "real")
        inner.check_input(fake, "fake")
    for p in penalties:
        p.check_inputs(real, fake, discriminator_pack(inner), eps=eps, generator=generator)


def penalty_list(penalty) -> tuple[GradientPenaltyBase, ...]:
    """``penalty`` (None, one penalty, or a list / tuple of them) as a tuple of penalties."""
    items = () if penalty is None else tuple(penalty) if isinstance(penalty, (list, tuple)) else (penalty,)
    for p in items:
        if not isinstance(p, GradientPenaltyBase):
            raise TypeError("penalty must be a fastgan penalty (e.g. R1Penalty()), a list of them, or None, "
                            f"got {type(p).__name__}")
    if len({id(p) for p in items}) < len(items):
        raise ValueError("penalty lists one penalty module twice; its lazy phase would move twice per step")
    return items


def discriminator_step(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, loss: GANLoss | str,
                       penalty: GradientPenaltyBase | list[GradientPenaltyBase] | None = None,
                       backend: str | None = None,
                       eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       return_parts: bool = False, backward: bool = False, condition=None):
    """One discriminator objective: ``loss(D(real), D(fake.detach())) + penalty(D, real, fake)``.

    Args:
        D: the discriminator, possibly wrapped in DistributedDataParallel. An
            ``MLPDiscriminator`` takes the fused closed-form step; any other module the
            linearised step (:mod:`fastgan.generic_step`: exact penalties without double
            backward); a module with hooks the reference path. :func:`explain` says which.
        real, fake: input batches; ``fake`` is treated as detached.
        loss: a :class:`~fastgan.GANLoss` (or its name).
        penalty: a gradient penalty module, a list of them (R3GAN's ``[R1Penalty(), R2Penalty()]``:
            their sum), or None; each one's ``every=k`` lazy schedule is honoured.
        backend: see :mod:`fastgan._dispatch`.
        eps, generator: passed to the penalties (WGAN-GP's per-row eps, DRAGAN's noise);
            ``generator`` also draws D's dropout masks (None: torch's default generator).
        return_parts: also return :class:`StepParts` (detached) for logging.
        backward: also run the backward pass: the gradients are added to D's ``.grad`` (a
            parameter without ``.grad`` takes the kernel's buffer, no copy) as ``.backward()``
            would, without autograd, and the returned total is detached. The fastest form (one op
            per step, no autograd graph), and capturable in a CUDA graph. The fused step does
            not take it under DistributedDataParallel, whose all-reduce hooks into autograd:
            there call ``.backward()`` on the result.
        condition: for a conditional ``D(x, y)`` (linearised path only): ``(y_real, y_fake)``,
            each a tensor, a tuple of positional or a dict of keyword arguments with one row per
            sample; it travels with real and fake through every pass and into the penalties.

    Returns:
        The scalar total, or ``(total, parts)`` with ``return_parts=True``.

    Dropout (an MLPDiscriminator with ``dropout > 0`` in training mode): the step draws what the
    reference's separate ``D(...)`` calls would, in their order, from ``generator`` (or torch's
    default): the real rows' masks (per hidden layer, in layer order), the fake rows' masks, then
    for each due penalty its random numbers (WGAN-GP's eps, DRAGAN's noise) followed by the masks
    of its own pass. A penalty is the gradient of its own pass's draw, so R1 / R2 are not taken
    on the loss pass: they penalise the real / fake rows under masks of their own. With the same
    RNG state the fused and reference paths see the same masks and agree. Eval mode draws nothing.
    """
    loss = get_loss(loss)
    check_step_args(D, real, fake, loss, penalty, eps, generator)
    penalties = penalty_list(penalty)
    if loss.reduction == "none":
        raise ValueError("discriminator_step needs a scalar loss: use reduction 'mean' or 'sum'")
    if loss.paired:
        _validate.same_shape("real", real, "fake", fake, f"{type(loss).__name__} pairs real and fake")
    inner = unwrap(D)
    chosen = step_plan(inner, backend, real.device)
    if backward and inner is not D and chosen.path == "fused":
        raise ValueError(f"backward=True bypasses autograd, so {type(D).__name__} cannot all-reduce the "
                         "gradients; call .backward() on the returned total instead")
    if condition is not None and chosen.path != "linearized":
        raise ValueError(f"condition= needs the linearised step; this call takes the {chosen.path} path "
                         f"({chosen.reason})")
    with _gradient_mode(backward):
        if backward and real.is_inference():
            real, fake = real.clone(), fake.clone()  # inference tensors cannot be saved for backward
        with parametrized.weights_once(D):
            if chosen.path == "reference":
                total, parts = _reference_step(D, real, fake, loss, penalties, eps, generator)
                if backward:
                    total.backward()
                    total = total.detach()
            elif chosen.path == "linearized":
                from fastgan import generic_step
                calls = [(p, p.due_scale()) for p in penalties]
                total, parts = generic_step.step(D, real, fake, loss=loss, penalties=calls, eps=eps,
                                                 generator=generator, backward=backward, condition=condition)
                for p in penalties:
                    p.advance()
            else:
                # Through D's forward (fused=...), so DistributedDataParallel sees a forward and
                # all-reduces the gradients the fused function hands to autograd.
                run = functools.partial(_fused_step, fake=fake, loss=loss, penalties=penalties,
                                        backend=chosen.backend, eps=eps, generator=generator, backward=backward)
                total, parts = D(real, fused=run)
    return (total, parts) if return_parts else total


def _gradient_mode(backward: bool):
    """``backward=True`` computes gradients whatever the caller's grad mode: outside inference
    mode (whose tensors would poison ``.grad``) and with grad enabled."""
    if not backward:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    if torch.is_inference_mode_enabled():
        stack.enter_context(torch.inference_mode(False))
    if not torch.is_grad_enabled():
        stack.enter_context(torch.enable_grad())
    return stack


class StepPlan(NamedTuple):
    """Which path :func:`discriminator_step` takes for a discriminator, and why
    (:func:`fastgan.explain`)."""

    path: str      # "fused" | "linearized" | "reference" (double backward)
    backend: str   # the backend that runs it ("torch" for the linearised step's torch ops)
    reason: str


LINEARIZED = ("the linearised step: exact penalties from a tangent pass, no double backward (a layer with no "
              "tangent rule takes forward-mode AD; one that cannot be traced sends the step to double backward, "
              "with a warning)")


def plan(inner: nn.Module, backend: str | None, device: torch.device) -> StepPlan:
    """The path and backend of a step on the unwrapped discriminator ``inner`` (raises where an
    explicit fused backend cannot run it).

    - ``MLPDiscriminator`` that the kernels reproduce: the fused closed-form step;
    - a module with hooks (which neither the kernels nor the traced step run): the reference path;
    - any other module (and an MLPDiscriminator the kernels cannot reproduce): the linearised step;
    - ``backend="reference"``: the reference path (double backward), always."""
    asked = _dispatch.requested(backend)
    hooks = hook_reason(inner)
    if isinstance(inner, MLPDiscriminator):
        why = unfusable_reason(inner) or hooks
        if not why:
            name = resolve_backend(backend, str(device))
            if name == "reference":
                return StepPlan("reference", name, "backend 'reference' was asked for")
            if inner.dropout_active and name not in DROPOUT_BACKENDS:
                if _dispatch.requested(backend) != "auto":
                    raise ValueError(f"backend={name!r} takes no dropout masks yet ({type(inner).__name__} has "
                                     f"dropout={inner.dropout} in training mode); use one of {DROPOUT_BACKENDS}, "
                                     "backend='reference', or D.eval()")
                fallback = "torch"  # closed form in torch operations: any device
                return StepPlan("fused", fallback, f"an MLPDiscriminator with dropout in training mode: the "
                                f"closed-form step on the {fallback!r} backend (the {name!r} backend takes no "
                                "dropout masks yet)")
            return StepPlan("fused", name, f"an MLPDiscriminator: the closed-form step on the {name!r} backend")
        if asked not in ("auto", "reference"):
            raise ValueError(f"backend={asked!r}: the fused step cannot run this {type(inner).__name__} ({why}); "
                             "use backend='reference' (autograd), or remove what the kernels cannot reproduce")
        subject = f"the fused step cannot run this {type(inner).__name__}: {why}"
    else:
        if backend is not None and backend != "reference":
            raise ValueError(f"backend={backend!r} needs an MLPDiscriminator (the fused step is closed-form "
                             f"for it only); {type(inner).__name__} runs with backend='reference' or None")
        subject = f"{type(inner).__name__} is not an MLPDiscriminator"
    if asked == "reference":
        return StepPlan("reference", "reference", "backend 'reference' was asked for")
    if hooks:
        return StepPlan("reference", "reference", f"{subject} ({hooks}): the penalty takes double backward")
    return StepPlan("linearized", "torch", f"{subject}: {LINEARIZED}")


def explain(D: nn.Module, *, backend: str | None = None, device: torch.device | str | None = None) -> StepPlan:
    """Which path :func:`discriminator_step` takes for ``D`` and why.

    >>> fastgan.explain(fastgan.MLPDiscriminator(2, (64, 64)))
    StepPlan(path='fused', backend='cpu', reason="an MLPDiscriminator: the closed-form step on the 'cpu' backend")

    ``device`` defaults to that of D's first parameter (CPU for a D without parameters)."""
    if not isinstance(D, nn.Module):
        raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
    inner = unwrap(D)
    if device is None:
        device = next((p.device for p in inner.parameters()), torch.device("cpu"))
    return plan(inner, backend, torch.device(device))


def step_plan(inner: nn.Module, backend: str | None, device: torch.device) -> StepPlan:
    """:func:`plan`, with a one-time warning when an MLPDiscriminator does not take the fused
    path, and a one-time info-level log (logger ``fastgan``) when a step takes double backward."""
    chosen = plan(inner, backend, device)
    if chosen.path != "fused" and _dispatch.requested(backend) != "reference":
        if isinstance(inner, MLPDiscriminator):
            why = unfusable_reason(inner) or hook_reason(inner)
            _warn_once(f"fastgan: the fused kernels cannot run this {type(inner).__name__} ({why}); "
                       f"discriminator_step takes the {chosen.path} path (fastgan.explain(D) says more)")
        elif chosen.path == "reference" and type(inner) not in _logged:
            _logged.add(type(inner))
            logger.info("fastgan: %s", chosen.reason)
    return chosen


def step_backend(inner: nn.Module, backend: str | None, device: torch.device) -> str:
    """The backend of a generator step: the fused one, or 'reference' (the generator's step
    needs no double backward, so any other discriminator runs through autograd)."""
    chosen = step_plan(inner, backend, device)
    return chosen.backend if chosen.path == "fused" else "reference"


# The backends whose mlp_disc_step / mlp_gen_step take dropout masks (masks_* arguments); a
# training-mode dropout D under "auto" runs on the first of them where the chosen one takes none.
DROPOUT_BACKENDS = ("torch", "cpu", "triton", "cuda")

_HOOK_KINDS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_warned: set[str] = set()
_logged: set[type] = set()
logger = logging.getLogger("fastgan")


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, UserWarning, stacklevel=4)


def hook_reason(module: nn.Module) -> str:
    """'' when no hook would run on a forward of ``module``; else which: global module hooks, or
    forward / backward hooks on it or a submodule (the hook forms of spectral and weight norm
    excepted: :mod:`fastgan.parametrized` runs them once per step)."""
    from torch.nn.modules import module as torch_module
    for kind in _HOOK_KINDS:
        if getattr(torch_module, "_global" + kind, None):
            return f"global module {kind[1:].replace('_', ' ')} are registered"
    for name, m in module.named_modules():
        for kind in _HOOK_KINDS:
            hooks = getattr(m, kind)
            if hooks and any(not isinstance(h, parametrized.WEIGHT_HOOKS) for h in hooks.values()):
                return f"{_display(name)} has {kind[1:].replace('_', ' ')}"
    return ""


def _display(name: str) -> str:
    """``layers.1`` as ``layers[1]``; the root as ``D``."""
    if not name:
        return "D"
    return "D." + ".".join(f"[{part}]" if part.isdigit() else part for part in name.split(".")).replace(".[", "[")


def unfusable_reason(inner: MLPDiscriminator) -> str:
    """'' when the fused kernels compute exactly what ``inner``'s forward computes; else why not:
    a subclass that overrides ``forward`` or a layer that is not a plain ``nn.Linear`` (hooks are
    :func:`hook_reason`'s, which :func:`plan` asks once for every module).
    Parametrizations (spectral norm, weight norm, any ``torch.nn.utils.parametrize``) and the
    hook forms of spectral and weight norm are followed (:mod:`fastgan.parametrized`)."""
    cls = type(inner)
    if cls.forward is not MLPDiscriminator.forward:
        return f"{cls.__name__} overrides forward"
    for name, m in _fused_modules(inner):
        if name and type(m).forward is not nn.Linear.forward:
            return f"{name} is a {type(m).__name__} whose forward is not nn.Linear's"
    return ""


def _fused_modules(inner: MLPDiscriminator):
    yield "", inner
    for i, layer in enumerate(inner.layers):
        yield f"layers[{i}]", layer
    yield "out", inner.out


def _reference_step(D, real, fake, loss, penalties, eps, generator):
    with _dispatch.use_backend("reference"), dropout_generator(generator):
        real_logits = D(real.detach())  # data, as on the fused path: no gradient into real
        fake_logits = D(fake.detach())
        value = loss.discriminator_loss(real_logits, fake_logits)
        pen = value.new_zeros(())
        for penalty in penalties:
            pen = pen + penalty(D, real, fake, eps=eps, generator=generator)
    total = value + pen
    parts = StepParts(value.detach(), pen.detach(), real_logits.detach().mean(), fake_logits.detach().mean())
    return total, parts


def generator_step(D: nn.Module, fake: torch.Tensor, *, loss: GANLoss | str, real: torch.Tensor | None = None,
                   backend: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The generator's loss ``loss.generator_loss(D(fake), D(real))``; ``.backward()`` sends
    d loss / d fake into the generator and computes no discriminator gradients.

    With D's dropout active the step draws the masks of ``D(fake)``, then (paired losses) of
    ``D(real)``, from ``generator`` (None: torch's default), as the reference's calls would."""
    loss = get_loss(loss)
    if loss.paired and real is None:
        raise ValueError(f"{type(loss).__name__} pairs real and fake: pass real= to generator_step")
    if not isinstance(D, nn.Module):
        raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
    if loss.reduction == "none":
        raise ValueError("generator_step needs a scalar loss: use reduction 'mean' or 'sum'")
    _validate.tensors(fake=fake, real=real if loss.paired else None)
    _validate.generator(generator)
    inner = unwrap(D)
    if isinstance(inner, MLPDiscriminator):
        inner.check_input(fake, "fake")
        if loss.paired:
            inner.check_input(real, "real")
            _validate.same_shape("real", real, "fake", fake, f"{type(loss).__name__} pairs real and fake")
    name = step_backend(inner, backend, fake.device)
    if name == "reference":
        with dropout_generator(generator):
            return _reference_generator_step(inner, fake, real, loss)
    with parametrized.weights_once(inner, grad=False), torch.no_grad():
        params = step_spec.mlp_params(inner)  # effective weights, computed once
    _check_params(fake, params)
    spec, fake_p, real_p, masks = step_spec.gen_step_operands(inner, fake, loss=loss, real=real,
                                                              allow_tf32=_allow_tf32(), generator=generator)
    # D's parameters (and the dropout masks) are constants here: they travel inside a non-tensor
    # argument, which autograd does not track (no detach per parameter, no graph edges to D).
    return _GenStepFn.apply(fake_p, real_p, name, spec, (params, masks))


def _reference_generator_step(inner, fake, real, loss):
    params = {k: v.detach() for k, v in inner.named_parameters()}
    buffers = dict(inner.named_buffers())
    call = lambda x: torch.func.functional_call(inner, (params, buffers), (x,))  # noqa: E731
    with _dispatch.use_backend("reference"), parametrized.weights_once(inner, grad=False):
        fake_logits = call(fake)
        real_logits = call(real.detach()) if loss.paired else None
        return loss.generator_loss(fake_logits, real_logits)


# ---- the fused path ---------------------------------------------------------------------------

@functools.cache
def step_backends() -> tuple[str, ...]:
    """The backends whose fused-step implementation exists in this installation."""
    found = ["torch", "reference"]
    if importlib.util.find_spec("fastgan.kernels") is not None and \
            importlib.util.find_spec("fastgan.kernels.mlp_step") is not None:
        found.append("triton")
    ext, _ = _native.load()
    if ext is not None:  # the CPU kernels are always built; the CUDA ones when cuda_compiled
        found += ["cpu", "cuda"] if ext.cuda_compiled else ["cpu"]
    return tuple(b for b in _dispatch.BACKENDS if b in found)


@_assume_constant_result
def resolve_backend(backend: str | None, device: str) -> str:
    """The backend for a fused step on ``device``. Resolved once per compiled graph under
    torch.compile (a constant: no guard on the environment or the context)."""
    return _dispatch.select(backend, torch.device(device), supported=step_backends())


@_assume_constant_result
def _allow_tf32() -> bool:
    return torch.get_float32_matmul_precision() != "highest"


def step_ops(name: str):
    """(mlp_disc_step, mlp_gen_step) of a backend: its registered operators (:mod:`fastgan.ops.mlp_step`)."""
    return mlp_step_ops.DISC.op(name), mlp_step_ops.GEN.op(name)


def _check_params(x: torch.Tensor, params) -> None:
    """Every parameter of ``params`` (:func:`fastgan.step_spec.mlp_params`'s tuple, effective
    weights included) shares ``x``'s dtype and device."""
    flat = _flat(params)
    if all(p.dtype == x.dtype and p.device == x.device for p in flat):
        return
    weights, biases, _, b_out = params
    names = [f"layers[{i}].weight" for i in range(len(weights))] + [f"layers[{i}].bias" for i in range(len(biases))]
    names += ["out.weight"] + (["out.bias"] if b_out is not None else [])
    name, p = next((n, p) for n, p in zip(names, flat) if p.dtype != x.dtype or p.device != x.device)
    raise ValueError(f"the inputs are {x.dtype} on {x.device} but D's parameters are {p.dtype} on "
                     f"{p.device} (from {name}); the fused step needs one dtype and device (D.to(x))")


def _fused_step(inner: MLPDiscriminator, real, *, fake, loss, penalties, backend, eps, generator, backward):
    """The fused step on an unwrapped MLPDiscriminator (called from its forward, inside
    :func:`fastgan.parametrized.weights_once`). ``real`` and ``fake`` are data: the op returns no
    gradient for them. One op call carries the loss and the first penalty; each further due
    penalty is one more call with no loss terms. Lazy phases move on once the ops have run."""
    params = step_spec.mlp_params(inner)
    _check_params(real, params)
    calls = [(p, p.due_scale()) for p in penalties] or [(None, 0)]
    calls = calls[:1] + [(p, scale) for p, scale in calls[1:] if scale]
    totals, stats, grads, loss_masks = [], [], None, None
    for i, (penalty, scale) in enumerate(calls):
        spec, real_p, fake_p, pen_p, masks = step_spec.disc_step_operands(
            inner, real, fake, loss=loss, penalty=penalty, penalty_scale=scale, eps=eps, generator=generator,
            allow_tf32=_allow_tf32(), loss_masks=loss_masks)
        if masks is not None:
            loss_masks = masks[:2]  # one draw for the loss pass; each further penalty draws its own
        if i:  # the loss is in call 0; this call carries one penalty and only the rows it penalises
            spec = dataclasses.replace(spec, term_real=(), term_fake=(), paired=False)
            real_p, fake_p, masks = _penalised_rows_only(spec.penalty_side, real_p, fake_p, pen_p, masks)
        if backward:
            with torch.no_grad():
                out = step_ops(backend)[0](**spec.op_args(real_p, fake_p, pen_p, *params, masks=masks))
                if grads is None:
                    grads = list(out[1:])
                else:  # one hand-over at the end: an effective weight's graph is walked once
                    torch._foreach_add_(grads, list(out[1:]))
            stats.append(out[0])
            totals.append(out[0][0] + out[0][1])
        else:
            total, st = _DiscStepFn.apply(real_p, fake_p, pen_p, backend, spec, (_layout(params), masks),
                                          *_flat(params))
            totals.append(total)
            stats.append(st)
    if grads is not None:
        _accumulate_grads(_flat(params), grads)
    for penalty in penalties:
        penalty.advance()
    first = stats[0]
    if len(stats) == 1:
        return totals[0], StepParts(*first.unbind())
    penalty_sum = sum(st[1] for st in stats)
    return sum(totals[1:], totals[0]), StepParts(first[0], penalty_sum, first[2], first[3])


def _penalised_rows_only(side: int, real_p, fake_p, pen_p, masks):
    """A further penalty's call: the rows it does not penalise replaced by the ones it does, so
    that nothing of theirs (a non-finite row through the kernels' ``0 * h`` terms) reaches a
    call whose loss terms are empty, as it would not reach the penalty on its own."""
    pick = {step_spec.PenaltySide.REAL: 0, step_spec.PenaltySide.FAKE: 1, step_spec.PenaltySide.INPUT: 2}[side]
    rows = (real_p, fake_p, pen_p)[pick]
    if masks is not None:
        masks = (masks[pick], masks[pick], masks[2])
    return rows, rows, masks


def _flat(params) -> list:
    weights, biases, w_out, b_out = params
    return [*weights, *biases, w_out] + ([b_out] if b_out is not None else [])


def _layout(params) -> tuple[int, bool, bool]:
    weights, biases, _, b_out = params
    return len(weights), len(biases) > 0, b_out is not None


def _split(flat, layout):
    """Flat (W_1..W_L, b_1..b_L?, w_out, b_out?) back to (weights, biases, w_out, b_out)."""
    layers, has_bias, has_b_out = layout
    nb = layers if has_bias else 0
    weights, biases = list(flat[:layers]), list(flat[layers:layers + nb])
    return weights, biases, flat[layers + nb], (flat[layers + nb + 1] if has_b_out else None)


def _accumulate_grads(params: list, grads) -> None:
    """What ``.backward()`` would leave in D's ``.grad`` (params in op order): nothing for a
    frozen parameter (``requires_grad=False``); for a leaf, ``p.grad += g`` (a parameter without
    ``.grad`` takes the op's fresh buffer, no copy; the others one multi-tensor add); an
    effective weight of a parametrization (spectral / weight norm) passes its gradient on to the
    original parameters by first-order autograd."""
    held, added, effective, chained = [], [], [], []
    for p, g in zip(params, grads):
        if not p.requires_grad:
            continue
        if not p.is_leaf:
            effective.append(p)
            chained.append(g)
        elif p.grad is None:  # laid out like the parameter, as autograd's accumulation guarantees
            p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
        else:
            held.append(p.grad)
            added.append(g)
    if held:
        torch._foreach_add_(held, added)
    if effective:
        torch.autograd.backward(effective, chained)


class _DiscStepFn(torch.autograd.Function):
    """First-order: the forward runs the backend's mlp_disc_step, which returns the parameter
    gradients with the loss and penalty; backward scales them by grad_output in one
    multi-tensor op (no double backward, so torch.compile and DDP treat it as an ordinary op).
    Outputs: the scalar total and the detached stats (loss, penalty, mean real logit, mean fake
    logit)."""

    @staticmethod
    def forward(ctx, real, fake, pen, backend, spec, layout_masks, *params):
        layout, masks = layout_masks  # the masks are constants (drawn before the op)
        out = step_ops(backend)[0](**spec.op_args(real, fake, pen, *_split(params, layout), masks=masks))
        stats = out[0]
        ctx.save_for_backward(*out[1:])
        ctx.mark_non_differentiable(stats)
        return stats[0] + stats[1], stats

    @staticmethod
    def backward(ctx, grad_total, grad_stats):
        return (None,) * 6 + tuple(torch._foreach_mul(list(ctx.saved_tensors), grad_total))


class _GenStepFn(torch.autograd.Function):
    """First-order generator side: forward returns the loss and stashes d loss / d fake;
    backward scales it. ``params`` (D's, as ``(weights, biases, w_out, b_out)``) are constants."""

    @staticmethod
    def forward(ctx, fake, real, backend, spec, params_masks):
        params, masks = params_masks
        stats, d_fake = step_ops(backend)[1](**spec.op_args(fake, real, *params, masks=masks))
        ctx.save_for_backward(d_fake)
        return stats[0]

    @staticmethod
    def backward(ctx, grad_loss):
        (d_fake,) = ctx.saved_tensors
        return grad_loss * d_fake, None, None, None, None
