"""The compiled extension ``fastgan._C``: loading it (once, lazily). Loading it registers the CPU and
CUDA kernels of the operators that :mod:`fastgan.ops` defines."""
from __future__ import annotations

import functools
from types import ModuleType

import torch

import fastgan.ops  # noqa: F401  the schemas the extension's kernels register against


@functools.cache
def load() -> tuple[ModuleType | None, str | None]:
    """Import the extension. Returns ``(module, None)`` or ``(None, why it could not load)``."""
    try:
        from fastgan import _C
    except Exception as err:  # ImportError, or an undefined symbol after a torch upgrade
        return None, f"{type(err).__name__}: {err}"
    if _C.built_with_torch.split("+")[0] != torch.__version__.split("+")[0]:
        return None, (f"fastgan._C was built with torch {_C.built_with_torch} but torch "
                      f"{torch.__version__} is installed; reinstall fastgan")
    return _C, None
