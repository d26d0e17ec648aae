"""Unrolled GANs (Metz et al., ICLR 2017): the generator's loss against the discriminator as it
will be after k more updates.

With D's parameters theta_0 and optimiser state s_0 (Adam's moments and step count, or SGD's
momentum buffer), the look-ahead takes k discriminator updates on the given batch

    theta_{j+1}, s_{j+1} = U(theta_j, grad_theta L_D(theta_j; real, fake), s_j),   j = 0..k-1,
    L_D(theta; real, fake) = loss.discriminator_loss(D_theta(real), D_theta(fake)) + penalty(D_theta, real, fake)

(U is the optimiser's own update rule, Adam state unrolled with the parameters) and returns the
surrogate generator loss f_k = loss.generator_loss(D_{theta_k}(fake), D_{theta_k}(real)).
The generator that descends f_k cannot profit from a move the discriminator would punish
within k updates. D, its gradients and the optimiser are left as they were.

- ``mode="exact"`` (the paper's, and the expensive one): d f_k / d fake includes the terms
  through the updates, d f_k/d theta_k * d theta_k / d fake: each update's gradient is taken
  with ``autograd.grad(create_graph=True)`` on functional parameters through the reference
  composition, and U is written in torch ops, so backward runs through k second-order updates
  (a penalty makes that third order). Time and memory grow linearly with k, several times a
  plain step each.
- ``mode="first_order"`` (the cheap approximation the paper also discusses): the k updates are
  fused :func:`fastgan.discriminator_step` calls (``backward=True``) and torch optimiser steps
  (Adam through torch's fused kernel, the same maths) on a copy of D and of its optimiser state,
  on ``fake.detach()``; the returned loss is :func:`fastgan.generator_step` on the copy. Cost:
  k fused D steps, one generator step and the copy. It keeps d f_k / d fake at fixed theta_k and drops every term through the
  updates (d f_k/d theta_k * d theta_k / d fake): the generator sees the look-ahead
  discriminator's parameters as constants.

``steps=0`` is :func:`fastgan.generator_step` itself in both modes.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from fastgan import _dispatch, _validate, fused
from fastgan.losses import GANLoss, get_loss
from fastgan.penalties import GradientPenaltyBase, discriminator_pack, penalty_from_gradient

MODES = ("exact", "first_order")


def unrolled_generator_step(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, loss: GANLoss | str,
                            optimizer: torch.optim.Optimizer, penalty: GradientPenaltyBase | None = None,
                            steps: int = 5, mode: str = "exact", backend: str | None = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """The generator's loss against D as it will be after ``steps`` look-ahead updates.

    ``.backward()`` on the result sends d f_k / d fake into the generator (see the module
    docstring for f_k and what each mode keeps); D's parameters, their ``.grad``, the
    optimiser's state and the penalty's lazy-regularisation phase are unchanged by the call.

    Args:
        D: the discriminator (``MLPDiscriminator`` takes the fused path in ``first_order``; any
            module, or one wrapped in DistributedDataParallel, works; the look-ahead is local to
            this process, with no all-reduce).
        real, fake: the batches the look-ahead updates train on; ``fake`` carries the
            generator's graph.
        loss: a :class:`~fastgan.GANLoss` (or its name), reduction 'mean' or 'sum'.
        optimizer: D's ``torch.optim.Adam``/``AdamW`` (every option: weight decay, decoupled
            or not, amsgrad, maximize) or ``torch.optim.SGD`` (momentum, dampening, Nesterov);
            its hyperparameters and current state drive the look-ahead. It must hold all of D's
            trainable parameters.
        penalty: a gradient penalty or None; ``every=k`` follows its schedule from the current
            phase through the look-ahead, and the phase is restored afterwards. In ``exact`` the
            penalty's dependence on ``fake`` (R2's points, WGAN-GP's interpolates) is kept.
        steps: k >= 0 look-ahead updates.
        mode: ``"exact"`` or ``"first_order"``.
        backend: the fused step's backend in ``first_order`` and for ``steps=0`` (see
            :mod:`fastgan._dispatch`); ``exact`` always differentiates the reference path.
        generator: random source of WGAN-GP's eps and DRAGAN's noise in the look-ahead (else
            the global RNG, which the look-ahead then advances).
    """
    loss = get_loss(loss)
    _check_args(D, real, fake, loss, optimizer, penalty, steps, mode, backend, generator)
    if steps == 0:
        return fused.generator_step(D, fake, loss=loss, real=real, backend=backend)
    real = real.detach()  # data: no gradient flows into it
    phase = penalty.calls if penalty is not None else None
    try:
        look_ahead = _exact if mode == "exact" else _first_order
        return look_ahead(fused.unwrap(D), real, fake, loss, optimizer, penalty, steps, backend, generator)
    finally:
        if penalty is not None:
            penalty.calls = phase


class UnrolledDiscriminator:
    """D with its optimiser and look-ahead settings: ``generator_step(real, fake)`` is
    :func:`unrolled_generator_step` with them (steps, mode and the optimiser are checked here).

    >>> unrolled = UnrolledDiscriminator(D, opt_d, loss=loss, steps=5, mode="first_order")
    >>> unrolled.generator_step(real, G(z)).backward()
    """

    def __init__(self, D: nn.Module, optimizer: torch.optim.Optimizer, *, loss: GANLoss | str,
                 penalty: GradientPenaltyBase | None = None, steps: int = 5, mode: str = "exact",
                 backend: str | None = None):
        _check_settings(D, optimizer, steps, mode)
        self.D, self.optimizer, self.loss, self.penalty = D, optimizer, get_loss(loss), penalty
        self.steps, self.mode, self.backend = steps, mode, backend

    def generator_step(self, real: torch.Tensor, fake: torch.Tensor, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        return unrolled_generator_step(self.D, real, fake, loss=self.loss, optimizer=self.optimizer,
                                       penalty=self.penalty, steps=self.steps, mode=self.mode,
                                       backend=self.backend, generator=generator)

    def __repr__(self) -> str:
        return (f"UnrolledDiscriminator({type(fused.unwrap(self.D)).__name__}, steps={self.steps}, "
                f"mode={self.mode!r}, loss={type(self.loss).__name__})")


def _check_settings(D, optimizer, steps, mode) -> None:
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.SGD)):
        raise TypeError(f"optimizer must be D's torch.optim.Adam, AdamW or SGD (the look-ahead replays its update "
                        f"rule), got {type(optimizer).__name__}")
    if not isinstance(D, nn.Module):
        raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, p in fused.unwrap(D).named_parameters():
        if p.requires_grad and id(p) not in held:
            raise ValueError(f"optimizer does not hold D's parameter {name!r}: pass D's own optimiser")


def _check_args(D, real, fake, loss, optimizer, penalty, steps, mode, backend, generator=None) -> None:
    _check_settings(D, optimizer, steps, mode)
    if isinstance(penalty, (list, tuple)):
        raise TypeError("unrolled_generator_step takes one penalty (or None), not a list")
    fused.check_step_args(D, real, fake, loss, penalty, generator=generator)
    if loss.reduction == "none":
        raise ValueError("unrolled_generator_step needs a scalar loss: use reduction 'mean' or 'sum'")
    if loss.paired:
        _validate.same_shape("real", real, "fake", fake, f"{type(loss).__name__} pairs real and fake")
    fused.step_backend(fused.unwrap(D), backend, real.device)


# ---- first order: fused steps on a copy ----------------------------------------------------------

def _first_order(inner, real, fake, loss, optimizer, penalty, steps, backend, generator):
    shadow = copy.deepcopy(inner)
    shadow_opt = _copy_optimizer(optimizer, inner, shadow)
    fake_data = fake.detach()
    for _ in range(steps):
        shadow_opt.zero_grad(set_to_none=True)
        fused.discriminator_step(shadow, real, fake_data, loss=loss, penalty=penalty, backend=backend,
                                 generator=generator, backward=True)
        shadow_opt.step()
    return fused.generator_step(shadow, fake, loss=loss, real=real, backend=backend)


def _copy_optimizer(optimizer, inner, shadow):
    """An optimiser of the same rule and settings over ``shadow``'s parameters, with a copy of
    the state that ``optimizer`` holds for ``inner``'s. Adam runs its fused multi-tensor kernel
    (one op per step, the same maths) where the parameters' device has one."""
    twin = dict(zip(map(id, inner.parameters()), shadow.parameters()))
    original = {id(q): p for p, q in zip(inner.parameters(), shadow.parameters())}
    adam = not isinstance(optimizer, torch.optim.SGD)
    groups = []
    for group in optimizer.param_groups:
        params = [twin[id(p)] for p in group["params"] if id(p) in twin]
        if params:
            settings = {k: v for k, v in group.items() if k != "params"}
            if adam and not settings.get("differentiable") and all(
                    q.device.type in ("cpu", "cuda") and q.is_floating_point() for q in params):
                settings.update(fused=True, foreach=None)
            groups.append({**settings, "params": params})
    copied = (torch.optim.Adam if adam else torch.optim.SGD)(groups)
    state = copied.state_dict()  # load_state_dict puts each value on its parameter's device and dtype
    order = [original[id(q)] for group in copied.param_groups for q in group["params"]]
    state["state"] = {i: {k: v.clone() if isinstance(v, torch.Tensor) else copy.copy(v)
                          for k, v in optimizer.state[p].items()}
                      for i, p in enumerate(order) if p in optimizer.state}
    copied.load_state_dict(state)
    return copied


