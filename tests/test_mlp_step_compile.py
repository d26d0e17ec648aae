"""torch.compile(fullgraph=True) of a discriminator training step built on discriminator_step.

Stock PyTorch cannot compile a gradient penalty (AOTAutograd refuses double backward); the
fused step is first-order, so the whole objective traces into one graph and its backward is
compiled. Checked against the eager autograd reference, with no recompile from one step to the
next (the lazy schedule ``every=k`` costs one cached graph per phase).
"""
from __future__ import annotations

import copy

import pytest
import torch

import fastgan
from fastgan import fused
from fastgan.fused import discriminator_step, generator_step


def require(backend: str) -> None:
    try:
        fused._resolve(backend, "cpu")
    except (ValueError, RuntimeError) as err:
        pytest.skip(f"fused step backend {backend!r} unavailable: {err}")


def reference_grads(D, real, fake, loss, penalty, eps):
    D = copy.deepcopy(D)
    with fastgan.use_backend("reference"):
        total = loss.discriminator_loss(D(real), D(fake)) + penalty(D, real, fake, eps=eps)
        total.backward()
    return total.detach(), [p.grad for p in D.parameters()]


def run_steps(compiler: str, backend: str, penalty_args: dict, steps: int, dtype=torch.float32):
    torch._dynamo.reset()
    torch.manual_seed(0)
    D = fastgan.MLPDiscriminator(5, (32, 17), negative_slope=0.2, pack=2).to(dtype)
    loss = fastgan.NonSaturatingLoss()
    penalty_cls = penalty_args.pop("cls")
    pen, ref_pen = penalty_cls(**penalty_args), penalty_cls(**penalty_args)

    def objective(real, fake, eps):
        total, parts = discriminator_step(D, real, fake, loss=loss, penalty=pen, backend=backend, eps=eps,
                                          return_parts=True)
        return total, parts.penalty

    compiled = torch.compile(objective, fullgraph=True, backend=compiler)
    for step in range(steps):
        real, fake = torch.randn(12, 5, dtype=dtype), torch.randn(12, 5, dtype=dtype)
        eps = torch.rand(6, dtype=dtype) if penalty_cls is fastgan.GradientPenalty else None
        want_total, want = reference_grads(D, real, fake, loss, ref_pen, eps)
        D.zero_grad(set_to_none=True)
        # After the first `every` steps every phase has its graph: no more compiles.
        with torch._dynamo.config.patch(error_on_recompile=step >= pen.every):
            total, penalty_value = compiled(real, fake, eps)
        total.backward()
        torch.testing.assert_close(total.detach(), want_total, rtol=1e-4, atol=1e-5)
        scale = max(w.abs().max().item() for w in want)
        for got, w in zip((p.grad for p in D.parameters()), want):
            torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-4 * scale)
        if pen.every > 1 and step % pen.every:
            assert penalty_value.item() == 0.0


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_compiled_step_inductor(backend):
    require(backend)
    run_steps("inductor", backend, dict(cls=fastgan.R1Penalty, gamma=2.0), steps=3)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_compiled_lazy_wgan_gp(backend):
    require(backend)
    run_steps("aot_eager", backend, dict(cls=fastgan.GradientPenalty, weight=5.0, every=2), steps=5)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_compiled_generator_step(backend):
    require(backend)
    torch._dynamo.reset()
    torch.manual_seed(1)
    D = fastgan.MLPDiscriminator(4, (16, 9), pack=3)
    fake = torch.randn(9, 4, requires_grad=True)
    real = torch.randn(9, 4)
    for loss in ("non_saturating", "relativistic"):
        compiled = torch.compile(lambda f, r: generator_step(D, f, loss=loss, real=r, backend=backend),
                                 fullgraph=True, backend="aot_eager")
        fake.grad = None
        compiled(fake, real).backward()
        got = fake.grad.clone()
        fake.grad = None
        generator_step(D, fake, loss=loss, real=real, backend="reference").backward()
        torch.testing.assert_close(got, fake.grad, rtol=1e-4, atol=1e-6)
        assert all(p.grad is None for p in D.parameters())


def test_constant_marker_matches_torch_compiler():
    """fused.py marks its backend resolution constant without importing dynamo; the marker must
    be what torch.compiler.assume_constant_result itself sets."""
    from fastgan import fused

    marked = torch.compiler.assume_constant_result(lambda: 0)
    probe = fused._assume_constant_result(lambda: 0)
    assert {k for k in vars(marked)} == {k for k in vars(probe)} == {"_dynamo_marked_constant"}
