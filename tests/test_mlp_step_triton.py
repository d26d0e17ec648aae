"""The Triton fused MLP step (kernels/mlp_step.py) against the autograd reference composition.

Without a GPU the kernels run under the Triton interpreter on CPU tensors (``TRITON_INTERPRET=1``
is set here before the kernels are imported): small seeded cases only, the interpreter is slow.
With a GPU the same cases run on it, plus the reduced-precision checks at the end.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from fastgan import _dispatch  # noqa: E402
from fastgan.losses import LOSSES  # noqa: E402
from fastgan.mlp import MLPDiscriminator  # noqa: E402
from fastgan.penalties import DRAGANPenalty, GradientPenalty, R1Penalty, R2Penalty  # noqa: E402

mlp_step = pytest.importorskip("fastgan.kernels.mlp_step")
if not (torch.cuda.is_available() or mlp_step.INTERPRET):
    pytest.skip("no GPU and the Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poison_scratch(monkeypatch):
    """Every buffer the op allocates starts as NaN, so an element no kernel writes shows."""
    monkeypatch.setattr(mlp_step, "POISON", True)

# ----------------------------------------------------------------------------------------------
# reference: the composition the fused op replaces, and its translation into the op's arguments
# ----------------------------------------------------------------------------------------------


def make_case(seed, in_features, hidden, rows, dtype, bias=True, slope=0.2, rows_fake=None):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    D = MLPDiscriminator(in_features, hidden, negative_slope=slope, bias=bias).to(DEVICE, dtype)
    real = torch.randn(rows, in_features, generator=g, dtype=dtype).to(DEVICE)
    fake = (0.7 * torch.randn(rows_fake or rows, in_features, generator=g, dtype=dtype) + 0.3).to(DEVICE)
    return D, real, fake


def params(D):
    weights = [layer.weight.detach() for layer in D.layers]
    biases = [layer.bias.detach() for layer in D.layers] if D.bias else []
    b_out = D.out.bias.detach() if D.bias else None
    return weights, biases, D.out.weight.detach(), b_out


def grads(D):
    ps = [layer.weight for layer in D.layers] + ([layer.bias for layer in D.layers] if D.bias else [])
    ps += [D.out.weight] + ([D.out.bias] if D.bias else [])
    return [p.grad for p in ps]


def reference_disc(D, real, fake, loss, penalty, eps):
    """stats and gradients of loss(D(real), D(fake)) + penalty(D, real, fake) by autograd."""
    D.zero_grad(set_to_none=True)
    with _dispatch.use_backend("reference"):
        r, f = D(real), D(fake)
        value = loss.discriminator_loss(r, f)
        pen = penalty(D, real, fake, eps=eps) if penalty is not None else torch.zeros((), dtype=real.dtype)
        (value + pen).backward()
    stats = torch.stack([value.detach(), pen.detach().to(value.device), r.detach().mean(), f.detach().mean()])
    return stats, grads(D)


def op_disc(D, real, fake, loss, penalty, eps, allow_tf32=False):
    """The same step through the Triton op, with the arguments fastgan.fused would pass."""
    t_real, t_fake = loss.discriminator_terms()
    if loss.paired:
        term_real, term_fake = t_real.scaled(1 / real.shape[0]).as_list(), []
    else:
        term_real, term_fake = t_real.scaled(1 / real.shape[0]).as_list(), t_fake.scaled(1 / fake.shape[0]).as_list()
    side, kind, weight, center, pin = -1, 0, 0.0, 0.0, None
    if penalty is not None:
        scale = penalty.next_scale()
        kind, center = int(penalty.kind), penalty.center
        if isinstance(penalty, R2Penalty):
            side, rows = 1, fake.shape[0]
        elif isinstance(penalty, R1Penalty):
            side, rows = 0, real.shape[0]
        else:
            side = 2
            pin = penalty.penalty_input(real, fake, 1, eps=eps)
            rows = pin.shape[0]
        weight = penalty.weight * scale / rows
    return mlp_step.mlp_disc_step(real, fake, pin, *params(D), D.negative_slope, term_real, term_fake, loss.paired,
                                  side, kind, weight, center, allow_tf32)


def reference_gen(D, fake, real, loss):
    fake = fake.detach().requires_grad_(True)
    with _dispatch.use_backend("reference"):
        f = D(fake)
        value = loss.generator_loss(f, D(real) if loss.paired else None)
        (dfake,) = torch.autograd.grad(value, fake)
    return torch.stack([value.detach(), f.detach().mean()]), dfake


def op_gen(D, fake, real, loss, allow_tf32=False):
    term = loss.generator_term().scaled(1 / fake.shape[0]).as_list()
    return mlp_step.mlp_gen_step(fake, real if loss.paired else None, *params(D), D.negative_slope, term,
                                 loss.paired, allow_tf32)


def make_penalty(name):
    return {"none": lambda: None, "r1": lambda: R1Penalty(3.0), "r2": lambda: R2Penalty(2.0, every=4),
            "gp": lambda: GradientPenalty(5.0), "dragan": lambda: DRAGANPenalty(4.0, center=0.5)}[name]()


def make_eps(name, real, seed):
    g = torch.Generator().manual_seed(seed + 1)
    if name == "gp":
        return torch.rand(real.shape[0], generator=g, dtype=real.dtype).to(real.device)
    if name == "dragan":
        return torch.rand(real.shape, generator=g, dtype=real.dtype).to(real.device)
    return None


def assert_close(actual, expected, rtol, what, floor=1e-3):
    """max |a - e| <= rtol * max(max |e|, floor): relative to the tensor's own scale, with a floor
    for tensors whose exact value cancels to about zero (e.g. db_out = sum of c)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values {actual}"
    e = expected.to(torch.float64)
    err = (actual.to(torch.float64) - e).abs().max().item()
    scale = max(e.abs().max().item(), floor)
    assert err <= rtol * scale, f"{what}: max abs error {err:.3e} > {rtol:.0e} * {scale:.3e}"


