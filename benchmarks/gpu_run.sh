#!/usr/bin/env bash
# One call on the GPU machine (H100/H200, no network), under 8 minutes: build, the host-cost
# table, the benchmarks, the GPU tests. Every step has a time limit, so a slow one cannot eat
# the rest. What comes back: $OUT/summary.txt and $OUT/gpu-run.tar.gz (every log and result).
#   device run:  bash benchmarks/gpu_run.sh
# Commit the results (benchmarks/results/) from the tarball; device, date and versions are in each.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"  # every path below is relative to the repository root, wherever the call starts
OUT=${OUT:-$ROOT/benchmarks/results/gpu-run}
RUN=$(mktemp -d)
mkdir -p "$OUT"
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
BUDGET=${BUDGET:-450}  # seconds for the whole call; each step gets at most what is left
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $RUN/NAME.log, note rc and time
  local name=$1 limit=$2; shift 2
  local start=$SECONDS left=$((BUDGET - SECONDS))
  if [ "$left" -lt 15 ]; then summary "$name: skipped (budget spent)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" > "$RUN/$name.log" 2>&1
  summary "$name: rc=$? in $((SECONDS - start)) s (limit $limit s)"
}
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$RUN/environment.txt" 2>&1
cat "$RUN/environment.txt" >> "$OUT/summary.txt"

# Build against the machine's own torch, cmake and pybind11 (no network: no build isolation).
step build 180 env FASTGAN_REQUIRE_CUDA=1 FASTGAN_JOBS=16 python -m pip install --no-build-isolation --no-deps -e .
python -c "import fastgan; print(*fastgan.available_backends(), sep='\n')" > "$RUN/backends.txt" 2>&1
cat "$RUN/backends.txt" >> "$OUT/summary.txt"
unset TRITON_INTERPRET

# GPU tests, to the end (no -x): real Triton, the CUDA backend, capture and compile recipes.
step gpu-tests-cuda 120 python -m pytest -q -p no:cacheprovider tests/test_losses_gpu.py tests/test_mlp_step_cuda.py \
  tests/test_mlp_step_capture.py tests/test_cuda_graph.py tests/test_lab.py::test_cuda_graph_run_is_reproducible \
  tests/test_generic_step_capture.py tests/test_bench.py::test_any_discriminator_graph_providers_replay_the_eager_steps
step gpu-tests-triton 90 python -m pytest -q -p no:cacheprovider tests/test_mlp_step_triton.py
# Host cost per call (tiny problem: the Python path and launches), then the benchmarks:
# targets fp32 'highest' (with every graphed provider), TF32, bf16 wide networks, PacGAN.
# fastgan bench writes files only where --output says (nothing by default): every call names one.
step triton-first-call 90 python tools/triton_first_call.py --configs targets,width-512
step host-cuda 60 python -m fastgan.bench.host --device cuda --backend cuda --calls 500
step host-triton 90 python -m fastgan.bench.host --device cuda --backend triton --calls 500
step bench-fp32 150 python -m fastgan.bench --quick --no-progress --output "$RUN/gpu-targets-fp32"
# Any discriminator: the residual D at B 64 (the target: fastgan+graph at 2x eager double
# backward) and DCGAN-32, with the CUDA-graph providers; the compiled one is left out (its
# Inductor compile would take this call's budget).
step any-discriminator 90 python -m fastgan.bench.any_discriminator --device cuda --configs residual64-b64,dcgan32-b64 \
  --repeats 10 --no-compile --output "$RUN/gpu-any-discriminator.md"
# The unrolled-GAN regime at its published length, every training step one CUDA-graph replay
# (ring and grid).
step lab-full-cuda 120 python -m fastgan lab --regime unrolled-gan --full --device cuda --quiet --out "$RUN/lab-full-cuda"
# The default (PacGAN's regime narrowed for the CPU: 6,000 steps, 2 seeds, one run at a time on
# the GPU); PacGAN's published 400,000 steps would need a budget of their own.
step lab-default-cuda 60 python -m fastgan lab --device cuda --quiet --out "$RUN/lab-default-cuda"
step bench-tf32 100 python -m fastgan.bench --quick --no-progress --precision high --providers fastgan-cuda,fastgan-cuda+graph,pytorch-eager+graph,pytorch-func+compile --output "$RUN/gpu-targets-tf32"
step bench-bf16 90 python -m fastgan.bench --configs width-512,width-1024 --batch 8192 --dtype bfloat16 --no-progress --providers fastgan-cuda,fastgan-triton,pytorch-eager,pytorch-func+compile --output "$RUN/gpu-wide-bf16"
step bench-pacgan 60 python -m fastgan.bench --configs ctgan-in256-p10 --batch 1638 --objectives w+gp --no-progress --output "$RUN/gpu-pacgan"

for f in "$RUN"/gpu-tests-*.log; do tail -3 "$f" >> "$OUT/summary.txt"; done
for f in "$RUN"/host-*.log; do cat "$f" >> "$OUT/summary.txt"; done

tar -czf "$OUT/gpu-run.tar.gz" -C "$RUN" .
ls -la "$OUT"
