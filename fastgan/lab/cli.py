"""``fastgan lab``: train every (data set, objective, seed) in one regime, print the results
table and write ``results.md``, ``results.json``, ``lab.png`` (samples and metrics) and
``hopping.png`` (the non-saturating generator on the ring over training) to the output folder.

Two published regimes (``--regime``; ``fastgan.lab.train.REGIMES``):

- ``pacgan`` (the default): PacGAN's 2-D experiment, a batch-norm ReLU generator from 2-D noise
  (``fastgan.lab.train.PACGAN_FULL``: G 4 x 400, D 3 x 200, Adam 1e-4, 400,000 steps of batch
  100; ``--full``, a GPU job). Without ``--full`` it is narrowed and shortened to fit two CPU
  cores in five minutes (``fastgan.lab.train.PACGAN``: G 3 x 256, D 3 x 128, 6,000 steps, the
  generator's learning rate 3x the discriminator's, every rate rising over the first 10% of
  the steps and falling to 0 over the second half; 2 seeds, the ring only), and the output says
  so. Plain ``ns`` fills the modes unevenly there (some nearly or wholly empty); R1 and WGAN-GP
  fill them evenly, packing partly.
- ``unrolled-gan``: the small tanh MLPs of the unrolled-GAN / VEEGAN / GDPP experiments
  (``fastgan.lab.train.UNROLLED_GAN_FULL``: 25,000 steps of batch 512 with ``--full``, ring and grid;
  ``UNROLLED_GAN``: 3,000 steps of batch 128, objectives' own learning rates 10x). Plain ``ns``
  covers all eight ring modes there.

``--discriminator 1x128`` swaps in a one-hidden-layer discriminator (the depth of the
unrolled-GAN paper's; ``fastgan.lab.train.DISCRIMINATORS``). On a CUDA device each training
step is one CUDA-graph replay.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import shutil
import sys
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path

import torch

import fastgan
from fastgan import _dispatch, fused
from fastgan.cli import output_problem, positive_int
from fastgan.lab import plots
from fastgan.lab.data import DATASETS, get_dataset
from fastgan.lab.metrics import mean_se
from fastgan.lab.train import (DEFAULT_OBJECTIVES, DISCRIMINATORS, OBJECTIVES, PACGAN, PACGAN_FULL, REGIMES,
                               UNROLLED_GAN, UNROLLED_GAN_FULL, get_objective, train_run, with_discriminator)

METRICS = ("modes_captured", "high_quality_pct", "reverse_kl")
DIVERGENCES = ("forward_kl", "reverse_kl", "jensen_shannon")
NOTES = ("Modes captured: modes with at least one high-quality sample (within 3 std of its nearest mode) "
         "among 2,500 generator samples; reverse KL: of the high-quality histogram against uniform. "
         "D: columns are the divergences the trained discriminator's logits imply (fastgan.divergences, "
         "exact for the optimal discriminator): n/a for WGAN-GP, whose critic is not a log density ratio; "
         "a packed discriminator compares pack-fold products (their KL is pack times the per-sample KL). "
         "ms / step: wall time of one training step (all of its discriminator and generator updates; snapshots for the hopping figure included), mean over seeds.")
OUTPUTS = ("results.md", "results.json", "lab.png", "hopping.png")
SNAPSHOTS = 8  # samples kept over training for the hopping figure (data set ring, objective ns, seed 0)
SMOKE = {"steps": 300, "seeds": 1}  # ``--smoke``: a quick check that everything runs (its numbers mean little)
_queue = None  # a worker process's progress queue (set by _worker_init)


def _paragraphs(*texts: str, width: int = 78) -> str:
    """Plain-text help: each text wrapped on its own (``RawDescriptionHelpFormatter`` keeps the
    line breaks); a text that starts with two spaces is a list item, its lines indented."""
    out = []
    for text in texts:
        if text.startswith("  "):
            head, _, rest = text.strip().partition("  ")
            out.append(textwrap.fill(rest.strip(), width, initial_indent=f"  {head:<14}",
                                     subsequent_indent=" " * 16))
        else:
            out.append(textwrap.fill(text, width))
    return "\n".join(out)


def _description() -> str:
    return _paragraphs(
        "Train small GANs on 2-D Gaussian mixtures (a ring of 8 modes, a 5 x 5 grid) with several "
        "objectives and seeds, and measure mode collapse: modes captured, high-quality samples "
        "(within 3 std of their nearest mode) and the reverse KL of the samples over the modes. "
        "Prints the results table and writes results.md (every setting and the table), "
        "results.json, lab.png (samples and metrics) and hopping.png (plain ns on the ring over "
        "training) to the output folder.",
        "",
        "Regimes (--regime):",
        f"  pacgan  (the default) PacGAN's 2-D experiment: a batch-norm ReLU generator from 2-D noise. "
        f"The default run is narrowed (G {_layers(PACGAN.g_hidden)}, D {_layers(PACGAN.d_hidden)}) and "
        f"shortened ({PACGAN.steps:,} steps, 2 seeds, the ring only) to fit two CPU cores in about five "
        f"minutes; plain ns fills the modes unevenly there, R1 and WGAN-GP evenly. --full: the published "
        f"{PACGAN_FULL.steps:,} steps of batch {PACGAN_FULL.batch} (a GPU job).",
        f"  unrolled-gan  the small tanh MLPs of the unrolled-GAN and VEEGAN experiments "
        f"({UNROLLED_GAN.steps:,} steps of batch {UNROLLED_GAN.batch}; --full: {UNROLLED_GAN_FULL.steps:,} "
        f"of batch {UNROLLED_GAN_FULL.batch}); plain ns covers all eight ring modes there.")


EPILOG = "\n".join([
    "examples:",
    "  fastgan lab                            the default run (make lab): about 5",
    "                                         minutes on 2 cores",
    "  fastgan lab --smoke                    a quick check that everything runs:",
    f"                                         {SMOKE['steps']} steps, {SMOKE['seeds']} seed (the numbers mean little)",
    "  fastgan lab --data grid --steps 20000  the 5 x 5 grid, at the length it needs",
    "  fastgan lab --full --device cuda       the published length (a GPU job)",
    "",
    _paragraphs("Progress goes to stderr, one line per run: on a terminal a live line, elsewhere "
                "(a log) plain lines at each run's start, every 25% of its steps and its end. "
                "--quiet leaves it out.")])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgan lab", description=_description(), epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=None,
                   help="data sets (default: ring; ring grid with --full)")
    p.add_argument("--objectives", nargs="+", default=list(DEFAULT_OBJECTIVES),
                   help=f"objectives: {', '.join(OBJECTIVES)} or ns-unrolled[-<k>][-fo] (unrolled GAN, k look-ahead "
                        f"steps, 5 if omitted, -fo: first-order) (default: {' '.join(DEFAULT_OBJECTIVES)})")
    p.add_argument("--seeds", type=positive_int, default=None, help="number of seeds, 0..N-1 (default 2; 5 with --full)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps per run (overrides the regime)")
    p.add_argument("--backend", default="auto", choices=("auto",) + fastgan.BACKENDS,
                   help="fastgan backend for the discriminator and generator steps (default auto)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to train (default auto: cuda when available; runs there one at a time)")
    p.add_argument("--out", type=Path, default=Path("lab_results"), help="output folder (default lab_results/)")
    p.add_argument("--regime", choices=list(REGIMES), default="pacgan",
                   help="the published set-up to train in: pacgan (default; PacGAN's 2-D experiment, its "
                        "batch-norm ReLU generator from 2-D noise) or unrolled-gan (the unrolled-GAN / VEEGAN "
                        "small tanh MLPs, where plain ns covers the ring)")
    p.add_argument("--discriminator", choices=sorted(DISCRIMINATORS), default=None,
                   help="the discriminator's hidden layers instead of the regime's: 2x128 (the unrolled-gan "
                        "regime's) or 1x128 (the unrolled-GAN paper's depth, where plain ns drops modes) "
                        "(default: the regime's own)")
    p.add_argument("--full", action="store_true",
                   help="the regime's published length (unrolled-gan: 25,000 steps of batch 512; pacgan: "
                        "400,000 steps of batch 100) and learning rates, 5 seeds by default")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: the models are small; results are bitwise "
                        "reproducible for a fixed thread count)")
    p.add_argument("--jobs", type=positive_int, default=2,
                   help="runs trained in parallel worker processes (default 2, one per core of "
                        "the target machine; results do not depend on it)")
    p.add_argument("--smoke", action="store_true",
                   help=f"a quick check that everything runs: --steps {SMOKE['steps']} --seeds {SMOKE['seeds']} "
                        "unless they are given (not with --full)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _device(args: argparse.Namespace) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device


def backend_problem(backend: str, device: str) -> str:
    """'' when the fastgan ``backend`` can train on ``device`` here, else why not."""
    status = {s.name: s for s in fastgan.available_backends()}[backend]
    if not status.available:
        return f"the {backend} backend is unavailable here: {status.reason}"
    if not _dispatch.serves_device(backend, torch.device(device)):
        hint = {"cuda": "it needs --device cuda", "cpu": "it needs --device cpu",
                "triton": "on the CPU it needs TRITON_INTERPRET=1"}.get(backend, "")
        return f"the {backend} backend cannot run on {device} tensors (training device {device}; {hint})"
    if backend not in fused.step_backends():
        return f"this installation has no fused-step implementation of the {backend} backend"
    return ""


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The checks of the options' values that need no file system (``p.error`` on the first
    that fails)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    if args.smoke:
        if args.full:
            p.error("--smoke: not with --full (--smoke is a short run, --full the published length)")
        for name, value in SMOKE.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    try:  # canonical names (ns-unrolled -> ns-unrolled-5), as the results show them
        args.objectives = [get_objective(name).name for name in args.objectives]
    except ValueError as e:
        p.error(f"--objectives: {e}")
    if args.backend != "auto" and (why := backend_problem(args.backend, _device(args))):
        p.error(f"--backend {args.backend}: {why}")
    return args


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options, checked; the output folder is checked (and created) by :func:`main`."""
    p = _parser()
    return _check(p, p.parse_args(argv))


