"""Triton kernels for one GAN loss term (the semantics of ``torch.ops.fastgan.loss_term_*``).

A term is ``scale * phi(sign * x + shift)`` (see ``fastgan/terms.py``, ``csrc/loss_terms.h``):

=====  ===========  ======================  ====================
phi    name         phi(z)                  phi'(z)
=====  ===========  ======================  ====================
0      softplus     max(z,0) + log1p(e)     z>=0: 1/(1+e), else e/(1+e);  e = exp(-|z|)
1      relu         max(z, 0)               [z > 0]
2      identity     z                       1
3      half square  z^2 / 2                 z
=====  ===========  ======================  ====================

Equivalent torch::

    v = scale * phi(sign * x + shift)
    forward  = v if reduction == 0 else v.mean() if reduction == 1 else v.sum()
    backward = grad_out * scale * sign * phi'(sign * x + shift)   (/ x.numel() for the mean)

The forward reduces in two stages (per-program partial sums, then one single-program sum in a
fixed order: deterministic). The backward reads ``grad_out`` on the device (no host sync).
Accumulation is fp32 (fp64 for fp64 tensors); the softplus form is exact for |z| = 1e4.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastgan.kernels._common import acc_dtype, finish_sum, joined, split_double
from fastgan.kernels.terms import phi_derivative, phi_value

BLOCK = 1024
_REDUCTIONS = (0, 1, 2)  # none, mean, sum
_PHIS = (0, 1, 2, 3)  # softplus, relu, identity, half square


@triton.jit
def _loss_term_forward_kernel(
    x_ptr,  # (n,) logits, contiguous, any float dtype
    out_ptr,  # (n,) x's dtype when REDUCE == 0, else (num_programs,) ACC partial sums
    n,  # number of elements
    sign,  # +1.0 or -1.0 (exact in fp32)
    shift_hi,  # shift = shift_hi + shift_lo (see _common.split_double)
    shift_lo,
    scale_hi,  # scale = scale_hi + scale_lo; applied here for 'none', in the final sum otherwise
    scale_lo,
    PHI: tl.constexpr,  # 0 softplus, 1 relu, 2 identity, 3 half square
    REDUCE: tl.constexpr,  # 0: write terms elementwise; else: write this block's sum of phi(z)
    ACC: tl.constexpr,  # accumulation dtype
    BLOCK: tl.constexpr,  # elements per program
):
    """z = sign * x + shift;  'none': out[i] = scale * phi(z_i);  else out[pid] = sum_block phi(z_i)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: n may exceed 2^31
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    z = tl.cast(sign, ACC) * x + joined(shift_hi, shift_lo, ACC)
    v = phi_value(z, PHI)
    if REDUCE == 0:
        tl.store(out_ptr + offs, v * joined(scale_hi, scale_lo, ACC), mask=mask)
    else:
        total = tl.sum(tl.where(mask, v, 0.0), axis=0)
        tl.store(out_ptr + pid + tl.arange(0, 1), tl.full((1,), 0.0, ACC) + total, mask=tl.arange(0, 1) < 1)


@triton.jit
def _loss_term_backward_kernel(
    grad_out_ptr,  # (n,) when REDUCE == 0, else () ; any float dtype
    x_ptr,  # (n,) logits, contiguous
    grad_ptr,  # (n,) output d loss / d x, x's dtype
    n,  # number of elements
    sign,  # +1.0 or -1.0
    shift_hi,  # shift = shift_hi + shift_lo
    shift_lo,
    scale_hi,  # scale = scale_hi + scale_lo
    scale_lo,
    PHI: tl.constexpr,  # 0 softplus, 1 relu, 2 identity, 3 half square
    REDUCE: tl.constexpr,  # 0: grad_out is elementwise; else: grad_out is one scalar
    ACC: tl.constexpr,  # accumulation dtype
    BLOCK: tl.constexpr,  # elements per program
):
    """grad[i] = g_i * scale * sign * phi'(sign * x_i + shift) with g_i = grad_out[i] ('none')
    or grad_out (the launcher folds the mean's 1/n into scale)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: n may exceed 2^31
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    s = tl.cast(sign, ACC)
    d = phi_derivative(s * x + joined(shift_hi, shift_lo, ACC), PHI) * (s * joined(scale_hi, scale_lo, ACC))
    if REDUCE == 0:
        g = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(ACC)
    else:
        g = tl.load(grad_out_ptr + tl.zeros_like(offs), mask=mask, other=0.0).to(ACC)
    tl.store(grad_ptr + offs, g * d, mask=mask)


def _check(x: torch.Tensor, phi: int, reduction: int) -> None:
    if not x.is_floating_point():
        raise TypeError(f"fastgan loss: logits must be floating point, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError("fastgan loss: logits must not be empty")
    if phi not in _PHIS:
        raise ValueError(f"fastgan loss: phi must be one of {_PHIS}, got {phi}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"fastgan loss: reduction must be one of {_REDUCTIONS} (none, mean, sum), got {reduction}")


def loss_term_forward(x: torch.Tensor, phi: int, sign: float, shift: float, scale: float,
                      reduction: int) -> torch.Tensor:
    """``reduce(scale * phi(sign * x + shift))``: x's shape for reduction 0, else 0-dim."""
    _check(x, phi, reduction)
    x = x.contiguous()
    n, acc = x.numel(), acc_dtype(x.dtype)
    grid = (triton.cdiv(n, BLOCK),)
    args = (n, float(sign), *split_double(shift), *split_double(scale))
    if reduction == 0:
        out = torch.empty_like(x)
        _loss_term_forward_kernel[grid](x, out, *args, PHI=phi, REDUCE=0, ACC=acc, BLOCK=BLOCK)
        return out
    partials = torch.empty(grid[0], dtype=torch.float64 if acc == tl.float64 else torch.float32, device=x.device)
    _loss_term_forward_kernel[grid](x, partials, *args, PHI=phi, REDUCE=1, ACC=acc, BLOCK=BLOCK)
    return finish_sum(partials, scale / n if reduction == 1 else scale, x.dtype, acc)


def loss_term_backward(grad_out: torch.Tensor, x: torch.Tensor, phi: int, sign: float, shift: float, scale: float,
                       reduction: int) -> torch.Tensor:
    """d loss / d x for ``loss_term_forward``; ``grad_out`` is 0-dim (mean/sum) or x's shape (none)."""
    _check(x, phi, reduction)
    if reduction == 0 and grad_out.shape != x.shape:
        raise ValueError(f"fastgan loss: grad_out must have the logits' shape {tuple(x.shape)} for reduction "
                         f"'none', got {tuple(grad_out.shape)}")
    if reduction != 0 and grad_out.numel() != 1:
        raise ValueError(f"fastgan loss: grad_out must be a scalar for reduction 'mean' or 'sum', "
                         f"got shape {tuple(grad_out.shape)}")
    if grad_out.device != x.device:
        raise ValueError(f"fastgan loss: grad_out is on {grad_out.device} but the logits are on {x.device}")
    x, grad_out = x.contiguous(), grad_out.contiguous()
    n = x.numel()
    grad = torch.empty_like(x)
    _loss_term_backward_kernel[(triton.cdiv(n, BLOCK),)](
        grad_out, x, grad, n, float(sign), *split_double(shift), *split_double(scale / n if reduction == 1 else scale),
        PHI=phi, REDUCE=int(reduction != 0), ACC=acc_dtype(x.dtype), BLOCK=BLOCK)
    return grad
