"""Backend selection: the backend= argument, the use_backend context, FASTGAN_BACKEND, their
precedence over auto, and the reasons available_backends() gives."""
from __future__ import annotations

import pytest
import torch

import fastgan
from fastgan import _dispatch, kernels

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_env_backend(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)


def test_auto_picks_the_fastest_available_cpu_backend():
    cpu_ok = next(s for s in fastgan.available_backends() if s.name == "cpu").available
    assert _dispatch.select(None, CPU) == ("cpu" if cpu_ok else "torch")
    assert _dispatch.select("auto", CPU) == _dispatch.select(None, CPU)
    assert _dispatch.select(None, CPU, supported=("torch", "reference")) == "torch"
    assert _dispatch.select(None, CPU, supported=("reference",)) == "reference"


def test_precedence_argument_over_context_over_env_over_auto(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert _dispatch.requested(None) == "reference"
    with fastgan.use_backend("torch"):
        assert _dispatch.requested(None) == "torch"
        assert _dispatch.requested("reference") == "reference"
        with fastgan.use_backend("auto"):
            assert _dispatch.requested(None) == "auto"
        assert _dispatch.requested(None) == "torch"
    assert _dispatch.requested(None) == "reference"
    monkeypatch.setenv("FASTGAN_BACKEND", "")
    assert _dispatch.requested(None) == "auto"


def test_the_chosen_backend_is_the_one_that_runs(monkeypatch):
    """A backend that must not run is replaced by one that raises; only the chosen path runs."""
    from fastgan import losses

    def boom(*args, **kwargs):
        raise AssertionError("the reference path ran")

    monkeypatch.setattr(losses.reference, "discriminator_loss", boom)
    r, f = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    fastgan.discriminator_loss(r, f, backend="torch")
    with fastgan.use_backend("torch"):
        fastgan.discriminator_loss(r, f)
    monkeypatch.setenv("FASTGAN_BACKEND", "torch")
    fastgan.discriminator_loss(r, f)
    with pytest.raises(AssertionError, match="reference path ran"):
        fastgan.discriminator_loss(r, f, backend="reference")
    with fastgan.use_backend("reference"), pytest.raises(AssertionError, match="reference path ran"):
        fastgan.discriminator_loss(r, f)
    with fastgan.use_backend("reference"):
        fastgan.discriminator_loss(r, f, backend="torch")  # the argument wins over the context


def test_unknown_names_raise_naming_where_they_came_from(monkeypatch):
    with pytest.raises(ValueError, match=r"^backend must be one of .*got 'gpu'"):
        _dispatch.select("gpu", CPU)
    with pytest.raises(ValueError, match=r"^backend must be one of .*got 'CPU'"):
        fastgan.discriminator_loss(torch.zeros(2), torch.zeros(2), backend="CPU")
    with pytest.raises(ValueError, match=r"^use_backend\(name\) must be one of .*got 'fast'"):
        with fastgan.use_backend("fast"):
            pass
    monkeypatch.setenv("FASTGAN_BACKEND", "turbo")
    with pytest.raises(ValueError, match=r"^FASTGAN_BACKEND must be one of .*got 'turbo'"):
        fastgan.discriminator_loss(torch.zeros(2), torch.zeros(2))


def test_explicit_backend_that_cannot_serve_the_call_raises():
    with pytest.raises(ValueError, match="backend 'cuda' cannot run on cpu tensors"):
        _dispatch.select("cuda", CPU)
    with pytest.raises(ValueError, match="backend 'cpu' cannot run on cuda tensors"):
        _dispatch.select("cpu", torch.device("cuda"))
    with pytest.raises(ValueError, match="backend 'cpu' does not implement this operation"):
        _dispatch.select("cpu", CPU, supported=("torch", "reference"))


def test_available_backends_reports_every_backend_with_a_reason():
    statuses = fastgan.available_backends()
    assert [s.name for s in statuses] == list(fastgan.BACKENDS)
    for s in statuses:
        assert isinstance(s, fastgan.BackendStatus)
        assert s.available == (s.reason == ""), s
    by_name = {s.name: s for s in statuses}
    assert by_name["torch"].available and by_name["reference"].available
    if not torch.cuda.is_available():
        assert not by_name["cuda"].available and by_name["cuda"].reason


def test_triton_needs_a_device_or_the_interpreter(monkeypatch):
    """The run mode is read once (fastgan.kernels.INTERPRET), so the test sets that, not the variable."""
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(kernels, "INTERPRET", False)
    status = {s.name: s for s in fastgan.available_backends()}["triton"]
    assert not status.available and "TRITON_INTERPRET=1" in status.reason
    monkeypatch.setattr(kernels, "INTERPRET", True)
    assert {s.name: s for s in fastgan.available_backends()}["triton"].available
