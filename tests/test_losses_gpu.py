"""GAN losses and penalty reductions on a real CUDA device: the cuda, triton and torch backends against
the reference by the harness's one bound (tests/harness.py): fp32 and bf16 results against the
float64 reference, within K x the error of the reference run in the same dtype plus a floor.
Skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

import harness
from fastgan import LOSSES
from fastgan.penalties import penalty_from_gradient
from fastgan.terms import PenaltyKind

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytestmark = pytest.mark.gpu


def _logits(shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (3 * torch.randn(shape, generator=g, device="cuda")).to(dtype)


def _value_and_grads(fn):
    """inputs -> {"value", "d input i"} of ``fn`` (gradients for grad_output = 1): for the harness."""
    def run(*inputs):
        xs = [x.detach().clone().requires_grad_(True) for x in inputs]
        out = fn(*xs)
        grads = torch.autograd.grad(out, xs, torch.ones_like(out), allow_unused=True, materialize_grads=True)
        return {"value": out.detach(), **{f"d input {i}": g for i, g in enumerate(grads)}}
    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", [(1,), (1023,), (257, 1), (3, 1, 33, 65)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gpu_losses_match_reference(cuda_backend, name, reduction, shape, dtype):
    """Values and gradients within the harness's bound: the float64 reference, and the reference
    run in the working dtype as the baseline."""
    r, f = _logits(shape, dtype, 0), _logits(shape, dtype, 1)
    loss = LOSSES[name](reduction=reduction, backend=cuda_backend)
    ref = LOSSES[name](reduction=reduction, backend="reference")
    for fn, ref_fn, inputs in ((loss.discriminator_loss, ref.discriminator_loss, (r, f)),
                               (loss.generator_loss, ref.generator_loss, (f, r))):
        got = _value_and_grads(fn)(*inputs)
        assert got["value"].dtype == dtype
        truth, base = harness.expected(_value_and_grads(ref_fn), inputs, dtype)
        harness.assert_close(got, truth, base, dtype, f"{name} {fn.__name__}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (1000, 129)], ids=str)
@pytest.mark.parametrize("kind", list(PenaltyKind), ids=lambda k: k.name.lower())
def test_gpu_penalty_reduction_matches_reference(cuda_backend, kind, shape, dtype):
    g = _logits(shape, dtype, 2)
    got = _value_and_grads(lambda x: penalty_from_gradient(x, kind, 2.0, 1.0, cuda_backend))(g)
    assert got["value"].dtype == dtype
    truth, base = harness.expected(_value_and_grads(lambda x: penalty_from_gradient(x, kind, 2.0, 1.0, "reference")),
                                   (g,), dtype)
    harness.assert_close(got, truth, base, dtype)
