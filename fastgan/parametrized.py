"""Effective weights of parametrized layers, computed once per step.

A discriminator step evaluates D several times (real rows, fake rows, the penalty's points).
Spectral norm and weight norm make each layer's weight a function of its parameters: the
parametrization form (``torch.nn.utils.parametrizations.spectral_norm`` / ``weight_norm``, or
any ``torch.nn.utils.parametrize`` parametrization) and the older hook form
(``torch.nn.utils.spectral_norm`` / ``weight_norm``, a forward pre-hook that sets ``weight``).

:func:`weights_once` makes the whole step see one effective weight per layer, computed once
with its autograd graph to the original parameters (so their gradients follow by first-order
autograd): spectral norm's power iteration advances once per step in training mode, exactly as
a single ``D(...)`` forward would advance it. Both the fused and the reference paths run inside
it, so they agree.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

WEIGHT_HOOKS = (SpectralNorm, WeightNorm)
"""Forward pre-hooks that only compute a weight (the hook forms of spectral and weight norm)."""


def scan(module: nn.Module) -> tuple[list[tuple[nn.Module, dict, list]], bool]:
    """One walk over ``module``: ``(submodule, its pre-hook dict, the dict's items)`` for every
    submodule with a hook-form spectral or weight norm, and whether any submodule is
    parametrized."""
    hooked, parametrized = [], False
    for m in module.modules():
        hooks = m._forward_pre_hooks
        if hooks and any(isinstance(h, WEIGHT_HOOKS) for h in hooks.values()):
            hooked.append((m, hooks, list(hooks.items())))
        parametrized = parametrized or parametrize.is_parametrized(m)
    return hooked, parametrized


@contextlib.contextmanager
def weights_once(module: nn.Module, *, grad: bool = True) -> Iterator[None]:
    """Within the block every parametrized weight of ``module`` is computed once and reused
    (``torch.nn.utils.parametrize.cached``), and each hook-form spectral / weight norm runs once
    on entry, its hook held back until the block ends (so later forwards reuse that weight).
    ``grad=False`` computes the hook forms' weights without a graph (a generator step, where D's
    parameters are constants)."""
    hooked, parametrized = scan(module)
    try:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for m, hooks, items in hooked:
                for key, hook in items:
                    if isinstance(hook, WEIGHT_HOOKS):
                        hook(m, None)  # sets m.<name>; one power iteration in training mode
                        del hooks[key]
        with parametrize.cached() if parametrized else contextlib.nullcontext():
            yield
    finally:
        for _, hooks, items in hooked:  # the same dict objects, so users' hook handles stay valid
            hooks.clear()
            hooks.update(items)