def check_disc(D, real, fake, loss, penalty_name, seed, rtol, allow_tf32=False):
    eps = make_eps(penalty_name, real, seed)
    out = op_disc(D, real, fake, loss, make_penalty(penalty_name), eps, allow_tf32)
    stats, expected = reference_disc(D, real, fake, loss, make_penalty(penalty_name), eps)
    assert len(out) == 1 + len(expected)
    assert out[0].dtype == real.dtype
    assert_close(out[0][:2], stats[:2], rtol, "loss, penalty")
    assert_close(out[0][2:], stats[2:], rtol, "mean logits")
    floor = 0.1 * max(e.abs().max().item() for e in expected)  # a tenth of the largest gradient
    for i, (a, e) in enumerate(zip(out[1:], expected)):
        assert a.dtype == e.dtype
        assert_close(a, e, rtol, f"gradient {i}", floor)


# ----------------------------------------------------------------------------------------------
# the discriminator step
# ----------------------------------------------------------------------------------------------

LOSS_NAMES = sorted(LOSSES)
PENALTIES = ["none", "r1", "r2", "gp", "dragan"]


def random_arch(seed):
    rnd = random.Random(seed)
    depth = rnd.randint(1, 4)
    return rnd.randint(1, 40), tuple(rnd.choice([1, 5, 19, 33, 47, 70, 100, 128]) for _ in range(depth))


