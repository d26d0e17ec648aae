"""The compiled extension: it loads, registers every operator, passes ``torch.library.opcheck``;
importing fastgan is side-effect free; a missing extension falls back (auto) or raises (explicit)."""
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
def test_every_schema_op_is_registered(op):
    _extension()
    assert hasattr(torch.ops.fastgan, op)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{op}", "Meta"), f"fastgan::{op} has no fake impl"


@pytest.mark.parametrize("op", OPS[:4])
def test_loss_and_penalty_ops_have_cpu_kernels(op):
    _extension()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{op}", "CPU"), f"fastgan::{op} has no CPU kernel"


def _x(*shape, seed=0):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("phi", [0, 1, 2, 3])
def test_opcheck_loss_term_ops(phi, reduction):
    _extension()
    x = _x(3, 5)
    torch.library.opcheck(torch.ops.fastgan.loss_term_forward.default, (x, phi, -1.0, 0.5, 2.0, reduction))
    grad_out = _x(3, 5, seed=1) if reduction == 0 else torch.tensor(0.5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastgan.loss_term_backward.default,
                          (grad_out, x, phi, -1.0, 0.5, 2.0, reduction))


@pytest.mark.parametrize("kind", [0, 1])
def test_opcheck_penalty_ops(kind):
    _extension()
    g = _x(4, 3)
    torch.library.opcheck(torch.ops.fastgan.penalty_forward.default, (g, kind, 2.0, 1.0))
    torch.library.opcheck(torch.ops.fastgan.penalty_backward.default,
                          (torch.tensor(0.5, dtype=torch.float64), g, kind, 2.0, 1.0))


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
