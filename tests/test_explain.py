"""``fastgan.explain``: which path a step takes and why, and the one-time notice when a step falls
back to double backward."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import fastgan
from fastgan import fused


def test_an_mlp_discriminator_takes_the_fused_path(backend):
    plan = fastgan.explain(fastgan.MLPDiscriminator(2, (8,)), backend=backend)
    assert plan == fastgan.StepPlan("fused", backend, plan.reason) and backend in plan.reason


def test_what_the_kernels_cannot_run_is_explained():
    D = fastgan.MLPDiscriminator(2, (8,), dropout=0.5)
    plan = fastgan.explain(D)  # dropout masks: fused, on a backend that takes them
    assert plan.path == "fused" and plan.backend in fused.DROPOUT_BACKENDS
    assert fastgan.explain(D.eval()).path == "fused"  # no masks are drawn in eval mode
    hooked = fastgan.MLPDiscriminator(2, (8,))
    hooked.out.register_forward_hook(lambda *args: None)
    assert fastgan.explain(hooked).path == "reference" and "out has forward hooks" in fastgan.explain(hooked).reason
    assert fastgan.explain(fastgan.MLPDiscriminator(2, (8,)), backend="reference").reason.startswith("backend 'reference'")


def test_any_other_module_takes_the_linearised_step():
    D = nn.Sequential(nn.Linear(2, 4), nn.LeakyReLU(0.2), nn.Linear(4, 1), nn.Flatten(0))
    plan = fastgan.explain(D)
    assert plan.path == "linearized" and "Sequential is not an MLPDiscriminator" in plan.reason
    assert fastgan.explain(D, backend="reference").path == "reference"


def test_a_fallback_to_double_backward_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(fused, "_logged", set())
    D = nn.Sequential(nn.Linear(2, 4), nn.LeakyReLU(0.2), nn.Linear(4, 1), nn.Flatten(0))
    D[0].register_forward_hook(lambda *args: None)
    assert "[0] has forward hooks" in fastgan.explain(D).reason
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    with caplog.at_level(logging.INFO, logger="fastgan"):
        for _ in range(2):
            fastgan.discriminator_step(D, real, fake, loss="hinge", penalty=fastgan.R1Penalty())
    notices = [r for r in caplog.records if "double backward" in r.getMessage()]
    assert len(notices) == 1 and notices[0].levelno == logging.INFO


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="D must be an nn.Module"):
        fastgan.explain("D")
    with pytest.raises(ValueError, match="needs an MLPDiscriminator"):
        fastgan.explain(nn.Linear(2, 1), backend="cpu")