@pytest.fixture(params=["general", "fused"])
def path(request, monkeypatch):
    """Which discriminator path runs: the general one (forced by a zero fused width limit) or the
    fully fused one (the general one is replaced by a function that fails if called)."""
    if request.param == "general":
        monkeypatch.setattr(mlp_step, "FUSED_MAX_WIDTH", 0)
    else:
        def not_fused(*args):
            raise AssertionError("the fully fused path was expected")
        monkeypatch.setattr(mlp_step, "_general_disc_step", not_fused)
    return request.param


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_every_loss(loss_name, dtype, rtol, path):
    seed = LOSS_NAMES.index(loss_name) + (0 if dtype == torch.float64 else 10)
    in_features, hidden = random_arch(seed)
    D, real, fake = make_case(seed, in_features, hidden, 37, dtype)
    check_disc(D, real, fake, LOSSES[loss_name](), PENALTIES[seed % len(PENALTIES)], seed, rtol)


@pytest.mark.parametrize("penalty_name", PENALTIES)
@pytest.mark.parametrize("rows", [1, 3, 37])
def test_every_penalty(penalty_name, rows, path):
    seed = 100 + 7 * PENALTIES.index(penalty_name) + rows
    in_features, hidden = random_arch(seed)
    loss = LOSSES[LOSS_NAMES[seed % len(LOSS_NAMES)]]()
    D, real, fake = make_case(seed, in_features, hidden, rows, torch.float64, bias=rows != 3)
    check_disc(D, real, fake, loss, penalty_name, seed, 1e-10)


@pytest.mark.parametrize("penalty_name", ["r2", "gp"])
def test_128_rows(penalty_name, path):
    """Several row tiles and row ranges per program in both paths."""
    D, real, fake = make_case(5, 40, (100, 70), 128, torch.float64)
    check_disc(D, real, fake, LOSSES["non_saturating"](), penalty_name, 5, 1e-10)


def test_relu_unequal_batches_wide_input(path):
    """alpha = 0, more fake than real rows, K = 40 and widths 128/100."""
    D, real, fake = make_case(7, 40, (128, 100), 3, torch.float32, slope=0.0, rows_fake=37)
    check_disc(D, real, fake, LOSSES["hinge"](), "r1", 7, 1e-5)


def test_deeper_than_fused_limit_takes_general_path(monkeypatch):
    """Depth 5 exceeds FUSED_MAX_DEPTH: the general path serves it."""
    D, real, fake = make_case(9, 3, (5, 6, 7, 8, 9), 3, torch.float64)
    check_disc(D, real, fake, LOSSES["least_squares"](), "dragan", 9, 1e-10)


def test_zero_gradient_rows_give_no_nan(path):
    """A centred penalty at |g| = 0 (all-zero output weight) has zero derivative, not NaN."""
    D, real, fake = make_case(3, 6, (9,), 5, torch.float64)
    with torch.no_grad():
        D.out.weight.zero_()
    check_disc(D, real, fake, LOSSES["wasserstein"](), "gp", 3, 1e-10)


@pytest.mark.parametrize("loss_name", ["non_saturating", "relativistic"])
def test_extreme_logits_stay_exact(loss_name, path):
    """Logits of about 1e4 give finite, exact softplus losses and gradients."""
    D, real, fake = make_case(13, 4, (6,), 5, torch.float64)
    with torch.no_grad():
        D.out.weight.mul_(1e4 / D(real).abs().max())
    check_disc(D, real, fake, LOSSES[loss_name](), "none", 13, 1e-10)


# ----------------------------------------------------------------------------------------------
# the generator step
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss_name", LOSS_NAMES)
def test_generator(loss_name):
    seed = 200 + LOSS_NAMES.index(loss_name)
    in_features, hidden = random_arch(seed)
    dtype = torch.float64 if seed % 2 else torch.float32
    D, real, fake = make_case(seed, in_features, hidden, 37 if seed % 3 else 3, dtype, bias=seed % 4 != 0)
    loss = LOSSES[loss_name]()
    stats, dfake = op_gen(D, fake, real, loss)
    ref_stats, ref_dfake = reference_gen(D, fake, real, loss)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    assert dfake.dtype == fake.dtype
    assert_close(stats, ref_stats, rtol, "generator stats")
    assert_close(dfake, ref_dfake, rtol, "d loss / d fake")


