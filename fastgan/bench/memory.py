"""Peak memory of one step, measured outside the timing loop: the most memory in use during
the step above what was in use just before it (inputs and parameters excluded; the previous
step's gradients released first).

- GPU: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the step. For graph providers (``*+graph``,
  ``pytorch-func+compile``) a replay allocates nothing: their figure is the peak while capturing /
  recording, i.e. the graph's memory pool.
- CPU: ``tracemalloc`` does not see torch's allocations and the CPU profiler's memory events
  are not a timeline, so this is a peak-RSS delta in a subprocess: ``python -m
  fastgan.bench.memory`` runs every (configuration, provider) after two warm-up steps, resets
  the kernel's high-water mark (``/proc/self/clear_refs``) and reports ``VmHWM`` after one
  step minus ``VmRSS`` before it. glibc is told to serve every allocation of 128 KiB or more
  with mmap (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the RSS at once and the delta
  tracks live tensor memory. Linux only; elsewhere (or for ``pytorch-func+compile``, whose
  compilation would dominate) the figure is n/a.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys

import torch

from fastgan.bench import configs as cfg
from fastgan.bench.providers import COMPILE, Runner, make_runner

_CLEAR_REFS = "/proc/self/clear_refs"


def cuda_peak(runner: Runner) -> int:
    if runner.setup_peak is not None:
        return runner.setup_peak
    runner.release()
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    runner.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_peak(runner: Runner) -> int | None:
    """Peak RSS delta (bytes) of one step in this process; None where it cannot be measured."""
    if not os.access(_CLEAR_REFS, os.W_OK):
        return None
    runner.release()
    gc.collect()
    before = _status_kib("VmRSS")
    with open(_CLEAR_REFS, "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    runner.step()
    return max(_status_kib("VmHWM") - before, 0) * 1024


def cpu_peaks(jobs: list[tuple[cfg.Config, list[str]]], dtype: torch.dtype, seed: int) -> list[dict[str, int | None]]:
    """Peak RSS delta per provider for each (configuration, providers), in one subprocess."""
    if not jobs or not os.access(_CLEAR_REFS, os.W_OK):
        return [dict.fromkeys(p) for _, p in jobs]
    spec = {"dtype": str(dtype).removeprefix("torch."), "seed": seed, "threads": torch.get_num_threads(),
            "jobs": [{"config": dataclasses.asdict(c), "providers": p} for c, p in jobs]}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    done = subprocess.run([sys.executable, "-m", "fastgan.bench.memory"], input=json.dumps(spec),
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory subprocess failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _config(d: dict) -> cfg.Config:
    obj = cfg.Objective(**d["objective"])
    return cfg.Config(cfg.Network(**d["network"]), d["batch"], obj)


def _measure(spec: dict) -> list[dict[str, int | None]]:
    torch.set_num_threads(spec["threads"])
    dtype, device = getattr(torch, spec["dtype"]), torch.device("cpu")
    out = []
    for job in spec["jobs"]:
        config = _config(job["config"])
        D = cfg.make_discriminator(config.network, device, dtype, spec["seed"])
        data = cfg.make_inputs(config, device, dtype, spec["seed"])
        peaks: dict[str, int | None] = {}
        for name in job["providers"]:
            if name == COMPILE:
                peaks[name] = None
                continue
            runner = make_runner(name, config, D, data)
            runner.step()
            runner.step()
            peaks[name] = rss_peak(runner)
            del runner
        out.append(peaks)
        del D, data
        gc.collect()
    return out


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.stdin.read()))))
