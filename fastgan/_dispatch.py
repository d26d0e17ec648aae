"""Backend selection: the one place that knows which backends exist and picks one per call.

Backends (docs/DESIGN.md section 3):

==========  ============================================================================
cuda        CUDA C++ kernels in the compiled extension (NVIDIA GPU)
triton      Triton kernels (NVIDIA GPU; CPU tensors only under ``TRITON_INTERPRET=1``)
cpu         C++ kernels in the compiled extension (CPU tensors)
torch       the closed-form maths in plain torch operations (anywhere)
reference   autograd with ``create_graph=True``: what GAN code does today (anywhere)
==========  ============================================================================

A backend is chosen per call, never at import: the ``backend=`` argument, else the innermost
``use_backend(...)`` context, else the ``FASTGAN_BACKEND`` environment variable, else ``"auto"``.
Auto takes the fastest available backend for the tensors' device (cuda > triton > torch on
GPU, cpu > torch on CPU) and warns once when the extension it wanted could not load. A backend
named explicitly that cannot serve the call raises.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch

from fastgan import _native

BACKENDS = ("cuda", "triton", "cpu", "torch", "reference")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastgan_backend", default=None)
_warned: set[str] = set()


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # what it needs or why it is missing; "" when available


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None  # a file-system search: once per process


def _triton_interpret() -> bool:
    """Whether the Triton kernels run in Triton's interpreter (on CPU tensors):
    ``fastgan.kernels.INTERPRET``, the one read of ``TRITON_INTERPRET``, made when that package is
    first imported (the package alone imports no triton)."""
    from fastgan import kernels
    return kernels.INTERPRET


def _why_unavailable(name: str) -> str:
    """'' if the backend can run here, else the reason it cannot."""
    if name in ("torch", "reference"):
        return ""
    if name == "triton":
        if not _triton_installed():
            return "triton is not installed (pip install triton)"
        if not (torch.cuda.is_available() or _triton_interpret()):
            return "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors)"
        return ""
    ext, err = _native.load()
    if ext is None:
        return f"the compiled extension fastgan._C did not load ({err})"
    if name == "cuda":
        if not ext.cuda_compiled:
            return "fastgan._C was built without CUDA kernels (CPU-only torch, no nvcc, or FASTGAN_CUDA=0)"
        if not torch.cuda.is_available():
            return "no CUDA device"
    return ""


def available_backends() -> list[BackendStatus]:
    """Every backend with whether it can run on this machine and, if not, why."""
    return [BackendStatus(n, not (r := _why_unavailable(n)), r) for n in BACKENDS]


def serves_device(name: str, device: torch.device) -> bool:
    if name in ("torch", "reference"):
        return True
    if name == "cpu":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    return device.type == "cuda" or (device.type == "cpu" and _triton_interpret())  # triton


def check_name(name: str, origin: str) -> str:
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"{origin} must be one of {('auto',) + BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, calls without an explicit ``backend=`` use ``name``."""
    token = _context.set(check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _context.reset(token)


def assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing dynamo (and with it triton)
    when fastgan is imported: the public decorator only sets this marker
    (tests/test_mlp_step_compile.py checks that it still does)."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_result
def requested(backend: str | None) -> str:
    """The backend name in force for a call: argument, context, environment, or 'auto'. Under
    torch.compile it is read once per compiled graph, when the graph is traced (a constant: the
    context variable cannot be traced, and no guard watches the environment)."""
    if backend is not None:
        return check_name(backend, "backend")
    if (ctx := _context.get()) is not None:
        return ctx
    return check_name(os.environ.get("FASTGAN_BACKEND", "auto") or "auto", "FASTGAN_BACKEND")


def select(backend: str | None, device: torch.device, supported: tuple[str, ...] = BACKENDS) -> str:
    """Pick the backend for one call on tensors of ``device``.

    ``supported`` lists the backends that implement the operation. An explicit choice that
    cannot serve the call raises; auto falls back in order and warns once about a missing
    compiled extension.
    """
    return _select(requested(backend), device.type, supported)


@functools.lru_cache(maxsize=64)
def _select(name: str, device_type: str, supported: tuple[str, ...]) -> str:
    """:func:`select` for one (request, device type, operation): the answer depends on nothing
    else that changes within a process (the Triton run mode is read once), so it is computed once."""
    device = torch.device(device_type)
    if name != "auto":
        if name not in supported:
            raise ValueError(f"backend {name!r} does not implement this operation; it has {supported}")
        if not serves_device(name, device):
            raise ValueError(f"backend {name!r} cannot run on {device.type} tensors")
        if why := _why_unavailable(name):
            raise RuntimeError(f"backend {name!r} is not available: {why}")
        return name
    for candidate in _AUTO_ORDER.get(device.type, ("torch",)):
        if candidate not in supported:
            continue
        why = _why_unavailable(candidate)
        if not why:
            return candidate
        if candidate in ("cpu", "cuda") and candidate not in _warned:
            _warned.add(candidate)
            warnings.warn(f"fastgan: the {candidate!r} backend is unavailable, falling back: {why}",
                          RuntimeWarning, stacklevel=3)
    return "torch" if "torch" in supported else "reference"
