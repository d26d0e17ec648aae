"""A zoo of discriminators for the generic step's tests and benchmarks (stock PyTorch layers only).

Each builder takes a ``width`` (small for tests, full for benchmarks) and returns a module mapping
a batch to one logit per row. :data:`ZOO` lists them with their input shape (per sample) and
what else they need (``pac`` rows, a condition).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrizations


def dcgan32(width: int = 64) -> nn.Sequential:
    """DCGAN at 32x32: conv 3-w-2w-4w, 4x4 stride 2, LeakyReLU(0.2), then a linear logit."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(4 * w * 4 * 4, 1))


class ResBlockDown(nn.Module):
    """Pre-activation residual block: (ReLU, conv3x3, ReLU, conv3x3, avg-pool) + (conv1x1, avg-pool)."""

    def __init__(self, cin: int, cout: int, first: bool = False):
        super().__init__()
        self.first = first
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        h = x if self.first else self.act(x)
        h = self.pool(self.conv2(self.act(self.conv1(h))))
        return h + self.pool(self.skip(x))


class ResidualD64(nn.Module):
    """SNGAN/BigGAN-style residual D (64x64 for benchmarks; any size divisible by 16): four down
    blocks, ReLU, spatial sum, linear."""

    def __init__(self, width: int = 64):
        super().__init__()
        w = width
        self.blocks = nn.Sequential(ResBlockDown(3, w, first=True), ResBlockDown(w, 2 * w),
                                    ResBlockDown(2 * w, 4 * w), ResBlockDown(4 * w, 8 * w))
        self.out = nn.Linear(8 * w, 1)

    def forward(self, x):
        h = torch.relu(self.blocks(x))
        return self.out(h.sum(dim=(2, 3)))


class MinibatchStd(nn.Module):
    """StyleGAN2's minibatch standard deviation (one feature map): rows of a group of ``group``
    samples share a statistic, so the rows' gradients are coupled."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x):
        g = self.group
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        y = x.reshape(g, -1, c, h, w)
        y = y - y.mean(0)
        y = y.square().mean(0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[1, 2, 3])
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], 1)


class StyleBlock(nn.Module):
    """StyleGAN2 residual D block: conv3x3-lrelu-conv3x3-lrelu-down + 1x1 skip, scaled by 1/sqrt 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.act = nn.LeakyReLU(0.2)
        self.down = nn.AvgPool2d(2)

    def forward(self, x):
        y = self.skip(self.down(x))
        h = self.act(self.conv0(x))
        h = self.down(self.act(self.conv1(h)))
        return (h + y) * (1 / math.sqrt(2))


