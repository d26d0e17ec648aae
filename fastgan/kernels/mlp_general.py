"""The general (any width) path of the Triton MLP step: products with fused epilogues
(docs/DESIGN.md section 4). Notation: rows x (N, K), layers l = 1..L with W_l (H_l, H_{l-1}),
alpha = negative_slope, mask(h) = 1 if h > 0 else alpha (the sign of h_l = leaky(z_l) is the
sign of z_l for alpha >= 0, so masks are never stored). One launch per product:

    forward    H_l = leaky(H_{l-1} W_l^T + b_l); the last layer also stores V_L = mask(H_L) * w_out
    logits     c = d loss / d o (fastgan.kernels.mlp_rows)
    v chain    V_{l-1} = (V_l W_l) * mask(H_{l-1})          (v_l = u_l * m_l; delta_l = c * v_l)
    penalty    G = V_1 W_1 on the penalty rows (g = do/dx), then Gbar = dP/dg (mlp_rows)
    adjoint    Ubar_0 = Gbar, Ubar_l = (Ubar_{l-1} W_l^T) * mask(H_l)   (penalty rows only)
    gradients  dW_l = sum_rows V_l^T (c * H_{l-1} + Ubar_{l-1}),  db_l = sum_rows c * V_l,
               dw_out = sum_rows (c * H_L + Ubar_L),  db_out = sum_rows c
               (the operand c * H + Ubar is formed while loading; split over row ranges and
               summed in a fixed order: deterministic, no atomics)

Dropout (``ops.drops``: one (N, H_l) multiplier tensor per hidden layer, stacked like the rows):
H_l = leaky(...) * D_l, and every mask(H_l) above becomes D_l * mask(H_l), in the same epilogues
(one more (rows, H_l) load in each).

3L + 4 launches (+ 2L + 2 with a penalty) plus tiny torch reductions. The generator step
(forward, logits, v chain on the fake rows, c * g) always takes this path.

Both product kernels are autotuned over at most ``mlp_tuning.KEEP`` configs per tuning key; the
key holds power-of-two buckets of the sizes (``TUNE_KEY``, an otherwise unused argument) and
the epilogue, and the timings are cached on disk.
"""
import triton
import triton.language as tl

from fastgan.kernels import mlp_rows
from fastgan.kernels.mlp_rows import leaky_mask
from fastgan.kernels.mlp_tuning import INTERPRET, autotune_tiles, bucket, runtime_on_gpu

# Epilogues of the product kernel.
EPI_FORWARD = 0  # y = leaky(acc + b) [* d]; optionally v = mask(y) * w_out [* d]
EPI_MASK = 1     # y = acc [* d] * mask(aux)
EPI_PLAIN = 2    # y = acc (optionally * scale[row])


def tune_key(*sizes) -> int:
    """One int holding the power-of-two buckets of ``sizes`` (an autotuning key)."""
    key = 0
    for s in sizes:
        key = key * 64 + bucket(s).bit_length()
    return key


_MM_BLOCKS = [
    ({"BLOCK_M": 128, "BLOCK_J": 128, "BLOCK_R": 32}, 8, 3),
    ({"BLOCK_M": 128, "BLOCK_J": 64, "BLOCK_R": 32}, 4, 4),
    ({"BLOCK_M": 64, "BLOCK_J": 64, "BLOCK_R": 32}, 4, 3),
    ({"BLOCK_M": 32, "BLOCK_J": 64, "BLOCK_R": 32}, 4, 3),
]


@autotune_tiles(_MM_BLOCKS, {"BLOCK_M": 32, "BLOCK_J": 32, "BLOCK_R": 32}, key=["TUNE_KEY", "EPI"],
                rows="BLOCK_M", cols="BLOCK_J", tensor="a_ptr", extent=lambda a: (a["M"], a["J"], 1))
