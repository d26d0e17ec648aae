"""``python -m fastgan.bench.ctgan``: fastgan's CTGAN (:mod:`fastgan.integrations.ctgan`) against
SDV's ctgan, on speed and on sample quality. Needs ``pip install 'fastgan[ctgan]'``.

Speed (CPU, ``--threads`` threads, the two implementations interleaved):

- the discriminator update at ``--batch`` rows, as each training loop runs it (draw the noise
  and the condition, generate the fakes, one WGAN-GP update), and the update alone on a fixed
  batch; each with the discriminator in training mode (dropout on: what CTGAN trains) and in
  eval mode (dropout off: the fused kernels' path today, a preview of what dropout masks in the
  kernels would bring; not CTGAN's model);
- seconds per epoch of the training loop (the transformer fitted once beforehand and reused, so
  its time is excluded), ``--epoch-epochs`` epochs per sample;
- the whole ``fit`` (transformer included) at ``--epochs`` epochs.

Quality: each implementation trained with the same settings and seeds (``--seeds``,
``--quality-epochs``) on each table of ``--tables`` (``mixed``: :func:`fastgan.bench.ctgan_data.mixed_table`;
``breast_cancer`` and ``wine``: scikit-learn's bundled tables, target categorical), sampled to
the table's size and scored with sdmetrics' ``QualityReport`` (column shapes, column pair
trends); mean ± standard error over seeds.

Writes markdown to ``--output`` (and prints it). The full run::

    python -m fastgan.bench.ctgan --output benchmarks/results/ctgan-cpu-<date>.md
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

FULL_COMMAND = "python -m fastgan.bench.ctgan --output benchmarks/results/ctgan-cpu-<date>.md"
TABLES = ("mixed", "breast_cancer", "wine")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastgan.bench.ctgan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="markdown results file")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--rows", type=int, default=10_000, help="rows of the generated mixed table (default 10000)")
    p.add_argument("--batch", type=int, default=500, help="batch size, ctgan's default 500")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds of every speed measurement (default 5)")
    p.add_argument("--epoch-epochs", type=int, default=2, help="epochs per seconds-per-epoch sample (default 2)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the whole-fit timing (default 10)")
    p.add_argument("--fit-repeats", type=int, default=2, help="interleaved rounds of the whole-fit timing (default 2)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per implementation and table (default 3)")
    p.add_argument("--quality-epochs", type=int, default=300, help="epochs of the quality runs (ctgan's default 300)")
    p.add_argument("--tables", default=",".join(TABLES), help=f"quality tables, comma-separated from {TABLES}")
    p.add_argument("--quality-rows", type=int, default=None,
                   help="subsample each quality table to at most this many rows (default: all)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--label", default="", help="a line under the title (e.g. 'small run')")
    args = p.parse_args(argv)
    tables = [t for t in args.tables.split(",") if t]
    if unknown := sorted(set(tables) - set(TABLES)):
        p.error(f"--tables: unknown {unknown}; choose from {TABLES}")
    args.tables = tables
    for name in ("threads", "rows", "batch", "repeats", "epoch_epochs", "epochs", "fit_repeats", "seeds",
                 "quality_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    return args


# ---- the two implementations --------------------------------------------------------------------

def implementations():
    import ctgan

    from fastgan.integrations.ctgan import CTGAN
    return {"ctgan": ctgan.CTGAN, "fastgan": CTGAN}


@contextlib.contextmanager
def quiet():
    """fastgan's one-time 'reference path' warning and pandas/sklearn chatter off the report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _Prefitted:
    """Stands in for ctgan's DataTransformer class: hands out one already-fitted transformer
    whose fit does nothing and whose transform returns the cached matrix (so a fit times the
    training loop alone)."""

    def __init__(self, transformer, data):
        self.transformer, self.data = transformer, data

    def __call__(self):
        outer = self

        class Cached:
            def __getattr__(self, name):
                return getattr(outer.transformer, name)

            def fit(self, *a, **k):
                pass

            def transform(self, *a, **k):
                return outer.data

        return Cached()


