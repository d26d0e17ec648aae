"""The fused MLP discriminator and generator steps in Triton (docs/DESIGN.md section 4).

``mlp_disc_step`` and ``mlp_gen_step`` implement the contract of the ``mlp_disc_step`` /
``mlp_gen_step`` operators in ``csrc/bindings.cpp`` (same arguments, same results) without
autograd and without double backward. Notation: rows x (N, K), layers l = 1..L with
W_l (H_l, H_{l-1}), alpha = negative_slope, mask(h) = 1 if h > 0 else alpha (the sign of
h_l = leaky(z_l) is the sign of z_l for alpha >= 0, so masks are never stored).

General path (any width), one launch per product, each with its epilogue fused:

    forward    H_l = leaky(H_{l-1} W_l^T + b_l); the last layer also stores V_L = mask(H_L) * w_out
    logits     o = H_L w_out^T + b_out, c = d loss / d o, per-tile sums of loss, logits and c
               (paired losses handle row i of real and of fake in the same program)
    v chain    V_{l-1} = (V_l W_l) * mask(H_{l-1})          (v_l = u_l * m_l; delta_l = c * v_l)
    penalty    G = V_1 W_1 on the penalty rows (g = do/dx), then Gbar = dP/dg, per-tile sums of P
    adjoint    Ubar_0 = Gbar, Ubar_l = (Ubar_{l-1} W_l^T) * mask(H_l)   (penalty rows only)
    gradients  dW_l = sum_rows V_l^T (c * H_{l-1} + Ubar_{l-1}),  db_l = sum_rows c * V_l,
               dw_out = sum_rows (c * H_L + Ubar_L),  db_out = sum_rows c
               (the operand c * H + Ubar is formed while loading; split over row ranges and
               summed in a fixed order: deterministic, no atomics)

Fully fused path (every width, K included, <= FUSED_MAX_WIDTH = 128 and depth <= 4), taken by
the discriminator step: widths are zero-padded to HB = next power of two and

    _fused_forward_kernel   one program per row tile: all L layers, activations kept in
                            registers between layers, each H_l written once
    _logit_loss_kernel      as above
    _fused_backward_kernel  persistent programs, several row tiles each: v chain, g, dP/dg, the
                            adjoint chain and every weight gradient, summed into the program's
                            own slice of a (programs, L, HB, HB) buffer (zeroed by the kernel)

then one ordered sum over the slices: 3 launches plus a few tiny torch reductions per step.
Weight tiles are re-read from L1/L2 per row tile (Triton gives no explicit shared-memory
residency); V_l go through a scratch buffer that stays in L2 for a tile's lifetime.

Real, fake and penalty rows are stacked into one (N, K) batch, so every product is one launch;
the general path takes 3L + 4 launches (+ 2L + 2 with a penalty) plus tiny torch reductions. The
generator step always takes the general path (forward, logits, v chain on the fake rows, c * g).

Layer widths are compile-time constants (one compile per architecture; batch sizes only pick a
power-of-two bucket). That also keeps every range() bound a Python int under the interpreter:
Triton 3.6's interpreter fails on runtime range() bounds with NumPy >= 2.3.

Precision: fp32 and fp64 accumulate in their own type; bf16/fp16 inputs are cast inside the
kernels, the products take operands in the parameters' dtype and accumulate in fp32, and every
intermediate (H, V, G, Ubar) is stored in fp32. fp32 products use ``input_precision="ieee"``
(fp32-accurate) unless ``allow_tf32``. Under ``TRITON_INTERPRET=1`` each kernel has exactly one
config. Awaiting an H100 (none was available when this was written): the autotune configs of
the general path, the fused path's BLOCK_M / num_warps (register pressure at HB = 128), the
number of persistent programs, whether the fused path beats the general one at every width up to
128, and the bf16/fp16 path as a whole (the interpreter has no bf16 dot).
"""
import os

import torch
import triton
import triton.language as tl

from fastgan.kernels.terms import phi_derivative, phi_value

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# fp32 products when allow_tf32 is False. "ieee" is fp32-accurate but runs on FMA units: an sm_90
# AOT compile (ptxas -v) shows the fused kernels spilling 25-90 KB per thread with it, against
# 1-5 KB with "tf32x3" (3xTF32 on tensor cores, which docs/DESIGN.md section 5 also accepts for
# 'highest'). Switch once test_gpu_precision passes with "tf32x3" on an H100.
FP32_PRECISION = "ieee"
POISON = False  # tests set True: scratch buffers start as NaN so unwritten elements show

# Epilogues of the product kernel.
EPI_FORWARD = 0  # y = leaky(acc + b); optionally v = mask(y) * w_out
EPI_MASK = 1     # y = acc * mask(aux)
EPI_PLAIN = 2    # y = acc (optionally * scale[row])

# The kernels' scalars travel in a (9,) tensor of the compute dtype (Triton would pass Python
# floats as fp32): [alpha, real term sign, shift, scale, fake term sign, shift, scale,
# penalty weight, penalty center]; see _params.
NO_TERM = -1  # phi of an absent term


def _empty(*shape, device, dtype):
    t = torch.empty(shape, device=device, dtype=dtype)
    return t.fill_(float("nan")) if POISON else t


def _configs(blocks, interpret_block):
    """Autotune configs on GPU; exactly one config under the interpreter."""
    if INTERPRET:
        return [triton.Config(interpret_block, num_warps=4, num_stages=1)]
    return [triton.Config(b, num_warps=w, num_stages=s) for b, w, s in blocks]


