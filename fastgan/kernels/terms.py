"""Triton device functions for the elementwise loss maths (mirrors ``csrc/loss_terms.h`` and
``fastgan/terms.py``): ``term(x) = scale * phi(sign * x + shift)`` with PHI a constexpr code
0 softplus, 1 relu, 2 identity, 3 ``z**2 / 2``.

NaN propagates as in torch: relu(NaN) = NaN and relu'(NaN) = 1 (torch's relu backward passes the
gradient unless the output is <= 0), so the comparisons are written ``z <= 0`` with NaN taking the
other branch (``tl.maximum`` drops a NaN on the GPU)."""
import triton
import triton.language as tl


@triton.jit
def log1p(e):
    """log(1 + e) for e in [0, 1], accurate for tiny e (Goldberg: log(u) * e / (u - 1), u = 1 + e)."""
    u = 1.0 + e
    tiny = u == 1.0
    return tl.where(tiny, e, tl.log(u) * (e / tl.where(tiny, 1.0, u - 1.0)))


@triton.jit
def phi_value(z, PHI: tl.constexpr):
    """phi(z) for the constexpr code PHI; softplus is max(z, 0) + log1p(exp(-|z|)), exact at |z| = 1e4."""
    if PHI == 0:
        return tl.where(z <= 0.0, 0.0, z) + log1p(tl.exp(-tl.abs(z)))  # NaN: NaN + NaN
    elif PHI == 1:
        return tl.where(z <= 0.0, 0.0, z)
    elif PHI == 2:
        return z
    else:
        return 0.5 * z * z


@triton.jit
def phi_derivative(z, PHI: tl.constexpr):
    """phi'(z) for the constexpr code PHI; the sigmoid never overflows (e = exp(-|z|) <= 1)."""
    if PHI == 0:
        e = tl.exp(-tl.abs(z))
        return tl.where(z >= 0.0, 1.0, e) / (1.0 + e)
    elif PHI == 1:
        return tl.where(z <= 0.0, 0.0, 1.0).to(z.dtype)
    elif PHI == 2:
        return tl.full(z.shape, 1.0, z.dtype)
    else:
        return z
