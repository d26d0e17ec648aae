"""What a bool mask costs on this CPU, eager against torch.compile (Inductor), one thread:
the sign of a (64, 64, 16, 16) float tensor stored as bool, as float, and LeakyReLU with and
without its bool sign saved (what AOT autograd's partitioner saves for LeakyReLU's backward).
Interleaved, medians of process CPU time. Run: python benchmarks/bool_masks.py (benchmarks/NOTES.md,
"Compiled")."""
import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
x = torch.randn(64, 64, 16, 16)
cases = {
    "x > 0 (bool)": lambda x: x > 0,
    "(x > 0) as float": lambda x: (x > 0).to(x.dtype),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "leaky_relu and its bool sign": lambda x: (F.leaky_relu(x, 0.2), x > 0),
}
fns = {}
for name, fn in cases.items():
    fns[f"{name}, eager"] = fn
    fns[f"{name}, compiled"] = torch.compile(fn, dynamic=False)
for fn in fns.values():
    for _ in range(3):
        fn(x)
times = {name: [] for name in fns}
for _ in range(30):
    for name, fn in fns.items():
        t = time.process_time()
        fn(x)
        times[name].append(time.process_time() - t)
print(f"torch {torch.__version__}, 1 thread, {x.numel()} floats; median ms of 30 interleaved rounds")
for name, v in times.items():
    print(f"| {name} | {statistics.median(v) * 1e3:.2f} |")
