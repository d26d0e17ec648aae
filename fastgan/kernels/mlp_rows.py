"""Row-wise kernels of the Triton MLP step: the logits with the loss derivative, and the gradient
penalty's row norms (docs/DESIGN.md section 4). Both paths use them.

    logits   o = H_L w_out^T + b_out, c = d loss / d o, per-tile sums of loss, logits and c
             (paired losses handle row i of real and of fake in the same program)
    penalty  P = w |g|^2 / 2 (kind 0) or w (|g| - center)^2 (kind 1) per row of G = do/dx,
             Gbar = dP/dg = k g with k = w or 2 w (|g| - center) / |g| (0 at g = 0)

Memory-bound reductions over rows: their block sizes follow from the width (``triton.heuristics``,
no autotuning). The kernels' scalars travel in a (9,) tensor of the compute dtype (see
``fastgan.kernels.mlp_step``): [alpha, real term sign, shift, scale, fake term sign, shift,
scale, penalty weight, penalty center].
"""
import torch
import triton
import triton.language as tl

from fastgan.kernels.mlp_tuning import INTERPRET, runtime_on_gpu
from fastgan.kernels.terms import phi_derivative, phi_value

NO_TERM = -1  # phi of an absent term
MIN_BLOCK_M = 16  # the smallest row tile the heuristics pick: partial-sum buffers are sized for it


@triton.jit
def leaky_mask(h, alpha):
    """LeakyReLU's derivative from its output: 1 where h > 0, else alpha."""
    return tl.where(h > 0, 1.0, alpha).to(h.dtype)


@triton.jit
def _term(x, sign, shift, scale, PHI: tl.constexpr):
    """(scale * phi(sign*x + shift), d/dx of it); zeros when PHI is NO_TERM (-1)."""
    if PHI < 0:
        zero = tl.zeros(x.shape, x.dtype)
        return zero, zero
    z = sign * x + shift
    return scale * phi_value(z, PHI), (scale * sign) * phi_derivative(z, PHI)


def _block_j(args):
    return 32 if INTERPRET else min(128, triton.next_power_of_2(args["J"]))