@contextlib.contextmanager
def prefitted_transformer(transformer, data):
    import ctgan.synthesizers.ctgan as ctgan_module

    from fastgan.integrations import ctgan as ours_module
    saved = ctgan_module.DataTransformer, ours_module.DataTransformer
    ctgan_module.DataTransformer = ours_module.DataTransformer = _Prefitted(transformer, data)
    try:
        yield
    finally:
        ctgan_module.DataTransformer, ours_module.DataTransformer = saved


def model_kwargs(args, epochs: int) -> dict:
    return dict(batch_size=args.batch, epochs=epochs, enable_gpu=False)


# ---- speed ------------------------------------------------------------------------------------

def interleave(fns: dict, rounds: int, inner: int = 1, warmup: int = 1, scale: float = 1.0) -> dict:
    """{name: {"wall": [...], "cpu": [...]}}: seconds per call (divided by ``inner`` and
    ``scale``) of ``inner`` consecutive calls, by the wall clock and by this process's CPU time,
    sampled in rounds that visit every function once in an order rotated each round (a shared
    machine's drifts hit both alike). The CPU time is the robust figure on a loaded machine with
    one thread; with several threads it also counts the threads' waits."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                fns[name]()
            out[name]["wall"].append((time.perf_counter() - wall) / inner / scale)
            out[name]["cpu"].append((time.process_time() - cpu) / inner / scale)
    return out


def discriminator_updates(args, table, discrete):
    """Per-update seconds: {(mode, what): {impl: Stats}} and the fastgan path per mode."""
    from ctgan.data_sampler import DataSampler
    from ctgan.data_transformer import DataTransformer
    from ctgan.synthesizers.ctgan import Discriminator, Generator

    import fastgan
    from fastgan.integrations.ctgan import CTGAN, from_ctgan_discriminator, sample_rows

    torch.manual_seed(0)
    np.random.seed(0)
    transformer = DataTransformer()
    transformer.fit(table, discrete)
    data = transformer.transform(table)
    sampler = DataSampler(data, transformer.output_info_list, True)
    data_dim, cond_dim = transformer.output_dimensions, sampler.dim_cond_vec()
    model = CTGAN(**model_kwargs(args, 1))
    model._transformer, model._data_sampler = transformer, sampler
    model._generator = Generator(model._embedding_dim + cond_dim, model._generator_dim, data_dim)
    pac, batch = model.pac, args.batch
    mean = torch.zeros(batch, model._embedding_dim)
    std = mean + 1

    def batch_tensors(sample=sampler.sample_data):
        fakez, c1, _, col, opt = model._condition(torch.normal(mean=mean, std=std))
        perm = np.arange(batch)
        np.random.shuffle(perm)
        real = torch.from_numpy(sample(data, batch, col[perm], opt[perm]).astype("float32"))
        return fakez, c1, torch.cat([real, c1[perm]], dim=1)

    theirs = Discriminator(data_dim + cond_dim, model._discriminator_dim, pac=pac)
    ours = from_ctgan_discriminator(theirs)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-6)
    _, opt_ours = model._make_optimizers(ours)  # fused Adam
    _, opt_ours_loop = model._make_optimizers(ours, fused=False)  # ctgan's per-tensor Adam

    def ctgan_update(fake_cat, real_cat):  # the lines of ctgan.CTGAN.fit's discriminator update
        y_fake = theirs(fake_cat)
        y_real = theirs(real_cat)
        pen = theirs.calc_gradient_penalty(real_cat, fake_cat, "cpu", pac)
        loss_d = -(torch.mean(y_real) - torch.mean(y_fake))
        opt_theirs.zero_grad(set_to_none=False)
        pen.backward(retain_graph=True)
        loss_d.backward()
        opt_theirs.step()

    def ctgan_iteration():
        fakez, c1, real_cat = batch_tensors()
        fake = model._generator(fakez)  # ctgan keeps the generator's graph
        ctgan_update(torch.cat([model._apply_activate(fake), c1], dim=1), real_cat)

    def fastgan_iteration():  # its loop draws the real rows with sample_rows (the same rows)
        fakez, c1, real_cat = batch_tensors(functools.partial(sample_rows, sampler))
        with torch.no_grad():
            fake_cat = torch.cat([model._apply_activate(model._generator(fakez)), c1], dim=1)
        model._discriminator_update(ours, opt_ours, real_cat, fake_cat)

    fakez, c1, real_cat = batch_tensors()
    with torch.no_grad():
        fixed_fake = torch.cat([model._apply_activate(model._generator(fakez)), c1], dim=1)
    fixed_fake_leaf = fixed_fake.clone().requires_grad_(True)  # ctgan's penalty needs fakes with a graph
    steps = {
        "iteration": {"ctgan": ctgan_iteration, "fastgan": fastgan_iteration},
        "fixed batch": {"ctgan": lambda: ctgan_update(fixed_fake_leaf, real_cat),
                        "fastgan": lambda: model._discriminator_update(ours, opt_ours, real_cat, fixed_fake)},
        "fixed batch, ctgan's Adam on both": {
            "ctgan": lambda: ctgan_update(fixed_fake_leaf, real_cat),
            "fastgan": lambda: model._discriminator_update(ours, opt_ours_loop, real_cat, fixed_fake)},
    }
    results, paths = {}, {}
    for mode in ("train", "eval"):
        theirs.train(mode == "train")
        ours.train(mode == "train")
        with quiet():
            paths[mode] = fastgan.fused.step_backend(ours, None, real_cat.device)
        for what, fns in steps.items():
            with quiet():
                results[(mode, what)] = interleave(fns, rounds=4 * args.repeats, inner=3, warmup=2)
    return results, paths, (data_dim, cond_dim), (transformer, data)


def epoch_seconds(args, table, discrete, prefit):
    """Seconds per epoch of each implementation's loop (transformer excluded), interleaved."""
    impls = implementations()
    seeds = iter(range(10**6))

    def fit(cls):
        model = cls(**model_kwargs(args, args.epoch_epochs))
        model.set_random_state(next(seeds))
        model.fit(table, discrete)

    with quiet(), prefitted_transformer(*prefit):
        return interleave({name: (lambda cls=cls: fit(cls)) for name, cls in impls.items()},
                          rounds=args.repeats, scale=args.epoch_epochs)


