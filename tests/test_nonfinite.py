"""Non-finite inputs: NaN and Inf propagate on every backend exactly as in the reference (plain
torch autograd). A NaN in a batch, an infinite logit or a value that overflows must show up in the
loss and in exactly the gradients where the reference has them, so that a user's NaN check on the
loss (or on the gradients) catches it, and no backend turns a NaN into a finite number.

Each test compares the NaN mask and the Inf mask of the value and of every gradient with those of
``backend="reference"`` in the same dtype: the losses (``discriminator_loss``/``generator_loss``,
every loss and reduction), the penalty kernels on given input gradients (zero rows included: the
norm's gradient there is 0 in torch, not NaN), the penalty modules on a discriminator, and the
fused ``discriminator_step`` / ``generator_step`` (every loss x penalty), on every backend that runs
here; plus the fused CUDA kernels through the CPU emulator (tests/cuda_emulation).
"""
from __future__ import annotations

import copy

import pytest
import torch

import fastgan
import harness
from conftest import backend_params
from fastgan.penalties import penalty_from_gradient
from fastgan.terms import PenaltyKind

LOSS_NAMES = harness.LOSS_NAMES
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
NAN, INF = float("nan"), float("inf")

# NaN and Inf are this file's inputs: numpy (under Triton's interpreter) warns on every operation
# that meets them, which is the behaviour under test, not a problem
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def huge(dtype: torch.dtype) -> float:
    """A finite value whose products (and squares) overflow in ``dtype``."""
    return 1e30 if dtype == torch.float32 else 1e200


def specials(dtype: torch.dtype) -> dict[str, float]:
    return {"nan": NAN, "inf": INF, "-inf": -INF, "huge": huge(dtype), "-huge": -huge(dtype)}


