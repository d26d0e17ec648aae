"""ReLU and LeakyReLU (slope >= 0) whose backward reads the sign from the float output through an
opaque operator: what the generic step uses for these activations inside a compiled autograd
graph.

Why: under ``torch.compile``, AOT autograd's partitioner sees through ``leaky_relu_backward`` /
``threshold_backward`` (``where(out > 0, g, slope * g)``) and saves the cheapest tensor that
determines the backward, the ``out > 0`` sign as a bool tensor, even when the float output is
needed anyway. Inductor's CPU kernels store bool tensors slowly on some CPUs (16-45x a float
store on the AMD EPYC of ``benchmarks/results/bool-masks-cpu-2026-12-06.md``), which made a
compiled step with many activations slower than eager. :func:`masked` is one operator the
partitioner cannot split, so it saves its float ``out`` argument and nothing else.

- :func:`masked` ``(t, out, slope)``: ``t`` where ``out > 0``, else ``slope * t`` (0 for a slope
  of 0, with ReLU's backward: 0 even where ``t`` is not finite). Its gradient with respect to
  ``t`` is itself; ``out`` is a constant (the sign's derivative is zero almost everywhere).
- :func:`activation` ``(x, slope)``: ReLU / LeakyReLU whose backward is :func:`masked` on the
  saved output. An ``autograd.Function`` with ``setup_context``, so it also runs inside
  ``torch.func`` transforms (the compiled step's input gradient).

:func:`wanted` says where fastgan.linearize uses them: under ``torch.compile``, on the CPU, for
a tensor that autograd will differentiate. Eager code does not need them (ATen's own backward
reads the sign from the float output; fastgan.linearize chooses in-place activations for that),
and on a GPU Inductor's bool stores are not known to be slow, while the opaque op would keep the
mask out of Inductor's fused kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["activation", "masked", "wanted"]


def wanted(x: torch.Tensor) -> bool:
    """Whether an activation of ``x`` (or its tangent mask) should go through this module: in a
    compiled CPU graph that autograd will differentiate."""
    return x.requires_grad and x.device.type == "cpu" and torch.compiler.is_compiling()


@torch.library.custom_op("fastgan::activation_mask", mutates_args=())
def masked(t: torch.Tensor, out: torch.Tensor, slope: float) -> torch.Tensor:
    """``t`` where ``out > 0``, else ``slope * t``, in ``t``'s layout."""
    grad = torch.empty_like(t)
    if slope == 0:
        return torch.ops.aten.threshold_backward.grad_input(t, out, 0, grad_input=grad)
    return torch.ops.aten.leaky_relu_backward.grad_input(t, out, slope, True, grad_input=grad)


@masked.register_fake
def _masked_fake(t, out, slope):
    return torch.empty_like(t)


def _masked_setup(ctx, inputs, output):
    _, out, ctx.slope = inputs
    ctx.save_for_backward(out)


def _masked_backward(ctx, g):
    (out,) = ctx.saved_tensors
    return masked(g, out, ctx.slope), None, None


masked.register_autograd(_masked_backward, setup_context=_masked_setup)


class _Activation(torch.autograd.Function):
    @staticmethod
    def forward(x, slope):
        return F.relu(x) if slope == 0 else F.leaky_relu(x, slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.slope = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return masked(g, out, ctx.slope), None


def activation(x: torch.Tensor, slope: float) -> torch.Tensor:
    """ReLU (``slope`` 0) or LeakyReLU (``slope`` > 0) of ``x``; autograd saves the output and
    its backward is :func:`masked`."""
    if slope < 0:
        raise ValueError(f"slope must be >= 0 (a negative slope flips the sign), got {slope}")
    return _Activation.apply(x, slope)
