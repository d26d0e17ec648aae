"""The fused-path CUDA kernels (csrc/mlp_step_fused.cuh, csrc/mlp_step_epilogue.cuh), run on
the CPU by an emulator.

``tests/cuda_emulation/mlp_step_emulated.cpp`` compiles the kernels as C++ (each CUDA thread a
``std::thread``, ``__syncthreads`` a barrier, shuffles and WMMA fragments through per-warp
buffers with warp barriers, blocks one after another) and runs the logits pass, the loss
epilogue, the discriminator / generator pass and the ordered reduction of per-block sums exactly
as the host code (csrc/mlp_step.cu) launches them, with small tiles and several blocks so that
partial tiles, the grid-stride loops, penalty ranges that straddle tiles and the cross-block
reduction all occur. The emulated kernels stand in for ``torch.ops.fastgan.mlp_disc_step`` /
``mlp_gen_step``: they take the library's own op arguments (tests/harness.py) and are held to
the harness's bound against the float64 reference.

Dropout: the masks (``masks_*``) go to the kernels per row group, as the host code passes them;
cases with ``dropout=p`` (harness.Case: every step of a case draws the same masks) check the
forward, V chain and ubar chain with masks against the reference, on every path of the kernel
(FFMA, tensor cores, paired losses' logits pass, the generator).

Also checked here: runs with the blocks in reverse order give the same bits (the weight
gradients are reduced in a fixed order, not with float atomics), and the tensor-core products
(MMA_TF32X3: split-precision TF32, within the fp32 bound; MMA_TF32: plain TF32, visibly less
accurate, within a bound of a few TF32 units). The wide path (cuBLAS) and the host code need the
GPU tests.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

import harness
from harness import Case

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cuda_emulation" / "mlp_step_emulated.cpp"
MMA_NONE, MMA_TF32, MMA_TF32X3 = 0, 1, 2  # MmaMode in csrc/mlp_step_fused.cuh
TF32_UNIT = 2.0 ** -11                     # unit roundoff of TF32 (10 stored mantissa bits)


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
    done = subprocess.run([str(binary), str(src), str(dst)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    raw = dst.read_bytes()
    return torch.tensor(struct.unpack(f"<{len(raw) // 8}d", raw), dtype=torch.float64)


def _term(term):
    return [1.0, *term] if term else [0.0] * 5


def _take(out, sizes):
    parts, offset = [], 0
    for n in sizes:
        parts.append(out[offset:offset + n])
        offset += n
    assert offset == out.numel()
    return parts


def _masks(*groups):
    """The mask lists of the row groups (in the kernel's group order), as the host passes them:
    all empty (no dropout) or one list per group that has rows."""
    dropout = any(len(m) for m in groups)
    return dropout, [t for m in groups for t in m]


def emulated_disc(binary, tmp_path, tile, grid_cap, reverse=False, mma=MMA_NONE):
    """A stand-in for ``torch.ops.fastgan.mlp_disc_step`` that runs the emulated kernels."""
    def op(real, fake, penalty_input, weights, biases, w_out, b_out, negative_slope, term_real, term_fake,
           paired, penalty_side, penalty_kind, penalty_weight, penalty_center, allow_tf32, masks_real=(),
           masks_fake=(), masks_penalty=()):
        widths = [real.shape[1]] + [w.shape[0] for w in weights]
        dropout, masks = _masks(masks_real, masks_fake, masks_penalty)
        header = [real.dtype == torch.float32, mma, 0, len(weights), *widths, real.shape[0], fake.shape[0],
                  0 if penalty_input is None else penalty_input.shape[0], bool(biases), b_out is not None,
                  negative_slope, paired, *_term(term_real), *_term(term_fake), penalty_side, penalty_kind,
                  penalty_weight, penalty_center, tile, grid_cap, reverse, dropout]
        out = _run(binary, tmp_path, header, [real, fake, penalty_input, *weights, *biases, w_out, b_out, *masks])
        shapes = [w.shape for w in weights] + [b.shape for b in biases] + [w_out.shape]
        stats, db_out, *grads = _take(out, [4, 1] + [s.numel() for s in shapes])
        result = [stats] + [g.view(s) for g, s in zip(grads, shapes)] + ([db_out] if b_out is not None else [])
        return [t.to(real.dtype) for t in result]
    return op


def emulated_gen(binary, tmp_path, tile, grid_cap, mma=MMA_NONE):
    """A stand-in for ``torch.ops.fastgan.mlp_gen_step`` (the host stacks [real (paired); fake])."""
    def op(fake, real, weights, biases, w_out, b_out, negative_slope, term, paired, allow_tf32, masks_fake=(),
           masks_real=()):
        widths = [fake.shape[1]] + [w.shape[0] for w in weights]
        dropout, masks = _masks(masks_real, masks_fake)  # groups [real (paired only); fake]
        header = [fake.dtype == torch.float32, mma, 1, len(weights), *widths, real.shape[0] if paired else 0,
                  fake.shape[0], 0, bool(biases), b_out is not None, negative_slope, paired,
                  *_term(term if paired else None), *_term(None if paired else term), -1, 0, 0.0, 0.0,
                  tile, grid_cap, False, dropout]
        out = _run(binary, tmp_path, header,
                   [real if paired else None, fake, *weights, *biases, w_out, b_out, *masks])
        stats, grad = _take(out, [2, fake.numel()])
        return [stats.to(fake.dtype), grad.view(fake.shape).to(fake.dtype)]
    return op


ARCHS = [Case(5, (7,), bias=True, slope=0.2), Case(13, (9, 11, 6), bias=False, slope=0.0),
         Case(3, (40, 33), bias=True, slope=0.2)]
PAIRS = [("non_saturating", "r1"), ("wasserstein", "gp"), ("relativistic", "r2"), ("hinge", "dragan"),
         ("least_squares", "none"), ("minimax", "r2")]
# Each case runs hundreds of threads through barriers (seconds on 2 cores): by default the
# multi-tile, multi-block float64 cases run; the rest are marked slow.
SLOW = pytest.mark.slow


def _grid(rows, tile, grid_cap, slow=False):
    return pytest.param(rows, tile, grid_cap, marks=SLOW if slow else (),
                        id=f"rows{rows[0]}x{rows[1]}-tile{tile}-grid{grid_cap}")


@pytest.mark.parametrize("dtype", [pytest.param(torch.float64, id="float64"),
                                   pytest.param(torch.float32, marks=SLOW, id="float32")])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda c: f"in{c.in_features}-h{'x'.join(map(str, c.hidden))}")
@pytest.mark.parametrize("loss_name,pen_name", PAIRS)
@pytest.mark.parametrize("rows,tile,grid_cap", [_grid((1, 1), 32, 4, True), _grid((3, 3), 2, 2, True),
                                                _grid((21, 14), 8, 3)])
def test_disc_kernels_emulated(emulator, tmp_path, arch, dtype, loss_name, pen_name, rows, tile, grid_cap):
    case = arch.with_(rows_real=rows[0], rows_fake=rows[1], loss=loss_name, penalty=pen_name)
    harness.check_disc_op(case.build(dtype), emulated_disc(emulator, tmp_path, tile, grid_cap))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda c: f"in{c.in_features}-h{'x'.join(map(str, c.hidden))}")
@pytest.mark.parametrize("loss_name", ["non_saturating", "relativistic", "least_squares", "hinge"])
@pytest.mark.parametrize("rows,tile,grid_cap", [_grid((1, 1), 32, 4, True), _grid((19, 19), 4, 3)])
def test_gen_kernels_emulated(emulator, tmp_path, arch, loss_name, rows, tile, grid_cap):
    case = arch.with_(rows_real=rows[0], rows_fake=rows[1], loss=loss_name)
    harness.check_gen_op(case.build(torch.float64), emulated_gen(emulator, tmp_path, tile, grid_cap))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("loss_name,pen_name", [("non_saturating", "r1"), ("relativistic", "gp")])
def test_disc_bits_do_not_depend_on_block_order(emulator, tmp_path, dtype, loss_name, pen_name):
    """Blocks run 0..G-1 or G-1..0: every output has the same bits (fixed-order reduction)."""
    problem = ARCHS[2].with_(rows_real=21, rows_fake=14, loss=loss_name, penalty=pen_name).build(dtype)
    args = harness.disc_op_args(problem)
    runs = [emulated_disc(emulator, tmp_path, 4, 5, reverse)(**args) for reverse in (False, True)]
    assert all(torch.isfinite(t).all() for t in runs[0])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


# Tensor cores: widths padded to 16 inside the kernel, tiles of 16 rows, several tiles and blocks.
MMA_CASES = [(ARCHS[2], "non_saturating", "r1"), (ARCHS[1], "relativistic", "gp"), (ARCHS[0], "hinge", "dragan")]


@pytest.mark.parametrize("arch,loss_name,pen_name", MMA_CASES,
                         ids=[f"in{a.in_features}-h{'x'.join(map(str, a.hidden))}-{l}-{p}" for a, l, p in MMA_CASES])
def test_disc_tensor_cores_emulated(emulator, tmp_path, arch, loss_name, pen_name):
    """3xTF32 meets the fp32 bound (error like fp32 eager); plain TF32 is visibly less accurate
    but within a few TF32 units; both run the same kernel code with a different MmaMode."""
    problem = arch.with_(rows_real=21, rows_fake=14, loss=loss_name, penalty=pen_name).build(torch.float32)
    x3 = harness.check_disc_op(problem, emulated_disc(emulator, tmp_path, 16, 3, mma=MMA_TF32X3))
    tf32 = emulated_disc(emulator, tmp_path, 16, 3, mma=MMA_TF32)(**harness.disc_op_args(problem, allow_tf32=True))
    truth, _ = harness.expected(harness.reference_disc_op(problem.case), problem.inputs(), torch.float32)
    err_x3 = harness.error(harness.op_outputs(x3), truth)
    err_tf32 = harness.error(harness.op_outputs(tf32), truth)
    assert err_tf32 <= 32 * TF32_UNIT, f"TF32 error {err_tf32:.3g}"
    assert err_tf32 > 10 * err_x3, f"TF32 error {err_tf32:.3g} vs 3xTF32 {err_x3:.3g}: operands not rounded?"


@pytest.mark.parametrize("loss_name", ["non_saturating", "relativistic"])
def test_gen_tensor_cores_emulated(emulator, tmp_path, loss_name):
    problem = ARCHS[2].with_(rows_real=19, rows_fake=19, loss=loss_name).build(torch.float32)
    harness.check_gen_op(problem, emulated_gen(emulator, tmp_path, 16, 2, mma=MMA_TF32X3))


# ---- dropout: masks on every row group, through every chain of the kernel ----------------------
DROPOUT = 0.4
ARCH_IDS = lambda c: f"in{c.in_features}-h{'x'.join(map(str, c.hidden))}"  # noqa: E731


def _dropout_case(arch, rows, **changes):
    case = arch.with_(rows_real=rows[0], rows_fake=rows[1], dropout=DROPOUT, **changes)
    assert harness.disc_op_args(case.build())["masks_real"], "no masks drawn"
    return case


@pytest.mark.parametrize("dtype", [pytest.param(torch.float64, id="float64"),
                                   pytest.param(torch.float32, marks=SLOW, id="float32")])
@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
@pytest.mark.parametrize("loss_name,pen_name", PAIRS)
def test_disc_kernels_with_dropout_emulated(emulator, tmp_path, arch, dtype, loss_name, pen_name):
    """Masks per group: real, fake and (penalties on their own pass) penalty_input rows, with
    tiles that straddle the groups and a partial last tile."""
    case = _dropout_case(arch, (21, 14), loss=loss_name, penalty=pen_name)
    harness.check_disc_op(case.build(dtype), emulated_disc(emulator, tmp_path, 8, 3))


@pytest.mark.parametrize("arch", ARCHS, ids=ARCH_IDS)
@pytest.mark.parametrize("loss_name", ["non_saturating", "relativistic", "least_squares", "hinge"])
def test_gen_kernels_with_dropout_emulated(emulator, tmp_path, arch, loss_name):
    case = _dropout_case(arch, (19, 19), loss=loss_name)
    harness.check_gen_op(case.build(torch.float64), emulated_gen(emulator, tmp_path, 4, 3))


@pytest.mark.parametrize("arch,loss_name,pen_name", MMA_CASES,
                         ids=[f"in{a.in_features}-h{'x'.join(map(str, a.hidden))}-{l}-{p}" for a, l, p in MMA_CASES])
def test_disc_tensor_cores_with_dropout_emulated(emulator, tmp_path, arch, loss_name, pen_name):
    """The tensor-core products with masks in their epilogues (3xTF32: the fp32 bound)."""
    problem = _dropout_case(arch, (21, 14), loss=loss_name, penalty=pen_name).build(torch.float32)
    harness.check_disc_op(problem, emulated_disc(emulator, tmp_path, 16, 3, mma=MMA_TF32X3))


def test_gen_tensor_cores_with_dropout_emulated(emulator, tmp_path):
    problem = _dropout_case(ARCHS[2], (19, 19), loss="relativistic").build(torch.float32)
    harness.check_gen_op(problem, emulated_gen(emulator, tmp_path, 16, 2, mma=MMA_TF32X3))


def test_disc_bits_with_dropout_do_not_depend_on_block_order(emulator, tmp_path):
    problem = _dropout_case(ARCHS[2], (21, 14), loss="non_saturating", penalty="gp").build(torch.float32)
    args = harness.disc_op_args(problem)
    runs = [emulated_disc(emulator, tmp_path, 4, 5, reverse)(**args) for reverse in (False, True)]
    assert all(torch.isfinite(t).all() for t in runs[0])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
