"""The fused step's contract, in one place: from (D, loss, penalty) to the op's arguments.

Every backend implements one operator pair, ``mlp_disc_step`` and ``mlp_gen_step`` (schemas in
:mod:`fastgan.ops.mlp_step`; ``torch``: :mod:`fastgan.closed_form`; ``cpu``/``cuda``:
``torch.ops.fastgan``; ``triton``: :mod:`fastgan.kernels.mlp_step`). Their non-tensor arguments
describe the configuration (docs/DESIGN.md section 4):

- ``term_real``, ``term_fake``: a loss term ``scale * phi(sign * x + shift)`` as
  ``[phi, sign, shift, scale]`` with a ``'mean'`` reduction's ``1/rows`` folded into ``scale``;
  an empty list means no term. ``paired``: ``term_real`` applies to ``real - fake``.
- ``penalty_side``: which rows are penalised (:class:`PenaltySide`; an attribute of each penalty
  class); ``penalty_kind``: ``weight * |g|^2 / 2`` or ``weight * (|g| - center)^2``;
  ``penalty_weight``: the penalty's weight times its lazy factor over the penalised row count
  (the mean's ``1/rows``); ``penalty_center``.
- ``allow_tf32``: ``torch.get_float32_matmul_precision() != 'highest'``.
- ``masks_real``, ``masks_fake``, ``masks_penalty`` (``mlp_gen_step``: ``masks_fake``,
  ``masks_real``): dropout multipliers, one ``(rows, width_l)`` tensor per hidden layer
  (0 or 1/(1-p), drawn by :func:`fastgan.mlp.dropout_masks`), ``h_l = leaky(z_l) * m_l``;
  empty lists without active dropout; a backend that takes no masks yet raises when given any
  (and :func:`fastgan.fused.plan` never sends it a dropout D). With dropout each ``D(...)`` call draws its own
  masks, so R1/R2 are not taken on the loss pass: they become side INPUT with the real / fake
  rows as the penalty's points and masks of their own (this translation is done here).

:class:`DiscStepSpec` / :class:`GenStepSpec` hold those values for one configuration and are
built once per configuration (cached), so a training step only gathers tensors. The tests build
their op calls with :func:`disc_step_op_args` / :func:`gen_step_op_args`, so they exercise this
translation instead of a copy of it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import nn

from fastgan.terms import Term


class PenaltySide(IntEnum):
    """The rows whose input gradient a penalty takes (``penalty_side`` in the op contract)."""

    NONE = -1
    REAL = 0    # R1
    FAKE = 1    # R2
    INPUT = 2   # rows the penalty builds: WGAN-GP interpolates, DRAGAN's perturbed reals


@dataclass(frozen=True)
class DiscStepSpec:
    """The non-tensor arguments of ``mlp_disc_step`` for one configuration."""

    negative_slope: float
    term_real: tuple[float, ...]
    term_fake: tuple[float, ...]
    paired: bool
    penalty_side: int
    penalty_kind: int
    penalty_weight: float
    penalty_center: float
    allow_tf32: bool

    def op_args(self, real, fake, penalty_input, weights, biases, w_out, b_out, masks=None) -> dict:
        """Keyword arguments of ``mlp_disc_step`` (named as in the schema); ``masks``:
        ``(masks_real, masks_fake, masks_penalty)`` or None (no dropout: no mask arguments)."""
        return _with_masks(masks, ("masks_real", "masks_fake", "masks_penalty"), dict(real=real, fake=fake, penalty_input=penalty_input, weights=weights, biases=biases,
                    w_out=w_out, b_out=b_out, negative_slope=self.negative_slope,
                    term_real=list(self.term_real), term_fake=list(self.term_fake), paired=self.paired,
                    penalty_side=self.penalty_side, penalty_kind=self.penalty_kind,
                    penalty_weight=self.penalty_weight, penalty_center=self.penalty_center,
                    allow_tf32=self.allow_tf32))


@dataclass(frozen=True)
class GenStepSpec:
    """The non-tensor arguments of ``mlp_gen_step`` for one configuration."""

    negative_slope: float
    term: tuple[float, ...]
    paired: bool
    allow_tf32: bool

    def op_args(self, fake, real, weights, biases, w_out, b_out, masks=None) -> dict:
        """Keyword arguments of ``mlp_gen_step`` (named as in the schema); ``masks``:
        ``(masks_fake, masks_real)`` or None (no dropout)."""
        return _with_masks(masks, ("masks_fake", "masks_real"), dict(
            fake=fake, real=real, weights=weights, biases=biases, w_out=w_out, b_out=b_out,
            negative_slope=self.negative_slope, term=list(self.term), paired=self.paired,
            allow_tf32=self.allow_tf32))


def _with_masks(masks, names, args: dict) -> dict:
    args.update((name, list(m) if masks is not None else []) for name, m in zip(names, masks or [()] * len(names)))
    return args


def _term_list(term: Term | None, rows: int, mean: bool) -> tuple[float, ...]:
    if term is None:
        return ()
    return tuple((term.scaled(1.0 / rows) if mean else term).as_list())


@functools.lru_cache(maxsize=512)
def disc_step_spec(negative_slope: float, terms: tuple[Term, Term | None], paired: bool, mean: bool,
                   rows_real: int, rows_fake: int, penalty: tuple | None, rows_penalised: int,
                   allow_tf32: bool) -> DiscStepSpec:
    """The spec of one configuration (cached). ``penalty`` is ``(side, kind, weight, center)``
    with the lazy factor already in ``weight``, or None."""
    t_real, t_fake = terms
    side, kind, weight, center = penalty if penalty is not None else (PenaltySide.NONE, 0, 0.0, 0.0)
    return DiscStepSpec(float(negative_slope), _term_list(t_real, rows_real, mean),
                        _term_list(t_fake, rows_fake, mean), bool(paired), int(side), int(kind),
                        float(weight) / rows_penalised if penalty is not None else 0.0, float(center),
                        bool(allow_tf32))


@functools.lru_cache(maxsize=512)
def gen_step_spec(negative_slope: float, term: Term, paired: bool, mean: bool, rows: int,
                  allow_tf32: bool) -> GenStepSpec:
    """The generator side's spec of one configuration (cached)."""
    return GenStepSpec(float(negative_slope), _term_list(term, rows, mean), bool(paired), bool(allow_tf32))


