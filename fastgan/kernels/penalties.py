"""Triton kernels for the gradient-penalty reduction (the semantics of ``torch.ops.fastgan.penalty_*``).

On per-row input gradients ``g`` (rows, features) with row norms ``n_r = |g_r|``:

=====  ==========================  =====================================================
kind   P (forward)                 dP/dg_r (backward, times grad_out)
=====  ==========================  =====================================================
0      weight * mean(n^2 / 2)      weight / rows * g_r
1      weight * mean((n - c)^2)    2 weight (n_r - c) / (n_r rows) * g_r,  0 when n_r = 0
=====  ==========================  =====================================================

Equivalent torch::

    n = g.norm(dim=1)
    P = weight * (n**2 / 2).mean()  or  weight * ((n - center)**2).mean()

Forward: per-program partial sums over a block of rows, then one deterministic final sum.
Backward reads ``grad_out`` on the device. Accumulation fp32 (fp64 for fp64 tensors).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastgan.kernels._common import acc_dtype, finish_sum, joined, split_double

BLOCK_ROWS = 16
_KINDS = (0, 1)  # squared, centered


def _feature_blocks(features: int) -> dict:
    block = min(triton.next_power_of_2(features), 128)
    return {"BLOCK_F": block, "F_CHUNKS": triton.cdiv(features, block)}


@triton.jit
def _row_sq_norms(g_ptr, rows_offs, row_mask, features, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_F: tl.constexpr, F_CHUNKS: tl.constexpr):
    """sum_j g[r, j]^2 for the rows ``rows_offs`` (masked by ``row_mask``), looping over features."""
    cols = tl.arange(0, BLOCK_F)
    acc = tl.zeros((BLOCK_R, BLOCK_F), dtype=ACC)
    for i in range(F_CHUNKS):
        c = i * BLOCK_F + cols
        m = row_mask[:, None] & (c < features)[None, :]
        v = tl.load(g_ptr + rows_offs[:, None] * features + c[None, :], mask=m, other=0.0).to(ACC)
        acc += v * v
    return tl.sum(acc, axis=1)


@triton.jit
def _penalty_forward_kernel(
    g_ptr,  # (rows, features) input gradients, contiguous, any float dtype
    partials_ptr,  # (num_programs,) ACC: sum over this program's rows of the row penalty / weight
    rows,  # number of rows
    features,  # features per row
    center_hi,  # center = center_hi + center_lo (see _common.split_double)
    center_lo,
    KIND: tl.constexpr,  # 0: n^2 / 2;  1: (n - center)^2
    ACC: tl.constexpr,  # accumulation dtype
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_F: tl.constexpr,  # features per inner iteration
    F_CHUNKS: tl.constexpr,  # cdiv(features, BLOCK_F)
):
    """partials[pid] = sum over the block's rows of f(n_r), f = n^2/2 or (n - center)^2."""
    pid = tl.program_id(0)
    r = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # int64: rows * features may exceed 2^31
    row_mask = r < rows
    sq = _row_sq_norms(g_ptr, r, row_mask, features, ACC, BLOCK_R, BLOCK_F, F_CHUNKS)
    if KIND == 0:
        f = 0.5 * sq
    else:
        d = tl.sqrt(sq) - joined(center_hi, center_lo, ACC)
        f = d * d
    total = tl.sum(tl.where(row_mask, f, 0.0), axis=0)
    tl.store(partials_ptr + pid + tl.arange(0, 1), tl.full((1,), 0.0, ACC) + total, mask=tl.arange(0, 1) < 1)