# ---------------------------------------------------------------------------------------------
# elementwise maths (mirrors csrc/loss_terms.h and fastgan/terms.py)
# ---------------------------------------------------------------------------------------------

@triton.jit
def _mask(h, alpha):
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


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

_MM_BLOCKS = [
    ({"BLOCK_M": 128, "BLOCK_J": 128, "BLOCK_R": 32}, 8, 3),
    ({"BLOCK_M": 128, "BLOCK_J": 64, "BLOCK_R": 32}, 4, 4),
    ({"BLOCK_M": 64, "BLOCK_J": 128, "BLOCK_R": 32}, 4, 4),
    ({"BLOCK_M": 64, "BLOCK_J": 64, "BLOCK_R": 64}, 4, 3),
    ({"BLOCK_M": 32, "BLOCK_J": 64, "BLOCK_R": 32}, 4, 3),
]


@triton.autotune(configs=_configs(_MM_BLOCKS, {"BLOCK_M": 32, "BLOCK_J": 32, "BLOCK_R": 32}),
                 key=["M", "J", "R", "EPI"])
@triton.jit
def _mm_kernel(
    a_ptr,        # (M, R) left operand, row stride stride_am, unit column stride
    b_ptr,        # right operand B[r, j] at b_ptr + r * stride_br + j * stride_bj (a weight matrix)
    y_ptr,        # (M, J) output, row stride stride_ym
    bias_ptr,     # (J,) bias (EPI_FORWARD and HAS_BIAS)
    aux_ptr,      # (M, J) activations whose mask multiplies the result (EPI_MASK), row stride stride_xm
    v_ptr,        # (M, J) V_L = mask(y) * w_out (EPI_FORWARD and LAST), row stride stride_ym
    wout_ptr,     # (J,) w_out (LAST)
    scale_ptr,    # (M,) per-row factor (EPI_PLAIN and ROW_SCALE)
    params_ptr,   # (9,) scalars in the compute dtype, params[0] = alpha
    M, J, R: tl.constexpr,  # rows, output columns, reduction length
    stride_am, stride_br, stride_bj, stride_ym, stride_xm,
    EPI: tl.constexpr, HAS_BIAS: tl.constexpr, LAST: tl.constexpr, ROW_SCALE: tl.constexpr,
    LOWP: tl.constexpr,             # bf16/fp16 parameters: products in their dtype, fp32 accumulation
    DOT_PRECISION: tl.constexpr,    # "ieee" or "tf32"
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """acc = A @ B over a (BLOCK_M, BLOCK_J) tile, then one of:
    EPI_FORWARD: z = acc + bias; y = where(z > 0, z, alpha z)  [LAST: v = mask(y) * w_out]
    EPI_MASK:    y = acc * where(aux > 0, 1, alpha)
    EPI_PLAIN:   y = acc  [ROW_SCALE: y = acc * scale[:, None]], cast to y's dtype."""
    acc_ty = params_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rj = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    rr = tl.arange(0, BLOCK_R)
    m_ok = rm < M
    j_ok = rj < J
    acc = tl.zeros((BLOCK_M, BLOCK_J), dtype=acc_ty)
    for r0 in range(0, R, BLOCK_R):
        rk = r0 + rr
        k_ok = rk < R
        a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + rk[:, None] * stride_br + rj[None, :] * stride_bj,
                    mask=k_ok[:, None] & j_ok[None, :], other=0.0)
        if LOWP:
            a = a.to(b_ptr.dtype.element_ty)
        else:
            a = a.to(acc_ty)
            b = b.to(acc_ty)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc_ty)
    alpha = tl.load(params_ptr)
    tile = m_ok[:, None] & j_ok[None, :]
    if EPI == 0:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rj, mask=j_ok, other=0.0).to(acc_ty)[None, :]
        y = tl.where(acc > 0, acc, alpha * acc)
        if LAST:
            w = tl.load(wout_ptr + rj, mask=j_ok, other=0.0).to(acc_ty)
            tl.store(v_ptr + rm[:, None] * stride_ym + rj[None, :], _mask(y, alpha) * w[None, :], mask=tile)
    elif EPI == 1:
        h = tl.load(aux_ptr + rm[:, None] * stride_xm + rj[None, :], mask=tile, other=0.0)
        y = acc * _mask(h, alpha)
    else:
        y = acc
        if ROW_SCALE:
            y = y * tl.load(scale_ptr + rm, mask=m_ok, other=0.0)[:, None]
    tl.store(y_ptr + rm[:, None] * stride_ym + rj[None, :], y.to(y_ptr.dtype.element_ty), mask=tile)


_ROW_BLOCKS = [({"BLOCK_M": 64, "BLOCK_J": 128}, 4, 2), ({"BLOCK_M": 128, "BLOCK_J": 64}, 8, 2),
               ({"BLOCK_M": 32, "BLOCK_J": 128}, 4, 2)]


@triton.autotune(configs=_configs(_ROW_BLOCKS, {"BLOCK_M": 32, "BLOCK_J": 32}), key=["NR", "NF", "J"])
@triton.jit
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
        tl.store(part_ptr + pid * 4 + 3, tl.sum(zero, axis=0))  # c_i + c_{NR+i} = 0
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


