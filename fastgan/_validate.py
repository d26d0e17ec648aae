"""Argument checks shared by the public API: each raises before any kernel runs and names the
argument and what was expected."""
from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def reduction(value: str) -> str:
    if value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {value!r}")
    return value


def tensors(**named: torch.Tensor | None) -> None:
    """Every given tensor is a non-empty floating tensor; all share one dtype and one device."""
    present = {k: v for k, v in named.items() if v is not None}
    for name, t in present.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.numel() == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    items = list(present.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "put them on one device")
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                            "use one dtype")


def same_shape(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor, why: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same "
                         f"shape ({why})")
