"""Times the first call of the Triton fused step per benchmark network, each in a fresh process:
once with an empty Triton cache (every compilation and autotune run of that shape), once more
with the cache that run left (what a later process pays), and the second call of the first
process (steady state, for scale). The GPU measurement behind the first-call prediction in
benchmarks/NOTES.md (section "Triton"):

    python tools/triton_first_call.py                       # every benchmark network
    python tools/triton_first_call.py --configs width-512 --batch 4096 --objective w+gp

Without a GPU it runs on CPU tensors under ``TRITON_INTERPRET=1`` (a smoke test of the script;
the seconds mean nothing there).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch


def _child(network_name, batch, objective_name, dtype_name):
    """One process: the first and second call of one configuration; prints a JSON line."""
    from fastgan import step_spec
    from fastgan.bench import configs as bench
    from fastgan.kernels import mlp_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype_name)
    (config,) = bench.select(device.type, configs=[network_name], batches=[batch], objectives=[objective_name])
    D = bench.make_discriminator(config.network, device, dtype)
    inputs = bench.make_inputs(config, device, dtype)
    loss, objective = config.objective.make_loss(), config.objective
    if objective.generator:
        args = step_spec.gen_step_op_args(D, inputs.fake, loss=loss, real=inputs.real)
        step = mlp_step.mlp_gen_step
    else:
        args = step_spec.disc_step_op_args(D, inputs.real, inputs.fake, loss=loss, penalty=objective.make_penalty(),
                                           eps=inputs.eps)
        step = mlp_step.mlp_disc_step
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        with torch.no_grad():
            step(**args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"first": seconds[0], "second": seconds[1]}))


def _run(network, batch, objective, dtype, cache_dir):
    env = {**os.environ, "TRITON_CACHE_DIR": cache_dir}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    run = subprocess.run([sys.executable, __file__, "--child", network, str(batch),
                          objective, dtype], env=env, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"{network}: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    if argv is None and sys.argv[1:2] == ["--child"]:
        return _child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    from fastgan.bench import configs as bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="targets,width,ctgan", help="benchmark families or network patterns")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--objective", default="ns+r1")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = bench.select(device, configs=a.configs.split(","), batches=[a.batch], objectives=[a.objective])
    print(f"{'network':18s} {'first call, empty cache':>24s} {'first call, warm cache':>23s} {'second call':>12s}")
    for network in dict.fromkeys(c.network.name for c in chosen):
        with tempfile.TemporaryDirectory() as cache:
            cold = _run(network, a.batch, a.objective, a.dtype, cache)
            warm = _run(network, a.batch, a.objective, a.dtype, cache)
        print(f"{network:18s} {cold['first']:22.2f} s {warm['first']:21.2f} s {cold['second'] * 1e3:9.2f} ms")


if __name__ == "__main__":
    main()
