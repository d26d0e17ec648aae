"""The lab figures (matplotlib, Agg backend).

``figure``: one scatter of generated samples over the true modes per data set and objective,
then bars of the mode metrics (mean +- standard error over seeds). ``hopping``: the samples of
one run at evenly spaced steps of its training. Every scatter has the data's square (1.35 times
the largest mode coordinate) as its axes and every sample is drawn: a sample outside the square
is drawn on its edge, in red, and the panel says how many there are.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import torch  # noqa: E402

from fastgan.lab.data import Mixture  # noqa: E402
from fastgan.lab.metrics import mode_metrics  # noqa: E402

if TYPE_CHECKING:
    from fastgan.lab.train import RunResult

OUTSIDE = 1.35  # the plotted square: OUTSIDE * max |mode coordinate| on each side


def limit(mixture: Mixture) -> float:
    """Half the side of the plotted square."""
    return float(mixture.means.abs().max()) * OUTSIDE


def scatter(ax, x: torch.Tensor, mixture: Mixture) -> int:
    """Samples ``x`` (n, 2) and the modes on the plotted square; returns how many samples lie
    outside it (drawn clipped to its edge, in red)."""
    lim = limit(mixture)
    outside = (x.abs() > lim).any(dim=1)
    inside = x[~outside]
    ax.scatter(inside[:, 0], inside[:, 1], s=1.5, alpha=0.35, color="tab:blue", rasterized=True)
    if outside.any():
        edge = x[outside].clamp(-lim, lim)
        ax.scatter(edge[:, 0], edge[:, 1], s=4, color="tab:red", rasterized=True)
    ax.scatter(mixture.means[:, 0], mixture.means[:, 1], s=14, marker="x", color="tab:red", linewidths=1)
    pad = lim * 0.03
    ax.set_xlim(-lim - pad, lim + pad)
    ax.set_ylim(-lim - pad, lim + pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return int(outside.sum())


def _outside_note(n: int, total: int) -> str:
    return f"\n{n}/{total} outside (red, on the edge)" if n else ""


BAR_METRICS = (("modes_captured", "modes captured"), ("high_quality_pct", "high-quality samples (%)"),
               ("reverse_kl", "reverse KL (nats)"))


def figure(first: dict[tuple[str, str], "RunResult"], mixtures: dict[str, Mixture],
           summary: dict[tuple[str, str], dict[str, tuple[float, float]]], objectives: list[str],
           path: Path) -> None:
    """``first[(dataset, objective)]``: the run of the first seed (its samples are scattered, its
    metrics in the title); ``summary[(dataset, objective)][metric] = (mean, se)`` over seeds
    for the bars. Writes a PNG to ``path``."""
    datasets = list(mixtures)
    cols = max(len(objectives), len(BAR_METRICS))
    rows = len(datasets) + len(datasets)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for i, ds in enumerate(datasets):
        mix = mixtures[ds]
        for j, obj in enumerate(objectives):
            ax = axes[i, j]
            ax.set_visible(True)
            run = first[(ds, obj)]
            out = scatter(ax, run.samples, mix)
            m = run.metrics
            ax.set_title(f"{ds} / {obj} (seed {run.seed})\n{m.modes_captured}/{mix.modes} modes, "
                         f"{m.high_quality_pct:.0f}% HQ{_outside_note(out, len(run.samples))}", fontsize=7)
    for i, ds in enumerate(datasets):
        for j, (key, label) in enumerate(BAR_METRICS):
            ax = axes[len(datasets) + i, j]
            ax.set_visible(True)
            means = [summary[(ds, o)][key][0] for o in objectives]
            errs = [summary[(ds, o)][key][1] for o in objectives]
            errs = None if all(math.isnan(e) for e in errs) else [0.0 if math.isnan(e) else e for e in errs]
            ax.bar(range(len(objectives)), [0.0 if math.isnan(v) else v for v in means], yerr=errs,
                   color="tab:blue", capsize=2)
            ax.set_xticks(range(len(objectives)), objectives, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{ds}: {label}", fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            if key == "modes_captured":
                ax.axhline(mixtures[ds].modes, color="tab:red", lw=0.8, ls="--")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hopping(run: "RunResult", mixture: Mixture, path: Path) -> None:
    """The samples of one fixed noise batch after each snapshot step of ``run`` (its
    ``history``), one panel per snapshot with its modes captured and high-quality share: a
    generator that hops from mode to mode shows different modes in consecutive panels."""
    n = len(run.history)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.9), squeeze=False)
    for ax, (step, x) in zip(axes[0], run.history):
        out = scatter(ax, x, mixture)
        m = mode_metrics(x, mixture)
        ax.set_title(f"step {step:,}\n{m.modes_captured}/{mixture.modes} modes, {m.high_quality_pct:.0f}% HQ"
                     f"{_outside_note(out, len(x))}", fontsize=7)
    fig.suptitle(f"{run.dataset} / {run.objective} (seed {run.seed}) over training", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
