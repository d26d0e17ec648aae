#!/usr/bin/env bash
# One call on the GPU machine (H100/H200, no network): build, run the GPU tests, then the
# benchmarks; everything it produces goes under $OUT (the device tool brings that back).
#   device run:  bash benchmarks/gpu_run.sh
# Commit what comes back to benchmarks/results/ (device, date and versions are in each file).
set -uo pipefail
OUT=${OUT:-$PWD/benchmarks/results/gpu-run}
mkdir -p "$OUT"
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/environment.txt" 2>&1

# Build against the machine's own torch, cmake and pybind11 (no network: no build isolation).
FASTGAN_REQUIRE_CUDA=1 FASTGAN_JOBS=16 python -m pip install --no-build-isolation --no-deps -e . \
  > "$OUT/build.log" 2>&1 || { echo "build failed"; tail -40 "$OUT/build.log"; exit 1; }
python -c "import fastgan; print(*fastgan.available_backends(), sep='\n')" | tee "$OUT/backends.txt"

# GPU tests (real Triton, no interpreter) and the CPU suite's fast part as a sanity check.
unset TRITON_INTERPRET
python -m pytest -q -x tests/test_losses_gpu.py tests/test_mlp_step_cuda.py tests/test_mlp_step_triton.py \
  > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests rc=$?" | tee -a "$OUT/gpu_tests.log"; tail -5 "$OUT/gpu_tests.log"

# Benchmarks: the targets first (fp32 'highest', then TF32), then bf16 wide networks.
python -m fastgan.bench --quick --no-progress --output "$OUT/h100-targets-fp32" > "$OUT/bench_targets.log" 2>&1
python -m fastgan.bench --quick --no-progress --precision high --output "$OUT/h100-targets-tf32" > "$OUT/bench_tf32.log" 2>&1
python -m fastgan.bench --configs width-512,width-1024 --batch 8192 --dtype bfloat16 --no-progress \
  --output "$OUT/h100-wide-bf16" > "$OUT/bench_bf16.log" 2>&1
python -m fastgan.bench --configs ctgan-in256-p10 --batch 1638 --objectives w+gp --no-progress \
  --output "$OUT/h100-pacgan" > "$OUT/bench_pacgan.log" 2>&1
ls -la "$OUT"