@triton.autotune(configs=_configs(_ROW_BLOCKS, {"BLOCK_M": 32, "BLOCK_J": 32}), key=["M", "J"])
@triton.jit
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
        k = tl.where(n > 0, 2.0 * weight * d / tl.where(n > 0, n, 1.0), zero)
    tl.store(part_ptr + pid, tl.sum(tl.where(m_ok, p, zero), axis=0))
    for j0 in range(0, J, BLOCK_J):
        cj = j0 + rj
        tile = m_ok[:, None] & (cj < J)[None, :]
        g = tl.load(g_ptr + rm[:, None] * J + cj[None, :], mask=tile, other=0.0)
        tl.store(gbar_ptr + rm[:, None] * J + cj[None, :], g * k[:, None], mask=tile)


_WG_BLOCKS = [
    ({"BLOCK_I": 128, "BLOCK_J": 128, "BLOCK_R": 32}, 8, 3),
    ({"BLOCK_I": 64, "BLOCK_J": 128, "BLOCK_R": 32}, 4, 3),
    ({"BLOCK_I": 64, "BLOCK_J": 64, "BLOCK_R": 64}, 4, 3),
    ({"BLOCK_I": 32, "BLOCK_J": 64, "BLOCK_R": 64}, 4, 3),
]


@triton.autotune(configs=_configs(_WG_BLOCKS, {"BLOCK_I": 32, "BLOCK_J": 32, "BLOCK_R": 32}),
                 key=["N", "I", "J", "V_ONES"])
