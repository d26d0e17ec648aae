"""The whole lab training step in one CUDA graph (CUDA devices only).

``graphed(step)`` returns a callable that trains exactly like ``step``: its first calls run
``step`` eagerly on a side stream (warm-up: the optimisers create their state, the caching
allocator settles), then it records one call of ``step`` in a ``torch.cuda.CUDAGraph`` (recording
runs nothing) and every later call replays that graph: the discriminator steps, the generator
step and both Adam updates as one launch. What makes ``step`` capturable:

- Adam with ``capturable=True`` (its step counter lives on the device);
- gradients set to None before capture, so the captured backward allocates them in the
  graph's memory pool and the captured optimiser steps read them there;
- every random draw from the device's default generator (a replay advances its offset);
- no host synchronisation in the step (the fused discriminator step has none).
"""
from __future__ import annotations

from typing import Callable

import torch

WARMUP = 3


def graphed(step: Callable[[], None], warmup: int = WARMUP) -> Callable[[], None]:
    """``step`` for its first ``warmup`` calls (eager, side stream), then one CUDA graph replay per call."""
    graph = torch.cuda.CUDAGraph()
    calls = 0

    def run() -> None:
        nonlocal calls
        calls += 1
        if calls <= warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream().wait_stream(side)
            return
        if calls == warmup + 1:
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                step()
        graph.replay()

    return run
