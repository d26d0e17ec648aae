"""The fully fused path of the Triton MLP discriminator step (docs/DESIGN.md section 4): every
width (K included) <= FUSED_MAX_WIDTH = 128 and depth <= FUSED_MAX_DEPTH = 4. Widths are
zero-padded to HB = next power of two (at least 16) and

    _fused_forward_kernel   one program per row tile: all L layers, activations kept in
                            registers between layers, each H_l written once
    logits                  fastgan.kernels.mlp_rows
    _fused_backward_kernel  persistent programs, several row tiles each: v chain, g, dP/dg, the
                            adjoint chain and every weight gradient, summed into the program's
                            own slice of a (programs, L, HB, HB) buffer (zeroed by the kernel)

then one ordered sum over the slices: 3 launches plus a few tiny torch reductions per step (the
maths as in fastgan.kernels.mlp_general). Dropout multipliers (one (N, H_l) tensor per layer)
are read where they apply: the forward (h_l = leaky(z_l) * d_l), the v chain and the adjoint
chain (factor d_l * mask(H_l)), so a masked step reads (N, H_l) more per layer in each. Weight tiles are re-read from L1/L2 per row tile
(Triton gives no explicit shared-memory residency); V_l go through a scratch buffer that stays
in L2 for a tile's lifetime.

Compile budget: the widths are runtime arguments (masks only), so one binary per (depth, HB,
penalty kind, precision) serves every network that pads to the same HB; the tile size, warps
and programs follow from HB and the row count (no autotuning; they await H100 tuning: register
pressure at HB = 128). The fused kernels use 32-bit offsets (overflow past ~4M rows at HB 128,
depth 4).
"""
import triton
import triton.language as tl

from fastgan.kernels import mlp_rows
from fastgan.kernels.mlp_rows import leaky_mask
from fastgan.kernels.mlp_tuning import INTERPRET, device_limits, runtime_on_gpu

FUSED_MAX_WIDTH = 128  # widest layer (K included) the fully fused path takes
FUSED_MAX_DEPTH = 4


def padded_width(widths):
    """HB (the padded width) if the fully fused path serves widths [K, H_1, .., H_L], else None."""
    if len(widths) - 1 > FUSED_MAX_DEPTH or max(widths) > FUSED_MAX_WIDTH:
        return None
    return max(16, triton.next_power_of_2(max(widths)))


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
def _drop(m_ptr, rm, m_ok, rc, n):
    """Dropout multipliers of rows rm from a contiguous (N, n) mask, zero-padded to the tile's
    columns."""
    return tl.load(m_ptr + rm[:, None] * n + rc[None, :], mask=m_ok[:, None] & (rc[None, :] < n), other=0.0)


