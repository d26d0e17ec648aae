"""The loss-term operators: one term ``scale * phi(sign * x + shift)`` of a GAN loss, reduced.

``phi``: :class:`fastgan.terms.Phi` (0 softplus, 1 relu, 2 identity, 3 half square);
``reduction``: :class:`fastgan.terms.Reduction` (0 none: elementwise, x's shape; 1 mean, 2 sum:
0-dim). ``loss_term_backward`` is d loss / d x, given ``grad_out`` (0-dim for mean and sum, x's
shape for none). One pass each way.

Backends: ``cpu`` / ``cuda`` (csrc/losses_cpu.cpp, csrc/losses.cu), ``triton``
(:mod:`fastgan.kernels.losses`), ``torch`` (:mod:`fastgan.terms`). The autograd of
``loss_term_forward`` (cpu, cuda, triton) runs the backend's backward operator; under
``create_graph=True`` it differentiates the torch closed form instead, so double backward works.
"""
from __future__ import annotations

import torch

from fastgan.ops._library import declare, register_autograd
from fastgan.terms import Phi, Reduction, Term, reduce, term_derivative, term_value

FORWARD_SCHEMA = "(Tensor x, int phi, float sign, float shift, float scale, int reduction) -> Tensor"
BACKWARD_SCHEMA = ("(Tensor grad_out, Tensor x, int phi, float sign, float shift, float scale, int reduction)"
                   " -> Tensor")


def _forward_fake(x, phi, sign, shift, scale, reduction):
    return torch.empty_like(x) if reduction == Reduction.NONE else x.new_empty(())


def _backward_fake(grad_out, x, phi, sign, shift, scale, reduction):
    return torch.empty_like(x)


def _closed_form_derivative(grad_out, x, phi, sign, shift, scale, reduction):
    g = grad_out * term_derivative(x, Term(Phi(phi), sign, shift, scale))
    return g / x.numel() if reduction == Reduction.MEAN else g


def _torch_forward(x, phi, sign, shift, scale, reduction):
    return reduce(term_value(x, Term(Phi(phi), sign, shift, scale)), Reduction(reduction))


def _triton_forward(x, phi, sign, shift, scale, reduction):
    from fastgan.kernels import losses
    return losses.loss_term_forward(x, phi, sign, shift, scale, reduction)


def _triton_backward(grad_out, x, phi, sign, shift, scale, reduction):
    from fastgan.kernels import losses
    return losses.loss_term_backward(grad_out, x, phi, sign, shift, scale, reduction)


FORWARD = declare("loss_term_forward", FORWARD_SCHEMA, fake=_forward_fake,
                  python={"torch": _torch_forward, "triton": _triton_forward})
BACKWARD = declare("loss_term_backward", BACKWARD_SCHEMA, fake=_backward_fake,
                   python={"torch": _closed_form_derivative, "triton": _triton_backward})


register_autograd(FORWARD, BACKWARD, _closed_form_derivative)


def apply(x: torch.Tensor, term: Term, reduction: Reduction, backend: str) -> torch.Tensor:
    """``reduce(term(x))`` on an already-selected backend other than reference."""
    return FORWARD.op(backend)(x, int(term.phi), float(term.sign), float(term.shift), float(term.scale),
                               int(reduction))