@triton.jit
def _wgrad_kernel(
    v_ptr,        # (N, I) V_l (unused when V_ONES: the output layer, I = 1)
    h_ptr,        # (N, J) H_{l-1} (any float dtype; layer 1 reads the stacked input rows)
    c_ptr,        # (N,) loss derivatives
    ubar_ptr,     # (NP, J) Ubar_{l-1} of rows [P0, P0 + NP) (HAS_UBAR)
    dw_ptr,       # (splits, I, J) out: partial sums of V^T (c H + Ubar) over each row range
    db_ptr,       # (splits, I) out: partial sums of c V (programs with pid_j == 0, HAS_DB)
    params_ptr,   # (9,) only its dtype is used (the accumulation type)
    wdt_ptr,      # any parameter tensor: its dtype is the product dtype when LOWP
    N, I, J, P0, NP, rows_per_split: tl.constexpr,
    stride_v, stride_h, stride_u,
    V_ONES: tl.constexpr, HAS_UBAR: tl.constexpr, HAS_DB: tl.constexpr,
    LOWP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dW[i, j] = sum_r V[r, i] * (c[r] H[r, j] + Ubar[r - P0, j]) over this program's row range;
    db[i] = sum_r c[r] V[r, i]. The operand c H + Ubar is built while loading."""
    acc_ty = params_ptr.dtype.element_ty
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    pid_s = tl.program_id(2)
    ri = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    rj = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    rr = tl.arange(0, BLOCK_R)
    i_ok = ri < I
    j_ok = rj < J
    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=acc_ty)
    dbacc = tl.zeros((BLOCK_I,), dtype=acc_ty)
    start = pid_s * rows_per_split
    for r0 in range(0, rows_per_split, BLOCK_R):
        r = start + r0 + rr
        r_ok = (r0 + rr < rows_per_split) & (r < N)
        c = tl.load(c_ptr + r, mask=r_ok, other=0.0)
        tile = r_ok[:, None] & j_ok[None, :]
        b = c[:, None] * tl.load(h_ptr + r[:, None] * stride_h + rj[None, :], mask=tile, other=0.0).to(acc_ty)
        if HAS_UBAR:
            pr = r - P0
            p_ok = r_ok & (pr >= 0) & (pr < NP)
            b += tl.load(ubar_ptr + pr[:, None] * stride_u + rj[None, :], mask=p_ok[:, None] & j_ok[None, :],
                         other=0.0)
        if V_ONES:
            acc += tl.sum(b, axis=0)[None, :]
        else:
            vt = tl.load(v_ptr + r[None, :] * stride_v + ri[:, None], mask=i_ok[:, None] & r_ok[None, :], other=0.0)
            if HAS_DB:
                dbacc += tl.sum(vt * c[None, :], axis=1)
            if LOWP:
                acc = tl.dot(vt.to(wdt_ptr.dtype.element_ty), b.to(wdt_ptr.dtype.element_ty), acc, out_dtype=acc_ty)
            else:
                acc = tl.dot(vt, b, acc, input_precision=DOT_PRECISION, out_dtype=acc_ty)
    out = dw_ptr + pid_s * I * J + ri[:, None] * J + rj[None, :]
    tl.store(out, acc, mask=i_ok[:, None] & j_ok[None, :])
    if HAS_DB:
        if pid_j == 0:
            tl.store(db_ptr + pid_s * I + ri, dbacc, mask=i_ok)


# ---------------------------------------------------------------------------------------------
# fully fused path: every width (K included) <= FUSED_MAX_WIDTH and depth <= 4
# ---------------------------------------------------------------------------------------------

@triton.jit
def _pick(l: tl.constexpr, p0, p1, p2, p3):
    """The l-th of four arguments (l is a compile-time layer index)."""
    if l == 0:
        return p0
    elif l == 1:
        return p1
    elif l == 2:
        return p2
    else:
        return p3


@triton.jit
def _load_weight(w_ptr, n_out, n_in, HB: tl.constexpr, TRANSPOSE: tl.constexpr):
    """A contiguous (n_out, n_in) weight zero-padded to (HB, HB); its transpose when TRANSPOSE."""
    ro = tl.arange(0, HB)
    if TRANSPOSE:
        return tl.load(w_ptr + ro[:, None] + ro[None, :] * n_in, mask=(ro[:, None] < n_in) & (ro[None, :] < n_out),
                       other=0.0)
    return tl.load(w_ptr + ro[:, None] * n_in + ro[None, :], mask=(ro[:, None] < n_out) & (ro[None, :] < n_in),
                   other=0.0)


@triton.jit
def _dot(a, b, params_ptr, wdt_ptr, LOWP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """a @ b accumulated in the compute dtype (fp32 from bf16/fp16 operands when LOWP)."""
    if LOWP:
        return tl.dot(a.to(wdt_ptr.dtype.element_ty), b.to(wdt_ptr.dtype.element_ty), out_dtype=tl.float32)
    acc_ty = params_ptr.dtype.element_ty
    return tl.dot(a.to(acc_ty), b.to(acc_ty), input_precision=DOT_PRECISION, out_dtype=acc_ty)


@triton.jit
def _fused_forward_kernel(
    x_ptr,                    # (N, D0) stacked rows, row stride stride_x
    w1, w2, w3, w4,           # W_l (D_l, D_{l-1}) contiguous (unused ones repeat w1)
    b1, b2, b3, b4,           # b_l (D_l,) (HAS_BIAS)
    h_ptr,                    # (L, N, HB) out: H_l zero-padded to HB columns
    params_ptr,               # (9,) scalars, params[0] = alpha
    N, stride_x,
    D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,
    L: tl.constexpr, HB: tl.constexpr, HAS_BIAS: tl.constexpr, LOWP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """All layers of one row tile: H_l = leaky(H_{l-1} W_l^T + b_l), l = 1..L, kept on chip
    between layers and written once each (the backward kernel reads them back)."""
    acc_ty = params_ptr.dtype.element_ty
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.arange(0, HB)
    m_ok = rm < N
    a = tl.load(x_ptr + rm[:, None] * stride_x + rc[None, :], mask=m_ok[:, None] & (rc[None, :] < D0), other=0.0)
    alpha = tl.load(params_ptr)
    for l in tl.static_range(L):
        n_in = _pick(l, D0, D1, D2, D3)
        n_out = _pick(l, D1, D2, D3, D4)
        z = _dot(a, _load_weight(_pick(l, w1, w2, w3, w4), n_out, n_in, HB, True), params_ptr, w1, LOWP,
                 DOT_PRECISION)
        if HAS_BIAS:
            z += tl.load(_pick(l, b1, b2, b3, b4) + rc, mask=rc < n_out, other=0.0).to(acc_ty)[None, :]
        a = tl.where(z > 0, z, alpha * z)
        tl.store(h_ptr + l * N * HB + rm[:, None] * HB + rc[None, :], a, mask=m_ok[:, None])


@triton.jit
def _fused_backward_kernel(
    x_ptr,                    # (N, D0) stacked rows, row stride stride_x
    h_ptr,                    # (L, N, HB) H_1..H_L from _fused_forward_kernel
    v_ptr,                    # (L, N, HB) scratch for V_1..V_L
    c_ptr,                    # (N,) loss derivatives
    w1, w2, w3, w4,           # W_l as in the forward kernel
    wout_ptr,                 # (D_L,) w_out
    params_ptr,               # (9,) scalars: alpha, .., params[7] = weight, params[8] = center
    dw_ptr,                   # (P, L, HB, HB) out: per-program sums of V_l^T (c H_{l-1} + Ubar_{l-1})
    db_ptr,                   # (P, L, HB) out: per-program sums of c V_l
    dwo_ptr,                  # (P, HB) out: per-program sums of c H_L + Ubar_L
    pen_ptr,                  # (P,) out: per-program penalty sums
    N, stride_x, P0, NP,      # penalty rows are [P0, P0 + NP)
    D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,
    L: tl.constexpr, HB: tl.constexpr, HAS_PEN: tl.constexpr, KIND: tl.constexpr, LOWP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, TILES: tl.constexpr,
):
    """Everything after the logits for TILES row tiles (tile pid + t * P): the v chain
    V_L = mask(H_L) w_out, V_{l-1} = (V_l W_l) mask(H_{l-1}); on penalty rows g = V_1 W_1,
    Ubar_0 = dP/dg, Ubar_l = (Ubar_{l-1} W_l^T) mask(H_l); and the weight gradients, summed
    into this program's slices (zeroed here first, so no host memset and no atomics)."""
    acc_ty = params_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rc = tl.arange(0, HB)
    rb = tl.arange(0, BLOCK_M)
    sq = rc[:, None] * HB + rc[None, :]
    zero_sq = tl.zeros((HB, HB), acc_ty)
    for l in tl.static_range(L):
        tl.store(dw_ptr + (pid * L + l) * HB * HB + sq, zero_sq)
        tl.store(db_ptr + (pid * L + l) * HB + rc, tl.zeros((HB,), acc_ty))
    alpha = tl.load(params_ptr)
    wout = tl.load(wout_ptr + rc, mask=rc < _pick(L - 1, D1, D2, D3, D4), other=0.0).to(acc_ty)
    dwo = tl.zeros((HB,), acc_ty)
    pen = tl.zeros((BLOCK_M,), acc_ty)
    tl.debug_barrier()
    for t in range(TILES):
        rm = (pid + t * nprog) * BLOCK_M + rb
        m_ok = rm < N
        rows = rm[:, None] * HB + rc[None, :]
        c = tl.load(c_ptr + rm, mask=m_ok, other=0.0)
        # v chain, top down
        v = _mask(tl.load(h_ptr + (L - 1) * N * HB + rows, mask=m_ok[:, None], other=0.0), alpha) * wout[None, :]
        tl.store(v_ptr + (L - 1) * N * HB + rows, v, mask=m_ok[:, None])
        for l in tl.static_range(L - 1, 0, -1):  # W_{l+1} in 1-based terms
            w = _load_weight(_pick(l, w1, w2, w3, w4), _pick(l, D1, D2, D3, D4), _pick(l, D0, D1, D2, D3), HB, False)
            hp = tl.load(h_ptr + (l - 1) * N * HB + rows, mask=m_ok[:, None], other=0.0)
            v = _dot(v, w, params_ptr, w1, LOWP, DOT_PRECISION) * _mask(hp, alpha)
            tl.store(v_ptr + (l - 1) * N * HB + rows, v, mask=m_ok[:, None])
        if HAS_PEN:
            g = _dot(v, _load_weight(w1, D1, D0, HB, False), params_ptr, w1, LOWP, DOT_PRECISION)
            on = m_ok & (rm >= P0) & (rm < P0 + NP)
            ss = tl.sum(g * g, axis=1)
            weight = tl.load(params_ptr + 7)
            if KIND == 0:
                p = 0.5 * weight * ss
                k = tl.zeros((BLOCK_M,), acc_ty) + weight
            else:
                nrm = tl.sqrt(ss)
                d = nrm - tl.load(params_ptr + 8)
                p = weight * d * d
                k = tl.where(nrm > 0, 2.0 * weight * d / tl.where(nrm > 0, nrm, 1.0), 0.0)
            pen += tl.where(on, p, 0.0)
            ub = g * tl.where(on, k, 0.0)[:, None]
        tl.debug_barrier()
        # adjoint chain bottom up, with the weight gradients of each layer
        a = tl.load(x_ptr + rm[:, None] * stride_x + rc[None, :], mask=m_ok[:, None] & (rc[None, :] < D0),
                    other=0.0).to(acc_ty)
        for l in tl.static_range(L):
            vl = tl.load(v_ptr + l * N * HB + rows, mask=m_ok[:, None], other=0.0)
            b = c[:, None] * a
            if HAS_PEN:
                b += ub
            dwp = dw_ptr + (pid * L + l) * HB * HB + sq
            tl.store(dwp, tl.load(dwp) + _dot(tl.trans(vl), b, params_ptr, w1, LOWP, DOT_PRECISION))
            dbp = db_ptr + (pid * L + l) * HB + rc
            tl.store(dbp, tl.load(dbp) + tl.sum(vl * c[:, None], axis=0))
            a = tl.load(h_ptr + l * N * HB + rows, mask=m_ok[:, None], other=0.0)
            if HAS_PEN:
                wt = _load_weight(_pick(l, w1, w2, w3, w4), _pick(l, D1, D2, D3, D4), _pick(l, D0, D1, D2, D3),
                                  HB, True)
                ub = _dot(ub, wt, params_ptr, w1, LOWP, DOT_PRECISION) * _mask(a, alpha)
        b = c[:, None] * a
        if HAS_PEN:
            b += ub
        dwo += tl.sum(b, axis=0)
        tl.debug_barrier()
    tl.store(dwo_ptr + pid * HB + rc, dwo)
    tl.store(pen_ptr + pid, tl.sum(pen, axis=0))


# ---------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------

def _check(name, t, dtype, device, shape):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype or t.device != device:
        raise TypeError(f"{name} must be a {dtype} tensor on {device}, got {t.dtype} on {t.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _term_args(name, term):
    """(phi constexpr, [sign, shift, scale]) of a [phi, sign, shift, scale] list (or [])."""
    term = list(term)
    if not term:
        return NO_TERM, [0.0, 0.0, 0.0]
    if len(term) != 4 or int(term[0]) not in (0, 1, 2, 3) or term[0] != int(term[0]):
        raise ValueError(f"{name} must be [] or [phi, sign, shift, scale] with phi in 0..3, got {term}")
    return int(term[0]), [float(v) for v in term[1:]]


def _check_network(x, weights, biases, w_out, b_out, negative_slope):
    """Validates the parameters against rows x; returns the widths [K, H_1, .., H_L]."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError(f"rows must be a non-empty 2-D floating tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not weights:
        raise ValueError("weights must hold at least one (H_1, K) matrix")
    widths = [x.shape[1]]
    pdtype = weights[0].dtype if isinstance(weights[0], torch.Tensor) else None
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"weights[{i}] must be a 2-D tensor")
        _check(f"weights[{i}]", w, pdtype, x.device, (w.shape[0], widths[-1]))
        widths.append(w.shape[0])
    if len(biases) not in (0, len(weights)):
        raise ValueError(f"biases must be empty or hold {len(weights)} tensors, got {len(biases)}")
    for i, b in enumerate(biases):
        _check(f"biases[{i}]", b, pdtype, x.device, (widths[i + 1],))
    _check("w_out", w_out, pdtype, x.device, (1, widths[-1]))
    if b_out is not None:
        _check("b_out", b_out, pdtype, x.device, (1,))
    if not negative_slope >= 0:
        raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
    return widths


class _Net:
    """Launchers over one stacked batch of rows X (N, K): forward, logits, v chain, adjoint."""

    def __init__(self, x, weights, biases, w_out, b_out, params, allow_tf32):
        self.x, self.weights, self.biases, self.w_out, self.b_out = x, weights, biases, w_out, b_out
        self.params = params
        self.cdtype = params.dtype
        self.lowp = weights[0].dtype in (torch.float16, torch.bfloat16)
        fp32 = self.cdtype == torch.float32 and not self.lowp
        self.prec = ("tf32" if allow_tf32 else FP32_PRECISION) if fp32 else "ieee"

    def _mm(self, a, w, transpose, y, epi, *, bias=None, aux=None, v=None, scale=None):
        """y = epilogue(a @ (w^T if transpose else w)) over a's rows."""
        M, R = a.shape
        J = y.shape[1]
        sbr, sbj = (w.stride(1), w.stride(0)) if transpose else (w.stride(0), w.stride(1))
        dummy = self.params
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(J, meta["BLOCK_J"]))  # noqa: E731
        _mm_kernel[grid](
            a, w, y, bias if bias is not None else dummy, aux if aux is not None else dummy,
            v if v is not None else dummy, self.w_out, scale if scale is not None else dummy, self.params,
            M, J, R, a.stride(0), sbr, sbj, y.stride(0), aux.stride(0) if aux is not None else 0,
            EPI=epi, HAS_BIAS=bias is not None, LAST=v is not None, ROW_SCALE=scale is not None,
            LOWP=self.lowp, DOT_PRECISION=self.prec)

    def forward(self):
        """hs = [X, H_1, .., H_L] and V_L = mask(H_L) * w_out."""
        hs = [self.x]
        n = self.x.shape[0]
        v_last = None
        for l, w in enumerate(self.weights):
            h = _empty(n, w.shape[0], device=self.x.device, dtype=self.cdtype)
            last = l == len(self.weights) - 1
            if last:
                v_last = _empty(*h.shape, device=h.device, dtype=h.dtype)
            self._mm(hs[-1], w, True, h, EPI_FORWARD, bias=self.biases[l] if self.biases else None,
                     v=v_last if last else None)
            hs.append(h)
        return hs, v_last

    def logits(self, h_last, nr, nf, phi_r, phi_f, paired, width=None):
        """(o, c, sums of [loss, real logits, fake logits, c]); ``width``: H_L when h_last is padded."""
        n, j = h_last.shape[0], width or h_last.shape[1]
        o = _empty(n, device=h_last.device, dtype=self.cdtype)
        c = torch.zeros(n, device=h_last.device, dtype=self.cdtype)
        rows = nr if paired else n
        # partials sized for the smallest tile any config uses, so autotuning can run any of them
        part = torch.zeros(triton.cdiv(rows, 16), 4, device=h_last.device, dtype=self.cdtype)
        _logit_loss_kernel[lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]),)](
            h_last, self.w_out, self.b_out if self.b_out is not None else self.params, self.params, o, c, part,
            nr, nf, n, j, h_last.stride(0), PHI_R=phi_r, PHI_F=phi_f, PAIRED=paired,
            HAS_BOUT=self.b_out is not None)
        return o, c, part.sum(0)

    def v_chain(self, hs, v_last, lo, hi):
        """[V_1, .., V_L] on rows [lo, hi): V_{l-1} = (V_l W_l) * mask(H_{l-1})."""
        vs = [v_last[lo:hi]]
        for l in range(len(self.weights) - 1, 0, -1):
            v = _empty(hi - lo, self.weights[l].shape[1], device=self.x.device, dtype=self.cdtype)
            self._mm(vs[0], self.weights[l], False, v, EPI_MASK, aux=hs[l][lo:hi])
            vs.insert(0, v)
        return vs

    def input_gradient(self, v1, out, scale=None):
        """out = (V_1 W_1) [* scale per row]: g = do/dx (or c * g)."""
        self._mm(v1, self.weights[0], False, out, EPI_PLAIN, scale=scale)
        return out

    def adjoint(self, hs, gbar, lo, hi):
        """[Ubar_0 = Gbar, .., Ubar_L] on rows [lo, hi): Ubar_l = (Ubar_{l-1} W_l^T) * mask(H_l)."""
        ubars = [gbar]
        for l, w in enumerate(self.weights):
            u = _empty(hi - lo, w.shape[0], device=self.x.device, dtype=self.cdtype)
            self._mm(ubars[-1], w, True, u, EPI_MASK, aux=hs[l + 1][lo:hi])
            ubars.append(u)
        return ubars


