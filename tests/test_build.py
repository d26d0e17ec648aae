"""The compiled extension: it loads and registers a CPU kernel for every operator; importing
fastgan is side-effect free; a missing extension falls back (auto) or raises (explicit)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import fastgan
import harness
from fastgan import _dispatch, _native

OPS = ("loss_term_forward", "loss_term_backward", "penalty_forward", "penalty_backward",
       "mlp_disc_step", "mlp_gen_step")


def _extension():
    ext, err = _native.load()
    if ext is None:
        pytest.skip(f"the compiled extension did not load: {err}")
    return ext


@pytest.mark.skipif(os.environ.get("FASTGAN_SKIP_EXTENSION") == "1", reason="built with FASTGAN_SKIP_EXTENSION=1")
def test_extension_loads():
    ext, err = _native.load()
    assert err is None, err
    assert ext.built_with_torch.split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(ext.cuda_compiled, bool)


@pytest.mark.parametrize("op", OPS)
def test_the_extension_registers_a_cpu_kernel_for_every_operator(op):
    """The schemas are defined in Python (fastgan.ops); the extension adds the CPU kernels (opcheck
    and the backends' agreement: tests/test_ops.py)."""
    _extension()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{op}", "CPU"), f"fastgan::{op} has no CPU kernel"


def _x(*shape, seed=0):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_import_initialises_no_cuda_and_no_triton():
    code = ("import sys, torch, fastgan\n"
            "assert not torch.cuda.is_initialized(), 'CUDA initialised at import'\n"
            "bad = sorted(m for m in sys.modules if m == 'triton' or m.startswith('triton.')"
            " or m.startswith('fastgan.kernels') or m == 'fastgan._C')\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def no_extension(monkeypatch, fresh_fallback_warnings):
    monkeypatch.setattr(_native, "load", lambda: (None, "ImportError: simulated build failure"))


def test_missing_extension_auto_falls_back_with_one_warning(no_extension):
    r, f = _x(4), _x(4, seed=1)
    loss = fastgan.NonSaturatingLoss()
    with pytest.warns(RuntimeWarning, match="'cpu' backend is unavailable.*simulated build failure") as record:
        value = loss.discriminator_loss(r, f)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert _dispatch.select(None, torch.device("cpu")) == "torch"
    expected = fastgan.NonSaturatingLoss(backend="reference").discriminator_loss(r, f)
    harness.assert_close(value, expected, None, value.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call warns no more
        loss.discriminator_loss(r, f)
    status = {s.name: s for s in fastgan.available_backends()}
    assert not status["cpu"].available and "simulated build failure" in status["cpu"].reason
    assert status["torch"].available and status["reference"].available


def test_missing_extension_explicit_cpu_raises(no_extension):
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available.*simulated build failure"):
        fastgan.HingeLoss(backend="cpu").discriminator_loss(_x(4), _x(4, seed=1))
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available"):
        fastgan.R1Penalty(backend="cpu")(torch.nn.Linear(3, 1).double(), _x(4, 3))
