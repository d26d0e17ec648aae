"""GAN losses on discriminator logits: drop-in ``nn.Module`` losses and a functional form.

Each loss has ``discriminator_loss(real_logits, fake_logits)`` and
``generator_loss(fake_logits, real_logits=None)``; see :mod:`fastgan.reference.losses` for the
formulas. Logits may have any shape. ``reduction='mean'`` averages each term over its own
batch (real and fake batches may differ in size), ``'sum'`` sums, ``'none'`` returns the
elementwise sum of the real and fake terms (equal shapes). The elementwise maths and the
reduction run as one fused kernel per term in the ``cpu``, ``cuda`` and ``triton`` backends.

>>> loss = NonSaturatingLoss()
>>> d_loss = loss.discriminator_loss(D(real), D(fake.detach()))
>>> g_loss = loss.generator_loss(D(fake))
"""
from __future__ import annotations

import torch
from torch import nn

from fastgan import _dispatch, _validate
from fastgan.reference import losses as reference
from fastgan.ops import loss_term
from fastgan.terms import Phi, Reduction, Term


def apply_term(x: torch.Tensor, term: Term, reduction: str, backend: str) -> torch.Tensor:
    """``reduce(term(x))`` on an already-selected non-reference backend (the backend's
    ``loss_term_forward`` operator, :mod:`fastgan.ops.loss_term`)."""
    return loss_term.apply(x, term, Reduction[reduction.upper()], backend)


class GANLoss(nn.Module):
    """Base class: a discriminator and a generator objective on logits.

    Subclasses set ``name`` (the :mod:`fastgan.reference.losses` entry) and the terms:
    ``d_real``/``d_fake`` and ``g_fake`` (or, when ``paired``, ``d_pair``/``g_pair`` applied to
    ``real - fake``).
    """

    name: str = ""
    paired: bool = False

    def __init__(self, reduction: str = "mean", backend: str | None = None):
        super().__init__()
        self.reduction = _validate.reduction(reduction)
        self.backend = _dispatch.check_name(backend, "backend") if backend is not None else None

    # ---- term specifications (overridden) -------------------------------------------------
    def discriminator_terms(self) -> tuple[Term, Term | None]:
        """(real term, fake term); for paired losses (pair term, None)."""
        raise NotImplementedError

    def generator_term(self) -> Term:
        """The generator's term on fake logits (on ``real - fake`` for paired losses)."""
        raise NotImplementedError

    def _params(self) -> dict:
        return {}

    # ---- the objectives -------------------------------------------------------------------
    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on real and fake logits."""
        _validate.tensors(real_logits=real_logits, fake_logits=fake_logits)
        if self.paired:
            _validate.same_shape("real_logits", real_logits, "fake_logits", fake_logits,
                                 f"{type(self).__name__} pairs real and fake logits")
        elif self.reduction == "none":
            _validate.same_shape("real_logits", real_logits, "fake_logits", fake_logits,
                                 "reduction='none' returns their elementwise sum")
        backend = _dispatch.select(self.backend, real_logits.device)
        if backend == "reference":
            return reference.discriminator_loss(self.name, real_logits, fake_logits, self.reduction,
                                                **self._params())
        t_real, t_fake = self.discriminator_terms()
        if self.paired:
            return apply_term(real_logits - fake_logits, t_real, self.reduction, backend)
        return (apply_term(real_logits, t_real, self.reduction, backend)
                + apply_term(fake_logits, t_fake, self.reduction, backend))

    def generator_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The generator's loss on fake logits (``real_logits`` is needed by paired losses only)."""
        if self.paired and real_logits is None:
            raise ValueError(f"{type(self).__name__}.generator_loss needs real_logits (it pairs real and fake)")
        _validate.tensors(fake_logits=fake_logits, real_logits=real_logits if self.paired else None)
        if self.paired:
            _validate.same_shape("real_logits", real_logits, "fake_logits", fake_logits,
                                 f"{type(self).__name__} pairs real and fake logits")
        backend = _dispatch.select(self.backend, fake_logits.device)
        if backend == "reference":
            return reference.generator_loss(self.name, fake_logits, real_logits, self.reduction, **self._params())
        x = real_logits - fake_logits if self.paired else fake_logits
        return apply_term(x, self.generator_term(), self.reduction, backend)

    def extra_repr(self) -> str:
        params = "".join(f"{k}={v}, " for k, v in self._params().items())
        return f"{params}reduction={self.reduction!r}" + (f", backend={self.backend!r}" if self.backend else "")


