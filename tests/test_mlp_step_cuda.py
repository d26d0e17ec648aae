"""The ``cuda`` fused MLP step (csrc/mlp_step.cu) against the reference composition.

Ground truth, in float64 with autograd::

    loss.discriminator_loss(D(real), D(fake)) + penalty(D, real, fake, eps=eps)   then .backward()

and for the generator ``loss.generator_loss(D(fake), D(real))`` differentiated w.r.t. ``fake``.
``torch.ops.fastgan.mlp_disc_step`` / ``mlp_gen_step`` must give the same stats and gradients on
both CUDA paths (the op's ``path="fused"``: the small-width shared-memory kernel;
``wide``: ATen products + custom epilogues), for every loss and penalty, odd shapes, 1, 2 and 3
rows. Arguments from ``fastgan.step_spec``; cases, the float64 reference and the one error bound
from tests/harness.py: float32 (TF32 allowed or not), bf16 and fp16 are bounded by K x the error of
the reference composition run in that precision on this GPU, plus a small floor. Dropout cases
(``Case(dropout=p)``: the op and the reference draw the same masks) run on both paths too.
"""
from __future__ import annotations

import pytest
import torch

import harness
from fastgan import _native
from harness import Case


def _cuda_op_available() -> bool:
    if not torch.cuda.is_available():
        return False
    module, _ = _native.load()
    return module is not None and bool(module.cuda_compiled)


pytestmark = pytest.mark.skipif(not _cuda_op_available(), reason="needs a GPU and fastgan built with CUDA")

DEVICE = "cuda"
DISC = torch.ops.fastgan.mlp_disc_step if _cuda_op_available() else None
GEN = torch.ops.fastgan.mlp_gen_step if _cuda_op_available() else None

# Architectures: small widths take the fused kernel under "auto", WIDE the wide path; every case
# also runs with each path forced.
WIDE = Case(37, (200, 130), bias=True, slope=0.1)  # never fits the fused kernel's shared memory
ARCHS = [
    Case(5, (7,), bias=True, slope=0.2),
    Case(13, (9, 11, 6), bias=False, slope=0.0),
    Case(3, (64, 64, 64, 64), bias=True, slope=0.2),
    WIDE,
]
ROWS = [(1, 1), (2, 2), (3, 3), (50, 37), (300, 211)]  # (real rows, fake rows); paired: (n, n)


@pytest.fixture(params=[{"path": "fused"}, {"path": "wide"}, {"path": "auto"},
                        {"path": "fused", "tensor_cores": True}], ids=["fused", "wide", "auto", "fused-tc"])
def path(request):
    """The op's options: each path forced, and the fused kernel on tensor cores."""
    return request.param


def _poison_allocator(dtype):
    """Fill freed blocks of the caching allocator (small and large pools, many sizes) with NaN,
    so an output element that the op allocates but forgets to write most likely shows."""
    blocks = [torch.full((n,), float("nan"), device=DEVICE, dtype=dtype)
              for n in (1 << 22, 1 << 18, 1 << 14, 1 << 10, 64, 8, 1) for _ in range(8)]
    del blocks
    torch.cuda.synchronize()


def _poisoned(op, dtype):
    def run(**args):
        _poison_allocator(dtype)
        return op(**args)
    return run


def _check_disc(path, arch, rows, dtype, loss_name, pen_name, allow_tf32=False, dropout=0.0):
    if path["path"] == "fused" and arch is WIDE:
        pytest.skip("the wide architecture does not fit the fused kernel (see test_forced_fused_path_refuses...)")
    case = arch.with_(rows_real=rows[0], rows_fake=rows[1], loss=loss_name, penalty=pen_name, dropout=dropout)
    out = harness.check_disc_op(case.build(dtype, DEVICE), _poisoned(DISC, dtype), allow_tf32=allow_tf32, **path)
    assert all(t.device.type == "cuda" for t in out)