def _split_rows(n):
    """Rows per program of the weight-gradient reduction: a power of two (a compile-time loop
    bound, so only a few variants compile); the row ranges are summed in order afterwards."""
    if INTERPRET:
        return max(16, triton.next_power_of_2(triton.cdiv(n, 3)))
    return max(1024, triton.next_power_of_2(triton.cdiv(n, 64)))  # <= 64 ranges; awaits H100 tuning


def _weight_grad(net, v, h, c, ubar, p0, dtype, want_db):
    """(dW, db or None) = (sum V^T (c H + Ubar), sum c V); v None means the output layer (V = 1)."""
    n, j = h.shape
    i = 1 if v is None else v.shape[1]
    rows_per_split = _split_rows(n)
    s = triton.cdiv(n, rows_per_split)
    dw = _empty(s, i, j, device=h.device, dtype=net.cdtype)
    db = _empty(s, i, device=h.device, dtype=net.cdtype) if want_db else None
    grid = lambda meta: (triton.cdiv(i, meta["BLOCK_I"]), triton.cdiv(j, meta["BLOCK_J"]), s)  # noqa: E731
    _wgrad_kernel[grid](
        v if v is not None else h, h, c, ubar if ubar is not None else h, dw, db if want_db else dw, net.params,
        net.w_out,
        n, i, j, p0, ubar.shape[0] if ubar is not None else 0, rows_per_split,
        v.stride(0) if v is not None else 0, h.stride(0), ubar.stride(0) if ubar is not None else 0,
        V_ONES=v is None, HAS_UBAR=ubar is not None, HAS_DB=want_db, LOWP=net.lowp, DOT_PRECISION=net.prec)
    return dw.sum(0).to(dtype), (db.sum(0).to(dtype) if want_db else None)


