"""Gradient penalties for any discriminator (the generic autograd path).

Called as ``penalty(discriminator, real, fake)``; each returns a scalar differentiable with
respect to the discriminator's parameters. The input gradient comes from
``autograd.grad(create_graph=True)`` (see :mod:`fastgan.reference.penalties`); the row norms
and the penalty's reduction run in the selected backend's kernels. For
:class:`fastgan.MLPDiscriminator`, :func:`fastgan.discriminator_step` computes the same
penalties in closed form without double backward.

Rows follow the discriminator: with PacGAN packing (a ``pack`` attribute, as on
``MLPDiscriminator``) a row is ``pack`` consecutive samples. Norms are over every non-batch
dimension of a row; the mean is over rows.

Lazy regularisation (StyleGAN2): ``every=k`` computes the penalty on every k-th call, scaled by
k, and returns an exact zero with no graph work on the other calls.
"""
from __future__ import annotations

import torch
from torch import nn

from fastgan import _dispatch, _validate
from fastgan.mlp import dropout_generator
from fastgan.reference import penalties as reference
from fastgan.step_spec import PenaltySide
from fastgan.ops import penalty as penalty_op
from fastgan.terms import PenaltyKind


def discriminator_pack(discriminator: nn.Module) -> int:
    """Samples per discriminator row (PacGAN): the discriminator's ``pack`` attribute, else its
    ``pac`` (ctgan's name), else 1; looks through DDP/DataParallel wrappers."""
    module = getattr(discriminator, "module", discriminator)
    for name in ("pack", "pac"):
        if (value := getattr(module, name, None)) is not None:
            return _validate.positive_int(value, f"{type(module).__name__}.{name}")
    return 1


def penalty_from_gradient(g: torch.Tensor, kind: PenaltyKind, weight: float, center: float,
                          backend: str | None = None) -> torch.Tensor:
    """Mean over rows of the penalty of input gradients ``g`` (rows, features)."""
    name = _dispatch.select(backend, g.device)
    if name == "reference":
        return (reference.squared_penalty(g, weight) if kind == PenaltyKind.SQUARED
                else reference.centered_penalty(g, weight, center))
    return penalty_op.apply(g, kind, weight, center, name)  # the backend's operator (fastgan.ops.penalty)


