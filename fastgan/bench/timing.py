"""Wall-clock timing, interleaved across providers, and the measured matmul peak.

A sample is ``inner`` consecutive steps of one provider between two device synchronisations,
divided by ``inner`` (``inner`` is chosen once per provider so a sample lasts at least
``min_sample_s``). Rounds visit every provider once, in an order rotated each round, so slow
drifts of a shared machine (clock, other jobs) hit every provider alike.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Stats:
    median: float  # seconds per step
    p20: float
    p80: float
    samples: int


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: list[float]) -> Stats:
    return Stats(percentile(samples, 50), percentile(samples, 20), percentile(samples, 80), len(samples))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(step: Callable[[], None], inner: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(inner):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / inner


def paired(numerator: list[float], denominator: list[float], q: float = 50) -> float | None:
    """The median (``q``: that percentile) over rounds of ``numerator[r] / denominator[r]``: two
    providers' ratio from the samples each round took of both, so a drift of the machine's speed
    between rounds (tens of percent on a shared CPU) cancels in each round's ratio, as it does
    not in a ratio of medians. None unless both have a sample in every round."""
    if not numerator or len(numerator) != len(denominator):
        return None
    return percentile([a / b for a, b in zip(numerator, denominator)], q)


def interleaved(steps: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int = 2,
                min_sample_s: float = 0.005, rounds: dict[str, list[float]] | None = None
                ) -> tuple[dict[str, Stats], dict[str, str]]:
    """Per-step time statistics for every step function, sampled in rotating rounds, and the
    error of any step function that raised (it is dropped from the remaining rounds).
    ``rounds``: filled with each step function's samples in round order (for :func:`paired`)."""
    inner: dict[str, int] = {}
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Callable[[], float | None]) -> float | None:
        try:
            return fn()
        except Exception as e:  # reported in the row; the other providers go on
            errors[name] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
            return None

    for name, step in steps.items():
        def calibrate(step=step):
            for _ in range(max(warmup - 1, 0)):
                step()
            return _sample(step, 1, device)
        t = attempt(name, calibrate)
        if t is not None:
            inner[name] = max(1, min(1000, math.ceil(min_sample_s / max(t, 1e-9))))
    names = list(inner)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % max(len(names), 1)
        for name in names[k:] + names[:k]:
            if name not in errors:
                t = attempt(name, lambda: _sample(steps[name], inner[name], device))
                if t is not None:
                    samples[name].append(t)
    if rounds is not None:
        rounds.update(samples)
    return {n: summarize(s) for n, s in samples.items() if n not in errors and s}, errors


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of the best of ``repeats`` square products ``torch.mm`` in ``dtype`` on ``device``
    (n = 8192 on GPU, 2048 on CPU), under the current float32 matmul precision."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = min(_sample(lambda: torch.mm(a, b), 1 if device.type == "cpu" else 10, device) for _ in range(repeats))
    return 2 * n ** 3 / best