def fit_seconds(args, table, discrete):
    """Seconds of the whole fit (transformer included) at --epochs epochs, interleaved."""
    impls = implementations()
    seeds = iter(range(10**6))

    def fit(cls):
        model = cls(**model_kwargs(args, args.epochs))
        model.set_random_state(next(seeds))
        model.fit(table, discrete)

    with quiet():
        return interleave({name: (lambda cls=cls: fit(cls)) for name, cls in impls.items()},
                          rounds=args.fit_repeats, warmup=0)


# ---- quality ----------------------------------------------------------------------------------

def load_table(name: str, args, seed: int = 0):
    from fastgan.bench import ctgan_data
    if name == "mixed":
        table, discrete = ctgan_data.mixed_table(args.quality_rows or args.rows, seed=seed)
    else:
        table, discrete = ctgan_data.sklearn_table(name, args.quality_rows, seed=seed)
    return table, discrete


def quality(args):
    """{table: {impl: {"Column Shapes": [...], "Column Pair Trends": [...], "fit s": [...]}}}."""
    from sdmetrics.reports.single_table import QualityReport

    from fastgan.bench import ctgan_data
    impls = implementations()
    out = {}
    for table_name in args.tables:
        table, discrete = load_table(table_name, args)
        meta = ctgan_data.metadata(table, discrete)
        out[table_name] = {name: {"Column Shapes": [], "Column Pair Trends": [], "fit s": []} for name in impls}
        for seed in range(args.seeds):
            for name, cls in impls.items():
                model = cls(**model_kwargs(args, args.quality_epochs))
                model.set_random_state(seed)
                with quiet():
                    start = time.perf_counter()
                    model.fit(table, discrete)
                    fit_s = time.perf_counter() - start
                    synthetic = model.sample(len(table))
                    report = QualityReport()
                    report.generate(table, synthetic, meta, verbose=False)
                scores = dict(zip(report.get_properties()["Property"], report.get_properties()["Score"]))
                row = out[table_name][name]
                row["Column Shapes"].append(float(scores["Column Shapes"]))
                row["Column Pair Trends"].append(float(scores["Column Pair Trends"]))
                row["fit s"].append(fit_s)
                print(f"  quality {table_name} seed {seed} {name}: shapes {row['Column Shapes'][-1]:.4f} "
                      f"pairs {row['Column Pair Trends'][-1]:.4f} fit {fit_s:.1f} s", file=sys.stderr)
    return out


