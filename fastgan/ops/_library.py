"""The ``fastgan`` operator library: how an operator and its backend variants are declared.

An operator's module states its schema once and calls :func:`declare`, which defines

- ``fastgan::<name>``: the compiled extension (``fastgan._C``) registers its CPU and CUDA kernels
  under this name, so the ``cpu`` and ``cuda`` backends are one operator dispatched on the device;
- ``fastgan::<name>_<backend>`` for each Python backend (``torch``, ``triton``), with the same
  schema and the Python implementation registered as its kernel;

and registers one fake (meta) implementation for every variant that needs one, so that
``torch.compile`` traces them without running them. Every backend therefore runs through the
dispatcher and is checked by ``torch.library.opcheck`` (tests/test_ops.py).

The implementations are registered as they are: the dispatcher calls them with the schema's
arguments by position (trailing defaults left out), so each keeps the schema's parameter names
and defaults; tests/test_ops.py checks that they do.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from typing import Callable

import torch

LIB = torch.library.Library("fastgan", "FRAGMENT")

# Dispatch keys of the Python backends. torch: its implementation is plain torch operations, so it
# is decomposed wherever it runs (autograd flows through it, torch.compile sees the operations it
# is made of). triton: an opaque kernel on any device (CPU tensors under TRITON_INTERPRET=1),
# with a fake for tracing.
_KEYS = {"torch": "CompositeImplicitAutograd", "triton": "CompositeExplicitAutograd"}
NATIVE = ("cpu", "cuda")


@dataclass(frozen=True)
class Operator:
    """One declared operator: its name, its schema and the namedtuple of its arguments."""

    name: str
    schema: str
    args: type  # namedtuple: the schema's argument names, with its defaults

    def qualname(self, backend: str) -> str:
        """``fastgan::<name>`` for cpu and cuda, else ``fastgan::<name>_<backend>``."""
        return f"fastgan::{self.name}" if backend in NATIVE else f"fastgan::{self.name}_{backend}"

    def op(self, backend: str) -> torch._ops.OpOverload:
        """The backend's registered operator (``torch.ops.fastgan.<name>[_<backend>].default``)."""
        return _OVERLOADS[self.qualname(backend)]


# qualname -> OpOverload, filled when an operator is declared: every step and loss call looks its
# operator up, and under torch.compile a lookup that only reads the dict leaves a guard that stays
# true (one that filled it on first use, while Dynamo traced, would recompile on the next call)
_OVERLOADS: dict[str, torch._ops.OpOverload] = {}


def _argument_tuple(name: str, schema: str) -> type:
    parsed = torch._C.parse_schema(f"fastgan::{name}{schema}")
    fields = [a.name for a in parsed.arguments]
    defaults = [a.default_value for a in parsed.arguments if a.has_default_value()]
    return namedtuple(f"{name}_args", fields, defaults=defaults)


def declare(name: str, schema: str, *, fake: Callable | None, python: dict[str, Callable]) -> Operator:
    """Define ``fastgan::<name><schema>`` and, for each ``backend: implementation`` in ``python``,
    ``fastgan::<name>_<backend>`` with that implementation. ``fake``: the shapes of the outputs
    (None for an operator whose every variant is implicit)."""
    op = Operator(name, schema, _argument_tuple(name, schema))
    LIB.define(name + schema)
    if fake is not None:
        torch.library.register_fake(op.qualname("cpu"), fake, lib=LIB)
    for backend, impl in python.items():
        LIB.define(f"{name}_{backend}{schema}")
        LIB.impl(f"{name}_{backend}", impl, _KEYS[backend])
        if fake is not None and _KEYS[backend] != "CompositeImplicitAutograd":
            torch.library.register_fake(op.qualname(backend), fake, lib=LIB)
    for backend in ("cpu", *python):  # cpu and cuda share the native operator
        qualname = op.qualname(backend)
        _OVERLOADS[qualname] = getattr(torch.ops.fastgan, qualname.split("::")[1]).default
    return op


def register_autograd(forward: Operator, backward: Operator, closed_form: Callable,
                      backends: tuple[str, ...] = ("cpu", "triton")) -> None:
    """The autograd of ``forward(x, *config)`` on the kernel backends (``cpu`` stands for the
    extension's operator, cpu and cuda): d/dx runs ``backward(grad_out, x, *config)`` of the same
    backend, one kernel; under ``create_graph=True`` it runs ``closed_form`` (same arguments, torch
    operations), so double backward works. The torch variant needs none (it is decomposed).

    Registered as the operators' Autograd kernel: a first-order ``autograd.Function`` whose forward
    runs the operator below autograd. (``torch.library.register_autograd`` does the same with
    general machinery that costs about 30 us more per call on the CPU, which a loss term's host
    path would feel; tests/test_ops.py runs ``opcheck`` on the result.)"""
    for backend in backends:
        _register_first_order(forward.op(backend), backward.op(backend), closed_form)


def _register_first_order(op: torch._ops.OpOverload, backward_op: torch._ops.OpOverload,
                          closed_form: Callable) -> None:
    class FirstOrder(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *config):
            ctx.save_for_backward(x)
            ctx.config = config
            with torch._C._AutoDispatchBelowAutograd():
                return op(x, *config)

        @staticmethod
        def backward(ctx, grad_out):
            (x,) = ctx.saved_tensors
            if torch.is_grad_enabled():  # create_graph=True: a differentiable closed form
                grad = closed_form(grad_out, x, *ctx.config)
            else:
                grad = backward_op(grad_out, x, *ctx.config)
            return (grad,) + (None,) * len(ctx.config)

    def autograd_kernel(x, *config):
        if torch.is_grad_enabled() and x.requires_grad:
            return FirstOrder.apply(x, *config)
        with torch._C._AutoDispatchBelowAutograd():
            return op(x, *config)

    LIB.impl(op._schema.name.split("::")[1], autograd_kernel, "Autograd")
