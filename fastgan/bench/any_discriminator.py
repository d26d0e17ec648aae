"""Benchmark: the generic discriminator step (fastgan.generic_step) against double backward.

    python -m fastgan.bench.any_discriminator --output any_discriminator.md

One training step of the discriminator (loss + penalties, every parameter gradient) on the
zoo's conv discriminators (fastgan/bench/zoo.py), four providers (six on CUDA):

- ``loss_only``: ``loss.discriminator_loss(D(real), D(fake)).backward()`` without the penalty:
  one forward and one backward of both batches, the unit of the floors (benchmarks/NOTES.md);
- ``double_backward``: ``loss.discriminator_loss(D(real), D(fake)) + scale * penalty(D, real,
  fake)`` and ``.backward()`` (the penalty's ``autograd.grad(create_graph=True)``);
- ``fastgan``: ``fastgan.generic_step.discriminator_step(..., backward=True)``, eager;
- ``fastgan_compiled``: the same step under ``torch.compile(fullgraph=True)``, ``.backward()``
  on its total;
- on CUDA, ``double_backward+graph`` and ``fastgan+graph``: those steps recorded once into a
  CUDA graph and replayed (``fastgan.GraphedStep``), which removes the host's cost per launch.
  The GPU target: ``--device cuda --configs residual64-b64``, ``fastgan+graph`` against
  ``double_backward``.

Times are interleaved medians (fastgan.bench.timing.interleaved: rotating rounds, so drifts of
a shared machine hit every provider alike) with the 20th-80th percentile range; ``--cpu-time``
times each step by the process's CPU time on one thread instead. The ratios between providers
are medians of the rounds' paired ratios (fastgan.bench.timing.paired); ``vs loss only`` is the
step's median over ``loss_only``'s.

Peak memory (``--memory``): the most memory in use during one step above what was in use just
before it (the previous step's gradients released). On CUDA ``torch.cuda.max_memory_allocated``;
on CPU the peak-RSS delta of fastgan.bench.memory (``VmHWM`` after the step minus ``VmRSS``
before, with glibc serving allocations of 128 KiB or more by mmap so that freed tensors leave
the RSS at once), measured in a subprocess after two warm-up steps of each provider, the
compiled provider excluded (its compilation would dominate the process).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import fastgan
from fastgan.bench import machine
from fastgan.bench.timing import interleaved, paired


CONFIGS = {  # name: (zoo network, width, batch, resolution, loss, penalties as (name, weight))
    "dcgan32-b64": ("dcgan32", 64, 64, 32, "non_saturating", [("r1", 10.0)]),
    "dcgan32-b256": ("dcgan32", 64, 256, 32, "non_saturating", [("r1", 10.0)]),
    "residual64-b32": ("residual64", 32, 32, 64, "non_saturating", [("r1", 10.0)]),
    "stylegan2_64-b32": ("stylegan2_64", 32, 32, 64, "non_saturating", [("r1", 10.0)]),
    "r3gan-residual64-b32": ("residual64", 32, 32, 64, "relativistic", [("r1", 1.0), ("r2", 1.0)]),
    "residual64-b64": ("residual64", 32, 64, 64, "non_saturating", [("r1", 10.0)]),  # the GPU target's
}
DEFAULT_CONFIGS = [name for name in CONFIGS if name != "residual64-b64"]  # the CPU runs


def _zoo():
    from fastgan.bench import zoo
    return zoo


def _network(zoo, name: str, width: int, resolution: int):
    if name == "stylegan2_64":
        return zoo.StyleGAN2D64(width, resolution=resolution)
    if name == "residual64":
        return zoo.ResidualD64(width)
    return zoo.ZOO[name].build(width)


def _penalty(name: str, weight: float):
    return {"r1": fastgan.R1Penalty, "r2": fastgan.R2Penalty}[name](weight)


def providers(config: str, device: torch.device, dtype: torch.dtype, compiled: bool = True,
              graphs: bool | None = None):
    """{provider: step function} for one configuration (each on its own copy of D). ``graphs``
    (default: on CUDA) adds ``double_backward+graph`` and ``fastgan+graph``: those two steps on
    copies of their own, recorded into a CUDA graph here (:class:`fastgan.GraphedStep`: eager
    warm-up calls, then the recording) and replayed by each call."""
    from fastgan import generic_step
    zoo = _zoo()
    net, width, batch, res, loss_name, pens = CONFIGS[config]
    torch.manual_seed(0)
    D0 = _network(zoo, net, width, res).to(device, dtype)
    real = torch.randn(batch, 3, res, res, device=device, dtype=dtype)
    fake = torch.randn(batch, 3, res, res, device=device, dtype=dtype)
    loss = fastgan.LOSSES[loss_name]()
    steps = {}

    def fresh():
        return copy.deepcopy(D0), [(_penalty(n, w), 1) for n, w in pens]

    D_plain = copy.deepcopy(D0)

    def loss_only():
        D_plain.zero_grad(set_to_none=True)
        loss.discriminator_loss(D_plain(real), D_plain(fake)).backward()
    steps["loss_only"] = loss_only

    def double_backward_of(D, penalties):
        def double_backward():
            D.zero_grad(set_to_none=True)
            total = loss.discriminator_loss(D(real), D(fake))
            for p, s in penalties:
                total = total + s * p(D, real, fake)
            total.backward()
        return double_backward

    def fastgan_of(D, penalties):
        def eager():
            D.zero_grad(set_to_none=True)
            generic_step.discriminator_step(D, real, fake, loss=loss, penalties=penalties, backward=True)
        return eager

    steps["double_backward"] = double_backward_of(*fresh())
    steps["fastgan"] = fastgan_of(*fresh())

    if compiled:
        D3, p3 = fresh()
        generic_step.prepare(D3)
        torch._dynamo.reset()  # one configuration's graphs (no dynamic-shape recompiles across them)
        fn = torch.compile(lambda r, f: generic_step.discriminator_step(D3, r, f, loss=loss, penalties=p3)[0],
                           fullgraph=True, dynamic=False)

        def compiled_step():
            D3.zero_grad(set_to_none=True)
            fn(real, fake).backward()
        steps["fastgan_compiled"] = compiled_step

    if graphs if graphs is not None else device.type == "cuda":
        from fastgan.cuda_graph import GraphedStep
        for name, make in (("double_backward", double_backward_of), ("fastgan", fastgan_of)):
            graphed = GraphedStep(make(*fresh()))
            graphed.capture()
            steps[f"{name}+graph"] = graphed
    return steps


def _cpu_time(steps: dict, repeats: int, rounds: dict):
    """Interleaved medians of each step's process CPU time (one warm-up call each); ``rounds``
    gets the samples in round order."""
    from fastgan.bench.timing import summarize
    for step in steps.values():
        step()
    names = list(steps)
    samples = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            c = time.process_time()
            steps[n]()
            samples[n].append(time.process_time() - c)
    rounds.update(samples)
    return {n: summarize(v) for n, v in samples.items()}, {}


class _Runner:
    """A provider's step as fastgan.bench.memory measures it (``release`` drops every provider's
    gradients, so the memory in use before a measured step is the same for all)."""

    setup_peak = None

    def __init__(self, steps: dict, name: str):
        self.steps, self.step = steps, steps[name]

    def release(self) -> None:
        for step in self.steps.values():
            for cell in getattr(step, "__closure__", None) or ():  # a GraphedStep has none
                if isinstance(cell.cell_contents, torch.nn.Module):
                    cell.cell_contents.zero_grad(set_to_none=True)


def peaks(config: str, device: torch.device, threads: int) -> dict[str, int | None]:
    """{provider: peak bytes} of one configuration's eager providers: on CUDA in this process,
    on CPU in a subprocess (``--memory-child``) with glibc's mmap threshold at 128 KiB."""
    from fastgan.bench import memory
    if device.type == "cuda":
        steps = providers(config, device, torch.float32, compiled=False, graphs=False)
        for step in steps.values():
            step()
            step()
        return {name: memory.cuda_peak(_Runner(steps, name)) for name in steps}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    done = subprocess.run([sys.executable, "-m", "fastgan.bench.any_discriminator", "--memory-child", config,
                           "--threads", str(threads)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory subprocess failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _memory_child(config: str, threads: int) -> None:
    from fastgan.bench import memory
    torch.set_num_threads(threads)
    steps = providers(config, torch.device("cpu"), torch.float32, compiled=False)
    for step in steps.values():
        step()
        step()
    print(json.dumps({name: memory.rss_peak(_Runner(steps, name)) for name in steps}))


def _paired_ratio(numerator: list[float], denominator: list[float]) -> str:
    """The rounds' median ratio with their 20th-80th percentiles: ``1.07x (1.01-1.12)``."""
    mid, lo, hi = (paired(numerator, denominator, q) for q in (50, 20, 80))
    return "" if mid is None else f"{mid:.2f}x ({lo:.2f}-{hi:.2f})"


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2 ** 20:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", help="markdown file to write (also printed)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, of {list(CONFIGS)} (default: {DEFAULT_CONFIGS})")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled provider")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one thread, and time each step by the process's CPU time (time.process_time) instead "
                         "of the wall clock: the work done, robust to other jobs on a shared machine")
    ap.add_argument("--memory", action="store_true", help="also measure each eager provider's peak memory")
    ap.add_argument("--no-layout-optimization", action="store_true",
                    help="compile with torch._inductor.config.layout_optimization off (Inductor's channels-last "
                         "conversion of conv graphs)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child, args.threads or torch.get_num_threads())
        return 0
    if args.cpu_time:
        torch.set_num_threads(1)
    if args.no_layout_optimization:
        from torch._inductor import config as inductor_config
        inductor_config.layout_optimization = False
    device = torch.device(args.device)
    dtype = torch.float32
    rows = []
    info = machine.describe(device)
    head = [
        "# Generic discriminator step vs double backward",
        "",
        f"`python -m fastgan.bench.any_discriminator {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        f"torch {torch.__version__}, {dtype}, {torch.get_num_threads()} threads; interleaved medians of "
        f"{args.repeats} rounds (ms per step: forward, penalties and every parameter gradient)"
        + ("; **process CPU time**, not wall clock." if args.cpu_time else "; wall clock."),
        ("Peak memory per step above the memory in use before it: "
         + ("`torch.cuda.max_memory_allocated`." if device.type == "cuda" else
            "peak-RSS delta (VmHWM - VmRSS) in a subprocess, glibc mmap threshold 128 KiB (eager providers).")
         if args.memory else "Peak memory: not measured (`--memory`)."),
        "`vs double backward`, `vs fastgan eager`: that provider's time over this one's, the median of the "
        "rounds' ratios, their 20th-80th percentiles in brackets (each round times every provider, so the "
        "machine's drift between rounds cancels); "
        "above 1: this provider is faster. `vs loss only`: the step's median over `loss_only`'s (loss forward "
        "+ backward, no penalty).",
        "",
        "| config | provider | median ms | p20-p80 ms | vs double backward | vs fastgan eager | vs loss only | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def write():
        text = "\n".join(head + rows) + "\n"
        if args.output:
            Path(args.output).write_text(text)  # after every configuration: partial runs keep their rows
        return text

    for config in args.configs.split(","):
        start = time.perf_counter()
        steps = providers(config, device, dtype, compiled=not args.no_compile)
        compile_s = None
        compile_error = None
        if "fastgan_compiled" in steps:
            t0 = time.perf_counter()
            try:
                steps["fastgan_compiled"]()
                compile_s = time.perf_counter() - t0
            except Exception as e:  # reported in the table; the eager providers go on
                compile_error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:100]}"
                del steps["fastgan_compiled"]
        rounds: dict[str, list[float]] = {}
        if args.cpu_time:
            stats, errors = _cpu_time(steps, args.repeats, rounds)
        else:
            stats, errors = interleaved(steps, device, repeats=args.repeats, warmup=1, min_sample_s=0.0, rounds=rounds)
        if compile_error:
            errors["fastgan_compiled"] = compile_error
            steps["fastgan_compiled"] = None
        unit = stats.get("loss_only")
        peak = peaks(config, device, torch.get_num_threads()) if args.memory else {}
        for name in steps:
            if name in errors:
                rows.append(f"| {config} | {name} | error: {errors[name][:80]} | | | | | |")
                continue
            s = stats[name]
            speed, eager = (_paired_ratio(rounds.get(other, []), rounds[name]) if other != name else "1.00x"
                            for other in ("double_backward", "fastgan"))
            over = f"{s.median / unit.median:.2f}" if unit else ""
            note = f" (compile {compile_s:.0f} s)" if name == "fastgan_compiled" and compile_s else ""
            rows.append(f"| {config} | {name}{note} | {s.median * 1e3:.1f} | {s.p20 * 1e3:.1f}-{s.p80 * 1e3:.1f} | "
                        f"{speed} | {eager} | {over} | {_mib(peak.get(name)) if args.memory else ''} |")
        print(f"{config}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        write()
    print(write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