def _fmt(mean: float, se: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def summarise(results) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """(dataset, objective) -> metric -> (mean, standard error) over seeds."""
    groups: dict[tuple[str, str], list] = {}
    for r in results:
        groups.setdefault((r.dataset, r.objective), []).append(r)
    out = {}
    for key, runs in groups.items():
        row = {m: mean_se([getattr(r.metrics, m) for r in runs]) for m in METRICS}
        row.update({f"D_{d}": mean_se([r.divergences.get(d) for r in runs]) for d in DIVERGENCES})
        row["seconds"] = mean_se([r.seconds for r in runs])
        row["ms_per_step"] = mean_se([1e3 * r.train_seconds / r.steps for r in runs])
        out[key] = row
    return out


def table(summary, mixtures, seeds: int) -> str:
    """The markdown results table."""
    head = ("| data | objective | modes captured | high-quality % | reverse KL | "
            "D: KL(r‖g) | D: KL(g‖r) | D: JS | ms / step |")
    lines = [head, "|" + "---|" * 9]
    for (ds, obj), m in summary.items():
        cells = [ds, obj, _fmt(*m["modes_captured"], 1) + f" / {mixtures[ds].modes}",
                 _fmt(*m["high_quality_pct"], 1), _fmt(*m["reverse_kl"], 3),
                 _fmt(*m["D_forward_kl"], 3), _fmt(*m["D_reverse_kl"], 3), _fmt(*m["D_jensen_shannon"], 3),
                 f"{m['ms_per_step'][0]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMean ± standard error over {seeds} seed(s).\n\n" + NOTES


def run_name(job) -> str:
    """A run's name in the progress lines: data/objective/seed N."""
    ds, obj, seed = job
    return f"{ds}/{obj}/seed {seed}"


class Progress:
    """Per-run progress on ``stream`` (stderr): ``progress(job, n)`` reports ``n`` more steps of
    the run ``job`` (``n = 0``: it started). Every line names its run (data/objective/seed), its
    steps and its rate.

    On a terminal one live line shows the runs in progress (rewritten in place) and each run
    leaves one line when it ends. Elsewhere (a log, a pipe) the lines are plain, without
    carriage returns: one when a run starts, one at each 25% of its steps (its end included)."""

    QUARTERS = 4

    def __init__(self, jobs, steps: int, stream=None, enabled: bool = True, tty: bool | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.steps = steps
        self.label = {job: f"[{i}/{len(jobs)}] {run_name(job)}" for i, job in enumerate(jobs, 1)}
        self.done = dict.fromkeys(self.label, 0)
        self.started: dict = {}
        self.live = False  # a live line is on the terminal

    def __call__(self, job, n: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if job not in self.started:
            self.started[job] = now
            if not self.tty:
                self._line(f"{self.label[job]}: started, {self.steps:,} steps")
        before = self.done[job]
        self.done[job] = after = min(self.steps, before + n)
        if after == self.steps and before < self.steps:
            self._line(self._status(job, now) + f", {now - self.started[job]:.1f} s")
        elif not self.tty and after * self.QUARTERS // self.steps > before * self.QUARTERS // self.steps:
            self._line(self._status(job, now))
        if self.tty:
            self._redraw(now)

    def close(self) -> None:
        if self.enabled and self.tty and self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.live = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _status(self, job, now: float) -> str:
        done, elapsed = self.done[job], now - self.started[job]
        rate = f", {done / elapsed:.0f} steps/s" if done and elapsed > 0 else ""
        return f"{self.label[job]}: step {done:,}/{self.steps:,} ({100 * done // self.steps}%){rate}"

    def _line(self, text: str) -> None:
        self.stream.write(("\r\033[K" if self.tty and self.live else "") + text + "\n")
        self.stream.flush()
        self.live = False

    def _redraw(self, now: float) -> None:
        running = [job for job in self.started if self.done[job] < self.steps]
        if not running:
            return
        width = shutil.get_terminal_size().columns - 1
        text = " | ".join(self._status(job, now) for job in running)
        self.stream.write("\r\033[K" + text[:width])
        self.stream.flush()
        self.live = True


def _run_one(job, regime, backend, threads, device, progress):
    ds, obj, seed = job
    torch.set_num_threads(threads)
    snapshots = SNAPSHOTS if (ds, obj, seed) == ("ring", "ns", 0) else 0
    progress(job, 0)
    return train_run(get_dataset(ds), get_objective(obj), seed, regime, backend, device,
                     on_step=lambda n: progress(job, n), snapshots=snapshots)


def _worker_init(queue):
    global _queue
    _queue = queue


def _worker(job, regime, backend, threads):
    return _run_one(job, regime, backend, threads, "cpu", lambda job, n: _queue.put((job, n)))


def run_all(jobs, regime, backend, threads: int, processes: int, progress, device: str = "cpu") -> list:
    """Train every (dataset, objective, seed) job, in order of ``jobs``; on the CPU with
    ``processes > 1`` in forked worker processes that report through a queue. ``progress(job, n)``:
    ``n`` more steps of ``job`` done (0 when it starts)."""
    if processes == 1 or len(jobs) == 1 or device != "cpu":
        return [_run_one(job, regime, backend, threads, device, progress) for job in jobs]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with ProcessPoolExecutor(min(processes, len(jobs)), mp_context=ctx, initializer=_worker_init,
                             initargs=(queue,)) as pool:
        futures = [pool.submit(_worker, job, regime, backend, threads) for job in jobs]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while not queue.empty():
                progress(*queue.get())
            for f in done:
                f.result()  # raise a worker's exception here
        while not queue.empty():
            progress(*queue.get())
        return [f.result() for f in futures]


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = _check(p, p.parse_args(list(sys.argv[1:] if argv is None else argv)))
    if why := output_problem(args.out, OUTPUTS):  # before the training, not after it
        p.error(f"--out {args.out}: {why}")
    shortened, published = REGIMES[args.regime]
    regime = published if args.full else shortened
    if args.discriminator is not None:
        regime = with_discriminator(regime, args.discriminator)
    if args.steps is not None:
        regime = replace(regime, steps=args.steps)
    n_seeds = args.seeds or (5 if args.full else 2)
    if args.data is None:
        args.data = ["ring", "grid"] if args.full else ["ring"]
    torch.set_num_threads(args.threads)
    backend = None if args.backend == "auto" else args.backend
    device = _device(args)
    mixtures = {name: get_dataset(name) for name in args.data}
    length = scope(regime, published, n_seeds, args.data)
    jobs = [(ds, obj, s) for ds in args.data for obj in args.objectives for s in range(n_seeds)]
    print(opening(regime, published, len(jobs), args, n_seeds, device), flush=True)

    started = time.perf_counter()
    # torch.optim's first optimiser imports torch._dynamo (seconds); do it once, before the
    # workers fork, so that it is not billed to the first run's wall time
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    with Progress(jobs, regime.steps, enabled=not args.quiet) as progress:
        results = run_all(jobs, regime, backend, args.threads, args.jobs, progress, device)
    total = time.perf_counter() - started

    summary = summarise(results)
    md = table(summary, mixtures, n_seeds)
    print(md)
    print(f"\n{len(jobs)} runs in {total:.1f} s")
    args.out.mkdir(parents=True, exist_ok=True)  # made by the check before training; again if gone since
    where = (f"device {device}, one run at a time" if device != "cpu" else
             f"device cpu, {args.threads} thread(s) per run, {args.jobs} parallel job(s)")
    (args.out / "results.md").write_text(
        f"# fastgan lab\n\nRegime: {regime.describe()}.\n\n{length}\n\n"
        + "\n".join(f"- `{o}`: {get_objective(o).describe(mixtures)}" for o in args.objectives)
        + f"\n\n{md}\n\nBackend `{args.backend}`, {where}, total wall time {total:.1f} s.\n")
    report = {
        "regime": asdict(regime), "objectives": {o: asdict(get_objective(o)) for o in args.objectives},
        "seeds": n_seeds, "backend": args.backend, "device": device, "threads": args.threads, "jobs": args.jobs,
        "total_seconds": total,
        "versions": {"fastgan": fastgan.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "runs": [r.to_dict() for r in results],
        "summary": [{"dataset": ds, "objective": obj, **{k: {"mean": v[0], "se": v[1]} for k, v in m.items()}}
                    for (ds, obj), m in summary.items()],
    }
    (args.out / "results.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    first = {(r.dataset, r.objective): r for r in results if r.seed == 0}
    written = [args.out / name for name in OUTPUTS[:3]]
    plots.figure(first, mixtures, summary, list(args.objectives), written[-1], seeds=n_seeds)
    hopping = first.get(("ring", "ns"))
    if hopping is not None and hopping.history:
        written.append(args.out / OUTPUTS[3])
        plots.hopping(hopping, mixtures["ring"], written[-1])
    print("wrote " + ", ".join(map(str, written)))
    return 0


def opening(regime, published, runs: int, args: argparse.Namespace, seeds: int, device: str) -> str:
    """The two lines the command opens with (the full settings and ``scope`` go to results.md)."""
    what = (f"fastgan lab: {runs} run(s) ({' and '.join(args.data)}; {len(args.objectives)} objective(s) x "
            f"{seeds} seed(s)) on {device}, {regime.name}: {regime.steps:,} steps of batch {regime.batch}.")
    if (regime.steps, regime.batch) == (published.steps, published.batch):
        length = "The published length."
    else:
        length = (f"Shortened{' (--smoke)' if args.smoke else ''} from the published {published.steps:,} steps "
                  f"(--full): compare these numbers only with each other.")
    return f"{what}\n{length} Every setting: {args.out / 'results.md'}."


def scope(regime, published, seeds: int, data: list[str]) -> str:
    """Plain sentences: how this run's length compares with the ``published`` regime."""
    if (regime.steps, regime.batch) == (published.steps, published.batch):
        return f"Published length: {regime.steps:,} steps of batch {regime.batch}, {seeds} seed(s)."
    text = (f"Shortened: {regime.steps:,} steps of batch {regime.batch}, {seeds} seed(s), instead of the "
            f"published {published.steps:,} steps of batch {published.batch} (`fastgan lab --full`); compare "
            f"these numbers only with each other.")
    if (regime.g_hidden, regime.d_hidden) != (published.g_hidden, published.d_hidden):
        text += (f" The networks are narrowed: G hidden layers {_layers(regime.g_hidden)} and D "
                 f"{_layers(regime.d_hidden)} instead of the published {_layers(published.g_hidden)} and "
                 f"{_layers(published.d_hidden)}.")
    if (regime.lr_g, regime.lr_d) != (published.lr_g, published.lr_d):
        text += (f" The regime's learning rates are G {regime.lr_g:g} / D {regime.lr_d:g} instead of the "
                 f"published {published.lr_g:g} / {published.lr_d:g}.")
    if (regime.lr_warmup, regime.lr_decay) != (published.lr_warmup, published.lr_decay):
        text += f" Every learning rate {regime.lr_schedule('rises', 'falls')} (the published run keeps them constant)."
    if regime.objective_lr_scale != 1:
        text += (f" Learning rates an objective sets itself (WGAN-GP's Adam 1e-4) are multiplied by "
                 f"{regime.objective_lr_scale:g} to converge at this length.")
    if "grid" not in data:
        how = f" (`fastgan lab --data grid --steps {regime.grid_steps}`, README's Lab section)" if regime.grid_steps else ""
        text += f" The grid is left out: it needs more steps than the ring{how}; `--full` includes it."
    elif regime.steps < regime.grid_steps:
        text += (f" The grid is undertrained at this length: this regime needs {regime.grid_steps:,} steps "
                 f"there (`--steps {regime.grid_steps}`).")
    return text


def _layers(hidden: tuple[int, ...]) -> str:
    return f"{len(hidden)} x {hidden[0]}" if len(set(hidden)) == 1 else "-".join(map(str, hidden))


def _json_safe(x):
    """NaN (an undefined metric) becomes null so the file is strict JSON."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x
