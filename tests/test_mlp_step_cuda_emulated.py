"""The fused-path CUDA kernels of csrc/mlp_step.cu, run on the CPU by an emulator.

``tests/cuda_emulation/mlp_step_emulated.cpp`` compiles the kernels as C++ (each CUDA thread a
``std::thread``, ``__syncthreads`` a barrier, shuffles through a per-warp buffer, blocks one
after another) and runs the logits pass, the loss epilogue and the discriminator / generator
pass exactly as the host code launches them, with small tiles and several blocks so that
partial tiles, the grid-stride loop, penalty ranges that straddle tiles and the cross-block
atomics all occur. Results are compared with the float64 autograd reference of
test_mlp_step_cuda.py. This checks indexing, barriers and maths without a GPU; the wide path
(cuBLAS) and the host code need the GPU tests.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from fastgan.losses import get_loss

ROOT = Path(__file__).resolve().parents[1]
# The reference helpers live beside the GPU tests (pytest runs with --import-mode=importlib).
_spec = importlib.util.spec_from_file_location("_mlp_step_cuda_tests", ROOT / "tests" / "test_mlp_step_cuda.py")
_gpu_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gpu_tests)
SIDE, _assert_rel, _make, _terms = _gpu_tests.SIDE, _gpu_tests._assert_rel, _gpu_tests._make, _gpu_tests._terms
_penalty_setup, _reference_disc, _reference_gen = (_gpu_tests._penalty_setup, _gpu_tests._reference_disc,
                                                   _gpu_tests._reference_gen)
SOURCE = ROOT / "tests" / "cuda_emulation" / "mlp_step_emulated.cpp"


def _cuda_include() -> Path | None:
    nvcc = shutil.which("nvcc")
    roots = [Path(os.environ["CUDA_HOME"])] if os.environ.get("CUDA_HOME") else []
    roots += [Path(nvcc).resolve().parents[1]] if nvcc else []
    roots += [Path("/usr/local/cuda")]
    return next((r / "include" for r in roots if (r / "include" / "cuda_runtime.h").exists()), None)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    cxx, cuda_include = shutil.which("g++"), _cuda_include()
    if cxx is None or cuda_include is None:
        pytest.skip("needs g++ (C++20) and the CUDA toolkit headers")
    tmp = tmp_path_factory.mktemp("cuda_emulation")
    stub = tmp / "include" / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"  # as CMakeLists.txt does
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    torch_include = Path(torch.__file__).parent / "include"
    binary = tmp / "mlp_step_emulated"
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-w", f"-I{torch_include}", f"-I{tmp / 'include'}",
           f"-I{cuda_include}", f"-I{ROOT / 'csrc'}", str(SOURCE), "-o", str(binary)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"emulator build failed:\n{done.stderr[-4000:]}"
    return binary


def _run(binary, tmp_path, header, tensors):
    values = [float(v) for v in header]
    for t in tensors:
        if t is not None:
            values += t.detach().double().flatten().tolist()
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(struct.pack(f"<{len(values)}d", *values))
    done = subprocess.run([str(binary), str(src), str(dst)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    raw = dst.read_bytes()
    return torch.tensor(struct.unpack(f"<{len(raw) // 8}d", raw), dtype=torch.float64)


def _network(D):
    widths = [D.layers[0].in_features] + [layer.out_features for layer in D.layers]
    tensors = [layer.weight for layer in D.layers]
    tensors += [layer.bias for layer in D.layers] if D.bias else []
    tensors += [D.out.weight] + ([D.out.bias] if D.bias else [])
    return widths, tensors


def _term_header(term):
    return [1.0] + list(term) if term else [0.0] * 5


ARCHS = [(5, (7,), True, 0.2), (13, (9, 11, 6), False, 0.0), (3, (40, 33), True, 0.2)]


# Each case runs hundreds of threads through barriers (~3 s on 2 cores): by default the
# multi-tile, multi-block float64 cases run; the rest are marked slow.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), pytest.param(torch.float32, 1e-5, marks=SLOW)])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss_name,pen_name", [
    ("non_saturating", "r1"), ("wasserstein", "gp"), ("relativistic", "r2"), ("hinge", "dragan"),
    ("least_squares", None), ("minimax", "r2"),
])
@pytest.mark.parametrize("rows,tile,grid_cap", [pytest.param((1, 1), 32, 4, marks=SLOW),
                                                pytest.param((3, 3), 2, 2, marks=SLOW), ((21, 14), 8, 3)])
def test_disc_kernels_emulated(emulator, tmp_path, arch, dtype, rtol, loss_name, pen_name, rows, tile, grid_cap):
    D, real, fake = _make(arch, rows, dtype, loss_name, pen_name, device="cpu")
    loss = get_loss(loss_name)
    tr, tf = _terms(loss, real.shape[0], fake.shape[0])
    pen, _, x_pen, pen_rows = _penalty_setup(pen_name, real, fake)
    widths, params = _network(D)
    header = [dtype == torch.float32, 0, len(widths) - 1, *widths, real.shape[0], fake.shape[0],
              0 if x_pen is None else x_pen.shape[0], D.bias, D.bias, D.negative_slope, loss.paired,
              *_term_header(tr), *_term_header(tf), SIDE[pen_name], int(pen.kind) if pen else 0,
              pen.weight / pen_rows if pen else 0.0, pen.center if pen else 0.0, tile, grid_cap]
    out = _run(emulator, tmp_path, header, [real, fake, x_pen] + params)
    stats, grads = _reference_disc(D, real, fake, loss_name, pen_name)
    for i, name in enumerate(["loss", "penalty", "mean real logit", "mean fake logit"]):
        _assert_rel(out[i], stats[i], rtol, name)
    if D.bias:
        _assert_rel(out[4], grads[-1][0], rtol, "db_out")
    offset = 5
    for i, g in enumerate(grads[:-1] if D.bias else grads):
        _assert_rel(out[offset:offset + g.numel()].view_as(g), g, rtol, f"gradient {i}")
        offset += g.numel()
    assert offset == out.numel()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss_name", ["non_saturating", "relativistic", "least_squares", "hinge"])
@pytest.mark.parametrize("rows,tile,grid_cap", [pytest.param((1, 1), 32, 4, marks=SLOW), ((19, 19), 4, 3)])
def test_gen_kernels_emulated(emulator, tmp_path, arch, loss_name, rows, tile, grid_cap):
    dtype, rtol = torch.float64, 1e-10
    D, real, fake = _make(arch, rows, dtype, loss_name, device="cpu")
    loss = get_loss(loss_name)
    term = loss.generator_term().scaled(1.0 / fake.shape[0]).as_list()
    widths, params = _network(D)
    nr = real.shape[0] if loss.paired else 0
    header = [0, 1, len(widths) - 1, *widths, nr, fake.shape[0], 0, D.bias, D.bias, D.negative_slope, loss.paired,
              *_term_header(term if loss.paired else None), *_term_header(None if loss.paired else term),
              -1, 0, 0.0, 0.0, tile, grid_cap]
    out = _run(emulator, tmp_path, header, [real if loss.paired else None, fake] + params)
    ref_stats, ref_grad = _reference_gen(D, fake, real, loss_name)
    _assert_rel(out[0], ref_stats[0], rtol, "generator loss")
    _assert_rel(out[3], ref_stats[1], rtol, "mean fake logit")
    _assert_rel(out[5:].view_as(ref_grad), ref_grad, rtol, "d loss / d fake")
