"""The Triton fused MLP step (``fastgan.kernels.mlp_step`` and the kernels it dispatches to)
against the specification, through the shared harness (tests/harness.py): its cases, the float64
reference and the one error bound; the operators' arguments come from ``fastgan.step_spec``.

Without a GPU the kernels run under the Triton interpreter on CPU tensors (``TRITON_INTERPRET=1``,
set before pytest starts: fastgan reads it once, ``fastgan.kernels.INTERPRET``): small cases only,
the interpreter is slow. With a GPU the same cases run on it (compiled Triton), plus the
reduced-precision checks marked ``gpu``.
Every call passes ``poison=True``: scratch buffers start as NaN, so an element no kernel writes
gives a non-finite result (an infinite error in the harness).
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

import harness  # noqa: E402
from conftest import TOOLS  # noqa: E402
from harness import Case  # noqa: E402

mlp_step = pytest.importorskip("fastgan.kernels.mlp_step")
from fastgan.kernels import mlp_fused, mlp_tuning  # noqa: E402

if not (torch.cuda.is_available() or mlp_tuning.INTERPRET):
    pytest.skip("no GPU, and TRITON_INTERPRET=1 was not set when pytest started", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PATHS = ["wide", "auto"]  # auto: the fully fused kernels wherever the widths allow them


def disc(path="auto"):
    return functools.partial(mlp_step.mlp_disc_step, path=path, poison=True)


GEN = functools.partial(mlp_step.mlp_gen_step, poison=True)

# Every loss x penalty once (30 cases), widths up to 128 (both paths), 1-37 rows; case i runs on
# path i % 2 and in float64 or float32 by (i // 2) % 2, so every penalty meets both paths and
# both dtypes meet both paths.
RANDOM = harness.cases(30, seed=11, max_width=128, rows=(1, 2, 3, 5, 37), max_work=int(2e5))


@pytest.mark.parametrize("i", range(len(RANDOM)), ids=[c.id for c in RANDOM])
def test_disc_random_architectures(i):
    dtype = torch.float32 if (i // 2) % 2 else torch.float64
    harness.check_disc_op(RANDOM[i].build(dtype, DEVICE), disc(PATHS[i % 2]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("penalty", ["r2", "gp"])
def test_several_row_tiles_and_row_ranges(path, penalty):
    """70 rows a side: several row tiles per program (fused) and several row ranges in the
    weight-gradient sums (general) under the interpreter's tile sizes."""
    case = Case(20, (24, 33), rows_real=70, rows_fake=70, penalty=penalty, seed=5)
    harness.check_disc_op(case.build(torch.float64, DEVICE), disc(path))


@pytest.mark.parametrize("path", PATHS)
def test_relu_unequal_batches_wide_input(path):
    """alpha = 0, more fake than real rows, K = 40 and widths 128/100 (the widest fused padding)."""
    case = Case(40, (128, 100), rows_real=3, rows_fake=37, slope=0.0, loss="hinge", penalty="r1", seed=7)
    harness.check_disc_op(case.build(torch.float32, DEVICE), disc(path))


def test_fused_path_limits():
    """Depth 5 or a width above 128: path="fused" raises before any kernel, "auto" takes the
    general path and is exact."""
    deep = Case(3, (5, 6, 7, 8, 9), loss="least_squares", penalty="dragan", seed=9).build(torch.float64, DEVICE)
    wide = Case(129, (4,), seed=9).build(torch.float64, DEVICE)
    for problem in (deep, wide):
        with pytest.raises(ValueError, match="path='fused' needs every width <= 128"):
            disc("fused")(**harness.disc_op_args(problem))
        harness.check_disc_op(problem, disc("auto"))
    assert mlp_fused.padded_width([3, 5, 6, 7, 8]) == 16 and mlp_fused.padded_width([40, 128, 100]) == 128


@pytest.mark.parametrize("path", PATHS)
def test_zero_norm_penalty_rows_give_zero_gradient_not_nan(path):
    """A centred penalty at |g| = 0 (all-zero output weight) has zero derivative, not NaN."""
    problem = Case(6, (9,), rows_real=5, rows_fake=5, loss="wasserstein", penalty="gp", seed=3).build(
        torch.float64, DEVICE)
    with torch.no_grad():
        problem.D.out.weight.zero_()
    out = harness.check_disc_op(problem, disc(path))
    pen = problem.penalty()
    assert out[0][1].item() == pytest.approx(pen.weight * pen.center ** 2)


@pytest.mark.parametrize("path", PATHS)
def test_extreme_logits_stay_exact(path):
    """Logits of about 1e4 give finite, exact softplus losses and gradients."""
    for loss in ("non_saturating", "relativistic"):
        problem = Case(4, (6,), rows_real=5, rows_fake=5, loss=loss, seed=13).build(torch.float64, DEVICE)
        with torch.no_grad():
            problem.D.out.weight.mul_(1e4 / problem.D(problem.real).abs().max())
        harness.check_disc_op(problem, disc(path))