def _params(dtype, device, negative_slope, t_real=(0.0, 0.0, 0.0), t_fake=(0.0, 0.0, 0.0), weight=0.0, center=0.0):
    return torch.tensor([negative_slope, *t_real, *t_fake, weight, center], dtype=dtype, device=device)

FUSED_MAX_WIDTH = 128  # widest layer (K included) the fully fused path takes; tests set 0 to force the general path
FUSED_MAX_DEPTH = 4


def _fused_shape(widths):
    """HB (padded width) if the fully fused path applies, else None."""
    if len(widths) - 1 > FUSED_MAX_DEPTH or max(widths) > FUSED_MAX_WIDTH:
        return None
    return max(16, triton.next_power_of_2(max(widths)))


def _fused_disc_step(net, widths, hb, nr, nf, phi_r, phi_f, paired, p0, np_, penalty_side, penalty_kind):
    """The fully fused step: forward kernel, logit/loss kernel, backward kernel, then one sum over
    the per-program gradient slices. Returns (dW list, db list, dw_out, loss sums, penalty)."""
    x, n, L = net.x, net.x.shape[0], len(net.weights)
    dev, cd = x.device, net.cdtype
    block_m = 32 if (INTERPRET or hb > 64) else 64  # awaits H100 tuning (register pressure at HB = 128)
    warps = 4 if INTERPRET else (8 if hb > 64 else 4)
    dims = widths + [1] * (5 - len(widths))
    ws = net.weights + [net.weights[0]] * (4 - L)
    bs = (net.biases + [net.biases[0]] * (4 - L)) if net.biases else [net.params] * 4
    h = _empty(L, n, hb, device=dev, dtype=cd)
    tiles = triton.cdiv(n, block_m)
    _fused_forward_kernel[(tiles,)](
        x, *ws, *bs, h, net.params, n, x.stride(0), *dims, L=L, HB=hb, HAS_BIAS=bool(net.biases), LOWP=net.lowp,
        DOT_PRECISION=net.prec, BLOCK_M=block_m, num_warps=warps)
    _, c, sums = net.logits(h[L - 1], nr, nf, phi_r, phi_f, paired, width=widths[-1])
    per_prog = triton.next_power_of_2(triton.cdiv(tiles, 2 if INTERPRET else 132))  # H100: 132 SMs
    progs = triton.cdiv(tiles, per_prog)
    v = _empty(L, n, hb, device=dev, dtype=cd)
    dw = _empty(progs, L, hb, hb, device=dev, dtype=cd)
    db = _empty(progs, L, hb, device=dev, dtype=cd)
    dwo = _empty(progs, hb, device=dev, dtype=cd)
    pen = _empty(progs, device=dev, dtype=cd)
    _fused_backward_kernel[(progs,)](
        x, h, v, c, *ws, net.w_out, net.params, dw, db, dwo, pen, n, x.stride(0), p0, np_, *dims, L=L, HB=hb,
        HAS_PEN=penalty_side != -1, KIND=int(penalty_kind), LOWP=net.lowp, DOT_PRECISION=net.prec,
        BLOCK_M=block_m, TILES=per_prog, num_warps=warps)
    dw, db = dw.sum(0), db.sum(0)
    pdtype = net.weights[0].dtype
    dws = [dw[l, :widths[l + 1], :widths[l]].to(pdtype) for l in range(L)]
    dbs = [db[l, :widths[l + 1]].to(pdtype) for l in range(L)]
    penalty = pen.sum() if penalty_side != -1 else torch.zeros((), device=dev, dtype=cd)
    return dws, dbs, dwo.sum(0)[:widths[-1]].reshape(1, -1).to(pdtype), sums, penalty


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _general_disc_step(net, widths, nr, nf, phi_r, phi_f, paired, p0, np_, penalty_side, penalty_kind):
    """The general path: one launch per product (see the module docstring)."""
    x, n, cdtype = net.x, net.x.shape[0], net.cdtype
    hs, v_last = net.forward()
    _, c, sums = net.logits(hs[-1], nr, nf, phi_r, phi_f, paired)
    vs = net.v_chain(hs, v_last, 0, n)
    penalty = torch.zeros((), device=x.device, dtype=cdtype)
    ubars = [None] * (len(net.weights) + 1)
    if penalty_side != -1:
        g = net.input_gradient(vs[0][p0:p0 + np_], _empty(np_, widths[0], device=x.device, dtype=cdtype))
        gbar = _empty(*g.shape, device=g.device, dtype=g.dtype)
        part = torch.zeros(triton.cdiv(np_, 16), device=x.device, dtype=cdtype)
        _penalty_kernel[lambda meta: (triton.cdiv(np_, meta["BLOCK_M"]),)](
            g, gbar, net.params, part, np_, widths[0], KIND=int(penalty_kind))
        penalty = part.sum()
        ubars = net.adjoint(hs, gbar, p0, p0 + np_)
    pdtype = net.weights[0].dtype
    dws, dbs = [], []
    for l in range(len(net.weights)):
        dw, db = _weight_grad(net, vs[l], hs[l], c, ubars[l], p0, pdtype, bool(net.biases))
        dws.append(dw)
        dbs.append(db)
    dw_out, _ = _weight_grad(net, None, hs[-1], c, ubars[-1], p0, pdtype, False)
    return dws, dbs, dw_out, sums, penalty