class GradientPenaltyBase(nn.Module):
    """Shared machinery: validation, lazy regularisation, input gradient, reduction.

    Subclasses say what they are with two class attributes, which the fused step reads:
    ``kind`` (the function of the row norm) and ``side`` (the rows it differentiates at)."""

    kind: PenaltyKind = PenaltyKind.SQUARED
    side: PenaltySide = PenaltySide.INPUT

    def __init__(self, weight: float, center: float = 0.0, every: int = 1, backend: str | None = None):
        super().__init__()
        self.every = _validate.positive_int(every, "every")
        self.weight = _validate.real_number(weight, self._weight_name, minimum=0.0)
        self.center = _validate.real_number(center, "center")
        self.backend = _dispatch.check_name(backend, "backend") if backend is not None else None
        self.calls = 0

    _weight_name = "weight"

    def due_scale(self) -> int:
        """The lazy factor of the next call: ``every`` when the penalty is due, else 0. The phase
        moves on only with :meth:`advance`, after the call has succeeded."""
        return self.every if self.calls == 0 else 0

    def advance(self) -> None:
        """Move the lazy-regularisation phase on by one call (after a successful call).

        The counter is kept modulo ``every`` (it is the phase), so under ``torch.compile`` it
        takes at most ``every`` values: one cached graph per phase instead of a recompile per call."""
        self.calls = (self.calls + 1) % self.every

    def next_scale(self) -> int:
        """:meth:`due_scale`, then :meth:`advance`."""
        scale = self.due_scale()
        self.advance()
        return scale

    def get_extra_state(self) -> dict:
        """The lazy phase travels with ``state_dict()``, so a resumed run keeps its schedule."""
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        calls = state.get("calls", 0) if isinstance(state, dict) else state
        if not (isinstance(calls, int) and 0 <= calls < self.every):
            raise ValueError(f"a lazy phase must be an integer in [0, every={self.every}), got {calls!r}")
        self.calls = calls

    def penalty_input(self, real, fake, pack: int, eps=None, generator=None) -> torch.Tensor:
        """The points whose input gradient is penalised (overridden), as a function of ``real``
        and ``fake`` (not detached: callers that want data detach them)."""
        raise NotImplementedError

    def check_inputs(self, real, fake, pack: int, eps=None, generator=None) -> None:
        """Every argument of a call, checked on every call (due or not), before any kernel runs."""
        _validate.tensors(real=real, fake=fake)
        for name, x in (("real", real), ("fake", fake)):
            if x is not None and x.shape[0] % pack:
                raise ValueError(f"{name} has {x.shape[0]} rows, not divisible by the discriminator's pack={pack}")
        _validate.generator(generator)
        if eps is not None:
            self.check_eps(eps, real, pack)

    def check_eps(self, eps, real, pack: int) -> None:
        """``eps`` of a penalty that draws no random numbers (R1, R2): a tensor, which is ignored."""
        _validate.eps_tensor(eps, real)

    def forward(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor | None = None, *,
                eps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        pack = discriminator_pack(discriminator)
        self.check_inputs(real, fake, pack, eps=eps, generator=generator)
        scale = self.due_scale()
        if scale == 0:
            value = torch.zeros((), device=real.device, dtype=real.dtype)
        else:
            x = self.penalty_input(real, fake, pack, eps=eps, generator=generator)
            with dropout_generator(generator):  # D's dropout masks after eps / noise, from the same stream
                g = reference.input_gradient(discriminator, x, pack)
            value = scale * penalty_from_gradient(g, self.kind, self.weight, self.center, self.backend)
        self.advance()
        return value

    def extra_repr(self) -> str:
        return f"weight={self.weight}, center={self.center}, every={self.every}"


class R1Penalty(GradientPenaltyBase):
    """R1 (Mescheder et al. 2018): gamma/2 * E |grad_x D(x_real)|^2."""

    kind = PenaltyKind.SQUARED
    side = PenaltySide.REAL

    _weight_name = "gamma"

    def __init__(self, gamma: float = 10.0, every: int = 1, backend: str | None = None):
        super().__init__(gamma, 0.0, every, backend)

    @property
    def gamma(self) -> float:
        return self.weight

    def penalty_input(self, real, fake, pack, eps=None, generator=None):
        return real

    def extra_repr(self) -> str:
        return f"gamma={self.weight}, every={self.every}"


class R2Penalty(R1Penalty):
    """R2: gamma/2 * E |grad_x D(x_fake)|^2."""

    side = PenaltySide.FAKE

    def check_inputs(self, real, fake, pack, eps=None, generator=None):
        if fake is None:
            raise ValueError("R2Penalty needs fake samples: call penalty(D, real, fake)")
        super().check_inputs(real, fake, pack, eps=eps, generator=generator)

    def penalty_input(self, real, fake, pack, eps=None, generator=None):
        return fake


class GradientPenalty(GradientPenaltyBase):
    """WGAN-GP (Gulrajani et al. 2017): weight * E (|grad D(xhat)| - center)^2 with
    xhat = eps*real + (1-eps)*fake and one eps ~ U[0,1] per row. Pass ``eps`` (shape (rows,))
    or a ``generator`` to make it reproducible."""

    kind = PenaltyKind.CENTERED

    def __init__(self, weight: float = 10.0, center: float = 1.0, every: int = 1, backend: str | None = None):
        super().__init__(weight, center, every, backend)

    def check_inputs(self, real, fake, pack, eps=None, generator=None):
        if fake is None:
            raise ValueError("GradientPenalty needs fake samples: call penalty(D, real, fake)")
        _validate.tensors(real=real, fake=fake)
        _validate.same_shape("real", real, "fake", fake, "WGAN-GP interpolates between them")
        super().check_inputs(real, fake, pack, eps=eps, generator=generator)

    def check_eps(self, eps, real, pack):
        _validate.eps_tensor(eps, real)
        if tuple(eps.shape) != (rows := real.shape[0] // pack,):
            raise ValueError(f"eps must have shape ({rows},) (one value per row), got {tuple(eps.shape)}")

    def penalty_input(self, real, fake, pack, eps=None, generator=None):
        if eps is None:
            eps = torch.rand(real.shape[0] // pack, device=real.device, dtype=real.dtype, generator=generator)
        else:
            self.check_eps(eps, real, pack)
        return reference.interpolate(real, fake, eps, pack)


class DRAGANPenalty(GradientPenaltyBase):
    """DRAGAN (Kodali et al. 2017): weight * E (|grad D(x_p)| - center)^2 on perturbed real data
    x_p = real + scale * std(real) * u, u ~ U[0,1) elementwise. Pass ``eps`` (u itself, real's
    shape) or a ``generator`` to make it reproducible."""

    kind = PenaltyKind.CENTERED

    def __init__(self, weight: float = 10.0, center: float = 1.0, every: int = 1, scale: float = 0.5,
                 backend: str | None = None):
        super().__init__(weight, center, every, backend)
        self.scale = _validate.real_number(scale, "scale")

    def check_eps(self, eps, real, pack):
        _validate.eps_tensor(eps, real)
        if eps.shape != real.shape:
            raise ValueError(f"eps must have real's shape {tuple(real.shape)}, got {tuple(eps.shape)}")

    def penalty_input(self, real, fake, pack, eps=None, generator=None):
        if eps is None:
            eps = torch.rand(real.shape, device=real.device, dtype=real.dtype, generator=generator)
        else:
            self.check_eps(eps, real, pack)
        return reference.perturb(real, eps, self.scale)


PENALTIES: dict[str, type[GradientPenaltyBase]] = {
    "r1": R1Penalty, "r2": R2Penalty, "gp": GradientPenalty, "dragan": DRAGANPenalty,
}
