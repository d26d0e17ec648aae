"""Triton kernels, installed as ``fastgan.kernels``. Importing a submodule imports triton; set
``TRITON_INTERPRET=1`` before that to run them on CPU tensors (tests only)."""