# ----------------------------------------------------------------------------------------------
# argument checks (raise before any kernel)
# ----------------------------------------------------------------------------------------------

def test_bad_arguments_raise():
    D, real, fake = make_case(0, 4, (6,), 3, torch.float32)
    w, b, wo, bo = params(D)
    term = [0, -1.0, 0.0, 1 / 3]
    ok = dict(penalty_input=None, weights=w, biases=b, w_out=wo, b_out=bo, negative_slope=0.2, term_real=term,
              term_fake=term, paired=False, penalty_side=-1, penalty_kind=0, penalty_weight=0.0,
              penalty_center=0.0, allow_tf32=False)
    call = lambda r=real, f=fake, **kw: mlp_step.mlp_disc_step(r, f, **{**ok, **kw})  # noqa: E731
    with pytest.raises(ValueError, match="weights\\[0\\]"):
        call(weights=[w[0][:, :3]])
    with pytest.raises(TypeError, match="fake"):
        call(f=fake.double())
    with pytest.raises(ValueError, match="biases"):
        call(biases=b[:0] + [b[0], b[0]])
    with pytest.raises(ValueError, match="term_real"):
        call(term_real=[7, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="paired"):
        call(paired=True)
    with pytest.raises(ValueError, match="penalty_input"):
        call(penalty_side=2)
    with pytest.raises(ValueError, match="penalty_side"):
        call(penalty_side=3)
    with pytest.raises(ValueError, match="real"):
        mlp_step.mlp_gen_step(fake, None, w, b, wo, bo, 0.2, term, True, False)


# ----------------------------------------------------------------------------------------------
# GPU only: reduced precision against the fp64 reference
# ----------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def max_error(a, e):
    return (a.double() - e).abs().max().item()


@gpu
@pytest.mark.parametrize("mode,rtol", [("ieee", 1e-5), ("tf32", 1e-3), ("bf16", 1e-2)])
@pytest.mark.parametrize("loss_name,penalty_name", [("non_saturating", "r1"), ("wasserstein", "gp"),
                                                    ("relativistic", "dragan")])
@pytest.mark.parametrize("hidden", [(96, 128, 64), (256, 200)])  # fully fused, general
def test_gpu_precision(mode, rtol, loss_name, penalty_name, hidden):
    """Against the fp64 reference: within rtol of each tensor's scale, or at most twice the error
    of the same composition run by autograd in the same precision (flash-attention's test)."""
    D, real, fake = make_case(11, 24, hidden, 1000, torch.float64)
    loss = LOSSES[loss_name]()
    eps = make_eps(penalty_name, real, 11)
    stats, expected = reference_disc(D, real, fake, loss, make_penalty(penalty_name), eps)
    low = torch.bfloat16 if mode == "bf16" else torch.float32
    D_low = MLPDiscriminator(24, hidden, bias=True).to(DEVICE, low)
    D_low.load_state_dict(D.state_dict())
    args = (real.to(low), fake.to(low))
    eps_low = eps.to(low) if eps is not None else None
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    try:
        torch_stats, torch_grads = reference_disc(D_low, *args, loss, make_penalty(penalty_name), eps_low)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    out = op_disc(D_low, *args, loss, make_penalty(penalty_name), eps_low, allow_tf32=mode == "tf32")
    pairs = [(out[0][:2], torch_stats[:2], stats[:2], "loss, penalty")]
    pairs += [(a, t, e, f"gradient {i}") for i, (a, t, e) in enumerate(zip(out[1:], torch_grads, expected))]
    for ours, theirs, exact, what in pairs:
        assert ours.dtype == low and torch.isfinite(ours).all(), what
        bound = max(2 * max_error(theirs, exact), rtol * exact.abs().max().item())
        assert max_error(ours, exact) <= bound, f"{what}: {max_error(ours, exact):.3e} > {bound:.3e}"


# ----------------------------------------------------------------------------------------------
# opt-in, no GPU needed: compile every kernel for sm_90 (the interpreter accepts code that the
# GPU compiler rejects). FASTGAN_TRITON_AOT=1 pytest tests/test_mlp_step_triton.py -k sm90
# ----------------------------------------------------------------------------------------------

AOT_SCRIPT = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastgan.kernels import mlp_step as m

def compile_(kernel, pointers, const, warps):
    fn = kernel.fn if hasattr(kernel, "configs") else kernel
    sig = {a: "constexpr" if a in const else pointers.get(a, "i32") for a in fn.arg_names}
    triton.compile(ASTSource(fn, sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps, "num_stages": 2})

for dt, acc, lowp in (("fp32", "fp32", False), ("fp64", "fp64", False), ("bf16", "fp32", True)):
    p = lambda *names, t=acc: {n: "*" + t for n in names}
    prec = "ieee"
    for epi in (0, 1, 2):
        compile_(m._mm_kernel, {**p("a_ptr", "y_ptr", "aux_ptr", "v_ptr", "scale_ptr", "params_ptr"),
                                **p("b_ptr", "bias_ptr", "wout_ptr", t=dt)},
                 dict(R=96, EPI=epi, HAS_BIAS=True, LAST=True, ROW_SCALE=True, LOWP=lowp, DOT_PRECISION=prec,
                      BLOCK_M=64, BLOCK_J=64, BLOCK_R=32), 4)
    for paired in (False, True):
        compile_(m._logit_loss_kernel, {**p("h_ptr", "params_ptr", "o_ptr", "c_ptr", "part_ptr"),
                                        **p("wout_ptr", "bout_ptr", t=dt)},
                 dict(J=96, PHI_R=0, PHI_F=3, PAIRED=paired, HAS_BOUT=True, BLOCK_M=32, BLOCK_J=32), 4)
    compile_(m._penalty_kernel, p("g_ptr", "gbar_ptr", "params_ptr", "part_ptr"),
             dict(J=96, KIND=1, BLOCK_M=32, BLOCK_J=32), 4)
    for ones in (False, True):
        compile_(m._wgrad_kernel, {**p("v_ptr", "c_ptr", "ubar_ptr", "dw_ptr", "db_ptr", "params_ptr"),
                                   **p("h_ptr", "wdt_ptr", t=dt)},
                 dict(rows_per_split=256, V_ONES=ones, HAS_UBAR=True, HAS_DB=True, LOWP=lowp, DOT_PRECISION=prec,
                      BLOCK_I=32, BLOCK_J=32, BLOCK_R=32), 4)
    dims = dict(D0=20, D1=64, D2=33, D3=7, D4=1)
    compile_(m._fused_forward_kernel, {**p("h_ptr", "params_ptr"), **p("x_ptr", "w1", "w2", "w3", "w4", "b1", "b2",
                                                                       "b3", "b4", t=dt)},
             dict(**dims, L=3, HB=64, HAS_BIAS=True, LOWP=lowp, DOT_PRECISION=prec, BLOCK_M=32), 4)
    compile_(m._fused_backward_kernel, {**p("h_ptr", "v_ptr", "c_ptr", "params_ptr", "dw_ptr", "db_ptr", "dwo_ptr",
                                            "pen_ptr"), **p("x_ptr", "w1", "w2", "w3", "w4", "wout_ptr", t=dt)},
             dict(**dims, L=3, HB=64, HAS_PEN=True, KIND=1, LOWP=lowp, DOT_PRECISION=prec, BLOCK_M=32, TILES=2), 4)
print("compiled")
'''


@pytest.mark.skipif(os.environ.get("FASTGAN_TRITON_AOT") != "1", reason="opt-in (minutes): FASTGAN_TRITON_AOT=1")
def test_kernels_compile_for_sm90():
    import subprocess
    import sys
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-4000:]