@triton.jit
def _dot(a, b, params_ptr, wdt_ptr, LOWP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """a @ b accumulated in the compute dtype (fp32 from bf16/fp16 operands when LOWP)."""
    if LOWP:
        return tl.dot(a.to(wdt_ptr.dtype.element_ty), b.to(wdt_ptr.dtype.element_ty), out_dtype=tl.float32)
    acc_ty = params_ptr.dtype.element_ty
    return tl.dot(a.to(acc_ty), b.to(acc_ty), input_precision=DOT_PRECISION, out_dtype=acc_ty)


@triton.jit(do_not_specialize=["N"])
def _fused_forward_kernel(
    x_ptr,                    # (N, D0) stacked rows, row stride stride_x
    w1, w2, w3, w4,           # W_l (D_l, D_{l-1}) contiguous (unused ones repeat w1)
    b1, b2, b3, b4,           # b_l (D_l,) (HAS_BIAS)
    m1, m2, m3, m4,           # dropout multipliers of H_l, (N, D_l) contiguous (DROPOUT)
    h_ptr,                    # (L, N, HB) out: H_l zero-padded to HB columns
    params_ptr,               # (9,) scalars, params[0] = alpha
    N, stride_x,
    D0, D1, D2, D3, D4,       # widths K, H_1, .., H_4 (1 past the last layer): masks only
    L: tl.constexpr, HB: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, LOWP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """All layers of one row tile: H_l = leaky(H_{l-1} W_l^T + b_l) [* d_l], l = 1..L, kept on
    chip between layers and written once each (the backward kernel reads them back)."""
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
        if DROPOUT:
            a = a * _drop(_pick(l, m1, m2, m3, m4), rm, m_ok, rc, n_out)
        tl.store(h_ptr + l * N * HB + rm[:, None] * HB + rc[None, :], a, mask=m_ok[:, None])


@triton.jit(do_not_specialize=["N", "P0", "NP"])
@runtime_on_gpu("TILES")
def _fused_backward_kernel(
    x_ptr,                    # (N, D0) stacked rows, row stride stride_x
    h_ptr,                    # (L, N, HB) H_1..H_L from _fused_forward_kernel
    v_ptr,                    # (L, N, HB) scratch for V_1..V_L
    c_ptr,                    # (N,) loss derivatives
    w1, w2, w3, w4,           # W_l as in the forward kernel
    m1, m2, m3, m4,           # dropout multipliers as in the forward kernel (DROPOUT)
    wout_ptr,                 # (D_L,) w_out
    params_ptr,               # (9,) scalars: alpha, .., params[7] = weight, params[8] = center
    dw_ptr,                   # (P, L, HB, HB) out: per-program sums of V_l^T (c H_{l-1} + Ubar_{l-1})
    db_ptr,                   # (P, L, HB) out: per-program sums of c V_l
    dwo_ptr,                  # (P, HB) out: per-program sums of c H_L + Ubar_L
    pen_ptr,                  # (P,) out: per-program penalty sums
    N, stride_x, P0, NP,      # penalty rows are [P0, P0 + NP)
    D0, D1, D2, D3, D4,       # widths as in the forward kernel
    L: tl.constexpr, HB: tl.constexpr, HAS_PEN: tl.constexpr, PEN_INPUT: tl.constexpr, KIND: tl.constexpr,
    DROPOUT: tl.constexpr, LOWP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    TILES: tl.constexpr,             # row tiles per program
):
    """Everything after the logits for TILES row tiles (tile pid + t * P): the v chain
    V_L = mask(H_L) w_out, V_{l-1} = (V_l W_l) mask(H_{l-1}); on penalty rows g = V_1 W_1,
    Ubar_0 = dP/dg, Ubar_l = (Ubar_{l-1} W_l^T) mask(H_l); and the weight gradients, summed
    into this program's slices (zeroed here first, so no host memset and no atomics). With
    DROPOUT every mask(H_l) is d_l * mask(H_l) (the multipliers loaded again in each chain)."""
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
        v = wout[None, :]
        if DROPOUT:
            v = v * _drop(_pick(L - 1, m1, m2, m3, m4), rm, m_ok, rc, _pick(L - 1, D1, D2, D3, D4))
        v = leaky_mask(tl.load(h_ptr + (L - 1) * N * HB + rows, mask=m_ok[:, None], other=0.0), alpha) * v
        tl.store(v_ptr + (L - 1) * N * HB + rows, v, mask=m_ok[:, None])
        for l in tl.static_range(L - 1, 0, -1):  # W_{l+1} in 1-based terms
            w = _load_weight(_pick(l, w1, w2, w3, w4), _pick(l, D1, D2, D3, D4), _pick(l, D0, D1, D2, D3), HB, False)
            hp = tl.load(h_ptr + (l - 1) * N * HB + rows, mask=m_ok[:, None], other=0.0)
            v = _dot(v, w, params_ptr, w1, LOWP, DOT_PRECISION)
            if DROPOUT:
                v = v * _drop(_pick(l - 1, m1, m2, m3, m4), rm, m_ok, rc, _pick(l - 1, D1, D2, D3, D4))
            v = v * leaky_mask(hp, alpha)
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
                k = tl.where(nrm == 0, 0.0, 2.0 * weight * d / tl.where(nrm == 0, 1.0, nrm))  # NaN stays NaN
            pen += tl.where(on, p, 0.0)
            ub = g * tl.where(on, k, 0.0)[:, None]
        tl.debug_barrier()
        # adjoint chain bottom up, with the weight gradients of each layer
        a = tl.load(x_ptr + rm[:, None] * stride_x + rc[None, :], mask=m_ok[:, None] & (rc[None, :] < D0),
                    other=0.0).to(acc_ty)
        for l in tl.static_range(L):
            vl = tl.load(v_ptr + l * N * HB + rows, mask=m_ok[:, None], other=0.0)
            b = c[:, None] * a
            if HAS_PEN:  # plus autograd's 0 * h on penalised rows (NaN where h is infinite, as there)
                b += ub + tl.where(on[:, None], a * 0.0, 0.0)
            dwp = dw_ptr + (pid * L + l) * HB * HB + sq
            tl.store(dwp, tl.load(dwp) + _dot(tl.trans(vl), b, params_ptr, w1, LOWP, DOT_PRECISION))
            dbp = db_ptr + (pid * L + l) * HB + rc
            tl.store(dbp, tl.load(dbp) + tl.sum(vl * c[:, None], axis=0))
            a = tl.load(h_ptr + l * N * HB + rows, mask=m_ok[:, None], other=0.0)
            if HAS_PEN:
                wt = _load_weight(_pick(l, w1, w2, w3, w4), _pick(l, D1, D2, D3, D4), _pick(l, D0, D1, D2, D3),
                                  HB, True)
                ub = _dot(ub, wt, params_ptr, w1, LOWP, DOT_PRECISION)
                if DROPOUT:
                    ub = ub * _drop(_pick(l, m1, m2, m3, m4), rm, m_ok, rc, _pick(l, D1, D2, D3, D4))
                ub = ub * leaky_mask(a, alpha)
        b = c[:, None] * a
        if HAS_PEN:
            if PEN_INPUT:  # penalty-input rows have no loss term: their h_L is never multiplied
                b = tl.where(on[:, None], 0.0, b)
            b += ub
        dwo += tl.sum(b, axis=0)
        tl.debug_barrier()
    tl.store(dwo_ptr + pid * HB + rc, dwo)
    tl.store(pen_ptr + pid, tl.sum(pen, axis=0))


def disc_step(ops, widths, hb, nr, nf, phi_r, phi_f, paired, p0, np_, penalty_side, penalty_kind):
    """The fully fused step: forward kernel, logit/loss kernel, backward kernel, then one sum over
    the per-program gradient slices. ``ops``: the step's operands (fastgan.kernels.mlp_step).
    Returns (dW list, db list, dw_out, sums of [loss, real logits, fake logits, c], penalty)."""
    x, n, L = ops.x, ops.x.shape[0], len(ops.weights)
    block_m = 32 if (INTERPRET or hb > 64) else 64  # awaits H100 tuning (register pressure at HB = 128)
    warps = 4 if INTERPRET else (8 if hb > 64 else 4)
    dims = widths + [1] * (5 - len(widths))
    ws = ops.weights + [ops.weights[0]] * (4 - L)
    bs = (ops.biases + [ops.biases[0]] * (4 - L)) if ops.biases else [ops.params] * 4
    ms = (ops.drops + [ops.drops[0]] * (4 - L)) if ops.drops else [ops.params] * 4
    h = ops.empty(L, n, hb)
    tiles = triton.cdiv(n, block_m)
    _fused_forward_kernel[(tiles,)](
        x, *ws, *bs, *ms, h, ops.params, n, x.stride(0), *dims, L=L, HB=hb, HAS_BIAS=bool(ops.biases),
        DROPOUT=ops.drops is not None, LOWP=ops.lowp, DOT_PRECISION=ops.precision, BLOCK_M=block_m, num_warps=warps)
    c, sums = mlp_rows.logits(ops, h[L - 1], nr, nf, phi_r, phi_f, paired, width=widths[-1])
    # persistent programs: about one per SM, each a power-of-two number of row tiles
    sms = 2 if INTERPRET else device_limits(x)[0]
    per_prog = triton.next_power_of_2(triton.cdiv(tiles, sms))
    progs = triton.cdiv(tiles, per_prog)
    v = ops.empty(L, n, hb)
    dw = ops.empty(progs, L, hb, hb)
    db = ops.empty(progs, L, hb)
    dwo = ops.empty(progs, hb)
    pen = ops.empty(progs)
    has_pen = penalty_side != -1
    _fused_backward_kernel[(progs,)](
        x, h, v, c, *ws, *ms, ops.w_out, ops.params, dw, db, dwo, pen, n, x.stride(0), p0, np_, *dims, L=L, HB=hb,
        HAS_PEN=has_pen, PEN_INPUT=penalty_side == 2, KIND=int(penalty_kind) if has_pen else 0,
        DROPOUT=ops.drops is not None, LOWP=ops.lowp, DOT_PRECISION=ops.precision,
        BLOCK_M=block_m, TILES=per_prog, num_warps=warps)
    dw, db = dw.sum(0), db.sum(0)
    pdtype = ops.weights[0].dtype
    dws = [dw[l, :widths[l + 1], :widths[l]].to(pdtype) for l in range(L)]
    dbs = [db[l, :widths[l + 1]].to(pdtype) for l in range(L)]
    penalty = pen.sum() if has_pen else x.new_zeros((), dtype=ops.cdtype)
    return dws, dbs, dwo.sum(0)[:widths[-1]].reshape(1, -1).to(pdtype), sums, penalty
