"""Work items per step, counted with ``torch.profiler`` over a few steps (outside the timing).

- GPU: kernel launches = host calls that launch device work (``cudaLaunchKernel``,
  ``cuLaunchKernel`` (Triton), ``cudaGraphLaunch`` (a whole graph counts once), memset and
  memcpy calls), or the device kernels (and copies) the profiler saw where those are more
  and no graph was launched (host calls the trace missed, e.g. driver-API launches).
- CPU: there are no launches; the count is top-level operator calls (``aten::*`` and custom
  ``fastgan::*`` ops not nested in another op), each of which is a pass dispatched from Python
  or autograd. The report labels which of the two a number is.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaGraphLaunch", "cudaMemsetAsync", "cudaMemcpyAsync", "cudaLaunchCooperativeKernel")


def kind(device: torch.device) -> str:
    return "launches" if device.type == "cuda" else "ops"


def _is_op(name: str) -> bool:
    return name.startswith(("aten::", "fastgan::"))


def count(step: Callable[[], None], device: torch.device, steps: int = 3) -> float:
    """Launches (GPU, mean of ``steps`` steps) or top-level operator calls (CPU, one step: the
    count does not vary) per step."""
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
