"""The fused MLP step operators: ``mlp_disc_step`` (the discriminator's loss, penalty and every
parameter gradient in one call, no double backward) and ``mlp_gen_step`` (the generator's loss and
its gradient with respect to the fake rows). The maths is in docs/DESIGN.md section 4;
:mod:`fastgan.step_spec` translates (D, loss, penalty) into these arguments.

``mlp_disc_step`` arguments:

- ``real``, ``fake`` (rows already packed), ``penalty_input`` (the penalty's rows, side 2 only);
- ``weights[l]``: (H_l, H_{l-1}); ``biases``: empty or one per layer; ``w_out``: (1, H_L);
  ``b_out``: (1,) or None; ``negative_slope``: the LeakyReLU slope;
- ``term_real``, ``term_fake``: ``[phi, sign, shift, scale]`` (:class:`fastgan.terms.Term`) with a
  mean's 1/N folded into scale; an empty list means no term. ``paired``: ``term_real`` applies to
  ``r - f`` (relativistic) and ``term_fake`` is empty;
- ``penalty_side``: -1 none, 0 real, 1 fake, 2 ``penalty_input``; ``penalty_kind``: 0
  ``weight * |g|^2 / 2``, 1 ``weight * (|g| - center)^2``; ``penalty_weight`` already holds the
  mean's 1/rows; ``penalty_center``;
- ``allow_tf32``: fp32 products may use TF32;
- ``masks_real``, ``masks_fake``, ``masks_penalty``: dropout, ``[]`` or one contiguous (rows of that
  block, H_l) multiplier tensor per hidden layer (0 or 1/(1-p), the rows' dtype and device):
  ``h_l = leaky(z_l) * m_l`` and every activation-derivative factor is ``leaky'(z_l) * m_l``.
  masks_real and masks_fake come together; masks_penalty exactly with them when penalty_side is 2.
  A list argument takes no default in a schema, so every caller passes the three lists;
- options: ``path`` "auto" | "fused" (the small-width kernel; raises where the network does not fit)
  | "wide" (products + epilogues), for cuda and triton (cpu and torch have one path and take "auto"
  only); ``tensor_cores``: the cuda fused kernel runs its products on tensor cores (3xTF32 for fp32
  unless allow_tf32, else TF32).

Returns ``[stats = (loss, penalty, mean real logit, mean fake logit), dW_1..dW_L, db_1..db_L (if
biases), dw_out, db_out (if b_out)]``.

``mlp_gen_step``: loss = the sum of ``term`` over the fake logits (over ``r - f`` when ``paired``,
which needs ``real``); masks as above (``masks_real`` exactly with ``masks_fake`` when paired).
Returns ``[stats = (loss, mean fake logit), d loss / d fake]``.

Backends: ``cpu`` (csrc/mlp_step_cpu.cpp) and ``cuda`` (csrc/mlp_step.cu) register their kernels
under these names in the compiled extension; ``triton``: :mod:`fastgan.kernels.mlp_step`;
``torch``: :mod:`fastgan.closed_form`. The operators return gradients and have no autograd of
their own: :mod:`fastgan.fused` wraps them in first-order autograd functions.
"""
from __future__ import annotations

import torch

from fastgan import closed_form
from fastgan.ops._library import declare

DISC_SCHEMA = (
    "(Tensor real, Tensor fake, Tensor? penalty_input, Tensor[] weights, Tensor[] biases, Tensor w_out, "
    "Tensor? b_out, float negative_slope, float[] term_real, float[] term_fake, bool paired, int penalty_side, "
    "int penalty_kind, float penalty_weight, float penalty_center, bool allow_tf32, Tensor[] masks_real, "
    "Tensor[] masks_fake, Tensor[] masks_penalty, str path=\"auto\", bool tensor_cores=False) -> Tensor[]")
GEN_SCHEMA = (
    "(Tensor fake, Tensor? real, Tensor[] weights, Tensor[] biases, Tensor w_out, Tensor? b_out, "
    "float negative_slope, float[] term, bool paired, bool allow_tf32, Tensor[] masks_fake, Tensor[] masks_real, "
    "str path=\"auto\", bool tensor_cores=False) -> Tensor[]")


def _disc_fake(real, fake, penalty_input, weights, biases, w_out, b_out, *config):
    outs = [real.new_empty((4,))]
    outs += [torch.empty_like(w) for w in weights]
    outs += [torch.empty_like(b) for b in biases]
    outs.append(torch.empty_like(w_out))
    if b_out is not None:
        outs.append(torch.empty_like(b_out))
    return outs


def _gen_fake(fake, *config):
    return [fake.new_empty((2,)), torch.empty_like(fake)]


def _triton_disc(*args):
    from fastgan.kernels import mlp_step
    return mlp_step.mlp_disc_step(*args)


def _triton_gen(*args):
    from fastgan.kernels import mlp_step
    return mlp_step.mlp_gen_step(*args)


DISC = declare("mlp_disc_step", DISC_SCHEMA, fake=_disc_fake,
               python={"torch": closed_form.mlp_disc_step, "triton": _triton_disc})
GEN = declare("mlp_gen_step", GEN_SCHEMA, fake=_gen_fake,
              python={"torch": closed_form.mlp_gen_step, "triton": _triton_gen})