@pytest.mark.parametrize("loss", harness.LOSS_NAMES)
def test_generator(loss):
    i = harness.LOSS_NAMES.index(loss)
    case = Case(7 + i, ((19, 33), (128,), (5, 70, 1))[i % 3], pack=1 + i % 2, rows_real=37 if i % 3 else 3,
                rows_fake=37 if i % 3 else 3, bias=i % 4 != 0, loss=loss, seed=200 + i)
    harness.check_gen_op(case.build(torch.float64 if i % 2 else torch.float32, DEVICE), GEN)


def test_bad_arguments_raise():
    problem = Case(4, (6,), rows_real=3, rows_fake=3, seed=0).build(torch.float32, DEVICE)
    args = harness.disc_op_args(problem)
    w, fake = args["weights"], args["fake"]
    bad = [
        (dict(weights=[w[0][:, :3]]), ValueError, r"weights\[0\]"),
        (dict(fake=fake.double()), TypeError, "fake"),
        (dict(biases=args["biases"] * 2), ValueError, "biases"),
        (dict(term_real=[7, 1.0, 0.0, 1.0]), ValueError, "term_real"),
        (dict(paired=True), ValueError, "paired"),
        (dict(penalty_side=2), ValueError, "penalty_input"),
        (dict(penalty_side=3), ValueError, "penalty_side"),
        (dict(negative_slope=-0.1), ValueError, "negative_slope"),
    ]
    for change, error, message in bad:
        with pytest.raises(error, match=message):
            mlp_step.mlp_disc_step(**{**args, **change})
    with pytest.raises(ValueError, match="path must be one of"):
        mlp_step.mlp_disc_step(**args, path="general")
    with pytest.raises(TypeError, match="poison must be a bool"):
        mlp_step.mlp_disc_step(**args, poison=1)
    gargs = harness.gen_op_args(problem.case.with_(loss="relativistic").build(torch.float32, DEVICE))
    with pytest.raises(ValueError, match="real"):
        mlp_step.mlp_gen_step(**dict(gargs, real=None))
    with pytest.raises(ValueError, match="only the general path"):
        mlp_step.mlp_gen_step(**gargs, path="fused")


# ----------------------------------------------------------------------------------------------
# compile budget (no GPU needed: tools/compile_count.py runs the host code on meta tensors with
# the compiled-mode configs, in a subprocess without TRITON_INTERPRET)
# ----------------------------------------------------------------------------------------------