# ---- exact: autograd through the updates -----------------------------------------------------------

def _exact(inner, real, fake, loss, optimizer, penalty, steps, backend, generator):
    params = dict(inner.named_parameters())
    buffers = {n: b.clone() for n, b in inner.named_buffers()}  # the look-ahead's own (BatchNorm statistics)
    names = [n for n, p in params.items() if p.requires_grad]
    theta = {n: p.detach() for n, p in params.items()}
    for n in names:
        theta[n].requires_grad_(True)
    rules = _update_rules(optimizer, [params[n] for n in names])
    for _ in range(steps):
        total = _discriminator_objective(inner, theta, buffers, real, fake, loss, penalty, generator)
        grads = torch.autograd.grad(total, [theta[n] for n in names], create_graph=True, materialize_grads=True)
        for n, g, rule in zip(names, grads, rules):
            theta[n] = rule(theta[n], g)
    call = _functional(inner, theta, buffers)
    with _dispatch.use_backend("reference"):
        return loss.generator_loss(call(fake), call(real) if loss.paired else None)


def _functional(inner, theta, buffers):
    return lambda x: torch.func.functional_call(inner, (theta, buffers), (x,))


def _discriminator_objective(inner, theta, buffers, real, fake, loss, penalty, generator):
    """L_D at ``theta`` as the reference step composes it, with ``fake`` attached."""
    call = _functional(inner, theta, buffers)
    with _dispatch.use_backend("reference"):
        total = loss.discriminator_loss(call(real), call(fake))
    if penalty is not None and (scale := penalty.next_scale()):
        pack = discriminator_pack(inner)
        x = penalty.penalty_input(real, fake, pack, generator=generator)  # dependence on fake kept
        # A node of its own: the input gradient is d D_theta(x) / dx at fixed theta, while
        # theta itself depends on fake after the first update.
        x = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(call(x).sum(), x, create_graph=True)
        g = g.reshape(x.shape[0] // pack, -1)
        total = total + scale * penalty_from_gradient(g, penalty.kind, penalty.weight, penalty.center,
                                                      backend="reference")
    return total


def _update_rules(optimizer, params):
    """One closure per parameter: ``(theta, grad) -> next theta`` in differentiable torch ops,
    replaying ``optimizer``'s rule from a copy of its current state for that parameter."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    make = _sgd_rule if isinstance(optimizer, torch.optim.SGD) else _adam_rule
    return [make(group_of[id(p)], optimizer.state.get(p, {}), p) for p in params]


def _adam_rule(group, state, p):
    """torch.optim.Adam / AdamW's update (single-tensor form):
    t += 1; g += wd*theta (or theta *= 1 - lr*wd, decoupled); m = b1 m + (1-b1) g;
    v = b2 v + (1-b2) g^2 (amsgrad: vmax = max(vmax, v), used for v);
    theta -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    sqrt is taken as 0 with a zero derivative where v = 0 (a parameter whose gradient has been
    exactly zero), where d sqrt/dv is infinite."""
    lr, (b1, b2), eps, wd = float(group["lr"]), map(float, group["betas"]), group["eps"], group["weight_decay"]
    decoupled, amsgrad, maximize = group.get("decoupled_weight_decay", False), group["amsgrad"], group["maximize"]
    m = state["exp_avg"].detach() if "exp_avg" in state else torch.zeros_like(p)
    v = state["exp_avg_sq"].detach() if "exp_avg_sq" in state else torch.zeros_like(p)
    vmax = state["max_exp_avg_sq"].detach() if "max_exp_avg_sq" in state else torch.zeros_like(p)
    t = float(state["step"]) if "step" in state else 0.0

    def step(theta, g):
        nonlocal m, v, vmax, t
        g = -g if maximize else g
        t += 1
        if wd != 0:
            if decoupled:
                theta = theta * (1 - lr * wd)
            else:
                g = g + wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if amsgrad:
            vmax = torch.maximum(vmax, v)
        denom = _sqrt0(vmax if amsgrad else v) / (1 - b2 ** t) ** 0.5 + eps
        return theta - lr / (1 - b1 ** t) * m / denom

    return step


def _sgd_rule(group, state, p):
    """torch.optim.SGD's update: g += wd*theta; with momentum mu, buf = g on the first step,
    else mu buf + (1 - dampening) g, and g = g + mu buf (Nesterov) or buf; theta -= lr g."""
    lr, mu, damp, wd = float(group["lr"]), group["momentum"], group["dampening"], float(group["weight_decay"])
    nesterov, maximize = group["nesterov"], group["maximize"]
    buf = state.get("momentum_buffer")
    buf = buf.detach() if buf is not None else None

    def step(theta, g):
        nonlocal buf
        g = -g if maximize else g
        if wd != 0:
            g = g + wd * theta
        if mu != 0:
            buf = g if buf is None else mu * buf + (1 - damp) * g
            g = g + mu * buf if nesterov else buf
        return theta - lr * g

    return step


def _sqrt0(v: torch.Tensor) -> torch.Tensor:
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, 1).sqrt(), 0)
