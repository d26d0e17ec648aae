"""CTGAN on a mixed-type table, trained through fastgan (``pip install 'fastgan[ctgan]'``).

``fastgan.integrations.ctgan.CTGAN`` is SDV's ``ctgan.CTGAN`` whose discriminator update and
generator's adversarial term go through ``fastgan.discriminator_step`` / ``generator_step``. The
table is generated (correlated Gaussians, a bimodal and a log-normal column, three categoricals
that depend on the numbers). At the end it compares a few statistics of the real and the
synthetic table.

    python examples/ctgan_table.py             # about a minute on 2 CPU cores
    python examples/ctgan_table.py --smoke     # a few seconds: checks that it runs
"""
from __future__ import annotations

import argparse

from fastgan.bench.ctgan_data import mixed_table
from fastgan.integrations.ctgan import CTGAN


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="a small table, one epoch")
    args = p.parse_args(argv)
    rows, epochs = (300, 1) if args.smoke else (args.rows, args.epochs)
    table, discrete = mixed_table(rows, seed=0)

    model = CTGAN(epochs=epochs, batch_size=100, verbose=False)  # pac 10: batches of 10 packed rows
    model.set_random_state(0)
    model.fit(table, discrete_columns=list(discrete))
    synthetic = model.sample(len(table))
    last = model.loss_values.iloc[-1]  # ctgan's table: epoch, generator loss, discriminator loss
    print(f"trained {epochs} epoch(s) on {rows} rows; last epoch's losses: generator {last.iloc[1]:+.3f}, "
          f"discriminator {last.iloc[2]:+.3f}")
    print(f"{'column':>8}  {'real mean':>10}  {'synthetic':>10}")
    for column in ("x1", "x2", "bimodal"):
        print(f"{column:>8}  {table[column].mean():10.3f}  {synthetic[column].mean():10.3f}")
    for column in discrete:
        real, fake = table[column].value_counts(normalize=True), synthetic[column].value_counts(normalize=True)
        gap = (real - fake.reindex(real.index, fill_value=0)).abs().sum() / 2
        print(f"{column:>8}  total variation between real and synthetic frequencies: {gap:.3f}")


if __name__ == "__main__":
    main()
