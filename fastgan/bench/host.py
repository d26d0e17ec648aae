"""Host cost of one fused step: what fastgan's Python path adds around its operator.

``python -m fastgan.bench.host [--backend cpu] [--rows 1]`` times, on a tiny problem (the lab's
network, ``rows`` rows per side) where the kernels themselves cost little, each way of calling
the step, and counts the operators each dispatches (top-level ``aten::``/``fastgan::`` calls; on a
GPU the launches):

==========================  =====================================================================
form                        what one call does
==========================  =====================================================================
op                          ``mlp_disc_step(**args)`` with arguments prepared once (the floor)
step(backward=True)         ``D.zero_grad(set_to_none=True)``; ``discriminator_step(...,
                            backward=True)``: gradients written to ``.grad``, no autograd
step + .backward()          ``D.zero_grad(set_to_none=True)``; ``discriminator_step(...).backward()``
generator op                ``mlp_gen_step(**args)``
generator step + .backward  ``generator_step(D, fake, ...).backward()``
reference + .backward()     the eager autograd step (double backward), for scale
==========================  =====================================================================

The difference between a form and its op is the host path (argument checks, the cached spec,
autograd). Times are the best of several repeats of many calls (the least disturbed estimate).
"""
from __future__ import annotations

import argparse
import time

import torch

import fastgan
from fastgan import _native, fused, step_spec
from fastgan.bench import launches


def _best_us(fn, calls: int, repeats: int, device: torch.device) -> float:
    for _ in range(max(calls // 10, 10)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def forms(backend: str, rows: int, device: torch.device) -> dict:
    """The timed callables, on the lab network (in 2, 3x64) with NS + R1."""
    _native.load()
    torch.manual_seed(0)
    D = fastgan.MLPDiscriminator(2, (64, 64, 64)).to(device)
    loss, r1 = fastgan.NonSaturatingLoss(), fastgan.R1Penalty(gamma=1.0)
    real, fake = torch.randn(rows, 2, device=device), torch.randn(rows, 2, device=device)
    fake_g = fake.clone().requires_grad_(True)
    disc_op, gen_op = fused.step_ops(backend)
    d_args = step_spec.disc_step_op_args(D, real, fake, loss=loss, penalty=r1)
    g_args = step_spec.gen_step_op_args(D, fake, loss=loss)

    def one_op():
        D.zero_grad(set_to_none=True)
        fastgan.discriminator_step(D, real, fake, loss=loss, penalty=r1, backend=backend, backward=True)

    def autograd():
        D.zero_grad(set_to_none=True)
        fastgan.discriminator_step(D, real, fake, loss=loss, penalty=r1, backend=backend).backward()

    def generator():
        fake_g.grad = None
        fastgan.generator_step(D, fake_g, loss=loss, backend=backend).backward()

    def reference():
        D.zero_grad(set_to_none=True)
        fastgan.discriminator_step(D, real, fake, loss=loss, penalty=r1, backend="reference").backward()

    return {"op": lambda: disc_op(**d_args), "step(backward=True)": one_op, "step + .backward()": autograd,
            "generator op": lambda: gen_op(**g_args), "generator step + .backward()": generator,
            "reference + .backward()": reference}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgan.bench.host", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=None, help="fused backend (default: auto for the device)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=1, help="rows per side (default 1: the host path dominates)")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backend = fused.resolve_backend(args.backend, str(device))
    print(f"host cost per call: backend {backend}, {args.device}, lab network (in 2, 3x64), NS + R1, "
          f"{args.rows} row(s) per side, torch {torch.__version__}, {args.threads} thread(s)\n")
    print(f"| form | us per call | {launches.kind(device)} per call |\n|---|---:|---:|")
    for name, fn in forms(backend, args.rows, device).items():
        us = _best_us(fn, args.calls, args.repeats, device)
        print(f"| {name} | {us:.1f} | {launches.count(fn, device):g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
