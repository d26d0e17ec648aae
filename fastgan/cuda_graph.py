"""A whole training step replayed from CUDA graphs.

``GraphedStep(train_step)`` returns a callable that trains exactly like ``train_step``: its first
calls run ``train_step`` eagerly on a side stream (warm-up: kernels load, optimisers create their
state, the caching allocator settles), then it records ``train_step`` into CUDA graphs (recording
runs nothing on the device) and every later call replays one graph: the discriminator steps,
the generator step and both optimiser updates become one launch each time.

What ``train_step`` must do to be capturable:

- read its inputs from static buffers (``real.copy_(batch)`` before each call, not new tensors);
- use optimisers built with ``capturable=True`` (their step counters live on the device);
- set gradients to None at its start (``zero_grad(set_to_none=True)``): the recorded backward
  (or :func:`fastgan.discriminator_step` with ``backward=True``, which hands D the op's own
  gradient buffers) then allocates them in the graph's memory pool, where the recorded
  optimiser step reads them;
- draw random numbers from the device's default generator (each replay advances its offset, so
  every replay draws fresh numbers: WGAN-GP's and DRAGAN's penalty noise, ``z.normal_()``);
- not synchronise with the host (no ``.item()``, no printing of device values).

A lazy penalty (``every=k``) is a Python counter, so one graph holds one of its phases: pass
``phases=k`` and ``k`` graphs are recorded from ``k`` consecutive calls and replayed in turn.
"""
from __future__ import annotations

from typing import Callable

import torch

from fastgan import _validate


class GraphedStep:
    """``train_step`` for its first ``warmup`` calls (eager, on a side stream), then one CUDA
    graph replay per call, cycling through ``phases`` recorded graphs.

    Args:
        train_step: a callable with no arguments that performs one training step (see the
            module docstring for what makes it capturable).
        phases: how many consecutive calls differ in the work they launch (``every`` of a lazy
            penalty; 1 otherwise). One graph is recorded per phase.
        warmup: eager calls before recording, at least ``phases`` so that every phase has run
            once before it is recorded (default: ``max(3, phases)``).
    """

    def __init__(self, train_step: Callable[[], None], *, phases: int = 1, warmup: int | None = None):
        if not callable(train_step):
            raise TypeError(f"train_step must be callable, got {type(train_step).__name__}")
        phases = _validate.positive_int(phases, "phases")
        if warmup is None:
            warmup = max(3, phases)
        if isinstance(warmup, bool) or not (isinstance(warmup, int) and warmup >= phases):
            raise ValueError(f"warmup must be an integer >= phases ({phases}), got {warmup!r}")
        if not torch.cuda.is_available():
            raise RuntimeError("GraphedStep needs a CUDA device; none is available here")
        self.train_step = train_step
        self.phases = phases
        self.warmup = warmup
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self._warm_calls = 0
        self._replays = 0

    @property
    def captured(self) -> bool:
        return bool(self.graphs)

    def warm_up(self) -> None:
        """Run the warm-up calls not yet run."""
        self._eager(self.warmup - self._warm_calls)

    def capture(self) -> None:
        """Finish the warm-up, then record one graph per phase (nothing runs on the device while
        recording; the phases' Python state, such as a lazy penalty's counter, advances by
        ``phases`` calls, back to where it was)."""
        if self.graphs:
            return
        self.warm_up()
        torch.cuda.synchronize()
        for _ in range(self.phases):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.train_step()
            self.graphs.append(graph)

    def __call__(self) -> None:
        if self._warm_calls < self.warmup:
            self._eager(1)
            return
        self.capture()
        self.graphs[self._replays % self.phases].replay()
        self._replays += 1

    def _eager(self, calls: int) -> None:
        """``calls`` warm-up calls on a side stream (capture's own stream discipline)."""
        if calls <= 0:
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(calls):
                self.train_step()
                self._warm_calls += 1
        torch.cuda.current_stream().wait_stream(side)