def mlp_disc_step(real, fake, penalty_input, weights, biases, w_out, b_out, negative_slope, term_real, term_fake,
                  paired, penalty_side, penalty_kind, penalty_weight, penalty_center, allow_tf32):
    """The discriminator step; see the ``mlp_disc_step`` schema in csrc/bindings.cpp.

    Returns [stats = (loss, penalty, mean real logit, mean fake logit), dW_1..dW_L,
    db_1..db_L (if biases), dw_out, db_out (if b_out)], gradients of loss + penalty."""
    weights, biases = list(weights), list(biases)
    widths = _check_network(real, weights, biases, w_out, b_out, negative_slope)
    if not isinstance(fake, torch.Tensor) or fake.dim() != 2 or fake.shape[0] == 0:
        raise ValueError("fake must be a non-empty (rows, K) tensor")
    _check("fake", fake, real.dtype, real.device, (fake.shape[0], widths[0]))
    phi_r, t_real = _term_args("term_real", term_real)
    phi_f, t_fake = _term_args("term_fake", term_fake)
    nr, nf = real.shape[0], fake.shape[0]
    if paired and (nr != nf or phi_f != NO_TERM):
        raise ValueError(f"paired needs as many real as fake rows ({nr} vs {nf}) and an empty term_fake")
    if penalty_side not in (-1, 0, 1, 2):
        raise ValueError(f"penalty_side must be -1, 0, 1 or 2, got {penalty_side}")
    if penalty_side != -1 and penalty_kind not in (0, 1):
        raise ValueError(f"penalty_kind must be 0 (squared) or 1 (centered), got {penalty_kind}")
    if penalty_side == 2:
        if penalty_input is None or not isinstance(penalty_input, torch.Tensor) or penalty_input.dim() != 2:
            raise ValueError("penalty_side 2 needs penalty_input of shape (rows, K)")
        _check("penalty_input", penalty_input, real.dtype, real.device, (penalty_input.shape[0], widths[0]))
        if penalty_input.shape[0] == 0:
            raise ValueError("penalty_input must not be empty")

    cdtype = _compute_dtype(real.dtype)
    params = _params(cdtype, real.device, negative_slope, t_real, t_fake, penalty_weight, penalty_center)
    x = torch.cat([real, fake] + ([penalty_input] if penalty_side == 2 else [])).contiguous()
    n = x.shape[0]
    net = _Net(x, [w.contiguous() for w in weights], [b.contiguous() for b in biases], w_out.contiguous(),
               b_out.contiguous() if b_out is not None else None, params, allow_tf32)

    p0, np_ = {-1: (0, 0), 0: (0, nr), 1: (nr, nf), 2: (nr + nf, n - nr - nf)}[penalty_side]
    hb = _fused_shape(widths)
    if hb is not None:
        dws, dbs, dw_out, sums, penalty = _fused_disc_step(net, widths, hb, nr, nf, phi_r, phi_f, bool(paired), p0,
                                                           np_, penalty_side, penalty_kind)
    else:
        dws, dbs, dw_out, sums, penalty = _general_disc_step(net, widths, nr, nf, phi_r, phi_f, bool(paired), p0,
                                                             np_, penalty_side, penalty_kind)
    stats = torch.stack([sums[0], penalty, sums[1] / nr, sums[2] / nf]).to(real.dtype)
    pdtype = weights[0].dtype
    out = [stats] + dws + (dbs if biases else []) + [dw_out]
    if b_out is not None:
        out.append(sums[3].reshape(1).to(pdtype))
    return out