COUNT_SCRIPT = r'''
import json, torch
from fastgan.bench import configs as bench
import compile_count as cc
nets = {n.name: n for fam in bench.FAMILIES.values() for n in fam}
nets["in48-4x112"] = bench.Network("in48-4x112", 48, 112, 4)  # pads to 128 like width-128
obj = bench.OBJECTIVES
out = {}
for name, steps in {
    "wide": [("width-512", 256, "ns+r1")],
    "wide+batch": [("width-512", 256, "ns+r1"), ("width-512", 200, "ns+r1")],
    "wide+width": [("width-512", 256, "ns+r1"), ("width-1024", 256, "ns+r1")],
    "fused": [("width-128", 256, "w+gp")],
    "fused+batch": [("width-128", 256, "w+gp"), ("width-128", 255, "w+gp")],
    "fused+width": [("width-128", 256, "w+gp"), ("in48-4x112", 256, "w+gp")],
}.items():
    counter = cc.CompileCounter()
    with counter:
        for net, batch, o in steps:
            cc._step(nets[net], batch, obj[o], torch.float32)
    out[name] = counter.snapshot()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def compile_counts():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TOOLS), env.get("PYTHONPATH")) if p)
    run = subprocess.run([sys.executable, "-c", COUNT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return {k: tuple(v) for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}


def test_first_call_compile_budget(compile_counts):
    """The first call of a new shape compiles a handful of kernels (benchmarks/NOTES.md, section
    "Triton"): at most 12 on the general path, 3 on the fused one, and each autotuned kernel
    times at most mlp_tuning.KEEP configs per tuning key."""
    compiles, runs, timed = compile_counts["wide"]
    assert 0 < compiles <= 12 and timed <= mlp_tuning.KEEP * runs
    assert compile_counts["fused"] == (3, 0, 0)


def test_new_batch_in_bucket_and_new_width_reuse_compiled_kernels(compile_counts):
    """Another batch size in the same power-of-two bucket compiles and tunes nothing; another
    network of the same depth (general path) or padded width and depth (fused path) adds at most
    one kernel (an autotuned kernel may pick another config for the new sizes; widths keep their
    divisibility by 16, which Triton specialises on)."""
    assert compile_counts["wide+batch"] == compile_counts["wide"]
    assert compile_counts["fused+batch"] == compile_counts["fused"]
    assert compile_counts["wide+width"][0] <= compile_counts["wide"][0] + 1
    assert compile_counts["fused+width"][0] == compile_counts["fused"][0]


# ----------------------------------------------------------------------------------------------
# GPU only: reduced precision against the fp64 reference (the harness's bound follows the same
# composition run by PyTorch in that precision on this GPU)
# ----------------------------------------------------------------------------------------------

@gpu
@pytest.mark.parametrize("mode", ["highest", "tf32", "bf16"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("hidden", [(96, 128, 64), (256, 200)], ids=["fusable", "wide"])
def test_gpu_precision(mode, path, hidden):
    """fp32 'highest' (3xTF32), TF32 and bf16 within the bound of the same composition by PyTorch."""
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    for loss, penalty in (("non_saturating", "r1"), ("wasserstein", "gp"), ("relativistic", "dragan")):
        case = Case(24, hidden, rows_real=1000, rows_fake=1000, loss=loss, penalty=penalty, seed=11)
        harness.check_disc_op(case.build(dtype, DEVICE), disc(path), allow_tf32=mode == "tf32")


@gpu
def test_gpu_generator_bf16():
    case = Case(24, (256, 200), rows_real=1000, rows_fake=1000, loss="relativistic", seed=12)
    harness.check_gen_op(case.build(torch.bfloat16, DEVICE), GEN)


# ----------------------------------------------------------------------------------------------
# opt-in, no GPU needed: compile every kernel for sm_90 (the interpreter accepts code that the
# GPU compiler rejects). FASTGAN_TRITON_AOT=1 pytest tests/test_mlp_step_triton.py -k sm90
# ----------------------------------------------------------------------------------------------

AOT_SCRIPT = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from fastgan.kernels import mlp_fused as f, mlp_general as g, mlp_rows as r

def compile_(kernel, pointers, const, warps):
    fn = kernel
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    sig = {a: "constexpr" if a in const else pointers.get(a, "i32") for a in fn.arg_names}
    triton.compile(ASTSource(fn, sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps, "num_stages": 2})

for dt, acc, lowp, prec in (("fp32", "fp32", False, "tf32x3"), ("fp64", "fp64", False, "ieee"),
                            ("bf16", "fp32", True, "ieee")):
    p = lambda *names, t=acc: {n: "*" + t for n in names}
    for epi in (0, 1, 2):
        compile_(g._mm_kernel, {**p("a_ptr", "y_ptr", "aux_ptr", "v_ptr", "scale_ptr", "params_ptr"),
                                **p("b_ptr", "bias_ptr", "wout_ptr", "drop_ptr", t=dt)},
                 dict(EPI=epi, HAS_BIAS=True, LAST=True, ROW_SCALE=True, DROP=epi < 2, LOWP=lowp,
                      DOT_PRECISION=prec, BLOCK_M=64, BLOCK_J=64, BLOCK_R=32), 4)
    for paired in (False, True):
        compile_(r._logit_loss_kernel, {**p("h_ptr", "params_ptr", "o_ptr", "c_ptr", "part_ptr"),
                                        **p("wout_ptr", "bout_ptr", t=dt)},
                 dict(PHI_R=0, PHI_F=3, PAIRED=paired, HAS_BOUT=True, BLOCK_M=32, BLOCK_J=32), 4)
    compile_(r._penalty_kernel, p("g_ptr", "gbar_ptr", "params_ptr", "part_ptr"),
             dict(KIND=1, BLOCK_M=32, BLOCK_J=32), 4)
    for ones in (False, True):
        compile_(g._wgrad_kernel, {**p("v_ptr", "c_ptr", "ubar_ptr", "dw_ptr", "db_ptr", "params_ptr"),
                                   **p("h_ptr", "wdt_ptr", t=dt)},
                 dict(V_ONES=ones, HAS_UBAR=True, HAS_DB=True, LOWP=lowp, DOT_PRECISION=prec,
                      BLOCK_I=32, BLOCK_J=32, BLOCK_R=32), 4)
    masks = ("m1", "m2", "m3", "m4")
    for dropout in (False, True):
        compile_(f._fused_forward_kernel, {**p("h_ptr", "params_ptr"),
                                           **p("x_ptr", "w1", "w2", "w3", "w4", "b1", "b2", "b3", "b4", *masks, t=dt)},
                 dict(L=3, HB=64, HAS_BIAS=True, DROPOUT=dropout, LOWP=lowp, DOT_PRECISION=prec, BLOCK_M=32), 4)
        compile_(f._fused_backward_kernel, {**p("h_ptr", "v_ptr", "c_ptr", "params_ptr", "dw_ptr", "db_ptr",
                                                "dwo_ptr", "pen_ptr"),
                                            **p("x_ptr", "w1", "w2", "w3", "w4", "wout_ptr", *masks, t=dt)},
                 dict(L=3, HB=64, HAS_PEN=True, KIND=1, DROPOUT=dropout, LOWP=lowp, DOT_PRECISION=prec,
                      BLOCK_M=32), 4)
print("compiled")
'''


@pytest.mark.skipif(os.environ.get("FASTGAN_TRITON_AOT") != "1", reason="opt-in (minutes): FASTGAN_TRITON_AOT=1")
def test_kernels_compile_for_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-4000:]