# ---- report -----------------------------------------------------------------------------------

def mean_se(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f} (n=1)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) / math.sqrt(len(values)):.4f}"


def agreement(theirs, ours) -> str:
    """'difference | bound | agrees': fastgan's mean minus ctgan's, and the issue's bound on it:
    the larger of 0.02 and two standard errors of the difference (the two SEs in quadrature)."""
    diff = statistics.mean(ours) - statistics.mean(theirs)
    se = math.sqrt(sum(statistics.variance(v) / len(v) for v in (theirs, ours) if len(v) > 1))
    bound = max(0.02, 2 * se)
    return f"{diff:+.4f} | {bound:.4f} | {'yes' if abs(diff) <= bound else '**no**'}"


def speed_cells(samples: dict, unit: float, fmt: str) -> str:
    """'ctgan CPU | fastgan CPU | ratio | ctgan wall | fastgan wall | ratio' from :func:`interleave`'s samples."""
    from fastgan.bench.timing import percentile
    cells = []
    for clock in ("cpu", "wall"):
        a, b = samples["ctgan"][clock], samples["fastgan"][clock]
        for xs in (a, b):
            cells.append(f"{fmt.format(statistics.median(xs) * unit)} ({fmt.format(percentile(xs, 20) * unit)}-"
                         f"{fmt.format(percentile(xs, 80) * unit)})")
        cells.append(f"{statistics.median(a) / statistics.median(b):.2f}x")
    return " | ".join(cells)