class StyleGAN2D64(nn.Module):
    """A StyleGAN2-style D (64x64 by default) from stock layers: fromRGB, residual blocks down to 4x4,
    minibatch std (optional: ``mbstd_group=0`` skips it), conv, two linear layers."""

    def __init__(self, width: int = 64, mbstd_group: int = 4, resolution: int = 64):
        super().__init__()
        w = width
        self.from_rgb = nn.Sequential(nn.Conv2d(3, w, 1), nn.LeakyReLU(0.2))
        blocks, c = [], w
        for i in range(int(math.log2(resolution)) - 2):
            blocks.append(StyleBlock(c, min(4 * w, 2 * c)))
            c = min(4 * w, 2 * c)
        self.blocks = nn.Sequential(*blocks)
        self.mbstd = MinibatchStd(mbstd_group) if mbstd_group else nn.Identity()
        extra = 1 if mbstd_group else 0
        self.conv = nn.Conv2d(4 * w + extra, 4 * w, 3, 1, 1)
        self.fc = nn.Linear(4 * w * 16, 4 * w)
        self.out = nn.Linear(4 * w, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        h = self.blocks(self.from_rgb(x))
        h = self.act(self.conv(self.mbstd(h)))
        h = self.act(self.fc(h.flatten(1)))
        return self.out(h)


class ProjectionD(nn.Module):
    """Conditional projection D (Miyato & Koyama 2018): psi(phi(x)) + <embed(y), phi(x)>."""

    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        w = width
        self.phi = nn.Sequential(nn.Conv2d(3, w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, 2 * w, 4, 2, 1),
                                 nn.LeakyReLU(0.2), nn.AvgPool2d(2))
        self.psi = nn.Linear(2 * w * 16, 1)
        self.embed = nn.Embedding(classes, 2 * w * 16)

    def forward(self, x, y):
        h = self.phi(x).flatten(1)
        return self.psi(h) + (self.embed(y) * h).sum(1, keepdim=True)


class CTGANDiscriminator(nn.Module):
    """ctgan's discriminator: PacGAN rows of ``pac`` samples, (Linear, LeakyReLU(0.2),
    Dropout(0.5)) per hidden layer, then a linear logit."""

    def __init__(self, input_dim: int = 20, hidden=(256, 256), pac: int = 10):
        super().__init__()
        dim = input_dim * pac
        self.pac, self.pacdim = pac, dim
        seq = []
        for h in hidden:
            seq += [nn.Linear(dim, h), nn.LeakyReLU(0.2), nn.Dropout(0.5)]
            dim = h
        seq += [nn.Linear(dim, 1)]
        self.seq = nn.Sequential(*seq)

    def forward(self, input_):
        return self.seq(input_.view(-1, self.pacdim))


def smooth32(width: int = 16) -> nn.Sequential:
    """Smooth activations: conv-SiLU-conv-GELU(tanh)-linear-tanh-linear."""
    w = width
    return nn.Sequential(nn.Conv2d(3, w, 4, 2, 1), nn.SiLU(), nn.Conv2d(w, 2 * w, 4, 2, 1),
                         nn.GELU(approximate="tanh"), nn.Conv2d(2 * w, 2 * w, 4, 2, 1), nn.GELU(),
                         nn.Flatten(), nn.Linear(2 * w * 16, w), nn.Tanh(), nn.Linear(w, 1))


def norms32(width: int = 16) -> nn.Sequential:
    """GroupNorm, InstanceNorm (affine) and LayerNorm between convs."""
    w = width
    return nn.Sequential(nn.Conv2d(3, w, 4, 2, 1), nn.GroupNorm(2, w), nn.LeakyReLU(0.2),
                         nn.Conv2d(w, 2 * w, 4, 2, 1), nn.InstanceNorm2d(2 * w, affine=True), nn.LeakyReLU(0.2),
                         nn.Conv2d(2 * w, 2 * w, 4, 2, 1), nn.Flatten(), nn.LayerNorm(2 * w * 16), nn.SiLU(),
                         nn.Linear(2 * w * 16, 1))


def _reparametrize(model: nn.Module, fn) -> nn.Module:
    for m in list(model.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fn(m)
    return model


def spectral32(width: int = 16) -> nn.Module:
    """DCGAN-32 with spectral norm (torch.nn.utils.parametrizations) on every conv and linear."""
    return _reparametrize(dcgan32(width), parametrizations.spectral_norm)


def weightnorm32(width: int = 16) -> nn.Module:
    """DCGAN-32 with weight norm (torch.nn.utils.parametrizations) on every conv and linear."""
    return _reparametrize(dcgan32(width), parametrizations.weight_norm)


def spectral_hook32(width: int = 16) -> nn.Module:
    """DCGAN-32 with the hook-based torch.nn.utils.spectral_norm."""
    return _reparametrize(dcgan32(width), nn.utils.spectral_norm)


class Entry(NamedTuple):
    build: Callable[[int], nn.Module]
    shape: tuple[int, ...]     # per sample, in the tests
    width: int                 # small width for tests
    pack: int = 1              # samples per row
    classes: int = 0           # > 0: conditional, D(x, y) with y in [0, classes)


ZOO: dict[str, Entry] = {
    "dcgan32": Entry(dcgan32, (3, 32, 32), 4),
    # the tests run the 64x64 architectures at 16x16 (the same layers; fp64 convolutions are slow)
    "residual64": Entry(ResidualD64, (3, 16, 16), 4),
    "stylegan2_64": Entry(lambda w: StyleGAN2D64(w, resolution=16), (3, 16, 16), 4),
    "projection32": Entry(ProjectionD, (3, 32, 32), 4, classes=5),
    "ctgan": Entry(lambda w: CTGANDiscriminator(7, (w, w), pac=10), (7,), 16, pack=10),
    "smooth32": Entry(smooth32, (3, 32, 32), 4),
    "norms32": Entry(norms32, (3, 32, 32), 4),
    "spectral32": Entry(spectral32, (3, 32, 32), 4),
    "weightnorm32": Entry(weightnorm32, (3, 32, 32), 4),
}


def build(name: str, width: int | None = None, dtype=torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    e = ZOO[name]
    return e.build(width or e.width).to(dtype)


def batch(name: str, rows: int, dtype=torch.float64, seed: int = 1):
    """(real, fake, condition or None) with ``rows`` discriminator rows."""
    e = ZOO[name]
    gen = torch.Generator().manual_seed(seed)
    n = rows * e.pack
    real = torch.randn((n,) + e.shape, generator=gen, dtype=dtype)
    fake = torch.randn((n,) + e.shape, generator=gen, dtype=dtype)
    cond = None
    if e.classes:
        cond = (torch.randint(e.classes, (n,), generator=gen), torch.randint(e.classes, (n,), generator=gen))
    return real, fake, cond
