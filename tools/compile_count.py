"""Counts the Triton compilations a fused step triggers, without a GPU.

A Triton kernel compiles once per (config, specialisation): the constexpr values, the launch
options (num_warps, num_stages) and, for the other arguments, what Triton specialises on (an
int equal to 1 or divisible by 16, a pointer's dtype and 16-byte alignment). An autotuned
kernel compiles and times every surviving config the first time it sees a new tuning key.

:class:`CompileCounter` replaces ``JITFunction.run`` and ``Autotuner.run`` by recorders for the
duration of a ``with`` block, so the host code of ``fastgan.kernels.mlp_step`` runs for real
(on ``meta`` tensors: no memory, no kernel) and every launch it would make is recorded. This is
how the first-call compile counts in benchmarks/NOTES.md (section "Triton") were taken:

    python tools/compile_count.py            # every benchmark network, fp32
    python tools/compile_count.py --dtype bfloat16 --configs width-512,width-1024

Run it without ``TRITON_INTERPRET=1`` (the interpreter has one config per kernel by design).
Limits of the model: meta tensors have address 0, so a specialisation from a row slice that is
not 16-byte aligned on a real device is not counted; compile time per kernel is not modelled.
"""
from __future__ import annotations

import argparse
import inspect

import torch
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction


def _spec(param, value):
    """What Triton specialises a non-constexpr argument on (a close model of specialize_impl)."""
    if isinstance(value, torch.Tensor):
        aligned = value.data_ptr() % 16 == 0 and not param.do_not_specialize_on_alignment
        return ("ptr", str(value.dtype), aligned)
    if isinstance(value, bool):
        return ("i1", value)
    if isinstance(value, int):
        if param.do_not_specialize:
            return ("int",)
        return ("int", "1" if value == 1 else "16k" if value % 16 == 0 else "")  # strings: 1 == True
    if isinstance(value, float):
        return ("fp32",)
    return (type(value).__name__, value if value is None else None)


class CompileCounter:
    """Records compilations (distinct (kernel, config, specialisation)) and autotuning runs
    (distinct (kernel, tuning key)) instead of launching kernels."""

    def __init__(self):
        self.compiled: set = set()
        self.tuned: set = set()
        self.timed = 0  # configs timed over all autotune runs
        self._best: dict = {}  # the tuners' caches, private to this counter (a cold start)
        self._saved = None

    def __enter__(self):
        self._saved = (JITFunction.run, Autotuner.run)
        counter = self

        def jit_run(fn, *args, grid=None, warmup=False, **kwargs):
            options = tuple(sorted((k, kwargs.pop(k)) for k in ("num_warps", "num_stages", "num_ctas")
                                   if k in kwargs))
            bound = inspect.signature(fn.fn).bind(*args, **kwargs)
            bound.apply_defaults()
            key = [fn.fn.__name__, options]
            for p in fn.params:
                value = bound.arguments[p.name]
                key.append((p.name, value) if p.is_constexpr else (p.name, _spec(p, value)))
            counter.compiled.add(tuple(key))

        def tuner_run(tuner, *args, **kwargs):
            tuner.nargs = dict(zip(tuner.arg_names, args))
            all_args = {**tuner.nargs, **kwargs}
            key = [all_args[k] for k in tuner.keys if k in all_args]
            key += [str(v.dtype) for k, v in all_args.items() if k in tuner.arg_names and hasattr(v, "dtype")]
            key = tuple(key)
            configs = tuner.configs
            slot = (id(tuner), key)
            if len(configs) > 1 and slot not in counter._best:
                configs = tuner.prune_configs(kwargs)
                counter.tuned.add((tuner.base_fn.__name__, key))
                counter.timed += len(configs)
                counter._best[slot] = configs[0]
            elif len(configs) > 1:
                configs = [counter._best[slot]]
            for config in configs:
                tuner.fn.run(*args, **kwargs, **config.all_kwargs())
            tuner.nargs = None

        JITFunction.run, Autotuner.run = jit_run, tuner_run
        return self

    def __exit__(self, *exc):
        JITFunction.run, Autotuner.run = self._saved

    def snapshot(self) -> tuple[int, int, int]:
        """(compilations, autotune runs, configs timed by them)."""
        return len(self.compiled), len(self.tuned), self.timed


def _step(network, batch, objective, dtype):
    """One fused step of a benchmark configuration on ``meta`` tensors."""
    from fastgan import step_spec
    from fastgan.bench import configs as bench
    from fastgan.kernels import mlp_step

    meta = torch.device("meta")
    D = bench.make_discriminator(network, meta, dtype)
    rows = batch * network.pack
    real, fake = (torch.empty(rows, network.in_features, device=meta, dtype=dtype) for _ in range(2))
    loss = objective.make_loss()
    if objective.generator:
        mlp_step.mlp_gen_step(**step_spec.gen_step_op_args(D, fake, loss=loss, real=real))
    else:
        eps = torch.empty(batch, device=meta, dtype=dtype)
        mlp_step.mlp_disc_step(**step_spec.disc_step_op_args(D, real, fake, loss=loss,
                                                             penalty=objective.make_penalty(), eps=eps))


def count(networks, batches, objectives, dtype):
    """Per benchmark network, each on a cold cache (a fresh process with an empty Triton cache):
    (name, snapshot after its first call, snapshot after all its calls); see :meth:`snapshot`."""
    from fastgan.bench import configs as bench

    chosen = bench.select("cuda", configs=networks, batches=batches, objectives=objectives)
    for network in dict.fromkeys(c.network for c in chosen):
        counter = CompileCounter()
        first = None
        with counter:
            for c in (c for c in chosen if c.network == network):
                _step(network, c.batch, c.objective, dtype)
                first = first or counter.snapshot()
        yield network.name, first, counter.snapshot()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="targets,width,ctgan", help="benchmark families or network patterns")
    p.add_argument("--batches", help="comma-separated batch sizes (default: the benchmark's)")
    p.add_argument("--objectives", default="ns+r1,w+gp,hinge,gen")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    a = p.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")] if a.batches else None
    print("per network, on a cold cache: compilations / autotune runs (configs timed) of its first call "
          "(first batch and objective), then of all its calls (every batch and objective)")
    total = [0, 0, 0]
    for name, first, every in count(a.configs.split(","), batches, a.objectives.split(","), getattr(torch, a.dtype)):
        print(f"{name:18s} first call {first[0]:4d} / {first[1]:3d} ({first[2]:3d})    "
              f"all calls {every[0]:4d} / {every[1]:3d} ({every[2]:3d})")
        total = [t + e for t, e in zip(total, every)]
    print(f"{'sum':18s} {'':26s} all calls {total[0]:4d} / {total[1]:3d} ({total[2]:3d})")


if __name__ == "__main__":
    main()