def render(args, argv, info, speed, qual) -> str:
    lines = ["# fastgan's CTGAN vs ctgan (CPU)", ""]
    if args.label:
        lines += [args.label, ""]
    lines += ["Command: `" + " ".join(["python -m fastgan.bench.ctgan", *map(shlex.quote, argv)]) + "`", "",
              f"Full run: `{FULL_COMMAND}`", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items()] + [""]
    if speed is not None:
        updates, paths, dims, epochs, fits = speed
        lines += ["## Speed", "",
                  f"Generated mixed table, {args.rows} rows (data {dims[0]} + condition {dims[1]} columns into the "
                  f"discriminator), batch {args.batch}, pac 10, {args.threads} thread(s). fastgan's step path: "
                  f"training mode (dropout 0.5 on, CTGAN's model) **{paths['train']}**; eval mode (dropout off) "
                  f"**{paths['eval']}**.", "",
                  "### Discriminator update (ms per update: median, with p20-p80)", "",
                  "| D mode | what | ctgan CPU | fastgan CPU | ratio (CPU) | ctgan wall | fastgan wall | ratio (wall) |",
                  "|---|---|---|---|---|---|---|---|"]
        for (mode, what), samples in updates.items():
            label = "train (dropout on)" if mode == "train" else "eval (dropout off)"
            lines.append(f"| {label} | {what} | " + speed_cells(samples, 1e3, "{:.2f}") + " |")
        lines += ["", "'iteration': noise, condition, real batch (fastgan: sample_rows), fakes and one update, as each loop runs it "
                  "(ctgan keeps the generator's graph and backpropagates into it; fastgan generates under no_grad). "
                  "'fixed batch': the update alone on one batch (fastgan's CTGAN steps torch's fused Adam; "
                  "'ctgan's Adam on both': its per-tensor loop on both sides, the step's share alone). CPU: this process's CPU time; wall: the wall "
                  "clock. Ratio: ctgan / fastgan of the medians (above 1: fastgan is faster).", "",
                  "### Training loop and whole fit (seconds: median, with p20-p80)", "",
                  "| measure | ctgan CPU | fastgan CPU | ratio (CPU) | ctgan wall | fastgan wall | ratio (wall) |",
                  "|---|---|---|---|---|---|---|"]
        for label, samples in ((f"s per epoch (loop only, {args.epoch_epochs} epochs per sample)", epochs),
                               (f"s per fit at {args.epochs} epochs (transformer included)", fits)):
            lines.append(f"| {label} | " + speed_cells(samples, 1.0, "{:.3f}") + " |")
        lines.append("")
    if qual is not None:
        lines += ["## Quality (sdmetrics QualityReport, mean ± standard error over seeds)", "",
                  f"{args.quality_epochs} epochs, batch {args.batch}, seeds 0..{args.seeds - 1}"
                  + (f", tables subsampled to at most {args.quality_rows} rows" if args.quality_rows else "")
                  + ". Higher is better (1 = identical marginals / pair trends).", "",
                  "| table | rows | implementation | Column Shapes | Column Pair Trends | fit s (median) |",
                  "|---|---|---|---|---|---|"]
        for table_name, per_impl in qual.items():
            rows = len(load_table(table_name, args)[0])
            for name, r in per_impl.items():
                lines.append(f"| {table_name} | {rows} | {name} | {mean_se(r['Column Shapes'])} | "
                             f"{mean_se(r['Column Pair Trends'])} | {statistics.median(r['fit s']):.1f} |")
        lines += ["", "Agreement: fastgan's mean minus ctgan's; bound: the larger of 0.02 and two standard errors "
                  "of that difference.", "",
                  "| table | property | difference | bound | agrees |", "|---|---|---|---|---|"]
        for table_name, per_impl in qual.items():
            if set(per_impl) >= {"ctgan", "fastgan"}:
                for prop in ("Column Shapes", "Column Pair Trends"):
                    lines.append(f"| {table_name} | {prop} | "
                                 f"{agreement(per_impl['ctgan'][prop], per_impl['fastgan'][prop])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        import ctgan  # noqa: F401
        import sdmetrics  # noqa: F401
    except ImportError as e:
        print(f"python -m fastgan.bench.ctgan needs the ctgan extra: pip install 'fastgan[ctgan]' ({e})",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from fastgan.bench import ctgan_data, machine
    info = machine.describe(torch.device("cpu"))
    info.pop("triton", None)
    for package in ("ctgan", "sdmetrics", "rdt"):
        info[package] = machine._version(package)
    info["load average at start (1, 5, 15 min)"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    speed = qual = None
    if not args.skip_speed:
        table, discrete = ctgan_data.mixed_table(args.rows, seed=0)
        print("speed: discriminator updates", file=sys.stderr)
        updates, paths, dims, prefit = discriminator_updates(args, table, discrete)
        print("speed: seconds per epoch", file=sys.stderr)
        epochs = epoch_seconds(args, table, discrete, prefit)
        print("speed: whole fit", file=sys.stderr)
        fits = fit_seconds(args, table, discrete)
        speed = (updates, paths, dims, epochs, fits)
    if not args.skip_quality:
        print("quality", file=sys.stderr)
        qual = quality(args)
    info["load average at end (1, 5, 15 min)"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = render(args, argv, info, speed, qual)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
