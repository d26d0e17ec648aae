"""``MLPDiscriminator``: the plain-PyTorch MLP discriminator that the fused step accelerates."""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

try:  # torch >= 2.10 distinguishes symbolic tracing from export / compile
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
except ImportError:  # pragma: no cover - older torch
    from torch.fx._symbolic_trace import is_fx_tracing

from fastgan import _validate


class MLPDiscriminator(nn.Module):
    """An MLP discriminator with LeakyReLU hidden layers and one logit per row.

    ``D(x)`` for ``x`` of shape (B, in_features) returns (B // pack,) logits. With PacGAN
    packing (``pack = m``, Lin et al. 2018) m consecutive samples are concatenated into one
    row before the first layer, so the first layer has ``m * in_features`` inputs.

    Layers: ``z_l = h_{l-1} W_l^T + b_l``, ``h_l = leaky_relu(z_l, negative_slope)`` (ReLU when
    the slope is 0), output ``o = h_L w^T + c``. With ``dropout = p > 0`` each hidden activation
    is followed by dropout (as ``nn.Dropout(p)``: in training mode only, keep probability 1-p,
    kept values scaled by 1/(1-p)); ctgan's discriminator is ``MLPDiscriminator(d, (256, 256),
    pack=10, dropout=0.5)``. ``forward`` is ordinary PyTorch and serves as
    the reference for :func:`fastgan.discriminator_step`.

    Dropout masks: each forward in training mode draws one multiplier tensor per hidden layer
    (``(rows, width_l)``, 0 or 1/(1-p)), in layer order, with :func:`dropout_masks` (torch's
    RNG: the default generator of the input's device, or the one set by
    :func:`dropout_generator`), and computes ``h_l = leaky_relu(z_l) * m_l``. The fused steps
    draw through the same helper in the order the equivalent ``D(...)`` calls would (real rows,
    fake rows, then each penalty's points), so with the same RNG state both paths see the same
    masks. Eval mode (or ``dropout=0``) draws nothing.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256), negative_slope: float = 0.2,
                 pack: int = 1, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        in_features = _validate.positive_int(in_features, "in_features")
        hidden = tuple(hidden)
        if not hidden:
            raise ValueError(f"hidden must be a non-empty sequence of positive integers, got {hidden!r}")
        hidden = tuple(_validate.positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
        pack = _validate.positive_int(pack, "pack")
        negative_slope = _validate.real_number(negative_slope, "negative_slope", minimum=0.0)
        dropout = _validate.real_number(dropout, "dropout", minimum=0.0)
        if not dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = dropout
        self.in_features, self.hidden, self.pack = in_features, hidden, pack
        self.negative_slope = float(negative_slope)
        widths = (in_features * pack,) + hidden
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(hidden[-1], 1, bias=bias)

    @property
    def bias(self) -> bool:
        return self.out.bias is not None

    def check_input(self, x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape (batch, {self.in_features}), got {shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} must not be empty")
        if x.shape[0] % self.pack:
            raise ValueError(f"{name} has {x.shape[0]} rows, not divisible by pack={self.pack}")

    def forward(self, x: torch.Tensor, *, fused: Callable | None = None):
        """The logits of ``x``; with ``fused`` (set by :func:`fastgan.discriminator_step`),
        ``fused(self, x)`` instead: the fused step runs inside forward so that a
        DistributedDataParallel wrapper all-reduces its gradients."""
        if fused is not None:
            return fused(self, x)
        if not is_fx_tracing():  # the linearised step traces forward (fx proxies have no shape)
            self.check_input(x)
        h = x.reshape(x.shape[0] // self.pack, self.pack * self.in_features)
        masks = dropout_masks(self, h.shape[0], like=h)
        for i, layer in enumerate(self.layers):
            h = F.leaky_relu(layer(h), self.negative_slope)
            if masks:
                h = h * masks[i]
        return self.out(h).squeeze(1)

    @property
    def dropout_active(self) -> bool:
        """Dropout draws masks on this forward (``dropout > 0`` in training mode)."""
        return self.dropout > 0 and self.training

    def extra_repr(self) -> str:
        return f"pack={self.pack}, negative_slope={self.negative_slope}" + (
            f", dropout={self.dropout}" if self.dropout else "")


_rng = threading.local()


@contextlib.contextmanager
def dropout_generator(generator: torch.Generator | None):
    """Within the block, :func:`dropout_masks` draws from ``generator`` (None: the default
    generator of the device; an outer block's generator stays in force). The reference step enters
    it with ``discriminator_step``'s ``generator`` so that its ``D(...)`` calls draw as the fused
    step does."""
    if generator is None:
        yield
        return
    previous = getattr(_rng, "generator", None)
    _rng.generator = generator
    try:
        yield
    finally:
        _rng.generator = previous


def keep_bits(keep: float) -> int | None:
    """The fewest random bits ``k`` (at most 8) that make ``keep * 2^k`` an integer, i.e. that
    give the keep probability exactly from ``k`` uniform bits; None when there are none (the
    draw then takes a float32 uniform per mask). ``keep = 0.5`` (ctgan's dropout) needs 1 bit."""
    for k in range(1, 9):
        if (keep * (1 << k)).is_integer():
            return k
    return None


def dropout_masks(D: MLPDiscriminator, rows: int, *, like: torch.Tensor,
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The dropout multipliers of one forward of ``D`` over ``rows`` packed rows: one ``(rows,
    width_l)`` tensor per hidden layer (1/(1-p) where kept, else 0), with ``like``'s dtype and
    device. An empty list when dropout is off (eval mode or ``p = 0``): nothing is drawn.

    One draw per forward, ``n = rows * sum(hidden)`` keep decisions laid out layer after layer,
    independent of the working dtype (fp16, bf16, fp32 and fp64 steps see the same masks):

    - when ``keep = 1-p`` is a multiple of ``2^-k`` for some ``k <= 8`` (:func:`keep_bits`; p =
      0.5, 0.25, 0.125, ...), from random bits: ``torch.randint(0, 2^31)`` words (31 uniform
      bits each, one 32-bit draw) cut into ``k``-bit fields ``f``, kept where ``f < keep *
      2^k``: exactly ``keep``, 31 // k decisions per word (ctgan's p = 0.5: 31);
    - otherwise from ``u = torch.rand(n)`` in float32, kept where ``u < keep``: ``keep`` to
      2^-24, as ``nn.Dropout``'s draw.

    Either costs less than torch's CPU ``bernoulli_`` (whose bits it does not reproduce;
    benchmarks/dropout_cost.py). ``generator``: None takes :func:`dropout_generator`'s, else the
    device's default generator."""
    if not D.dropout_active:
        return []
    if generator is None:
        generator = getattr(_rng, "generator", None)
    keep = 1.0 - D.dropout
    n = rows * sum(D.hidden)
    k = keep_bits(keep)
    if k is None:
        u = torch.rand(n, dtype=torch.float32, device=like.device, generator=generator)
        scaled = (u < keep).to(like.dtype).div_(keep)
    else:
        shifts, values = _bit_tables(k, keep, like.dtype, like.device)
        words = torch.randint(0, 1 << _WORD_BITS, (-(-n // len(shifts)),), dtype=torch.int64, device=like.device,
                              generator=generator)
        fields = (words[:, None] >> shifts).bitwise_and_((1 << k) - 1)
        scaled = values.index_select(0, fields.view(-1)[:n])
    masks, start = [], 0
    for width in D.hidden:
        masks.append(scaled[start:start + rows * width].view(rows, width))
        start += rows * width
    return masks


_BIT_TABLES: dict = {}
_WORD_BITS = 31  # uniform bits per torch.randint word: one 32-bit draw each (an out-of-place op, which
# torch.compile traces; Dynamo does not trace Tensor.random_)


def _bit_tables(k: int, keep: float, dtype: torch.dtype, device: torch.device):
    """``(shifts, values)`` of the random-bits draw: the offsets of the ``k``-bit fields in a
    random word, and each field value's multiplier (``1/keep`` below ``keep * 2^k``, else 0,
    computed as the float draw computes it). Cached per configuration, except while
    torch.compile traces or a CUDA graph captures (a tensor made during capture holds nothing
    until the graph replays)."""
    if torch.compiler.is_compiling():  # no read of the cache either: its guard would fail once filled
        return _make_bit_tables(k, keep, dtype, device)
    key = (k, keep, dtype, device)
    hit = _BIT_TABLES.get(key)
    if hit is None:
        hit = _make_bit_tables(k, keep, dtype, device)
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            _BIT_TABLES[key] = hit
    return hit


def _make_bit_tables(k: int, keep: float, dtype: torch.dtype, device: torch.device):
    shifts = torch.arange(0, k * (_WORD_BITS // k), k, device=device)
    values = (torch.arange(1 << k, device=device) < round(keep * (1 << k))).to(dtype).div_(keep)
    return shifts, values