class NonSaturatingLoss(GANLoss):
    """D: softplus(-r) + softplus(f);  G: softplus(-f)  (Goodfellow et al. 2014, the usual GAN)."""

    name = "non_saturating"

    def discriminator_terms(self):
        return Term(Phi.SOFTPLUS, sign=-1.0), Term(Phi.SOFTPLUS)

    def generator_term(self):
        return Term(Phi.SOFTPLUS, sign=-1.0)


class MinimaxLoss(NonSaturatingLoss):
    """D as non-saturating;  G: -softplus(f) = log(1 - sigmoid(f)) (the saturating original)."""

    name = "minimax"

    def generator_term(self):
        return Term(Phi.SOFTPLUS, scale=-1.0)


class WassersteinLoss(GANLoss):
    """D: f - r;  G: -f  (pair it with a gradient penalty)."""

    name = "wasserstein"

    def discriminator_terms(self):
        return Term(Phi.IDENTITY, sign=-1.0), Term(Phi.IDENTITY)

    def generator_term(self):
        return Term(Phi.IDENTITY, sign=-1.0)


class HingeLoss(GANLoss):
    """D: relu(1 - r) + relu(1 + f);  G: -f."""

    name = "hinge"

    def discriminator_terms(self):
        return Term(Phi.RELU, sign=-1.0, shift=1.0), Term(Phi.RELU, shift=1.0)

    def generator_term(self):
        return Term(Phi.IDENTITY, sign=-1.0)


class LeastSquaresLoss(GANLoss):
    """D: (r - b)^2/2 + (f - a)^2/2;  G: (f - c)^2/2  (LSGAN; defaults a=0, b=1, c=1)."""

    name = "least_squares"

    def __init__(self, a: float = 0.0, b: float = 1.0, c: float = 1.0, reduction: str = "mean",
                 backend: str | None = None):
        super().__init__(reduction, backend)
        self.a, self.b, self.c = (_validate.real_number(v, k) for k, v in (("a", a), ("b", b), ("c", c)))

    def _params(self):
        return {"a": self.a, "b": self.b, "c": self.c}

    def discriminator_terms(self):
        return Term(Phi.HALF_SQUARE, shift=-self.b), Term(Phi.HALF_SQUARE, shift=-self.a)

    def generator_term(self):
        return Term(Phi.HALF_SQUARE, shift=-self.c)


class RelativisticLoss(GANLoss):
    """Paired relativistic GAN (RpGAN): D: softplus(-(r - f));  G: softplus(-(f - r))."""

    name = "relativistic"
    paired = True

    def discriminator_terms(self):
        return Term(Phi.SOFTPLUS, sign=-1.0), None

    def generator_term(self):
        return Term(Phi.SOFTPLUS)  # on r - f: softplus(r - f) = softplus(-(f - r))


LOSSES: dict[str, type[GANLoss]] = {
    cls.name: cls for cls in (NonSaturatingLoss, MinimaxLoss, WassersteinLoss, HingeLoss,
                              LeastSquaresLoss, RelativisticLoss)
}


def get_loss(loss: str | GANLoss, **kwargs) -> GANLoss:
    """A loss module from its name (``LOSSES``) or the module itself."""
    if isinstance(loss, GANLoss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be a GANLoss or one of {sorted(LOSSES)}, got {loss!r}")
    return LOSSES[loss](**kwargs)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, loss: str = "non_saturating",
                       reduction: str = "mean", backend: str | None = None, **params) -> torch.Tensor:
    """Functional form: ``discriminator_loss(r, f, "hinge")`` is ``HingeLoss().discriminator_loss(r, f)``."""
    return get_loss(loss, reduction=reduction, backend=backend, **params).discriminator_loss(real_logits, fake_logits)


def generator_loss(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None, loss: str = "non_saturating",
                   reduction: str = "mean", backend: str | None = None, **params) -> torch.Tensor:
    """Functional form of :meth:`GANLoss.generator_loss`."""
    return get_loss(loss, reduction=reduction, backend=backend, **params).generator_loss(fake_logits, real_logits)
