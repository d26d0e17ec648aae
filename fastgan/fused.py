"""The fused discriminator and generator steps (DESIGN.md section 4).

``discriminator_step(D, real, fake, loss=..., penalty=...)`` returns the scalar
``loss + penalty``; its ``.backward()`` leaves in D's ``.grad`` exactly what

    loss.discriminator_loss(D(real), D(fake.detach())) + penalty(D, real, fake)

followed by ``.backward()`` would (that composition is the ``reference`` backend). For an
:class:`~fastgan.MLPDiscriminator` the other backends compute the same gradients in closed form
without double backward; any other module goes through the reference path.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fastgan import _dispatch, _validate
from fastgan.losses import GANLoss, get_loss
from fastgan.mlp import MLPDiscriminator
from fastgan.penalties import GradientPenaltyBase


class StepParts(NamedTuple):
    """Detached parts of a discriminator step, for logging."""

    loss: torch.Tensor
    penalty: torch.Tensor
    real_logit_mean: torch.Tensor
    fake_logit_mean: torch.Tensor


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)  # DistributedDataParallel / DataParallel


def _check_step_args(D, real, fake, loss, penalty):
    if not isinstance(D, nn.Module):
        raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
    if not isinstance(loss, GANLoss):
        raise TypeError(f"loss must be a fastgan GANLoss (e.g. NonSaturatingLoss()), got {type(loss).__name__}")
    if penalty is not None and not isinstance(penalty, GradientPenaltyBase):
        raise TypeError(f"penalty must be a fastgan penalty (e.g. R1Penalty()) or None, got {type(penalty).__name__}")
    _validate.tensors(real=real, fake=fake)
    inner = _unwrap(D)
    if isinstance(inner, MLPDiscriminator):
        inner.check_input(real, "real")
        inner.check_input(fake, "fake")


def discriminator_step(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, loss: GANLoss | str,
                       penalty: GradientPenaltyBase | None = None, backend: str | None = None,
                       eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       return_parts: bool = False):
    """One discriminator objective: ``loss(D(real), D(fake.detach())) + penalty(D, real, fake)``.

    Args:
        D: the discriminator (``MLPDiscriminator`` takes the fused path; any module, or one
            wrapped in DistributedDataParallel, works through the reference path).
        real, fake: input batches; ``fake`` is treated as detached.
        loss: a :class:`~fastgan.GANLoss` (or its name).
        penalty: a gradient penalty module or None; its ``every=k`` lazy schedule is honoured.
        backend: see :mod:`fastgan._dispatch`.
        eps, generator: passed to the penalty (WGAN-GP's per-row eps, DRAGAN's noise).
        return_parts: also return :class:`StepParts` (detached) for logging.

    Returns:
        The scalar total, or ``(total, parts)`` with ``return_parts=True``.
    """
    loss = get_loss(loss)
    _check_step_args(D, real, fake, loss, penalty)
    if loss.reduction == "none":
        raise ValueError("discriminator_step needs a scalar loss: use reduction 'mean' or 'sum'")
    name = _dispatch.select(backend, real.device)
    total, parts = _reference_step(D, real, fake, loss, penalty, eps, generator)
    return (total, parts) if return_parts else total


def _reference_step(D, real, fake, loss, penalty, eps, generator):
    with _dispatch.use_backend("reference"):
        real_logits = D(real)
        fake_logits = D(fake.detach())
        value = loss.discriminator_loss(real_logits, fake_logits)
        pen = (penalty(D, real, fake, eps=eps, generator=generator) if penalty is not None
               else value.new_zeros(()))
    total = value + pen
    parts = StepParts(value.detach(), pen.detach(), real_logits.detach().mean(), fake_logits.detach().mean())
    return total, parts


def generator_step(D: nn.Module, fake: torch.Tensor, *, loss: GANLoss | str, real: torch.Tensor | None = None,
                   backend: str | None = None) -> torch.Tensor:
    """The generator's loss ``loss.generator_loss(D(fake), D(real))``; ``.backward()`` sends
    d loss / d fake into the generator and computes no discriminator gradients."""
    loss = get_loss(loss)
    if loss.paired and real is None:
        raise ValueError(f"{type(loss).__name__} pairs real and fake: pass real= to generator_step")
    _validate.tensors(fake=fake, real=real)
    inner = _unwrap(D)
    params = {k: v.detach() for k, v in inner.named_parameters()}
    buffers = dict(inner.named_buffers())
    call = lambda x: torch.func.functional_call(inner, (params, buffers), (x,))  # noqa: E731
    with _dispatch.use_backend("reference"):
        fake_logits = call(fake)
        real_logits = call(real.detach()) if loss.paired else None
        return loss.generator_loss(fake_logits, real_logits)
