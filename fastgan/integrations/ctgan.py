"""CTGAN (Xu et al. 2019, as SDV's ``ctgan`` package trains it) with fastgan's discriminator step.

>>> from fastgan.integrations.ctgan import CTGAN
>>> model = CTGAN(epochs=300)            # ctgan.CTGAN's constructor, plus backend=None
>>> model.fit(table, discrete_columns=["segment", "grade"])
>>> synthetic = model.sample(1000)

:class:`CTGAN` subclasses :class:`ctgan.CTGAN`; everything but the training loop is ctgan's own:
the ``DataTransformer`` (mode-specific normalisation, one-hot columns), the ``DataSampler``
(conditional vectors, training-by-sampling, ``log_frequency``; its real rows drawn at once by
:func:`sample_rows`, the same rows from the same RNG state), the residual ``Generator``, the
output activations (tanh, Gumbel-softmax with tau 0.2), the conditional cross-entropy,
``sample``, ``save``/``load`` (a pickle of the model, which holds the generator but, as in
ctgan, not the discriminator) and ``set_random_state``. The loop in :meth:`CTGAN.fit` draws the
same batches and runs the same updates with the same optimisers (Adam, betas (0.5, 0.9), the
learning rates and weight decays of the constructor; torch's fused Adam kernel on CPU and CUDA,
the same update as ctgan's per-tensor loop to rounding), epochs, steps per epoch
(``max(rows // batch_size, 1)``) and ``discriminator_steps``; two things differ:

- The discriminator is a :class:`fastgan.MLPDiscriminator` with ctgan's architecture (Linear ->
  LeakyReLU(0.2) -> Dropout(0.5) per hidden layer, PacGAN ``pack = pac``), and its WGAN-GP update
  (lambda 10, one interpolation weight per packed row, drawn as ctgan draws it) is one
  :func:`fastgan.discriminator_step`. The generator's adversarial term ``-mean(D(fake))`` is
  :func:`fastgan.generator_step` with :class:`fastgan.WassersteinLoss`. While the discriminator
  is in training mode its dropout draws masks, in the order ctgan's calls draw them (D(real),
  D(fake), then the penalty's eps and D(interpolates)); the fused step takes them as tensors on
  the cpu and torch backends (docs/DESIGN.md section 4), so the loop runs the closed form.
- The discriminator update treats the fakes as data: they are generated under ``no_grad``.
  ctgan backpropagates its discriminator loss through the generator as well, into gradients that
  its generator update then zeroes, so the updates are the same and the work is not done.

:func:`from_ctgan_discriminator` and :func:`to_ctgan_discriminator` convert the weights between
ctgan's ``Discriminator`` and ``MLPDiscriminator``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from torch import nn, optim
from tqdm import tqdm

try:
    import ctgan as _ctgan
    from ctgan.data_sampler import DataSampler
    from ctgan.data_transformer import DataTransformer
    from ctgan.synthesizers.base import random_state
    from ctgan.synthesizers.ctgan import Discriminator as CTGANDiscriminator
    from ctgan.synthesizers.ctgan import Generator
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("fastgan.integrations.ctgan needs the ctgan package: pip install 'fastgan[ctgan]'") from error

import fastgan
from fastgan import _dispatch
from fastgan.mlp import MLPDiscriminator

__all__ = ["CTGAN", "PacError", "from_ctgan_discriminator", "sample_rows", "to_ctgan_discriminator"]

# ctgan's Discriminator hard-codes these
CTGAN_NEGATIVE_SLOPE = 0.2
CTGAN_DROPOUT = 0.5
GP_WEIGHT = 10.0


class PacError(AssertionError, ValueError):
    """``batch_size`` is not a multiple of ``pac``. ctgan fails there with a bare AssertionError
    (in its discriminator's forward); this is one too, and a ValueError, and says what is wrong."""


def _format_score(score: float) -> str:
    try:
        from ctgan.synthesizers._utils import _format_score as ctgan_format
    except ImportError:  # pragma: no cover - older ctgan
        return f"{score:+.2f}"
    return ctgan_format(score)


# ---- weights between ctgan's Discriminator and MLPDiscriminator ---------------------------------

def _ctgan_layers(ctgan_D: nn.Module):
    """The Linear layers of ctgan's Discriminator, after checking that its ``seq`` is
    (Linear, LeakyReLU, Dropout)* Linear."""
    seq = getattr(ctgan_D, "seq", None)
    pac = getattr(ctgan_D, "pac", None)
    if not isinstance(seq, nn.Sequential) or not isinstance(pac, int):
        raise TypeError(f"expected ctgan's Discriminator (a .seq Sequential and an int .pac), got {type(ctgan_D).__name__}")
    modules = list(seq)
    blocks, last = modules[:-1], modules[-1] if modules else None
    shape_ok = isinstance(last, nn.Linear) and len(blocks) % 3 == 0 and len(blocks) > 0
    slopes, rates = set(), set()
    if shape_ok:
        for i in range(0, len(blocks), 3):
            lin, act, drop = blocks[i:i + 3]
            if not (isinstance(lin, nn.Linear) and isinstance(act, nn.LeakyReLU) and isinstance(drop, nn.Dropout)):
                shape_ok = False
                break
            slopes.add(float(act.negative_slope))
            rates.add(float(drop.p))
    if not shape_ok:
        raise ValueError("expected ctgan's Discriminator layout (Linear, LeakyReLU, Dropout) * n + Linear, got "
                         + ", ".join(type(m).__name__ for m in modules))
    if len(slopes) != 1 or len(rates) != 1:
        raise ValueError(f"MLPDiscriminator has one negative slope and one dropout rate; got slopes {sorted(slopes)} "
                         f"and dropout rates {sorted(rates)}")
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if any(lin.bias is None for lin in linears):
        raise ValueError("ctgan's Discriminator has biases on every Linear layer; this one does not")
    return linears, slopes.pop(), rates.pop()


def from_ctgan_discriminator(ctgan_D: nn.Module) -> MLPDiscriminator:
    """An :class:`~fastgan.MLPDiscriminator` that computes what ctgan's ``Discriminator`` computes
    (a copy of its weights, on its device and dtype, in its training mode): ``D(x)`` has shape
    (rows,) where ctgan's has (rows, 1)."""
    linears, slope, rate = _ctgan_layers(ctgan_D)
    pac = ctgan_D.pac
    first = linears[0]
    if first.in_features % pac:
        raise ValueError(f"the first layer has {first.in_features} inputs, not a multiple of pac={pac}")
    D = MLPDiscriminator(first.in_features // pac, [lin.out_features for lin in linears[:-1]],
                         negative_slope=slope, pack=pac, dropout=rate)
    D.to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        for dst, src in zip([*D.layers, D.out], linears):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    return D.train(ctgan_D.training)


def to_ctgan_discriminator(D: MLPDiscriminator) -> nn.Module:
    """ctgan's ``Discriminator`` with ``D``'s weights (on its device and dtype, in its training
    mode). ctgan's layout is fixed: LeakyReLU(0.2), Dropout(0.5), biases on every layer."""
    if not isinstance(D, MLPDiscriminator):
        raise TypeError(f"D must be an MLPDiscriminator, got {type(D).__name__}")
    if D.negative_slope != CTGAN_NEGATIVE_SLOPE or D.dropout != CTGAN_DROPOUT or not D.bias:
        raise ValueError("ctgan's Discriminator has negative_slope=0.2, dropout=0.5 and biases; this D has "
                         f"negative_slope={D.negative_slope}, dropout={D.dropout}, bias={D.bias}")
    weight = D.out.weight
    ctgan_D = CTGANDiscriminator(D.in_features, D.hidden, pac=D.pack).to(device=weight.device, dtype=weight.dtype)
    linears = [m for m in ctgan_D.seq if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for dst, src in zip(linears, [*D.layers, D.out]):
            dst.weight.copy_(src.weight)  # the effective weight when D is parametrized
            dst.bias.copy_(src.bias)
    return ctgan_D.train(D.training)


# ---- the synthesizer --------------------------------------------------------------------------

def sample_rows(sampler: DataSampler, data: np.ndarray, n: int, col, opt) -> np.ndarray:
    """``sampler.sample_data(data, n, col, opt)`` in one draw: for each condition (discrete column
    ``col[i]``, category ``opt[i]``), a row holding that category, uniformly. ctgan draws row by
    row with ``np.random.choice(rows)``, which is ``rows[np.random.randint(len(rows))]``; one
    ``np.random.randint`` over the n lengths consumes numpy's global stream in the same order,
    so the rows (and the RNG state after) are ctgan's, at a twentieth of the cost."""
    if col is None:
        return sampler.sample_data(data, n, col, opt)
    rows = [sampler._rid_by_cat_cols[c][o] for c, o in zip(col, opt)]
    pick = np.random.randint(0, np.array([len(r) for r in rows]))
    return data[[r[i] for r, i in zip(rows, pick)]]


class CTGAN(_ctgan.CTGAN):
    """:class:`ctgan.CTGAN` whose discriminator update and generator's adversarial term run
    through :func:`fastgan.discriminator_step` / :func:`fastgan.generator_step` (module docstring).

    Args: those of ``ctgan.CTGAN`` and ``backend`` (None: fastgan's choice, see
    :mod:`fastgan._dispatch`; or a backend name, passed to every step).
    """

    def __init__(self, embedding_dim=128, generator_dim=(256, 256), discriminator_dim=(256, 256),
                 generator_lr=2e-4, generator_decay=1e-6, discriminator_lr=2e-4, discriminator_decay=1e-6,
                 batch_size=500, discriminator_steps=1, log_frequency=True, verbose=False, epochs=300,
                 pac=10, enable_gpu=True, cuda=None, backend=None):
        super().__init__(embedding_dim=embedding_dim, generator_dim=generator_dim,
                         discriminator_dim=discriminator_dim, generator_lr=generator_lr,
                         generator_decay=generator_decay, discriminator_lr=discriminator_lr,
                         discriminator_decay=discriminator_decay, batch_size=batch_size,
                         discriminator_steps=discriminator_steps, log_frequency=log_frequency,
                         verbose=verbose, epochs=epochs, pac=pac, enable_gpu=enable_gpu, cuda=cuda)
        self._backend = _dispatch.check_name(backend, "backend") if backend is not None else None

    # -- the pieces of one training step (tests compare them with ctgan's) --
    def _make_discriminator(self, data_dim: int) -> MLPDiscriminator:
        """ctgan's discriminator as an MLPDiscriminator (same layers, created in the same order,
        so the same seed gives the same initial weights)."""
        return MLPDiscriminator(data_dim, self._discriminator_dim, negative_slope=CTGAN_NEGATIVE_SLOPE,
                                pack=self.pac, dropout=CTGAN_DROPOUT).to(self._device)

    def _make_optimizers(self, discriminator: nn.Module, fused: bool | None = None):
        """ctgan's optimisers: Adam, betas (0.5, 0.9), the constructor's learning rates and weight
        decays. ``fused`` (None: wherever torch has the kernel, i.e. CPU and CUDA parameters)
        takes torch's fused implementation of that update, one kernel over every parameter where
        ctgan's default loops over the tensors (the values agree to rounding)."""
        def adam(params, lr, decay):
            params = list(params)
            use = fused if fused is not None else all(p.device.type in ("cpu", "cuda") for p in params)
            return optim.Adam(params, lr=lr, betas=(0.5, 0.9), weight_decay=decay, fused=use or None)

        return (adam(self._generator.parameters(), self._generator_lr, self._generator_decay),
                adam(discriminator.parameters(), self._discriminator_lr, self._discriminator_decay))

    def _discriminator_update(self, discriminator, optimizer, real_cat, fake_cat, eps=None):
        """One WGAN-GP update of the discriminator; ``eps`` (rows,) are the interpolation weights
        (ctgan's ``alpha``; drawn here as ctgan draws them when None). Returns the detached
        Wasserstein loss ``mean(D(fake)) - mean(D(real))`` (ctgan's ``loss_d``, penalty excluded)."""
        if eps is None:
            eps = torch.rand(real_cat.shape[0] // self.pac, device=real_cat.device)
        optimizer.zero_grad(set_to_none=True)
        _, parts = fastgan.discriminator_step(discriminator, real_cat, fake_cat, loss=self._loss,
                                              penalty=self._penalty, eps=eps, backend=self._backend,
                                              return_parts=True, backward=True)
        optimizer.step()
        return parts.loss

    def _adversarial_loss(self, discriminator, fake_cat):
        """The generator's adversarial term ``-mean(D(fake_cat))``, differentiable with respect to
        ``fake_cat`` only."""
        return fastgan.generator_step(discriminator, fake_cat, loss=self._loss, backend=self._backend)

    @property
    def _loss(self):
        return fastgan.WassersteinLoss()

    @property
    def _penalty(self):
        return fastgan.GradientPenalty(GP_WEIGHT)  # WGAN-GP: center 1, every step (no state to keep)

    def _condition(self, fakez):
        """ctgan's conditional vector for one batch: (fakez with the condition appended, c1, m1,
        col, opt), or (fakez, None, None, None, None) for a table without discrete columns."""
        condvec = self._data_sampler.sample_condvec(self._batch_size)
        if condvec is None:
            return fakez, None, None, None, None
        c1, m1, col, opt = condvec
        c1 = torch.from_numpy(c1).to(self._device)
        m1 = torch.from_numpy(m1).to(self._device)
        return torch.cat([fakez, c1], dim=1), c1, m1, col, opt

    def _check_pac(self) -> None:
        if self._batch_size % self.pac:
            raise PacError(f"batch_size={self._batch_size} must be a multiple of pac={self.pac} "
                           "(the discriminator packs pac rows into one)")

    @random_state
    def fit(self, train_data, discrete_columns=(), epochs=None):
        """Fit the model to ``train_data`` (a DataFrame or a 2-D array) as ``ctgan.CTGAN.fit`` does,
        with fastgan's discriminator step. ``epochs`` here is deprecated, as in ctgan."""
        self._validate_discrete_columns(train_data, discrete_columns)
        self._validate_null_data(train_data, discrete_columns)
        self._check_pac()
        if epochs is None:
            epochs = self._epochs
        else:
            warnings.warn("`epochs` argument in `fit` method has been deprecated and will be removed in a future "
                          "version. Please pass `epochs` to the constructor instead", DeprecationWarning)

        self._transformer = DataTransformer()
        self._transformer.fit(train_data, discrete_columns)
        train_data = self._transformer.transform(train_data)
        self._data_sampler = DataSampler(train_data, self._transformer.output_info_list, self._log_frequency)
        data_dim = self._transformer.output_dimensions
        cond_dim = self._data_sampler.dim_cond_vec()

        self._generator = Generator(self._embedding_dim + cond_dim, self._generator_dim, data_dim).to(self._device)
        discriminator = self._make_discriminator(data_dim + cond_dim)
        optimizer_g, optimizer_d = self._make_optimizers(discriminator)
        # the discriminator lives for this fit only: the model pickles as ctgan's does
        self._train(train_data, discriminator, optimizer_g, optimizer_d, epochs)

    def _train(self, train_data, discriminator, optimizer_g, optimizer_d, epochs: int) -> None:
        batch = self._batch_size
        mean = torch.zeros(batch, self._embedding_dim, device=self._device)
        std = mean + 1
        self.loss_values = pd.DataFrame(columns=["Epoch", "Generator Loss", "Distriminator Loss"])
        epoch_iterator = tqdm(range(epochs), disable=not self._verbose)
        description = "Gen. ({gen}) | Discrim. ({dis})"
        if self._verbose:
            epoch_iterator.set_description(description.format(gen=_format_score(0), dis=_format_score(0)))

        steps_per_epoch = max(len(train_data) // batch, 1)
        loss_d = loss_g = None
        for i in epoch_iterator:
            for _ in range(steps_per_epoch):
                for _ in range(self._discriminator_steps):
                    fakez, c1, _, col, opt = self._condition(torch.normal(mean=mean, std=std))
                    if c1 is None:
                        real = self._data_sampler.sample_data(train_data, batch, None, None)
                    else:
                        perm = np.arange(batch)
                        np.random.shuffle(perm)
                        real = sample_rows(self._data_sampler, train_data, batch, col[perm], opt[perm])
                        c2 = c1[perm]
                    with torch.no_grad():  # fakes are data for the discriminator
                        fakeact = self._apply_activate(self._generator(fakez))
                    real = torch.from_numpy(real.astype("float32")).to(self._device)
                    if c1 is None:
                        real_cat, fake_cat = real, fakeact
                    else:
                        real_cat, fake_cat = torch.cat([real, c2], dim=1), torch.cat([fakeact, c1], dim=1)
                    loss_d = self._discriminator_update(discriminator, optimizer_d, real_cat, fake_cat)

                fakez, c1, m1, _, _ = self._condition(torch.normal(mean=mean, std=std))
                fake = self._generator(fakez)
                fakeact = self._apply_activate(fake)
                fake_cat = fakeact if c1 is None else torch.cat([fakeact, c1], dim=1)
                loss_g = self._adversarial_loss(discriminator, fake_cat)
                if c1 is not None:
                    loss_g = loss_g + self._cond_loss(fake, c1, m1)
                optimizer_g.zero_grad(set_to_none=False)
                loss_g.backward()
                optimizer_g.step()

            generator_loss = loss_g.detach().cpu().item()
            discriminator_loss = loss_d.detach().cpu().item()
            epoch_loss = pd.DataFrame({"Epoch": [i], "Generator Loss": [generator_loss],
                                       "Discriminator Loss": [discriminator_loss]})
            if not self.loss_values.empty:
                self.loss_values = pd.concat([self.loss_values, epoch_loss]).reset_index(drop=True)
            else:
                self.loss_values = epoch_loss
            if self._verbose:
                epoch_iterator.set_description(description.format(gen=_format_score(generator_loss),
                                                                  dis=_format_score(discriminator_loss)))
