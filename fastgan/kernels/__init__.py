"""Triton kernels, installed as ``fastgan.kernels``. Importing a submodule imports triton; set
``TRITON_INTERPRET=1`` before that to run them on CPU tensors (tests only).

:data:`INTERPRET` is fastgan's only read of ``TRITON_INTERPRET``: once, when this package is first
imported, which is either when a kernel module is first imported (the package comes first) or
when backend selection (``fastgan._dispatch``) first asks about Triton (it imports this package
alone, without triton). ``@triton.jit`` reads the variable once too, when it decorates each kernel
at its module's import, and never again; so the variable must be set before the process first
uses Triton through fastgan, and changing it later changes nothing: not the kernels' configs
(``mlp_tuning``), not backend selection, not Triton.
"""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
