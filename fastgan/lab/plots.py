"""The lab figures (matplotlib, Agg backend).

``figure``: one scatter of generated samples over the true modes per data set and objective (the
first seed's run), then bars of the mode metrics (mean +- standard error over seeds), and a key
panel: the legend and what the figure shows. ``hopping``: the samples of one run at evenly spaced
steps of its training, in rows of at most four panels. Every scatter has the data's square (1.35
times the largest mode coordinate) as its axes and every sample is drawn: a sample outside the
square is drawn on its edge, in orange, and the panel says how many there are. The modes are red
crosses.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

import torch  # noqa: E402

from fastgan.lab.data import Mixture  # noqa: E402
from fastgan.lab.metrics import mode_metrics  # noqa: E402

if TYPE_CHECKING:
    from fastgan.lab.train import RunResult

OUTSIDE = 1.35  # the plotted square: OUTSIDE * max |mode coordinate| on each side
SAMPLE, MODE, CLIPPED = "tab:blue", "tab:red", "tab:orange"
HQ_STD = inspect.signature(mode_metrics).parameters["n_std"].default  # what "high quality" means
HQ = f"HQ: high-quality samples, within {HQ_STD:g} std of their nearest mode"


def limit(mixture: Mixture) -> float:
    """Half the side of the plotted square."""
    return float(mixture.means.abs().max()) * OUTSIDE


def scatter(ax, x: torch.Tensor, mixture: Mixture) -> int:
    """Samples ``x`` (n, 2) and the modes on the plotted square; returns how many samples lie
    outside it (drawn clipped to its edge, in orange)."""
    lim = limit(mixture)
    outside = (x.abs() > lim).any(dim=1)
    inside = x[~outside]
    ax.scatter(inside[:, 0], inside[:, 1], s=1.5, alpha=0.35, color=SAMPLE, rasterized=True)
    if outside.any():
        edge = x[outside].clamp(-lim, lim)
        ax.scatter(edge[:, 0], edge[:, 1], s=5, color=CLIPPED, rasterized=True)
    ax.scatter(mixture.means[:, 0], mixture.means[:, 1], s=18, marker="x", color=MODE, linewidths=1.2)
    pad = lim * 0.03
    ax.set_xlim(-lim - pad, lim + pad)
    ax.set_ylim(-lim - pad, lim + pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return int(outside.sum())


def _outside_note(n: int, total: int) -> str:
    return f"\n{n:,} of {total:,} off the square" if n else ""


def legend_handles(modes_line: bool = False) -> list:
    """The scatter's (and the bars') symbols, for a legend."""
    handles = [Line2D([], [], ls="", marker="o", ms=4, color=SAMPLE, label="generator sample"),
               Line2D([], [], ls="", marker="x", ms=6, mew=1.5, color=MODE, label="mode (a mixture mean)"),
               Line2D([], [], ls="", marker="o", ms=4, color=CLIPPED, label="sample off the square,\ndrawn on its edge")]
    if modes_line:
        handles.append(Line2D([], [], ls="--", lw=1, color=MODE, label="number of modes"))
    return handles


BAR_METRICS = (("modes_captured", "modes captured"), ("high_quality_pct", "high-quality samples (%)"),
               ("reverse_kl", "reverse KL (nats)"))


def figure(first: dict[tuple[str, str], "RunResult"], mixtures: dict[str, Mixture],
           summary: dict[tuple[str, str], dict[str, tuple[float, float]]], objectives: list[str],
           path: Path, seeds: int | None = None) -> None:
    """``first[(dataset, objective)]``: the run of the first seed (its samples are scattered, its
    metrics in the title); ``summary[(dataset, objective)][metric] = (mean, se)`` over ``seeds``
    seeds for the bars. The bars' rows end with a key panel (the legend and a caption). Writes a
    PNG to ``path``."""
    datasets = list(mixtures)
    cols = max(len(objectives), len(BAR_METRICS) + 1)
    rows = 2 * len(datasets)
    fig = plt.figure(figsize=(2.9 * cols, 3.0 * rows))
    grid = fig.add_gridspec(rows, cols)
    seed = next(iter(first.values())).seed
    per = "" if seeds is None else f" over {seeds} seed{'s' if seeds != 1 else ''}"
    for i, ds in enumerate(datasets):
        mix = mixtures[ds]
        for j, obj in enumerate(objectives):
            ax = fig.add_subplot(grid[i, j])
            run = first[(ds, obj)]
            out = scatter(ax, run.samples, mix)
            m = run.metrics
            ax.set_title(f"{ds} / {obj}, seed {run.seed}\n{m.modes_captured}/{mix.modes} modes, "
                         f"{m.high_quality_pct:.0f}% HQ{_outside_note(out, len(run.samples))}", fontsize=9)
    for i, ds in enumerate(datasets):
        for j, (key, label) in enumerate(BAR_METRICS):
            ax = fig.add_subplot(grid[len(datasets) + i, j])
            means = [summary[(ds, o)][key][0] for o in objectives]
            errs = [summary[(ds, o)][key][1] for o in objectives]
            errs = None if all(math.isnan(e) for e in errs) else [0.0 if math.isnan(e) else e for e in errs]
            ax.bar(range(len(objectives)), [0.0 if math.isnan(v) else v for v in means], yerr=errs,
                   color=SAMPLE, capsize=2)
            ax.set_xticks(range(len(objectives)), objectives, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{ds}: {label}\nmean ± s.e.{per}", fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
            if key == "modes_captured":
                ax.axhline(mixtures[ds].modes, color=MODE, lw=1, ls="--")
    # the key: under the last scatters, or the whole last column when the scatters leave it free
    key = fig.add_subplot(grid[(len(datasets) if len(objectives) > len(BAR_METRICS) else 0):, len(BAR_METRICS):])
    key.axis("off")
    key.legend(handles=legend_handles(modes_line=True), loc="upper left", fontsize=8, frameon=False,
               borderaxespad=0)
    size = len(next(iter(first.values())).samples)
    caption = (f"Top: {size:,} samples of seed {seed}'s generator per objective. Bars: mean ± standard error"
               f"{per}. {HQ}. Modes captured: modes with an HQ sample. Reverse KL: of the HQ samples over the "
               f"modes against uniform (0: evenly filled).")
    key.text(0, 0, _wrap(caption, 34 * (cols - len(BAR_METRICS))), fontsize=8, va="bottom", ha="left",
             transform=key.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int) -> str:
    import textwrap
    return textwrap.fill(text, width)


def hopping(run: "RunResult", mixture: Mixture, path: Path, per_row: int = 4) -> None:
    """The samples of one fixed noise batch after each snapshot step of ``run`` (its
    ``history``), one panel per snapshot with its modes captured and high-quality share, in rows
    of ``per_row`` panels, above a key (the legend and a caption): a generator that hops from
    mode to mode shows different modes in consecutive panels. The panel of the last step shows
    ``run.samples`` instead, the evaluation batch that lab.png and the results show (the same
    generator, another noise batch), so that the two figures agree."""
    history = list(run.history)
    final = bool(history) and history[-1][0] == run.steps and run.samples is not None
    n = len(history)
    cols = min(n, per_row)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(2.4 * cols, 2.75 * rows + 1.0), layout="constrained")
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[2.75] * rows + [0.9])
    for k, (step, x) in enumerate(history):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        last = final and k == n - 1
        if last:
            x, m = run.samples, run.metrics
        else:
            m = mode_metrics(x, mixture)
        out = scatter(ax, x, mixture)
        ax.set_title(f"step {step:,}{' (final)' if last else ''}\n{m.modes_captured}/{mixture.modes} "
                     f"modes, {m.high_quality_pct:.0f}% HQ{_outside_note(out, len(x))}", fontsize=10)
    fig.suptitle(f"{run.dataset} / {run.objective}, seed {run.seed}, over training", fontsize=12)
    key = fig.add_subplot(grid[rows, :])
    key.axis("off")
    key.legend(handles=legend_handles(), loc="upper center", ncol=3, fontsize=9, frameon=False, borderaxespad=0)
    size = len(history[0][1])
    note = (f"Each panel: one fixed batch of {size:,} noise vectors through the generator at that step"
            + ("; the final one: the evaluation batch, as in lab.png. " if final else ". ") + HQ + ".")
    key.text(0.5, 0.0, _wrap(note, 34 * cols), ha="center", va="bottom", fontsize=9, transform=key.transAxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
