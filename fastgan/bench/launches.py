"""Work items per step, counted with ``torch.profiler`` over a few steps (outside the timing).

- GPU: kernel launches = host calls that launch device work (``cudaLaunchKernel``,
  ``cuLaunchKernel`` (Triton), ``cudaGraphLaunch`` (a whole graph counts once), memset and
  memcpy calls), or the device kernels (and copies) the profiler saw where those are more
  and no graph was launched (host calls the trace missed, e.g. driver-API launches).
- CPU: there are no launches; the count is top-level operator calls (``aten::*`` and custom
  ``fastgan::*`` ops not nested in another op), each of which is a pass dispatched from Python
  or autograd. The report labels which of the two a number is.

torch.profiler's native layer (kineto) writes a line to the process's stderr at every start and
stop (``USDT: ... profiler_start``), past ``sys.stderr``; :func:`quiet_native_output` sends file
descriptors 1 and 2 to a temporary file around each count so that none of it reaches the
terminal (a progress bar, a pipe) or pytest's capture.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaGraphLaunch", "cudaMemsetAsync", "cudaMemcpyAsync", "cudaLaunchCooperativeKernel")


def kind(device: torch.device) -> str:
    return "launches" if device.type == "cuda" else "ops"


def _is_op(name: str) -> bool:
    return name.startswith(("aten::", "fastgan::"))


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Everything written to file descriptors 1 and 2 inside (by C++ as well as Python) goes to a
    temporary file that is then dropped; Python's own streams are flushed on the way in and out.
    A no-op where the descriptors cannot be duplicated."""
    streams = (sys.stdout, sys.stderr)
    for s in streams:
        with contextlib.suppress(Exception):
            s.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                for s in streams:
                    with contextlib.suppress(Exception):
                        s.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def count(step: Callable[[], None], device: torch.device, steps: int = 3) -> float:
    """Launches (GPU, mean of ``steps`` steps) or top-level operator calls (CPU, one step: the
    count does not vary) per step. The profiler's own output is silenced
    (:func:`quiet_native_output`)."""
    with quiet_native_output():
        return _count(step, device, steps)


def _count(step: Callable[[], None], device: torch.device, steps: int) -> float:
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize(device)
        events = prof.events()
        host = sum(1 for e in events if e.name in LAUNCH_CALLS)
        graphs = sum(1 for e in events if e.name == "cudaGraphLaunch")
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        if not graphs and kernels > host:  # launches the profiler's host trace missed (driver API)
            host = kernels
        return host / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()

    def top_level(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if _is_op(p.name):
                return False
            p = p.cpu_parent
        return True

    return float(sum(1 for e in prof.events() if _is_op(e.name) and top_level(e)))