@triton.jit(do_not_specialize=["M", "TUNE_KEY"])
@runtime_on_gpu("R")
def _mm_kernel(
    a_ptr,        # (M, R) left operand, row stride stride_am, unit column stride
    b_ptr,        # right operand B[r, j] at b_ptr + r * stride_br + j * stride_bj (a weight matrix)
    y_ptr,        # (M, J) output, row stride stride_ym
    bias_ptr,     # (J,) bias (EPI_FORWARD and HAS_BIAS)
    aux_ptr,      # (M, J) activations whose mask multiplies the result (EPI_MASK), row stride stride_xm
    v_ptr,        # (M, J) V_L = mask(y) * w_out (EPI_FORWARD and LAST), row stride stride_ym
    wout_ptr,     # (J,) w_out (LAST)
    scale_ptr,    # (M,) per-row factor (EPI_PLAIN and ROW_SCALE)
    drop_ptr,     # (M, J) dropout multipliers (EPI_FORWARD / EPI_MASK and DROP), row stride stride_dm
    params_ptr,   # (9,) scalars in the compute dtype, params[0] = alpha
    M, J, R: tl.constexpr,  # rows, output columns, reduction length
    stride_am, stride_br, stride_bj, stride_ym, stride_xm, stride_dm,
    TUNE_KEY,     # tune_key(M, J, R): the autotuning key (unused in the body)
    EPI: tl.constexpr, HAS_BIAS: tl.constexpr, LAST: tl.constexpr, ROW_SCALE: tl.constexpr, DROP: tl.constexpr,
    LOWP: tl.constexpr,             # bf16/fp16 parameters: products in their dtype, fp32 accumulation
    DOT_PRECISION: tl.constexpr,    # "ieee", "tf32x3" or "tf32"
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """acc = A @ B over a (BLOCK_M, BLOCK_J) tile, then one of:
    EPI_FORWARD: z = acc + bias; y = where(z > 0, z, alpha z) [* d]  [LAST: v = mask(y) * w_out [* d]]
    EPI_MASK:    y = acc [* d] * where(aux > 0, 1, alpha)
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
    if DROP:
        d = tl.load(drop_ptr + rm[:, None] * stride_dm + rj[None, :], mask=tile, other=0.0).to(acc_ty)
    if EPI == 0:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rj, mask=j_ok, other=0.0).to(acc_ty)[None, :]
        y = tl.where(acc > 0, acc, alpha * acc)
        if DROP:
            y = y * d
        if LAST:
            w = tl.load(wout_ptr + rj, mask=j_ok, other=0.0).to(acc_ty)[None, :]
            if DROP:
                w = w * d
            tl.store(v_ptr + rm[:, None] * stride_ym + rj[None, :], leaky_mask(y, alpha) * w, mask=tile)
    elif EPI == 1:
        h = tl.load(aux_ptr + rm[:, None] * stride_xm + rj[None, :], mask=tile, other=0.0)
        y = acc
        if DROP:
            y = y * d
        y = y * leaky_mask(h, alpha)
    else:
        y = acc
        if ROW_SCALE:
            y = y * tl.load(scale_ptr + rm, mask=m_ok, other=0.0)[:, None]
    tl.store(y_ptr + rm[:, None] * stride_ym + rj[None, :], y.to(y_ptr.dtype.element_ty), mask=tile)


_WG_BLOCKS = [
    ({"BLOCK_I": 128, "BLOCK_J": 128, "BLOCK_R": 32}, 8, 3),
    ({"BLOCK_I": 64, "BLOCK_J": 128, "BLOCK_R": 32}, 4, 3),
    ({"BLOCK_I": 64, "BLOCK_J": 64, "BLOCK_R": 64}, 4, 3),
    ({"BLOCK_I": 32, "BLOCK_J": 64, "BLOCK_R": 64}, 4, 3),
]


@autotune_tiles(_WG_BLOCKS, {"BLOCK_I": 32, "BLOCK_J": 32, "BLOCK_R": 32}, key=["TUNE_KEY", "V_ONES"],
                rows="BLOCK_I", cols="BLOCK_J", tensor="h_ptr",
                extent=lambda a: (a["I"], a["J"], triton.cdiv(a["N"], a["rows_per_split"])))
@triton.jit(do_not_specialize=["N", "P0", "NP", "TUNE_KEY"])
@runtime_on_gpu("rows_per_split")
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
    TUNE_KEY,     # tune_key(N, I, J): the autotuning key (unused in the body)
    V_ONES: tl.constexpr, HAS_UBAR: tl.constexpr, HAS_DB: tl.constexpr, PEN_INPUT: tl.constexpr,
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
        hv = tl.load(h_ptr + r[:, None] * stride_h + rj[None, :], mask=tile, other=0.0).to(acc_ty)
        b = c[:, None] * hv
        if HAS_UBAR:
            pr = r - P0
            p_ok = r_ok & (pr >= 0) & (pr < NP)
            if V_ONES:
                if PEN_INPUT:  # penalty-input rows have no loss term: their h_L is never multiplied
                    b = tl.where(p_ok[:, None], 0.0, b)
            else:  # autograd's 0 * h on penalised rows (NaN where h is infinite, as there)
                b += tl.where(p_ok[:, None], hv * 0.0, 0.0)
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
# launchers over the step's operands ``ops`` (fastgan.kernels.mlp_step.Operands)
# ---------------------------------------------------------------------------------------------

def product(ops, a, w, transpose, y, epi, *, bias=None, aux=None, v=None, scale=None, drop=None):
    """y = epilogue(a @ (w^T if transpose else w)) over a's rows (``drop``: the rows' dropout
    multipliers, y's shape)."""
    m, r = a.shape
    j = y.shape[1]
    sbr, sbj = (w.stride(1), w.stride(0)) if transpose else (w.stride(0), w.stride(1))
    dummy = ops.params
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(j, meta["BLOCK_J"]))  # noqa: E731
    _mm_kernel[grid](
        a, w, y, bias if bias is not None else dummy, aux if aux is not None else dummy,
        v if v is not None else dummy, ops.w_out, scale if scale is not None else dummy,
        drop if drop is not None else dummy, ops.params,
        m, j, r, a.stride(0), sbr, sbj, y.stride(0), aux.stride(0) if aux is not None else 0,
        drop.stride(0) if drop is not None else 0, tune_key(m, j, r),
        EPI=epi, HAS_BIAS=bias is not None, LAST=v is not None, ROW_SCALE=scale is not None, DROP=drop is not None,
        LOWP=ops.lowp, DOT_PRECISION=ops.precision)


