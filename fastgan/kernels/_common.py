"""Helpers shared by the Triton kernels: accumulation dtype, exact float arguments, and the
deterministic second stage of a two-stage sum.

Loops run over constexpr trip counts: the Triton 3.6 interpreter cannot use a runtime integer
argument as a ``range`` bound with NumPy >= 2.4 (it holds scalars as 1-element arrays).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def acc_dtype(dtype: torch.dtype):
    """The accumulation dtype: fp64 for fp64 tensors, fp32 otherwise (fp32, fp16, bf16)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def split_double(value: float) -> tuple[float, float]:
    """``value`` as ``hi + lo`` with both exactly representable in fp32.

    Triton passes Python floats as fp32; a kernel that rebuilds ``hi + lo`` in fp64 recovers
    the value to about 48 bits, enough for float64 tensors (fp32 kernels use ``hi`` alone).
    """
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, float(torch.tensor(value - hi, dtype=torch.float32))


@triton.jit
def joined(hi, lo, ACC: tl.constexpr):
    """``hi + lo`` (see :func:`split_double`) in the accumulation dtype."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def sum_partials_kernel(
    partials_ptr,  # (num_partials,) accumulation dtype: one partial sum per first-stage program
    out_ptr,  # () output dtype: factor * sum(partials)
    num_partials,  # number of partial sums
    factor_hi,  # factor = factor_hi + factor_lo (see split_double)
    factor_lo,
    ACC: tl.constexpr,  # accumulation dtype
    BLOCK: tl.constexpr,  # partials summed per iteration
    ITERS: tl.constexpr,  # iterations, >= cdiv(num_partials, BLOCK) (a power of two: few compilations)
):
    """out = factor * sum_i partials[i], in a fixed order (deterministic). One program."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for i in range(ITERS):
        idx = i * BLOCK + offs
        acc += tl.load(partials_ptr + idx, mask=idx < num_partials, other=0.0).to(ACC)
    total = tl.sum(acc, axis=0) * joined(factor_hi, factor_lo, ACC)
    tl.store(out_ptr + tl.arange(0, 1), tl.full((1,), 0.0, ACC) + total, mask=tl.arange(0, 1) < 1)


def finish_sum(partials: torch.Tensor, factor: float, out_dtype: torch.dtype, acc) -> torch.Tensor:
    """A 0-dim tensor of ``out_dtype`` holding ``factor * partials.sum()`` (deterministic order)."""
    out = torch.empty((), dtype=out_dtype, device=partials.device)
    hi, lo = split_double(factor)
    iters = triton.next_power_of_2(triton.cdiv(partials.numel(), 1024))
    sum_partials_kernel[(1,)](partials, out, partials.numel(), hi, lo, ACC=acc, BLOCK=1024, ITERS=iters)
    return out