def mlp_gen_step(fake, real, weights, biases, w_out, b_out, negative_slope, term, paired, allow_tf32):
    """The generator step; see the ``mlp_gen_step`` schema in csrc/bindings.cpp.

    loss = sum_j term(f_j) (paired: sum_j term(r_j - f_j)); returns
    [stats = (loss, mean fake logit), d loss / d fake = c * g (fake's shape and dtype)]."""
    weights, biases = list(weights), list(biases)
    widths = _check_network(fake, weights, biases, w_out, b_out, negative_slope)
    phi, t = _term_args("term", term)
    nf = fake.shape[0]
    if paired:
        if real is None:
            raise ValueError("paired needs real (the matching real rows)")
        _check("real", real, fake.dtype, fake.device, (nf, widths[0]))
    cdtype = _compute_dtype(fake.dtype)
    params = _params(cdtype, fake.device, negative_slope, t, t)
    x = torch.cat([real, fake]).contiguous() if paired else fake.contiguous()
    nr = nf if paired else 0
    net = _Net(x, [w.contiguous() for w in weights], [b.contiguous() for b in biases], w_out.contiguous(),
               b_out.contiguous() if b_out is not None else None, params, allow_tf32)
    hs, v_last = net.forward()
    o, c, sums = net.logits(hs[-1], nr, nf, phi, NO_TERM if paired else phi, bool(paired))
    vs = net.v_chain(hs, v_last, nr, nr + nf)
    dfake = net.input_gradient(vs[0], _empty(nf, widths[0], device=fake.device, dtype=fake.dtype),
                               scale=c[nr:])
    stats = torch.stack([sums[0], sums[2] / nf]).to(fake.dtype)
    return [stats, dfake]