@triton.jit
def _penalty_backward_kernel(
    grad_out_ptr,  # () upstream gradient of the penalty, any float dtype
    g_ptr,  # (rows, features) input gradients, contiguous
    out_ptr,  # (rows, features) dP/dg, g's dtype
    rows,  # number of rows
    features,  # features per row
    factor_hi,  # factor = weight / rows = factor_hi + factor_lo
    factor_lo,
    center_hi,  # center = center_hi + center_lo
    center_lo,
    KIND: tl.constexpr,  # 0: k = factor;  1: k = 2 factor (n - center) / n, 0 at n = 0
    ACC: tl.constexpr,  # accumulation dtype
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_F: tl.constexpr,  # features per inner iteration
    F_CHUNKS: tl.constexpr,  # cdiv(features, BLOCK_F)
):
    """out[r, :] = grad_out * k(n_r) * g[r, :]."""
    pid = tl.program_id(0)
    r = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # int64: rows * features may exceed 2^31
    row_mask = r < rows
    factor = joined(factor_hi, factor_lo, ACC)
    go = tl.load(grad_out_ptr + tl.zeros_like(r), mask=row_mask, other=0.0).to(ACC)
    if KIND == 0:
        k = go * factor
    else:
        n = tl.sqrt(_row_sq_norms(g_ptr, r, row_mask, features, ACC, BLOCK_R, BLOCK_F, F_CHUNKS))
        # 0 at n = 0 as torch's norm backward; NaN where n is NaN or Inf (NaN != 0)
        safe = tl.where(n == 0.0, 1.0, n)
        k = tl.where(n == 0.0, 0.0, go * 2.0 * factor * (n - joined(center_hi, center_lo, ACC)) / safe)
    cols = tl.arange(0, BLOCK_F)
    for i in range(F_CHUNKS):
        c = i * BLOCK_F + cols
        m = row_mask[:, None] & (c < features)[None, :]
        offs = r[:, None] * features + c[None, :]
        v = tl.load(g_ptr + offs, mask=m, other=0.0).to(ACC)
        tl.store(out_ptr + offs, k[:, None] * v, mask=m)


def _check(g: torch.Tensor, kind: int) -> None:
    if g.dim() != 2:
        raise ValueError(f"fastgan penalty: grad must be (rows, features), got shape {tuple(g.shape)}")
    if g.shape[0] == 0 or g.shape[1] == 0:
        raise ValueError(f"fastgan penalty: grad must not be empty, got shape {tuple(g.shape)}")
    if not g.is_floating_point():
        raise TypeError(f"fastgan penalty: grad must be floating point, got {g.dtype}")
    if kind not in _KINDS:
        raise ValueError(f"fastgan penalty: kind must be one of {_KINDS} (squared, centered), got {kind}")


def penalty_forward(grad: torch.Tensor, kind: int, weight: float, center: float) -> torch.Tensor:
    """0-dim ``weight * mean_r f(|grad_r|)`` in grad's dtype."""
    _check(grad, kind)
    g = grad.contiguous()
    rows, features = g.shape
    acc = acc_dtype(g.dtype)
    grid = (triton.cdiv(rows, BLOCK_ROWS),)
    partials = torch.empty(grid[0], dtype=torch.float64 if acc == tl.float64 else torch.float32, device=g.device)
    _penalty_forward_kernel[grid](g, partials, rows, features, *split_double(center), KIND=kind, ACC=acc,
                                  BLOCK_R=BLOCK_ROWS, **_feature_blocks(features))
    return finish_sum(partials, weight / rows, g.dtype, acc)


def penalty_backward(grad_out: torch.Tensor, grad: torch.Tensor, kind: int, weight: float,
                     center: float) -> torch.Tensor:
    """dP/dgrad times the 0-dim (or one-element) ``grad_out``, in grad's dtype."""
    _check(grad, kind)
    if grad_out.numel() != 1:
        raise ValueError(f"fastgan penalty: grad_out must be a scalar, got shape {tuple(grad_out.shape)}")
    if grad_out.device != grad.device:
        raise ValueError(f"fastgan penalty: grad_out is on {grad_out.device} but grad is on {grad.device}")
    g = grad.contiguous()
    rows, features = g.shape
    out = torch.empty_like(g)
    grid = (triton.cdiv(rows, BLOCK_ROWS),)
    _penalty_backward_kernel[grid](grad_out.contiguous(), g, out, rows, features, *split_double(weight / rows),
                                   *split_double(center), KIND=kind, ACC=acc_dtype(g.dtype),
                                   BLOCK_R=BLOCK_ROWS, **_feature_blocks(features))
    return out
