"""Tables for the ctgan benchmark (:mod:`fastgan.bench.ctgan`).

:func:`mixed_table` is a generated mixed-type table with the structure CTGAN was designed for:
correlated Gaussians, a bimodal column (mode-specific normalisation), a heavy-tailed log-normal
column, and three categoricals that depend on the numbers (so column-pair trends are not trivial).
:func:`sklearn_table` loads one of scikit-learn's bundled tables (no download) with its target as
a categorical column.
"""
from __future__ import annotations

import numpy as np

MIXED_DISCRETE = ("segment", "grade", "flag")


def mixed_table(rows: int = 10_000, seed: int = 0):
    """A ``pandas.DataFrame`` of ``rows`` rows and its discrete columns.

    Columns: ``x1, x2, x3`` correlated Gaussians (correlations 0.8, 0.5, 0.3); ``bimodal`` a
    two-component mixture (modes at -3 and 4, weights 0.4/0.6) shifted by ``x1``; ``income``
    log-normal driven by ``x2``; ``segment`` (4 levels, the quadrant of (x1, x3)), ``grade``
    (A-E, quantiles of a noisy income score, unbalanced), ``flag`` (yes/no, logistic in bimodal).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.8, 0.5], [0.8, 1.0, 0.3], [0.5, 0.3, 1.0]])
    x = rng.multivariate_normal(np.zeros(3), cov, size=rows)
    mode = rng.random(rows) < 0.4
    bimodal = np.where(mode, rng.normal(-3.0, 0.7, rows), rng.normal(4.0, 1.2, rows)) + 0.5 * x[:, 0]
    income = np.exp(10.0 + 0.6 * x[:, 1] + 0.4 * rng.standard_normal(rows))
    segment = np.array(["north", "east", "south", "west"])[(x[:, 0] > 0).astype(int) * 2 + (x[:, 2] > 0)]
    score = np.log(income) + 0.5 * rng.standard_normal(rows)
    cuts = np.quantile(score, [0.1, 0.3, 0.6, 0.85])
    grade = np.array(list("ABCDE"))[np.searchsorted(cuts, score)]
    flag = np.where(rng.random(rows) < 1 / (1 + np.exp(-0.8 * bimodal)), "yes", "no")
    table = pd.DataFrame({
        "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "bimodal": bimodal, "income": income,
        "segment": segment, "grade": grade, "flag": flag,
    })
    return table, list(MIXED_DISCRETE)


def sklearn_table(name: str, rows: int | None = None, seed: int = 0):
    """scikit-learn's bundled ``breast_cancer`` or ``wine`` table (target as a categorical column
    named ``target``), optionally subsampled to ``rows`` rows; and its discrete columns."""
    from sklearn import datasets

    loaders = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}
    if name not in loaders:
        raise ValueError(f"name must be one of {sorted(loaders)}, got {name!r}")
    frame = loaders[name](as_frame=True).frame
    frame["target"] = frame["target"].map(lambda v: f"class_{v}")
    if rows is not None and rows < len(frame):
        frame = frame.sample(n=rows, random_state=seed).reset_index(drop=True)
    return frame, ["target"]


def metadata(table, discrete_columns) -> dict:
    """sdmetrics' single-table metadata dict for ``table``."""
    columns = {c: {"sdtype": "categorical" if c in discrete_columns else "numerical"} for c in table.columns}
    return {"columns": columns}
