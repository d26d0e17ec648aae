"""``discriminator_step(..., backward=True)``: the one-op form, which writes D's ``.grad`` without
autograd. It must leave exactly what ``discriminator_step(...).backward()`` leaves, accumulate
like ``.backward()`` does, return a detached total, and refuse a DDP wrapper (whose all-reduce
needs autograd)."""
from __future__ import annotations

import copy

import pytest
import torch

import fastgan
from fastgan import fused

BACKENDS = ("cpu", "torch", "triton", "reference")
PENALTIES = {"none": lambda: None, "r1": lambda: fastgan.R1Penalty(gamma=2.0),
             "r2": lambda: fastgan.R2Penalty(gamma=0.5), "gp": lambda: fastgan.GradientPenalty(weight=3.0)}


def _require(backend: str) -> None:
    try:
        fused.resolve_backend(backend, "cpu")
    except (ValueError, RuntimeError) as err:
        pytest.skip(f"fused step backend {backend!r} unavailable: {err}")


def _setup(pack=1, dtype=torch.float64):
    torch.manual_seed(0)
    D = fastgan.MLPDiscriminator(3, (9, 7), pack=pack).to(dtype)
    real, fake = torch.randn(6, 3, dtype=dtype), torch.randn(6, 3, dtype=dtype)
    eps = torch.rand(6 // pack, dtype=dtype)
    return D, real, fake, eps


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("penalty", sorted(PENALTIES))
@pytest.mark.parametrize("pack", [1, 2])
def test_one_op_equals_autograd_form(backend, penalty, pack):
    _require(backend)
    D, real, fake, eps = _setup(pack)
    D2 = copy.deepcopy(D)
    loss = fastgan.HingeLoss()
    total = fastgan.discriminator_step(D, real, fake, loss=loss, penalty=PENALTIES[penalty](), backend=backend,
                                       eps=eps)
    total.backward()
    one, parts = fastgan.discriminator_step(D2, real, fake, loss=loss, penalty=PENALTIES[penalty](),
                                            backend=backend, eps=eps, backward=True, return_parts=True)
    assert not one.requires_grad and one.grad_fn is None
    torch.testing.assert_close(one, total.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(parts.loss + parts.penalty, one, rtol=1e-12, atol=0)
    for p, q in zip(D.parameters(), D2.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-15)
        assert q.grad.stride() == q.stride()  # optimisers (fused Adam) assume the parameter's layout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("backward", [False, True])
def test_inputs_are_data(backend, backward):
    """No gradient reaches real or fake, on every backend and in both forms."""
    _require(backend)
    D, real, fake, _ = _setup()
    real.requires_grad_(True)
    fake.requires_grad_(True)
    total = fastgan.discriminator_step(D, real, fake, loss="non_saturating", penalty=fastgan.R1Penalty(),
                                       backend=backend, backward=backward)
    if not backward:
        total.backward()
    assert real.grad is None and fake.grad is None
    assert all(p.grad is not None for p in D.parameters())


@pytest.mark.parametrize("backend", ["cpu", "torch", "reference"])
def test_one_op_accumulates_like_backward(backend):
    _require(backend)
    D, real, fake, _ = _setup()
    D2 = copy.deepcopy(D)
    loss, r1 = fastgan.NonSaturatingLoss(), fastgan.R1Penalty(gamma=1.0)
    for _ in range(2):  # .grad is None on the first call, accumulated on the second
        fastgan.discriminator_step(D, real, fake, loss=loss, penalty=r1, backend=backend).backward()
        fastgan.discriminator_step(D2, real, fake, loss=loss, penalty=r1, backend=backend, backward=True)
    D.out.weight.grad = None  # a mix of set and unset gradients
    D2.out.weight.grad = None
    fastgan.discriminator_step(D, real, fake, loss=loss, penalty=r1, backend=backend).backward()
    fastgan.discriminator_step(D2, real, fake, loss=loss, penalty=r1, backend=backend, backward=True)
    for p, q in zip(D.parameters(), D2.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-15)


def test_one_op_refuses_a_ddp_style_wrapper():
    D, real, fake, _ = _setup()

    class Wrapper(torch.nn.Module):  # what DDP looks like to discriminator_step: a .module attribute
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    with pytest.raises(ValueError, match="backward=True"):
        fastgan.discriminator_step(Wrapper(D), real, fake, loss="non_saturating", backward=True)
    assert all(p.grad is None for p in D.parameters())
