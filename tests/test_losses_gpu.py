"""GAN losses and penalty reductions on a real CUDA device: the cuda, triton and torch backends against
the reference (fp64 reference for fp32/bf16 inputs). Skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

from fastgan import LOSSES
from fastgan.penalties import penalty_from_gradient
from fastgan.terms import PenaltyKind

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytestmark = pytest.mark.gpu
# Error budget against the fp64 reference: fp32 accumulates exactly enough for 1e-5; bf16 inputs
# and outputs are rounded to 8 bits of mantissa.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _logits(shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (3 * torch.randn(shape, generator=g, device="cuda")).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", [(1,), (1023,), (257, 1), (3, 1, 33, 65)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gpu_losses_match_reference(cuda_backend, name, reduction, shape, dtype):
    r, f = _logits(shape, dtype, 0), _logits(shape, dtype, 1)
    loss = LOSSES[name](reduction=reduction, backend=cuda_backend)
    ref = LOSSES[name](reduction=reduction, backend="reference")
    for fn, ref_fn, inputs in ((loss.discriminator_loss, ref.discriminator_loss, (r, f)),
                               (loss.generator_loss, ref.generator_loss, (f, r))):
        xs = [x.clone().requires_grad_(True) for x in inputs]
        out = fn(*xs)
        assert out.dtype == dtype
        grads = torch.autograd.grad(out, xs, torch.ones_like(out), allow_unused=True)
        xs64 = [x.double().requires_grad_(True) for x in inputs]
        expected = ref_fn(*xs64)
        expected_grads = torch.autograd.grad(expected, xs64, torch.ones_like(expected), allow_unused=True)
        tol = dict(TOL[dtype])
        if reduction == "sum":
            tol["atol"] *= r.numel()  # the absolute error of a sum grows with its length
        torch.testing.assert_close(out.double(), expected.detach(), **tol)
        for g, e in zip(grads, expected_grads):
            if e is not None:
                torch.testing.assert_close(g.double(), e, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (1000, 129)], ids=str)
@pytest.mark.parametrize("kind", list(PenaltyKind), ids=lambda k: k.name.lower())
def test_gpu_penalty_reduction_matches_reference(cuda_backend, kind, shape, dtype):
    g = _logits(shape, dtype, 2)
    gr = g.clone().requires_grad_(True)
    out = penalty_from_gradient(gr, kind, 2.0, 1.0, cuda_backend)
    (grad,) = torch.autograd.grad(out, gr)
    g64 = g.double().requires_grad_(True)
    expected = penalty_from_gradient(g64, kind, 2.0, 1.0, "reference")
    (expected_grad,) = torch.autograd.grad(expected, g64)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected.detach(), **TOL[dtype])
    torch.testing.assert_close(grad.double(), expected_grad, **TOL[dtype])
