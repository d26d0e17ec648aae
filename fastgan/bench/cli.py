"""``fastgan bench`` / ``python -m fastgan.bench``: time the fused discriminator (and generator)
step of every available backend against the PyTorch baselines, interleaved in one run; print
the table and write ``benchmarks/results/<device>-<date>.md`` and ``.csv``."""
from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fastgan.bench import check, configs, launches, machine, memory, providers, report, timing
from fastgan.cli import names, non_negative_float, non_negative_int, output_problem, positive_int, positive_ints, seed

DEFAULTS = {  # repeats, warmup, min sample ms
    "cpu": (15, 2, 5.0), "cuda": (30, 3, 10.0),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastgan bench",
        description="Time the fused discriminator (and generator) step of every available backend against "
                    "the PyTorch baselines, interleaved in one run; print the table and write "
                    "benchmarks/results/<device>-<date>.md and .csv.",
        epilog="Families: targets (target: in 32, width 128, depth 4, B 4096 and 256; lab: in 2, "
               "width 64, depth 3, B 4096), width (in 32, depth 4, width 64/128/512/1024), ctgan "
               "(in 64/256, two hidden layers of 256, pack 1/10). depth = hidden layers; batch = rows "
               "per side. GPU default: every network at B 256, 4096, 65536. CPU default: the targets + "
               "every sweep network at B 256 (a few minutes on 2 quiet cores); --full adds B 4096.")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--configs", type=names, help="comma-separated families (targets,width,ctgan) or network name "
                                     "patterns (width-*, ctgan-in64-p10); default: all families")
    p.add_argument("--batch", type=positive_ints, help="comma-separated rows per side, replacing every network's batches")
    p.add_argument("--objectives", type=names, help=f"comma-separated subset of {','.join(configs.OBJECTIVES)}")
    p.add_argument("--providers", type=names, help=f"comma-separated subset of {','.join(providers.PROVIDERS)}; "
                                       f"default: {','.join(providers.DEFAULTS['cpu'])} (CPU), "
                                       f"{','.join(providers.DEFAULTS['cuda'])} (GPU)")
    p.add_argument("--full", action="store_true", help="CPU: the sweep networks at B 4096 too")
    p.add_argument("--quick", action="store_true", help="targets only (B <= 4096), 5 repeats, 1 warm-up")
    p.add_argument("--dtype", choices=("float32", "float64", "bfloat16"), default="float32")
    p.add_argument("--precision", choices=("highest", "high", "medium"), default="highest",
                   help="torch.set_float32_matmul_precision (high: TF32 on GPU)")
    p.add_argument("--repeats", type=positive_int, help="timed samples per provider (CPU 15, GPU 30)")
    p.add_argument("--warmup", type=non_negative_int, help="untimed steps per provider before timing")
    p.add_argument("--min-sample-ms", type=non_negative_float, help="steps are batched so a sample lasts this long")
    p.add_argument("--threads", type=positive_int, help="torch.set_num_threads")
    p.add_argument("--seed", type=seed, default=0, help="seed of the networks and inputs (default 0)")
    p.add_argument("--output", type=Path, help="path stem for .md and .csv "
                                               "(default benchmarks/results/<device>-<date>)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--no-memory", action="store_true", help="skip peak memory")
    p.add_argument("--no-launches", action="store_true", help="skip the profiler's launch/op count")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    return p


def _error(e: Exception) -> str:
    return f"error: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"