@pytest.mark.parametrize("loss_name", harness.LOSS_NAMES)
@pytest.mark.parametrize("pen_name", harness.PENALTY_NAMES)
@pytest.mark.parametrize("arch", ARCHS[:3], ids=lambda a: a.id)
def test_disc_float64_every_loss_and_penalty(path, arch, loss_name, pen_name):
    _check_disc(path, arch, (50, 37), torch.float64, loss_name, pen_name)


@pytest.mark.parametrize("rows", ROWS, ids=str)
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.id)
@pytest.mark.parametrize("loss_name,pen_name", [("non_saturating", "r1"), ("wasserstein", "gp"),
                                                ("relativistic", "r2"), ("hinge", "none")])
def test_disc_float64_shapes(path, arch, rows, loss_name, pen_name):
    _check_disc(path, arch, rows, torch.float64, loss_name, pen_name)


@pytest.mark.parametrize("loss_name", harness.LOSS_NAMES)
@pytest.mark.parametrize("pen_name", ["none", "r1", "gp", "dragan"])
@pytest.mark.parametrize("arch", [ARCHS[1], WIDE], ids=lambda a: a.id)
def test_disc_float32_highest(path, arch, loss_name, pen_name):
    _check_disc(path, arch, (50, 37), torch.float32, loss_name, pen_name, allow_tf32=False)


@pytest.mark.parametrize("rows", ROWS, ids=str)
@pytest.mark.parametrize("loss_name,pen_name", [("non_saturating", "r1"), ("wasserstein", "gp")])
@pytest.mark.parametrize("arch", [ARCHS[2], WIDE], ids=lambda a: a.id)
def test_disc_float32_tf32(path, arch, rows, loss_name, pen_name):
    """TF32 allowed: the baseline is the reference composition in float32 with TF32 matmuls."""
    _check_disc(path, arch, rows, torch.float32, loss_name, pen_name, allow_tf32=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("arch", [ARCHS[2], WIDE], ids=lambda a: a.id)
@pytest.mark.parametrize("loss_name,pen_name", [("non_saturating", "r1"), ("wasserstein", "gp")])
def test_disc_low_precision(path, dtype, arch, loss_name, pen_name):
    """16-bit inputs and weights, fp32 accumulation (the wide path stores intermediates in 16
    bits): the baseline is the reference composition run in the 16-bit dtype."""
    _check_disc(path, arch, (300, 211), dtype, loss_name, pen_name)


@pytest.mark.parametrize("loss_name", harness.LOSS_NAMES)
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.id)
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
def test_gen(path, arch, loss_name, dtype):
    if path["path"] == "fused" and arch is WIDE:
        pytest.skip("the wide architecture does not fit the fused kernel")
    for rows in [(1, 1), (3, 3), (120, 77)]:
        case = arch.with_(rows_real=rows[0], rows_fake=rows[1], loss=loss_name)
        out = harness.check_gen_op(case.build(dtype, DEVICE), _poisoned(GEN, dtype), **path)
        assert out[1].device.type == "cuda"


# ---- dropout: masks per row group through the forward, the V chain and the ubar chain ----------
DROPOUT_PAIRS = [("non_saturating", "r1"), ("wasserstein", "gp"), ("relativistic", "r2"), ("hinge", "dragan"),
                 ("least_squares", "none")]


@pytest.mark.parametrize("rows", [(1, 1), (3, 3), (50, 37)], ids=str)
@pytest.mark.parametrize("loss_name,pen_name", DROPOUT_PAIRS)
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.id)
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
def test_disc_dropout(path, dtype, arch, loss_name, pen_name, rows):
    _check_disc(path, arch, rows, dtype, loss_name, pen_name, dropout=0.4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("arch", [ARCHS[2], WIDE], ids=lambda a: a.id)
def test_disc_dropout_low_precision(path, dtype, arch):
    _check_disc(path, arch, (300, 211), dtype, "wasserstein", "gp", dropout=0.5)


@pytest.mark.parametrize("loss_name", ["non_saturating", "relativistic", "hinge"])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.id)
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
def test_gen_dropout(path, arch, loss_name, dtype):
    if path["path"] == "fused" and arch is WIDE:
        pytest.skip("the wide architecture does not fit the fused kernel")
    for rows in [(1, 1), (120, 77)]:
        case = arch.with_(rows_real=rows[0], rows_fake=rows[1], loss=loss_name, dropout=0.4)
        harness.check_gen_op(case.build(dtype, DEVICE), _poisoned(GEN, dtype), **path)


