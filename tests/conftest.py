"""Shared test parametrisation: backends come from fastgan's own probes (fastgan._dispatch), and
the ones that cannot run here are skipped with the probe's reason.

Triton kernels run on CPU tensors only under ``TRITON_INTERPRET=1`` (set it before pytest starts).

The tests run in importlib mode (pyproject.toml), so this directory and the developer tools
(tools/) are put on ``sys.path`` here: every test file imports the shared harness as
``import harness`` (tests/harness.py), and a test that uses a tool imports it by its name
(``import compile_count``: tools/compile_count.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
TOOLS = TESTS.parent / "tools"
for _path in (str(TOOLS), str(TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from fastgan import _dispatch


def backend_params(device: str = "cpu", include_reference: bool = False) -> list:
    """One ``pytest.param`` per backend that serves ``device`` tensors, skipped (with the probe's
    reason) where it cannot run here; backends for other devices are left out.

    ``reference`` is the ground truth the others are compared against, so it is left out unless
    asked for.
    """
    params = []
    for status in _dispatch.available_backends():
        if status.name == "reference" and not include_reference:
            continue
        if status.name in ("cpu", "cuda") and status.name != device:
            continue
        why = status.reason
        if not why and not _dispatch.serves_device(status.name, torch.device(device)):
            why = f"does not run on {device} tensors here" + (" (set TRITON_INTERPRET=1)" if device == "cpu" else "")
        marks = [pytest.mark.skip(reason=f"{status.name}: {why}")] if why else []
        params.append(pytest.param(status.name, id=status.name, marks=marks))
    return params


@pytest.fixture(params=backend_params("cpu"))
def backend(request) -> str:
    """Every non-reference backend that runs on CPU tensors here."""
    return request.param


@pytest.fixture
def fresh_fallback_warnings(monkeypatch):
    """Forget which fallback warnings were already shown and the cached backend choices, so a test
    sees its own (and the tests after it do not see the choices it made under its patches)."""
    monkeypatch.setattr(_dispatch, "_warned", set())
    _dispatch._select.cache_clear()
    yield
    _dispatch._select.cache_clear()


@pytest.fixture(params=backend_params("cuda"))
def cuda_backend(request) -> str:
    """Every non-reference backend that runs on CUDA tensors here."""
    return request.param
