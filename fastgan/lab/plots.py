"""The lab figure (matplotlib, Agg backend): one scatter of generated samples over the true modes
per data set and objective, then bars of the mode metrics (mean +- standard error over seeds)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fastgan.lab.data import Mixture  # noqa: E402

if TYPE_CHECKING:
    from fastgan.lab.train import RunResult

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
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for i, ds in enumerate(datasets):
        mix = mixtures[ds]
        lim = float(mix.means.abs().max()) * 1.35
        for j, obj in enumerate(objectives):
            ax = axes[i, j]
            ax.set_visible(True)
            run = first[(ds, obj)]
            x = run.samples
            ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.35, color="tab:blue", rasterized=True)
            ax.scatter(mix.means[:, 0], mix.means[:, 1], s=14, marker="x", color="tab:red", linewidths=1)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            m = run.metrics
            ax.set_title(f"{ds} / {obj} (seed {run.seed})\n{m.modes_captured}/{mix.modes} modes, "
                         f"{m.high_quality_pct:.0f}% HQ", fontsize=8)
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
