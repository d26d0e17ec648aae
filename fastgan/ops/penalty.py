"""The penalty operators: the mean over rows of a gradient penalty of per-row input gradients.

``grad``: (rows, features). ``kind``: :class:`fastgan.terms.PenaltyKind` (0: ``weight * |g|^2 / 2``,
R1 and R2; 1: ``weight * (|g| - center)^2``, WGAN-GP and DRAGAN). ``penalty_forward`` is 0-dim;
``penalty_backward`` is dP/dgrad times the 0-dim ``grad_out``. The norm's gradient at zero is zero.

Backends: ``cpu`` / ``cuda`` (csrc/penalties_cpu.cpp, csrc/penalties.cu), ``triton``
(:mod:`fastgan.kernels.penalties`), ``torch`` (:mod:`fastgan.terms`). The autograd of
``penalty_forward`` runs the backend's backward operator; under ``create_graph=True`` it
differentiates the torch closed form.
"""
from __future__ import annotations

import torch

from fastgan.ops._library import declare, register_autograd
from fastgan.terms import PenaltyKind, penalty_row_gradient, penalty_rows

FORWARD_SCHEMA = "(Tensor grad, int kind, float weight, float center) -> Tensor"
BACKWARD_SCHEMA = "(Tensor grad_out, Tensor grad, int kind, float weight, float center) -> Tensor"


def _forward_fake(grad, kind, weight, center):
    return grad.new_empty(())


def _backward_fake(grad_out, grad, kind, weight, center):
    return torch.empty_like(grad)


def _torch_forward(grad, kind, weight, center):
    return penalty_rows(grad, PenaltyKind(kind), weight, center).mean()


def _closed_form_derivative(grad_out, grad, kind, weight, center):
    return grad_out * penalty_row_gradient(grad, PenaltyKind(kind), weight, center) / grad.shape[0]


def _triton_forward(grad, kind, weight, center):
    from fastgan.kernels import penalties
    return penalties.penalty_forward(grad, kind, weight, center)


def _triton_backward(grad_out, grad, kind, weight, center):
    from fastgan.kernels import penalties
    return penalties.penalty_backward(grad_out, grad, kind, weight, center)


FORWARD = declare("penalty_forward", FORWARD_SCHEMA, fake=_forward_fake,
                  python={"torch": _torch_forward, "triton": _triton_forward})
BACKWARD = declare("penalty_backward", BACKWARD_SCHEMA, fake=_backward_fake,
                   python={"torch": _closed_form_derivative, "triton": _triton_backward})


register_autograd(FORWARD, BACKWARD, _closed_form_derivative)


def apply(grad: torch.Tensor, kind: PenaltyKind, weight: float, center: float, backend: str) -> torch.Tensor:
    """The mean penalty of ``grad``'s rows on an already-selected backend other than reference."""
    return FORWARD.op(backend)(grad, int(kind), float(weight), float(center))
