"""The fused MLP step in closed form, in plain torch operations: the ``torch`` backend.

Same contract and signature as ``torch.ops.fastgan.mlp_disc_step`` / ``mlp_gen_step`` (see
:mod:`fastgan.ops.mlp_step`, which registers these functions as ``torch.ops.fastgan.mlp_disc_step_torch`` /
``mlp_gen_step_torch``); works on any device and is the fallback.
The maths is docs/DESIGN.md section 4. With rows already packed, layers
``z_l = h_{l-1} W_l^T + b_l``, ``h_l = leaky_relu(z_l)``, mask ``m_l = 1 if z_l > 0 else alpha``
(read off ``h_l > 0``, so no mask is stored), logit ``o = h_L w^T + c`` and per-row loss
derivative ``c_i = d loss / d o_i``:

- input gradient of a penalised row: ``v_L = w * m_L``, ``v_{l-1} = (v_l W_l) * m_{l-1}``,
  ``g = v_1 W_1``; the loss backward ``delta_l = c * v_l`` is the same linear chain, so ONE
  chain over all stacked rows serves both (seeded with 1 on penalised rows, ``c`` elsewhere);
- penalty adjoint ``ubar_0 = dP/dg``, ``ubar_l = (ubar_{l-1} W_l^T) * m_l`` (penalised rows);
- ``dW_l = X_l^T B_l`` in ONE product over all stacked rows, where ``X_l`` is that chain and
  ``B_l = h_{l-1}`` on unpenalised rows, ``c * h_{l-1} + ubar_{l-1}`` on penalised ones;
  ``db_l = sum_i c_i v_l,i``, ``dw = sum_i c_i h_L,i + sum ubar_L``, ``dc = sum_i c_i``.

Dropout (``masks_*``: one multiplier tensor per hidden layer, 0 or 1/(1-p)): ``h_l =
leaky_relu(z_l) * d_l`` and every activation-derivative factor becomes ``m_l * d_l`` (the chain,
the adjoint and so the products above); the masks are constants, so nothing else changes.

Real, fake and penalty-input rows are stacked into one matrix so each layer costs one
product per pass. ``allow_tf32`` and ``tensor_cores`` are accepted for the common signature; plain
torch products follow ``torch.backends.cuda.matmul.allow_tf32`` (which the caller derived
``allow_tf32`` from). One path: ``path`` must be "auto".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastgan.terms import PenaltyKind, Phi, Term, penalty_row_gradient, penalty_rows, term_derivative, term_value


def _term(spec) -> Term | None:
    """``[phi, sign, shift, scale]`` (or an empty list: no term) as a :class:`Term`."""
    if len(spec) == 0:
        return None
    return Term(Phi(int(spec[0])), float(spec[1]), float(spec[2]), float(spec[3]))


def _masked(x: torch.Tensor, h: torch.Tensor, alpha: float) -> torch.Tensor:
    """``x * m`` with ``m = 1 if h > 0 else alpha``: one pass, F.leaky_relu's own backward
    (``h = leaky_relu(z)`` is positive exactly where ``z`` is, as alpha >= 0)."""
    return torch.ops.aten.leaky_relu_backward(x, h, alpha, True)


def _check_path(path: str) -> None:
    if path != "auto":
        raise ValueError(f"path must be 'auto' (the torch backend has one path), got {path!r}")


def _dropped(x: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    return x if drop is None else x * drop


def stacked_masks(parts, names, rows, widths, like: torch.Tensor):
    """Per-layer masks over the stacked rows (``parts``: one mask list per block of rows, each
    empty or one (rows, width_l) tensor per hidden layer), or ``[None] * layers`` without dropout.
    Raises ValueError naming the list (``names``) whose count, shape, dtype or device is wrong.
    The triton backend stacks its masks with it too."""
    if not any(len(m) for m in parts):
        return [None] * len(widths)
    for name, m, n in zip(names, parts, rows):
        if len(m) != len(widths):
            raise ValueError(f"{name} must hold one mask per hidden layer ({len(widths)}), got {len(m)}")
        for i, t in enumerate(m):
            if tuple(t.shape) != (n, widths[i]) or t.dtype != like.dtype or t.device != like.device:
                raise ValueError(f"{name}[{i}] must be a ({n}, {widths[i]}) {like.dtype} tensor on {like.device}, "
                                 f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    return [torch.cat([m[i] for m in parts]) if len(parts) > 1 else parts[0][i] for i in range(len(widths))]


def _forward(x, weights, biases, w_out, b_out, alpha, drops):
    """Activations ``[h_0 = x, h_1, ..., h_L]`` (dropped out) and the logits (rows,)."""
    hs = [x]
    for i, w in enumerate(weights):
        z = torch.addmm(biases[i], hs[-1], w.t()) if len(biases) else hs[-1] @ w.t()
        h = F.leaky_relu(z, alpha, inplace=True)
        hs.append(h if drops[i] is None else h.mul_(drops[i]))
    o = hs[-1] @ w_out[0]
    return hs, (o + b_out if b_out is not None else o)


def _down_chain(seed, hs, weights, w_out, alpha, drops):
    """``X_L = seed * w * m_L``, ``X_{l-1} = (X_l W_l) * m_{l-1}`` (``m`` times the dropout
    multiplier); returns ``[X_1..X_L]``."""
    xs = [_masked(_dropped(seed[:, None] * w_out, drops[-1]), hs[-1], alpha)]
    for layer in range(len(weights) - 1, 0, -1):  # W_L .. W_2
        xs.append(_masked(_dropped(xs[-1] @ weights[layer], drops[layer - 1]), hs[layer], alpha))
    return xs[::-1]


def _loss_and_slopes(o_real, o_fake, t_real, t_fake, paired):
    """The summed loss and the per-row derivatives ``c`` for the real and fake logits."""
    if paired:
        d = o_real - o_fake
        c_real = term_derivative(d, t_real)
        return term_value(d, t_real).sum(), c_real, -c_real
    zero = o_real.new_zeros(())
    loss, slopes = zero, []
    for o, t in ((o_real, t_real), (o_fake, t_fake)):
        if t is None:
            slopes.append(torch.zeros_like(o))
        else:
            loss = loss + term_value(o, t).sum()
            slopes.append(term_derivative(o, t))
    return loss, slopes[0], slopes[1]


def mlp_disc_step(real, fake, penalty_input, weights, biases, w_out, b_out, negative_slope,
                  term_real, term_fake, paired, penalty_side, penalty_kind, penalty_weight,
                  penalty_center, allow_tf32, masks_real=(), masks_fake=(), masks_penalty=(), path="auto",
                  tensor_cores=False):
    """The fused discriminator step (contract in :mod:`fastgan.ops.mlp_step`).

    Returns ``[stats, dW_1..dW_L, db_1..db_L (if biases), dw_out, db_out (if b_out)]`` with
    ``stats = (loss, penalty, mean real logit, mean fake logit)``; the d* are gradients of
    ``loss + penalty``, where ``loss = sum_i term_real(r_i) + sum_j term_fake(f_j)`` (or
    ``sum_i term_real(r_i - f_i)`` when ``paired``) and the penalty is
    ``sum_rows penalty_weight * |g|^2 / 2`` (kind 0) or ``* (|g| - center)^2`` (kind 1) of the
    input gradients ``g`` of the rows picked by ``penalty_side`` (-1 none, 0 real, 1 fake,
    2 ``penalty_input``). ``masks_real`` / ``masks_fake`` / ``masks_penalty``: dropout
    multipliers per hidden layer for each block of rows (all empty: no dropout).
    """
    _check_path(path)
    alpha = float(negative_slope)
    nr, nf = real.shape[0], fake.shape[0]
    side = int(penalty_side)
    rows = [real, fake] + ([penalty_input] if side == 2 else [])
    x = torch.cat(rows)
    parts = [masks_real, masks_fake] + ([masks_penalty] if side == 2 else [])
    if len(masks_penalty) and side != 2:
        raise ValueError("masks_penalty is given but penalty_side is not 2 (penalty_input)")
    drops = stacked_masks(parts, ("masks_real", "masks_fake", "masks_penalty"), [r.shape[0] for r in rows],
                           [w.shape[0] for w in weights], x)
    hs, o = _forward(x, weights, biases, w_out, b_out, alpha, drops)
    o_real, o_fake = o[:nr], o[nr:nr + nf]
    loss, c_real, c_fake = _loss_and_slopes(o_real, o_fake, _term(term_real), _term(term_fake), paired)
    parts = [c_real, c_fake] + ([o.new_zeros(penalty_input.shape[0])] if side == 2 else [])
    c = torch.cat(parts)  # d loss / d o per stacked row (0 on penalty-input rows)

    if side < 0:
        xs = _down_chain(c, hs, weights, w_out, alpha, drops)  # X_l = delta_l
        penalty = o.new_zeros(())
        dws = [xl.t() @ h for xl, h in zip(xs, hs[:-1])]
        dbs = [xl.sum(0) for xl in xs] if len(biases) else []
        dw_out = (c[:, None] * hs[-1]).sum(0)  # cascade sums, as autograd's reductions
    else:
        start = (0, nr, nr + nf)[side]
        pen = slice(start, x.shape[0] if side == 2 else start + (nr, nf)[side])
        on_pen = torch.zeros_like(c)
        on_pen[pen] = 1
        seed = torch.where(on_pen > 0, on_pen, c)  # 1: X_l = v_l on penalised rows, else delta_l
        xs = _down_chain(seed, hs, weights, w_out, alpha, drops)
        g = xs[0][pen] @ weights[0]
        kind = PenaltyKind(int(penalty_kind))
        penalty = penalty_rows(g, kind, float(penalty_weight), float(penalty_center)).sum()
        ubar = penalty_row_gradient(g, kind, float(penalty_weight), float(penalty_center))
        c_pen = c[pen][:, None]
        dws = []
        for layer, w in enumerate(weights):
            b = hs[layer]  # owned (cat / in-place activation) and not read again: reuse it
            bp = b[pen]
            # c * h + ubar on penalised rows, plus autograd's 0 * h (the zero double backward of
            # the LeakyReLU masks): NaN where h is infinite, as in the reference
            b[pen] = torch.addcmul(ubar, bp, c_pen).add_(bp.mul(0))
            dws.append(xs[layer].t() @ b)
            d = drops[layer]
            ubar = _masked(_dropped(ubar @ w.t(), None if d is None else d[pen]), hs[layer + 1][pen], alpha)
        if side == 2:  # no loss term on penalty-input rows: the reference never multiplies their h_L
            hs[-1][pen] = 0  # (c = 0 there, and 0 * an infinite h_L would be NaN)
        t = torch.where(on_pen > 0, c, on_pen.new_ones(()))  # delta_l = t * X_l
        dbs = [(t[:, None] * xl).sum(0) for xl in xs] if len(biases) else []  # a cascade sum, as autograd's
        dw_out = (c[:, None] * hs[-1]).sum(0) + ubar.sum(0)

    grads = dws + dbs + [dw_out.reshape(w_out.shape)]
    if b_out is not None:
        grads.append(c.sum().reshape(b_out.shape))
    stats = torch.stack([loss, penalty, o_real.mean(), o_fake.mean()])
    return [stats] + grads


def mlp_gen_step(fake, real, weights, biases, w_out, b_out, negative_slope, term, paired, allow_tf32, masks_fake=(),
                 masks_real=(), path="auto", tensor_cores=False):
    """The generator's side: ``loss = sum_j term(f_j)`` (or ``sum_j term(r_j - f_j)`` when
    ``paired``). Returns ``[stats = (loss, mean fake logit), d loss / d fake]``, the latter
    ``c * g`` row by row."""
    _check_path(path)
    alpha = float(negative_slope)
    nf = fake.shape[0]
    x = torch.cat([fake, real]) if paired else fake
    if len(masks_real) and not paired:
        raise ValueError("masks_real is given but the loss is not paired")
    parts = [masks_fake, masks_real] if paired else [masks_fake]
    drops = stacked_masks(parts, ("masks_fake", "masks_real"), [fake.shape[0]] + ([real.shape[0]] if paired else []),
                           [w.shape[0] for w in weights], x)
    hs, o = _forward(x, weights, biases, w_out, b_out, alpha, drops)
    t = _term(term)
    o_fake = o[:nf]
    if paired:
        d = o[nf:] - o_fake
        loss, c = term_value(d, t).sum(), -term_derivative(d, t)
        hs = [h[:nf] for h in hs]
        drops = [None if d is None else d[:nf] for d in drops]
    else:
        loss, c = term_value(o_fake, t).sum(), term_derivative(o_fake, t)
    xs = _down_chain(c, hs, weights, w_out, alpha, drops)
    return [torch.stack([loss, o_fake.mean()]), xs[0] @ weights[0]]