def _block_m(args):
    """About 8K elements per loaded tile (64 rows at width 128), 32 rows under the interpreter."""
    return 32 if INTERPRET else max(MIN_BLOCK_M, min(128, 8192 // _block_j(args)))


_ROW_BLOCKS = triton.heuristics({"BLOCK_J": _block_j, "BLOCK_M": _block_m})


@_ROW_BLOCKS
@triton.jit(do_not_specialize=["NR", "NF", "NTOT"])
@runtime_on_gpu("J")
def _logit_loss_kernel(
    h_ptr,        # (N, J) last hidden layer H_L, row stride stride_h
    wout_ptr,     # (J,) w_out
    bout_ptr,     # (1,) b_out (HAS_BOUT)
    params_ptr,   # (9,) scalars: alpha, real term (sign, shift, scale), fake term (...)
    o_ptr,        # (N,) logits out
    c_ptr,        # (N,) d loss / d o out (pre-zeroed: rows no program writes keep c = 0)
    part_ptr,     # (programs, 4) out: sums of loss, real logits, fake logits, c over the tile
    NR, NF, NTOT, J: tl.constexpr, stride_h,
    PHI_R: tl.constexpr, PHI_F: tl.constexpr, PAIRED: tl.constexpr, HAS_BOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """o = H_L @ w_out + b_out and the loss derivative c.
    Unpaired: rows [0, NR) real (term_real), [NR, NR+NF) fake (term_fake), the rest none.
    Paired: d_i = o_i - o_{NR+i}, loss = sum term_real(d_i), c_i = t'(d_i), c_{NR+i} = -t'(d_i)."""
    acc_ty = params_ptr.dtype.element_ty
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rj = tl.arange(0, BLOCK_J)
    if PAIRED:
        m_ok = rm < NR
    else:
        m_ok = rm < NTOT
    o = tl.zeros((BLOCK_M,), acc_ty)
    o2 = tl.zeros((BLOCK_M,), acc_ty)  # the matching fake logits when paired
    for j0 in range(0, J, BLOCK_J):
        cj = j0 + rj
        j_ok = cj < J
        w = tl.load(wout_ptr + cj, mask=j_ok, other=0.0).to(acc_ty)
        tile = m_ok[:, None] & j_ok[None, :]
        h = tl.load(h_ptr + rm[:, None] * stride_h + cj[None, :], mask=tile, other=0.0)
        o += tl.sum(h * w[None, :], axis=1)
        if PAIRED:
            h2 = tl.load(h_ptr + (rm + NR)[:, None] * stride_h + cj[None, :], mask=tile, other=0.0)
            o2 += tl.sum(h2 * w[None, :], axis=1)
    if HAS_BOUT:
        bo = tl.load(bout_ptr).to(acc_ty)
        o += bo
        o2 += bo
    r_sign = tl.load(params_ptr + 1)
    r_shift = tl.load(params_ptr + 2)
    r_scale = tl.load(params_ptr + 3)
    zero = tl.zeros((BLOCK_M,), acc_ty)
    tl.store(o_ptr + rm, o, mask=m_ok)
    if PAIRED:
        tl.store(o_ptr + NR + rm, o2, mask=m_ok)
        val, der = _term(o - o2, r_sign, r_shift, r_scale, PHI_R)
        val = tl.where(m_ok, val, zero)
        der = tl.where(m_ok, der, zero)
        tl.store(c_ptr + rm, der, mask=m_ok)
        tl.store(c_ptr + NR + rm, -der, mask=m_ok)
        tl.store(part_ptr + pid * 4 + 0, tl.sum(val, axis=0))
        tl.store(part_ptr + pid * 4 + 1, tl.sum(tl.where(m_ok, o, zero), axis=0))
        tl.store(part_ptr + pid * 4 + 2, tl.sum(tl.where(m_ok, o2, zero), axis=0))
        tl.store(part_ptr + pid * 4 + 3, tl.sum(der - der, axis=0))  # c_i + c_{NR+i}: 0, or NaN as autograd's
    else:
        is_r = rm < NR
        is_f = (rm >= NR) & (rm < NR + NF)
        vr, dr = _term(o, r_sign, r_shift, r_scale, PHI_R)
        vf, df = _term(o, tl.load(params_ptr + 4), tl.load(params_ptr + 5), tl.load(params_ptr + 6), PHI_F)
        val = tl.where(is_r, vr, tl.where(is_f, vf, zero))
        der = tl.where(is_r, dr, tl.where(is_f, df, zero))
        tl.store(c_ptr + rm, der, mask=m_ok)
        tl.store(part_ptr + pid * 4 + 0, tl.sum(val, axis=0))
        tl.store(part_ptr + pid * 4 + 1, tl.sum(tl.where(is_r, o, zero), axis=0))
        tl.store(part_ptr + pid * 4 + 2, tl.sum(tl.where(is_f, o, zero), axis=0))
        tl.store(part_ptr + pid * 4 + 3, tl.sum(der, axis=0))


@_ROW_BLOCKS
@triton.jit(do_not_specialize=["M"])
@runtime_on_gpu("J")
def _penalty_kernel(
    g_ptr,        # (M, J) input gradients g of the penalty rows (fp32/fp64)
    gbar_ptr,     # (M, J) out: dP/dg
    params_ptr,   # (9,) scalars; params[7] = weight, params[8] = center
    part_ptr,     # (programs,) out: sum of P over the tile
    M, J: tl.constexpr,
    KIND: tl.constexpr,  # 0: P = w |g|^2 / 2;  1: P = w (|g| - center)^2 (dP/dg = 0 at g = 0)
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Row norms, P and gbar = k * g with k = w (kind 0) or 2 w (|g| - center) / |g| (kind 1)."""
    acc_ty = params_ptr.dtype.element_ty
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rj = tl.arange(0, BLOCK_J)
    m_ok = rm < M
    ss = tl.zeros((BLOCK_M,), acc_ty)
    for j0 in range(0, J, BLOCK_J):
        cj = j0 + rj
        g = tl.load(g_ptr + rm[:, None] * J + cj[None, :], mask=m_ok[:, None] & (cj < J)[None, :], other=0.0)
        ss += tl.sum(g * g, axis=1)
    weight = tl.load(params_ptr + 7)
    zero = tl.zeros((BLOCK_M,), acc_ty)
    if KIND == 0:
        p = 0.5 * weight * ss
        k = zero + weight
    else:
        n = tl.sqrt(ss)
        d = n - tl.load(params_ptr + 8)
        p = weight * d * d
        k = tl.where(n == 0, zero, 2.0 * weight * d / tl.where(n == 0, 1.0, n))  # NaN stays NaN
    tl.store(part_ptr + pid, tl.sum(tl.where(m_ok, p, zero), axis=0))
    for j0 in range(0, J, BLOCK_J):
        cj = j0 + rj
        tile = m_ok[:, None] & (cj < J)[None, :]
        g = tl.load(g_ptr + rm[:, None] * J + cj[None, :], mask=tile, other=0.0)
        tl.store(gbar_ptr + rm[:, None] * J + cj[None, :], g * k[:, None], mask=tile)


def logits(ops, h_last, nr, nf, phi_r, phi_f, paired, width=None):
    """(c, sums of [loss, real logits, fake logits, c]) of the stacked rows' last layer
    ``h_last``; ``width``: H_L's width when h_last is zero-padded. ``ops``: the step's operands
    (``fastgan.kernels.mlp_step.Operands``)."""
    n, j = h_last.shape[0], width or h_last.shape[1]
    dev = h_last.device
    o = ops.empty(n)
    c = torch.zeros(n, device=dev, dtype=ops.cdtype)
    rows = nr if paired else n
    part = torch.zeros(triton.cdiv(rows, MIN_BLOCK_M), 4, device=dev, dtype=ops.cdtype)
    _logit_loss_kernel[lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]),)](
        h_last, ops.w_out, ops.b_out if ops.b_out is not None else ops.params, ops.params, o, c, part,
        nr, nf, n, j, h_last.stride(0), PHI_R=phi_r, PHI_F=phi_f, PAIRED=paired, HAS_BOUT=ops.b_out is not None)
    return c, part.sum(0)


def penalty(ops, g, kind):
    """(Gbar = dP/dg, sum of P) for the penalty rows' input gradients ``g`` (contiguous)."""
    m, j = g.shape
    gbar = ops.empty(m, j)
    part = torch.zeros(triton.cdiv(m, MIN_BLOCK_M), device=g.device, dtype=ops.cdtype)
    _penalty_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](g, gbar, ops.params, part, m, j, KIND=int(kind))
    return gbar, part.sum()