def test_dropout_bad_masks_raise_naming_them():
    args = harness.disc_op_args(Case(13, (9, 11), rows_real=4, rows_fake=3, penalty="gp",
                                     dropout=0.4).build(torch.float32, DEVICE))
    for name, bad, message in (("masks_real", args["masks_real"][:1], "masks_real must be"),
                               ("masks_fake", [m[:-1] for m in args["masks_fake"]], r"masks_fake\[0\] must have shape"),
                               ("masks_penalty", [m.double() for m in args["masks_penalty"]], r"masks_penalty\[0\] has dtype"),
                               ("masks_real", [m.cpu() for m in args["masks_real"]], r"masks_real\[0\] must be a CUDA"),
                               ("masks_fake", [m.t().contiguous().t() for m in args["masks_fake"]], "contiguous"),
                               ("masks_penalty", [], "masks_penalty must be given exactly")):
        with pytest.raises(RuntimeError, match=message):
            DISC(**{**args, name: bad})


def test_dropout_two_calls_give_identical_bits():
    args = harness.disc_op_args(Case(13, (9, 11), rows_real=40, rows_fake=30, penalty="gp",
                                     dropout=0.4).build(torch.float32, DEVICE))
    for options in ({"path": "fused"}, {"path": "fused", "tensor_cores": True}):
        first, second = DISC(**args, **options), DISC(**args, **options)
        assert all(torch.equal(a, b) for a, b in zip(first, second))


def _args(dtype=torch.float32):
    return harness.disc_op_args(Case(13, (9, 11), rows_real=4, rows_fake=3).build(dtype, DEVICE))


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(fake=a["fake"].double()), "dtype"),
    (lambda a: a.update(fake=a["fake"].cpu()), "CUDA"),
    (lambda a: a.update(fake=a["fake"][:, :2]), "fake must be"),
    (lambda a: a.update(real=a["real"][:0]), "rows >= 1"),
    (lambda a: a.update(w_out=a["w_out"].t()), "w_out must be"),
    (lambda a: a.update(biases=a["biases"][:1]), "biases must be empty or one per layer"),
    (lambda a: a.update(weights=[a["weights"][0].t(), a["weights"][1]]), "weights[0] must be"),
    (lambda a: a.update(penalty_side=2), "penalty_input must be given exactly when"),
    (lambda a: a.update(penalty_side=3), "penalty_side must be"),
    (lambda a: a.update(penalty_kind=5, penalty_side=0), "penalty_kind must be"),
    (lambda a: a.update(term_real=[7.0, 1.0, 0.0, 1.0]), "phi"),
    (lambda a: a.update(term_fake=[0.0, 1.0]), "term_fake must be"),
    (lambda a: a.update(paired=True), "paired losses"),
    (lambda a: a.update(negative_slope=-0.1), "negative_slope"),
])
def test_disc_bad_input_raises(change, message):
    args = _args()
    change(args)
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("(", r"\(")):
        DISC(**args)


def test_forced_fused_path_refuses_networks_that_do_not_fit():
    args = harness.disc_op_args(Case(8, (1024, 1024), rows_real=4, rows_fake=4).build(torch.float32, DEVICE))
    with pytest.raises(RuntimeError, match="does not fit"):
        DISC(**args, path="fused")


def test_unknown_path_raises():
    with pytest.raises(RuntimeError, match="path must be"):
        DISC(**_args(), path="fast")


def test_two_calls_give_identical_bits():
    """The fused kernel reduces weight gradients in a fixed order (no float atomics)."""
    for options in ({"path": "fused"}, {"path": "fused", "tensor_cores": True}):
        args = {**_args(), **options}
        first, second = DISC(**args), DISC(**args)
        assert all(torch.equal(a, b) for a, b in zip(first, second))