def mlp_params(D: nn.Module) -> tuple[list, list, torch.Tensor, torch.Tensor | None]:
    """``(weights, biases, w_out, b_out)`` of an MLPDiscriminator in the op's order; ``biases``
    is empty for a bias-free network."""
    weights = [layer.weight for layer in D.layers]
    biases = [layer.bias for layer in D.layers] if D.out.bias is not None else []
    return weights, biases, D.out.weight, D.out.bias


def packed(x: torch.Tensor, pack: int) -> torch.Tensor:
    """``(B, in) -> (B / pack, pack * in)``: PacGAN rows (``x`` itself when ``pack`` is 1)."""
    return x if pack == 1 else x.reshape(x.shape[0] // pack, pack * x.shape[1])


def _cached(fn, *args):
    """``fn(*args)`` through its cache; under torch.compile the uncached function, which the
    compiler traces to constants."""
    return fn.__wrapped__(*args) if torch.compiler.is_compiling() else fn(*args)


def disc_step_operands(D, real, fake, *, loss, penalty=None, penalty_scale: int = 1, eps=None, generator=None,
                       allow_tf32: bool = False, loss_masks=None):
    """``(spec, real rows, fake rows, penalty rows or None, masks)`` of ``discriminator_step(D, real,
    fake, loss, penalty)`` on an MLPDiscriminator: rows packed, the penalty's rows built (side INPUT),
    its weight times ``penalty_scale`` (the lazy factor of this call; 0: no penalty).

    ``masks`` is None without active dropout, else ``(masks_real, masks_fake, masks_penalty)``
    drawn from ``generator`` (or torch's default) in the order of the reference's calls: the real
    rows' masks, the fake rows', then the penalty's random numbers (eps, noise) and its pass's
    masks. ``loss_masks``: ``(masks_real, masks_fake)`` already drawn for this step (a further
    penalty's call reuses them; only its penalty masks are new). With dropout, R1 / R2 become side
    INPUT with the real / fake rows as points (their pass draws its own masks)."""
    from fastgan.mlp import dropout_masks
    pack = D.pack
    real_p, fake_p = packed(real, pack), packed(fake, pack)
    dropout = D.dropout_active
    masks = None
    if dropout:
        if loss_masks is None:
            loss_masks = (dropout_masks(D, real_p.shape[0], like=real_p, generator=generator),
                          dropout_masks(D, fake_p.shape[0], like=fake_p, generator=generator))
        masks = [list(loss_masks[0]), list(loss_masks[1]), []]
    pen, pen_p, rows_pen = None, None, 1
    if penalty is not None and penalty_scale:
        side = int(penalty.side)
        if dropout:
            side = PenaltySide.INPUT  # the penalty's own pass, with its own masks
        pen = (side, int(penalty.kind), penalty.weight * penalty_scale, penalty.center)
        if side == PenaltySide.INPUT:
            pen_p = packed(penalty.penalty_input(real, fake, pack, eps=eps, generator=generator).detach(), pack)
            rows_pen = pen_p.shape[0]
            if dropout:
                masks[2] = dropout_masks(D, rows_pen, like=pen_p, generator=generator)
        else:
            rows_pen = (real if side == PenaltySide.REAL else fake).shape[0] // pack
    spec = _cached(disc_step_spec, D.negative_slope, loss.discriminator_terms(), loss.paired,
                   loss.reduction == "mean", real_p.shape[0], fake_p.shape[0], pen, rows_pen, allow_tf32)
    return spec, real_p, fake_p, pen_p, (tuple(masks) if masks is not None else None)


def gen_step_operands(D, fake, *, loss, real=None, allow_tf32: bool = False, generator=None):
    """``(spec, fake rows, real rows or None, masks)`` of ``generator_step(D, fake, loss=loss,
    real=real)``; ``masks`` is None without active dropout, else ``(masks_fake, masks_real)`` drawn
    in that order (the reference's ``D(fake)``, then ``D(real)`` for a paired loss)."""
    from fastgan.mlp import dropout_masks
    fake_p = packed(fake, D.pack)
    real_p = packed(real, D.pack) if loss.paired else None
    masks = None
    if D.dropout_active:
        masks = (dropout_masks(D, fake_p.shape[0], like=fake_p, generator=generator),
                 dropout_masks(D, real_p.shape[0], like=real_p, generator=generator) if loss.paired else [])
    spec = _cached(gen_step_spec, D.negative_slope, loss.generator_term(), loss.paired, loss.reduction == "mean",
                   fake_p.shape[0], allow_tf32)
    return spec, fake_p, real_p, masks


def disc_step_op_args(D, real, fake, *, loss, penalty=None, eps=None, generator=None,
                      allow_tf32: bool = False, penalty_scale: int = 1) -> dict:
    """``mlp_disc_step``'s keyword arguments for ``discriminator_step(D, real, fake, loss, penalty)``
    (``penalty_scale``: the lazy factor of this call; ``every`` on a penalised call). With active
    dropout the masks are drawn (see :func:`disc_step_operands`)."""
    spec, real_p, fake_p, pen_p, masks = disc_step_operands(D, real.detach(), fake.detach(), loss=loss,
                                                            penalty=penalty, penalty_scale=penalty_scale, eps=eps,
                                                            generator=generator, allow_tf32=allow_tf32)
    return spec.op_args(real_p, fake_p, pen_p, *mlp_params(D), masks=masks)


def gen_step_op_args(D, fake, *, loss, real=None, allow_tf32: bool = False, generator=None) -> dict:
    """``mlp_gen_step``'s keyword arguments for ``generator_step(D, fake, loss=loss, real=real)``."""
    spec, fake_p, real_p, masks = gen_step_operands(D, fake, loss=loss, real=real.detach() if loss.paired else None,
                                                    allow_tf32=allow_tf32, generator=generator)
    return spec.op_args(fake_p, real_p, *mlp_params(D), masks=masks)
