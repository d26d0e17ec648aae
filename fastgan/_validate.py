"""Argument checks shared by the public API: each raises before any kernel runs and names the
argument and what was expected."""
from __future__ import annotations

import math
import numbers
import operator

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


def positive_int(value, name: str) -> int:
    """``value`` as an int when it is an integer >= 1 (numpy integers included, bools not)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def real_number(value, name: str, *, minimum: float | None = None) -> float:
    """``value`` as a finite float (a real number, not a string or bool), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and number < minimum:
        bound = "non-negative" if minimum == 0 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return number


def generator(value, name: str = "generator") -> None:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__}")


def eps_tensor(eps, like: torch.Tensor) -> None:
    """``eps`` is a floating tensor on ``like``'s device (its shape is the penalty's to check)."""
    if not isinstance(eps, torch.Tensor):
        raise TypeError(f"eps must be a torch.Tensor or None, got {type(eps).__name__}")
    if not eps.is_floating_point():
        raise TypeError(f"eps must be a floating-point tensor, got dtype {eps.dtype}")
    if eps.device != like.device:
        raise ValueError(f"eps is on {eps.device} but real is on {like.device}")