def _drop(ops, layer, lo=None, hi=None):
    """The dropout multipliers of H_{layer + 1} on rows [lo, hi) (all rows by default), or None."""
    return None if ops.drops is None else ops.drops[layer][lo:hi]


def forward(ops):
    """hs = [X, H_1, .., H_L] and V_L = mask(H_L) * w_out over all stacked rows."""
    hs = [ops.x]
    n = ops.x.shape[0]
    v_last = None
    for l, w in enumerate(ops.weights):
        h = ops.empty(n, w.shape[0])
        last = l == len(ops.weights) - 1
        if last:
            v_last = ops.empty(n, w.shape[0])
        product(ops, hs[-1], w, True, h, EPI_FORWARD, bias=ops.biases[l] if ops.biases else None,
                v=v_last if last else None, drop=_drop(ops, l))
        hs.append(h)
    return hs, v_last


def v_chain(ops, hs, v_last, lo, hi):
    """[V_1, .., V_L] on rows [lo, hi): V_{l-1} = (V_l W_l) * mask(H_{l-1})."""
    vs = [v_last[lo:hi]]
    for l in range(len(ops.weights) - 1, 0, -1):
        v = ops.empty(hi - lo, ops.weights[l].shape[1])
        product(ops, vs[0], ops.weights[l], False, v, EPI_MASK, aux=hs[l][lo:hi], drop=_drop(ops, l - 1, lo, hi))
        vs.insert(0, v)
    return vs


def input_gradient(ops, v1, out, scale=None):
    """out = (V_1 W_1) [* scale per row]: g = do/dx (or c * g)."""
    product(ops, v1, ops.weights[0], False, out, EPI_PLAIN, scale=scale)
    return out