def _run_config(config, device, dtype, names, missing, tol, args):
    """Rows of one configuration: check every provider against reference, then time the ones
    that passed, interleaved; then memory (GPU) and launch counts, outside the timing."""
    D = configs.make_discriminator(config.network, device, dtype, args.seed)
    data = configs.make_inputs(config, device, dtype, args.seed)
    rows: dict[str, report.Row] = {}
    runners: dict[str, providers.Runner] = {}
    try:
        ref = providers.make_runner("reference", config, D, data)
        ref.step()
        want = [t.detach().clone() if t is not None else None for t in ref.result()]
    except Exception as e:  # e.g. out of memory: nothing to check against
        return [report.Row(config, n, f"missing: {missing[n]}" if missing[n] else f"{_error(e)} (reference)")
                for n in names]
    for name in names:
        if missing[name]:
            rows[name] = report.Row(config, name, f"missing: {missing[name]}")
            continue
        try:
            runner = ref if name == "reference" else providers.make_runner(name, config, D, data)
            err = None
            if runner is not ref:
                runner.step()
                err = check.relative_error(runner.result(), want)
        except Exception as e:  # a provider that cannot run this configuration: report, go on
            rows[name] = report.Row(config, name, _error(e))
            continue
        if err is not None and not err <= tol:
            rows[name] = report.Row(config, name, "check failed", check_err=err)
            continue
        runners[name] = runner
        rows[name] = report.Row(config, name, "ok", check_err=err, setup_s=runner.setup_s)
    stats, errors = timing.interleaved({n: r.step for n, r in runners.items()}, device, args.repeats,
                                       args.warmup, args.min_sample_ms / 1e3)
    for name, runner in runners.items():
        if name in errors:
            rows[name].status = f"error: {errors[name]}"
            continue
        rows[name].stats = stats[name]
        try:
            if device.type == "cuda" and not args.no_memory:
                rows[name].peak_bytes = memory.cuda_peak(runner)
            if not args.no_launches:
                rows[name].launches = launches.count(runner.step, device)
        except Exception as e:  # a measurement that failed leaves its cell empty
            rows[name].status = f"ok; memory/launch count {_error(e)}"
    return [rows[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)  # the numbers are checked by their type= functions
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible here")
    if args.providers and len(set(args.providers)) < len(args.providers):
        p.error(f"--providers: a provider is listed twice in {','.join(args.providers)}")
    device, dtype = torch.device(dev), getattr(torch, args.dtype)
    repeats, warmup, min_ms = DEFAULTS[dev]
    if args.quick:
        repeats, warmup = 5, 1
    args.repeats = repeats if args.repeats is None else args.repeats
    args.warmup = warmup if args.warmup is None else args.warmup
    args.min_sample_ms = min_ms if args.min_sample_ms is None else args.min_sample_ms
    try:
        chosen = configs.select(dev, args.configs, args.batch, args.objectives, full=args.full, quick=args.quick)
        names = args.providers or list(providers.DEFAULTS[dev])
        missing = {n: providers.why_missing(n, dev) for n in names}
    except ValueError as e:  # printed on stdout with status 2 (returned, not raised), as before
        print(f"fastgan bench: error: {e}")
        return 2
    stem = None
    if not (args.list or args.no_write):  # the output is checked (its folder made) before any timing
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        stem = args.output or Path("benchmarks/results") / f"{machine.slug(machine.device_name(device))}-{date}"
        if stem.suffix in (".md", ".csv"):  # as report.write does
            stem = stem.with_suffix("")
        if stem.name in ("", ".", ".."):
            p.error(f"--output {args.output}: needs a file name stem (.../<name> for <name>.md and <name>.csv)")
        if why := output_problem(stem.parent, [f"{stem.name}.md", f"{stem.name}.csv"]):
            p.error(f"--output {stem}: {why}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.precision)
    if args.list:
        for c in chosen:
            print(f"{c.label:40s} P={c.network.weights:>9,d} work={c.objective.work}BP")
        return 0
    baselines = [b for b in providers.BASELINES[dev] if b in names]
    statuses = [(n, not (why := providers.why_missing(n, dev)), why) for n in providers.PROVIDERS]
    start = time.perf_counter()
    info = machine.describe(device)
    peak = timing.matmul_peak(dtype, device)
    settings = {"dtype": args.dtype, "precision": args.precision,
                "repeats": str(args.repeats), "warmup": str(args.warmup),
                "min sample": f"{args.min_sample_ms:g} ms"}
    tol = check.tolerance(dtype, args.precision)
    rows: list[report.Row] = []
    bar = tqdm(chosen, desc="fastgan bench", unit="config", disable=args.no_progress)
    for config in bar:
        bar.set_postfix_str(config.label)
        rows += _run_config(config, device, dtype, names, missing, tol, args)
    if dev == "cpu" and not args.no_memory:
        timed = [(c, [r.provider for r in rows if r.config == c and r.stats is not None]) for c in chosen]
        for (c, _), peaks in zip(timed, memory.cpu_peaks(timed, dtype, args.seed)):
            for r in rows:
                if r.config == c and r.provider in peaks:
                    r.peak_bytes = peaks[r.provider]
    peak = max(peak, timing.matmul_peak(dtype, device))  # at the start and the end: the best
    settings["matmul peak (measured)"] = f"{peak / 1e12:.3g} TFLOP/s ({args.dtype} torch.mm, best of 20)"
    settings["run time"] = f"{time.perf_counter() - start:.0f} s"
    recs = report.records(rows, baselines, peak, launches.kind(device))
    over = report.overhead(rows)
    md = report.markdown(info, settings, statuses, recs, over, baselines, launches.kind(device))
    print(md.split("\n\n## Method", 1)[0])
    if stem is not None:
        for path in report.write(stem, md, report.csv_text(recs, info, settings)):
            print(f"wrote {path}")
    return 0
