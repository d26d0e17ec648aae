"""Divergences read from discriminator logits.

The optimal discriminator of the logistic (non-saturating / minimax) GAN is
``D*(x) = p_r / (p_r + p_g)``, whose logit is the log density ratio ``l*(x) = log p_r(x)/p_g(x)``.
Given logits ``l`` on real samples (``E_r``) and on generated samples (``E_g``):

====================  ==========================================================
forward_kl            KL(p_r || p_g) = E_r[l]
reverse_kl            KL(p_g || p_r) = -E_g[l]
jensen_shannon        JS(p_r, p_g) = log 2 + E_r[log sigmoid(l)]/2 + E_g[log sigmoid(-l)]/2
====================  ==========================================================

These are exact when ``l = l*`` and the expectations are exact; with a trained discriminator
they are plug-in estimates (JS is also a lower bound for any ``l``; the KL estimates are not
bounds).

The f-GAN variational bounds (Nowozin, Cseke and Tomioka 2016), with P = p_r, Q = p_g, a raw
critic output ``v`` and the paper's output activation ``g_f`` and conjugate ``f*``:

    D_f(P || Q) >= E_P[g_f(v)] - E_Q[f*(g_f(v))]      for every v,

with equality at ``g_f(v*) = f'(p/q)``. :func:`optimal_critic` maps the log ratio ``l`` to
that ``v*``.

=============  =====================  ====================  ==============  ===============
name           f(u)                   g_f(v)                f*(t)           v* from l
=============  =====================  ====================  ==============  ===============
kl             u log u                v                     exp(t - 1)      1 + l
reverse_kl     -log u                 -exp(-v)              -1 - log(-t)    l
pearson        (u - 1)^2              v                     t^2/4 + t       2 (e^l - 1)
hellinger      (sqrt(u) - 1)^2        1 - exp(-v)           t / (1 - t)     l / 2
gan            u log u - (u+1)        -log(1 + exp(-v))     -log(1 - e^t)   l
               log(u+1)
=============  =====================  ====================  ==============  ===============

``pearson`` is chi^2(P||Q) = int (p - q)^2 / q; ``hellinger`` is int (sqrt p - sqrt q)^2 (no
1/2); ``gan`` is 2 JS(P, Q) - log 4, and its bound at ``v = l`` is minus the non-saturating
discriminator loss.

Every function takes optional ``real_weights`` / ``fake_weights`` (non-negative, normalised
inside) so that the expectations can be quadratures or importance-weighted averages instead
of sample means.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastgan import _validate

F_DIVERGENCES = ("kl", "reverse_kl", "pearson", "hellinger", "gan")


def _expect(x: torch.Tensor, weights: torch.Tensor | None, name: str) -> torch.Tensor:
    if weights is None:
        return x.mean()
    if weights.shape != x.shape:
        raise ValueError(f"{name} must have the logits' shape {tuple(x.shape)}, got {tuple(weights.shape)}")
    return (weights * x).sum() / weights.sum()


def _check(real_logits, fake_logits, real_weights=None, fake_weights=None):
    _validate.tensors(real_logits=real_logits, fake_logits=fake_logits)
    _validate.tensors(real_logits=real_logits, real_weights=real_weights)
    _validate.tensors(fake_logits=fake_logits, fake_weights=fake_weights)


def forward_kl(real_logits: torch.Tensor, fake_logits: torch.Tensor | None = None, *,
               real_weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_r || p_g) = E_r[l]. ``fake_logits`` is unused (accepted for a uniform signature)."""
    _validate.tensors(real_logits=real_logits, real_weights=real_weights)
    return _expect(real_logits, real_weights, "real_weights")


def reverse_kl(real_logits: torch.Tensor | None, fake_logits: torch.Tensor, *,
               fake_weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_g || p_r) = -E_g[l]. ``real_logits`` is unused (accepted for a uniform signature)."""
    _validate.tensors(fake_logits=fake_logits, fake_weights=fake_weights)
    return -_expect(fake_logits, fake_weights, "fake_weights")


def jensen_shannon(real_logits: torch.Tensor, fake_logits: torch.Tensor, *,
                   real_weights: torch.Tensor | None = None,
                   fake_weights: torch.Tensor | None = None) -> torch.Tensor:
    """JS(p_r, p_g) = log 2 + E_r[log sigmoid(l)]/2 + E_g[log sigmoid(-l)]/2 (nats, at most log 2)."""
    _check(real_logits, fake_logits, real_weights, fake_weights)
    return (math.log(2.0) - 0.5 * _expect(F.softplus(-real_logits), real_weights, "real_weights")
            - 0.5 * _expect(F.softplus(fake_logits), fake_weights, "fake_weights"))


def _activation_and_conjugate(name: str, v: torch.Tensor):
    """(g_f(v), f*(g_f(v))), written to stay finite for large |v|."""
    if name == "kl":
        return v, torch.exp(v - 1)
    if name == "reverse_kl":
        return -torch.exp(-v), -1 + v                      # -1 - log(exp(-v))
    if name == "pearson":
        return v, v * v / 4 + v
    if name == "hellinger":
        return -torch.expm1(-v), torch.expm1(v)            # t/(1-t) with t = 1 - e^{-v}
    if name == "gan":
        return -F.softplus(-v), F.softplus(v)              # -log(1 - sigmoid(v)) = softplus(v)
    raise ValueError(f"divergence must be one of {F_DIVERGENCES}, got {name!r}")


def fgan_bound(real_critic: torch.Tensor, fake_critic: torch.Tensor, divergence: str, *,
               real_weights: torch.Tensor | None = None,
               fake_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The f-GAN lower bound E_P[g_f(v)] - E_Q[f*(g_f(v))] on D_f(p_r || p_g) from raw critic
    outputs ``v`` on real and generated samples (see the module table)."""
    _check(real_critic, fake_critic, real_weights, fake_weights)
    t_real, _ = _activation_and_conjugate(divergence, real_critic)
    _, conj_fake = _activation_and_conjugate(divergence, fake_critic)
    return _expect(t_real, real_weights, "real_weights") - _expect(conj_fake, fake_weights, "fake_weights")


def optimal_critic(logits: torch.Tensor, divergence: str) -> torch.Tensor:
    """The raw critic ``v*`` with ``g_f(v*) = f'(exp(l))``, for log density ratios ``l``."""
    if divergence == "kl":
        return 1 + logits
    if divergence in ("reverse_kl", "gan"):
        return logits
    if divergence == "pearson":
        return 2 * torch.expm1(logits)
    if divergence == "hellinger":
        return logits / 2
    raise ValueError(f"divergence must be one of {F_DIVERGENCES}, got {divergence!r}")


def from_logits(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, float]:
    """Every estimate above from one pair of logit batches (the f-GAN bounds at ``v*(l)``)."""
    out = {"forward_kl": forward_kl(real_logits), "reverse_kl": reverse_kl(None, fake_logits),
           "jensen_shannon": jensen_shannon(real_logits, fake_logits)}
    for name in F_DIVERGENCES:
        out[f"fgan_{name}"] = fgan_bound(optimal_critic(real_logits, name), optimal_critic(fake_logits, name), name)
    return {k: float(v) for k, v in out.items()}