def adjoint(ops, hs, gbar, lo, hi):
    """[Ubar_0 = Gbar, .., Ubar_L] on rows [lo, hi): Ubar_l = (Ubar_{l-1} W_l^T) * mask(H_l)."""
    ubars = [gbar]
    for l, w in enumerate(ops.weights):
        u = ops.empty(hi - lo, w.shape[0])
        product(ops, ubars[-1], w, True, u, EPI_MASK, aux=hs[l + 1][lo:hi], drop=_drop(ops, l, lo, hi))
        ubars.append(u)
    return ubars


def _split_rows(n):
    """Rows per program of the weight-gradient reduction: a power of two (few tuning keys); the
    row ranges are summed in order afterwards."""
    if INTERPRET:
        return max(16, triton.next_power_of_2(triton.cdiv(n, 3)))
    return max(1024, triton.next_power_of_2(triton.cdiv(n, 64)))  # <= 64 ranges; awaits H100 tuning


def weight_grad(ops, v, h, c, ubar, p0, want_db, pen_input=False):
    """(dW, db or None) = (sum V^T (c H + Ubar), sum c V); v None means the output layer (V = 1)."""
    n, j = h.shape
    i = 1 if v is None else v.shape[1]
    rows_per_split = _split_rows(n)
    s = triton.cdiv(n, rows_per_split)
    dw = ops.empty(s, i, j)
    db = ops.empty(s, i) if want_db else None
    grid = lambda meta: (triton.cdiv(i, meta["BLOCK_I"]), triton.cdiv(j, meta["BLOCK_J"]), s)  # noqa: E731
    _wgrad_kernel[grid](
        v if v is not None else h, h, c, ubar if ubar is not None else h, dw, db if want_db else dw, ops.params,
        ops.w_out, n, i, j, p0, ubar.shape[0] if ubar is not None else 0, rows_per_split,
        v.stride(0) if v is not None else 0, h.stride(0), ubar.stride(0) if ubar is not None else 0,
        tune_key(n, i, j), V_ONES=v is None, HAS_UBAR=ubar is not None, HAS_DB=want_db, PEN_INPUT=pen_input, LOWP=ops.lowp,
        DOT_PRECISION=ops.precision)
    pdtype = ops.weights[0].dtype
    return dw.sum(0).to(pdtype), (db.sum(0).to(pdtype) if want_db else None)


def disc_step(ops, widths, nr, nf, phi_r, phi_f, paired, p0, np_, penalty_side, penalty_kind):
    """The general discriminator step (see the module docstring). Returns (dW list, db list,
    dw_out, sums of [loss, real logits, fake logits, c], penalty)."""
    x, n = ops.x, ops.x.shape[0]
    hs, v_last = forward(ops)
    c, sums = mlp_rows.logits(ops, hs[-1], nr, nf, phi_r, phi_f, paired)
    vs = v_chain(ops, hs, v_last, 0, n)
    penalty = x.new_zeros((), dtype=ops.cdtype)
    ubars = [None] * (len(ops.weights) + 1)
    if penalty_side != -1:
        g = input_gradient(ops, vs[0][p0:p0 + np_], ops.empty(np_, widths[0]))
        gbar, penalty = mlp_rows.penalty(ops, g, penalty_kind)
        ubars = adjoint(ops, hs, gbar, p0, p0 + np_)
    dws, dbs = [], []
    for l in range(len(ops.weights)):
        dw, db = weight_grad(ops, vs[l], hs[l], c, ubars[l], p0, bool(ops.biases))
        dws.append(dw)
        dbs.append(db)
    dw_out, _ = weight_grad(ops, None, hs[-1], c, ubars[-1], p0, False, pen_input=penalty_side == 2)
    return dws, dbs, dw_out, sums, penalty


def gen_step(ops, widths, nr, nf, phi, paired):
    """The generator step on stacked rows [real (paired only), fake]: (sums of [loss, real
    logits, fake logits, c], d loss / d fake = c * g in fake's dtype)."""
    hs, v_last = forward(ops)
    c, sums = mlp_rows.logits(ops, hs[-1], nr, nf, phi, mlp_rows.NO_TERM if paired else phi, paired)
    vs = v_chain(ops, hs, v_last, nr, nr + nf)
    dfake = input_gradient(ops, vs[0], ops.empty(nf, widths[0], dtype=ops.x.dtype), scale=c[nr:])
    return sums, dfake