def assert_same_nonfinite(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """NaN where the reference has NaN, +Inf and -Inf where it has them, finite elsewhere."""
    assert list(got) == list(want), what
    for name, w in want.items():
        g = got[name].detach().to(w.device)
        w = w.detach()
        assert g.shape == w.shape, f"{what}: {name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        for test in (torch.isnan, torch.isposinf, torch.isneginf):
            if not torch.equal(test(g), test(w)):
                raise AssertionError(f"{what}: {name}: {test.__name__} differs from the reference\n"
                                     f"got  {g.flatten().tolist()}\nwant {w.flatten().tolist()}")


# ------------------------------------------------------------------------------------- losses ----
def _logits(dtype, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = (torch.randn(n, generator=g, dtype=torch.float64) * 2).to(dtype)
    f = (torch.randn(n, generator=g, dtype=torch.float64) * 2).to(dtype)
    return r, f


def _loss_cases(dtype):
    """(label, real logits, fake logits): one special value at a time on either side, at logits
    on both sides of the hinge (so relu's NaN and its derivative at NaN both matter), and all at once."""
    for label, value in specials(dtype).items():
        for side in ("real", "fake"):
            for pos in (0, 3):
                r, f = _logits(dtype)
                r[1], f[1] = 3.0, -3.0  # the hinge terms' flat side
                (r if side == "real" else f)[pos] = value
                yield f"{label} in {side}[{pos}]", r, f
    r, f = _logits(dtype, seed=1)
    r[:] = torch.tensor([NAN, INF, -INF, huge(dtype), 0.5], dtype=dtype)
    f[:] = torch.tensor([-huge(dtype), 0.0, NAN, -INF, INF], dtype=dtype)
    yield "all at once", r, f


def _loss_outputs(fn, r, f):
    r = r.detach().clone().requires_grad_(True)
    f = f.detach().clone().requires_grad_(True)
    value = fn(r, f)
    grad_r, grad_f = torch.autograd.grad(value, (r, f), torch.ones_like(value), allow_unused=True)
    out = {"value": value.detach(), "d real": grad_r if grad_r is not None else torch.zeros_like(r)}
    out["d fake"] = grad_f if grad_f is not None else torch.zeros_like(f)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_discriminator_loss_nonfinite(backend, name, reduction, dtype):
    for label, r, f in _loss_cases(dtype):
        got = _loss_outputs(lambda a, b: fastgan.discriminator_loss(a, b, name, reduction, backend=backend), r, f)
        want = _loss_outputs(lambda a, b: fastgan.discriminator_loss(a, b, name, reduction, backend="reference"),
                             r, f)
        assert_same_nonfinite(got, want, f"{backend} {name} {reduction} discriminator, {label}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_generator_loss_nonfinite(backend, name, reduction, dtype):
    paired = fastgan.LOSSES[name].paired
    for label, r, f in _loss_cases(dtype):
        def run(b):
            return lambda real, fake: fastgan.generator_loss(fake, real if paired else None, name, reduction,
                                                             backend=b)
        got = _loss_outputs(run(backend), r, f)
        want = _loss_outputs(run("reference"), r, f)
        assert_same_nonfinite(got, want, f"{backend} {name} {reduction} generator, {label}")


def test_hinge_nan_is_nan_on_cpu():
    """The reported case: relu(nan) is nan (it was 0 in the native kernels)."""
    if not any(p.id == "cpu" and not p.marks for p in backend_params("cpu")):
        pytest.skip("the cpu backend is not available here")
    r, f = torch.tensor([0.5, NAN, 2.0]), torch.tensor([-2.0, -1.5, -3.0])
    assert torch.isnan(fastgan.discriminator_loss(r, f, loss="hinge", backend="cpu"))


# ---------------------------------------------------------------------------------- penalties ----
def _gradient_rows(dtype):
    """(label, g): input gradients (rows, features) with special values, zero rows and rows whose
    squared norm overflows."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 5, generator=g, dtype=torch.float64).to(dtype)
    for label, value in specials(dtype).items():
        x = base.clone()
        x[2, 1] = value
        yield f"{label} at [2, 1]", x
    x = base.clone()
    x[1] = 0.0
    yield "a zero row", x
    x = base.clone()
    x[1] = 0.0
    x[3, 0] = NAN
    yield "a zero row and a nan", x
    x = base.clone()
    x[0] = huge(dtype) ** 0.75  # squares overflow, the values do not
    yield "a row whose squared norm overflows", x


def _penalty_outputs(fn, g):
    g = g.detach().clone().requires_grad_(True)
    value = fn(g)
    (grad,) = torch.autograd.grad(value, g)
    return {"value": value.detach(), "d g": grad}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,center", [(PenaltyKind.SQUARED, 0.0), (PenaltyKind.CENTERED, 1.0),
                                         (PenaltyKind.CENTERED, 0.0)], ids=["squared", "centered", "centered0"])
def test_penalty_kernels_nonfinite(backend, kind, center, dtype):
    for label, g in _gradient_rows(dtype):
        got = _penalty_outputs(lambda x: penalty_from_gradient(x, kind, 2.5, center, backend), g)
        want = _penalty_outputs(lambda x: penalty_from_gradient(x, kind, 2.5, center, "reference"), g)
        assert_same_nonfinite(got, want, f"{backend} {kind.name} center {center}, {label}")


# ------------------------------------------------------------------ discriminators and inputs ----
PENALTIES = {
    "none": None,
    "r1": lambda: fastgan.R1Penalty(gamma=3.0),
    "r2": lambda: fastgan.R2Penalty(gamma=2.0),
    "gp": lambda: fastgan.GradientPenalty(weight=5.0, center=0.8),
    "dragan": lambda: fastgan.DRAGANPenalty(weight=4.0, center=0.5),
}


def _problem(dtype, slope=0.2, bias=True, rows=3, in_features=2):
    torch.manual_seed(0)
    D = fastgan.MLPDiscriminator(in_features, (8, 8), negative_slope=slope, bias=bias).to(dtype)
    g = torch.Generator().manual_seed(1)
    real = torch.randn(rows, in_features, generator=g, dtype=torch.float64).to(dtype)
    fake = (0.8 * torch.randn(rows, in_features, generator=g, dtype=torch.float64) + 0.3).to(dtype)
    eps = {"gp": torch.rand(rows, generator=g, dtype=torch.float64).to(dtype),
           "dragan": torch.rand(rows, in_features, generator=g, dtype=torch.float64).to(dtype)}
    return D, real, fake, eps


def _input_cases(dtype, slope=0.2, bias=True):
    """(label, D, real, fake, eps): one special value in real or fake, or a NaN in a parameter.

    Infinite weights are left out: the closed form multiplies the chain by ``c h + ubar`` where
    autograd forms ``(c v) h`` and ``v ubar`` apart, and with an infinite ``v`` those differ
    (``inf * (1 - 0.5)`` against ``inf - inf``); an Inf can only reach the chain from a weight."""
    for label, value in specials(dtype).items():
        for where in ("real", "fake", "weight", "bias"):
            if (where == "bias" and not bias) or (where == "weight" and label != "nan"):
                continue
            D, real, fake, eps = _problem(dtype, slope, bias)
            with torch.no_grad():
                if where == "real":
                    real[1, 0] = value
                elif where == "fake":
                    fake[2, 1] = value
                elif where == "weight":
                    D.layers[1].weight[3, 5] = value
                else:
                    D.layers[0].bias[4] = value
            yield f"{label} in {where}", D, real, fake, eps


def _step_outputs(D, real, fake, loss, pen_name, eps, backend):
    D = copy.deepcopy(D)
    make = PENALTIES[pen_name]
    pen = make() if make is not None else None
    total, parts = fastgan.discriminator_step(D, real, fake, loss=loss, penalty=pen, backend=backend,
                                              eps=eps.get(pen_name), return_parts=True)
    total.backward()
    out = {"total": total.detach(), "parts": torch.stack(list(parts))}
    for name, p in D.named_parameters():
        out[name] = p.grad if p.grad is not None else torch.zeros_like(p)
    return out


STEP_BACKENDS = backend_params("cpu")

OVERFLOW_ORDER = """Left out of the step test: least squares with a penalty and a finite input so large that
a product of two finite numbers overflows. Its loss derivative c grows with the logit (c ~ 1e30
with activations h ~ 1e30 in float32), and on a penalised row the closed form forms v (c h) where
autograd forms (c v) h: c h overflows to Inf (and 0 * Inf is NaN) where c v h is 0 * 1e30 = 0.
The Triton kernels form v (c h) on every row, so there it is left out without a penalty too.
Every other loss has |c| <= 1 per row, and infinite inputs (Inf times anything non-zero is Inf in
either order) and NaN are tested for every loss."""


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pen_name", list(PENALTIES))
@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("step_backend", STEP_BACKENDS)
def test_discriminator_step_nonfinite(step_backend, name, pen_name, dtype):
    for slope, bias in ((0.2, True), (0.0, False)):
        for label, D, real, fake, eps in _input_cases(dtype, slope, bias):
            if name == "least_squares" and (pen_name != "none" or step_backend == "triton") and "huge" in label:
                continue  # see OVERFLOW_ORDER
            loss = fastgan.LOSSES[name]()
            got = _step_outputs(D, real, fake, loss, pen_name, eps, step_backend)
            want = _step_outputs(D, real, fake, loss, pen_name, eps, "reference")
            assert_same_nonfinite(got, want, f"{step_backend} {name} + {pen_name}, slope {slope}, {label}")


def test_discriminator_step_nan_in_real_makes_the_total_nan(backend):
    """The reported case: a NaN in real gave a finite total with NaN gradients."""
    D, real, fake, _ = _problem(torch.float32)
    real[1, 0] = NAN
    for name in LOSS_NAMES:
        for pen in (None, fastgan.R1Penalty()):
            total = fastgan.discriminator_step(copy.deepcopy(D), real, fake, loss=name, penalty=pen, backend=backend)
            assert torch.isnan(total), f"{backend} {name} {pen}: total {total.item()}"


def _gen_outputs(D, real, fake, loss, backend):
    D = copy.deepcopy(D)
    x = fake.detach().clone().requires_grad_(True)
    value = fastgan.generator_step(D, x, loss=loss, real=real if loss.paired else None, backend=backend)
    (grad,) = torch.autograd.grad(value, x)
    return {"value": value.detach(), "d fake": grad}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("step_backend", STEP_BACKENDS)
def test_generator_step_nonfinite(step_backend, name, dtype):
    for slope, bias in ((0.2, True), (0.0, False)):
        for label, D, real, fake, _ in _input_cases(dtype, slope, bias):
            loss = fastgan.LOSSES[name]()
            got = _gen_outputs(D, real, fake, loss, step_backend)
            want = _gen_outputs(D, real, fake, loss, "reference")
            assert_same_nonfinite(got, want, f"{step_backend} {name} generator, slope {slope}, {label}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pen_name", [p for p in PENALTIES if p != "none"])
def test_penalty_modules_nonfinite(backend, pen_name, dtype):
    """The penalty modules (autograd input gradient, the backend's norm kernels) on D."""
    for label, D, real, fake, eps in _input_cases(dtype):
        def run(b):
            D_ = copy.deepcopy(D)
            pen = PENALTIES[pen_name]()
            pen.backend = b
            value = pen(D_, real, fake, eps=eps.get(pen_name))
            value.backward()
            return {"value": value.detach(),
                    **{n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in D_.named_parameters()}}
        assert_same_nonfinite(run(backend), run("reference"), f"{backend} {pen_name}, {label}")


# ------------------------------------------------------------------- the CUDA kernels, emulated ----
import test_mlp_step_cuda_emulated as cuda_emulated  # noqa: E402

emulator = cuda_emulated.emulator  # the module-scoped fixture that builds the emulator (or skips)

EMULATED = [("hinge", "r1"), ("least_squares", "gp"), ("non_saturating", "dragan"), ("relativistic", "r2"),
            ("wasserstein", "none")]


@pytest.mark.parametrize("name,pen_name", EMULATED)
def test_cuda_fused_kernels_emulated_nonfinite(emulator, tmp_path, name, pen_name):
    """The fused-path CUDA kernels (csrc/mlp_step_fused.cuh, run on the CPU) against the reference,
    with tiles of 2 rows over 3 blocks so that the special row shares a tile with finite ones."""
    from fastgan import step_spec
    dtype = torch.float32
    op = cuda_emulated.emulated_disc(emulator, tmp_path, 2, 3)
    for label, D, real, fake, eps in _input_cases(dtype):
        if label.split(" ")[0] not in ("nan", "inf", "-inf") or (name == "least_squares" and "huge" in label):
            continue
        loss = fastgan.LOSSES[name]()
        make = PENALTIES[pen_name]
        pen = make() if make is not None else None
        args = step_spec.disc_step_op_args(D, real, fake, loss=loss, penalty=pen, eps=eps.get(pen_name),
                                           allow_tf32=False, penalty_scale=1)
        args = harness._detached(args)
        out = op(**{k: v for k, v in args.items() if k not in ("path", "tensor_cores")})
        want = _step_outputs(D, real, fake, loss, pen_name, eps, "reference")
        names = {id(p): n for n, p in D.named_parameters()}
        want_op = {"stats": want["parts"], **{names[id(p)]: want[names[id(p)]] for p in harness.op_order(D)}}
        got = {"stats": out[0], **{names[id(p)]: g for p, g in zip(harness.op_order(D), out[1:])}}
        assert_same_nonfinite(got, want_op, f"emulated cuda {name} + {pen_name}, {label}")
