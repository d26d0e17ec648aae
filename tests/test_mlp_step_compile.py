"""torch.compile(fullgraph=True) of a discriminator training step built on discriminator_step.

Stock PyTorch cannot compile a gradient penalty (AOTAutograd refuses double backward); the
fused step is first-order, so the whole objective traces into one graph and its backward is
compiled. Checked against the eager autograd reference, with no recompile from one step to the
next (the lazy schedule ``every=k`` costs one cached graph per phase). Results are checked by the
harness's one bound (tests/harness.py).
"""
from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch

import fastgan
import harness
from fastgan import _dispatch, fused
from fastgan.fused import discriminator_step, generator_step


def require(backend: str) -> None:
    try:
        fused.resolve_backend(backend, "cpu")
    except (ValueError, RuntimeError) as err:
        pytest.skip(f"fused step backend {backend!r} unavailable: {err}")


def reference(loss, penalty_cls, penalty_args, calls):
    """(D, real, fake, eps) -> the reference step's total and gradients, the penalty module having
    been called ``calls`` times (its lazy phase): a function for ``harness.expected``."""
    def run(D, real, fake, eps):
        D = copy.deepcopy(D)
        pen = penalty_cls(**penalty_args)
        for _ in range(calls):
            D.zero_grad(set_to_none=True)
            total = discriminator_step(D, real, fake, loss=loss, penalty=pen, backend="reference", eps=eps)
            total.backward()
        return {"total": total.detach(), **{f"grad {i}": p.grad for i, p in enumerate(D.parameters())}}
    return run


def run_steps(compiler: str, backend: str, penalty_args: dict, steps: int, dtype=torch.float32):
    torch._dynamo.reset()
    torch.manual_seed(0)
    D = fastgan.MLPDiscriminator(5, (32, 17), negative_slope=0.2, pack=2).to(dtype)
    loss = fastgan.NonSaturatingLoss()
    penalty_cls = penalty_args.pop("cls")
    pen = penalty_cls(**penalty_args)

    def objective(real, fake, eps):
        total, parts = discriminator_step(D, real, fake, loss=loss, penalty=pen, backend=backend, eps=eps,
                                          return_parts=True)
        return total, parts.penalty

    compiled = torch.compile(objective, fullgraph=True, backend=compiler)
    for step in range(steps):
        real, fake = torch.randn(12, 5, dtype=dtype), torch.randn(12, 5, dtype=dtype)
        eps = torch.rand(6, dtype=dtype) if penalty_cls is fastgan.GradientPenalty else None
        D.zero_grad(set_to_none=True)
        # After the first `every` steps every phase has its graph: no more compiles.
        with torch._dynamo.config.patch(error_on_recompile=step >= pen.every):
            total, penalty_value = compiled(real, fake, eps)
        total.backward()
        got = {"total": total.detach(), **{f"grad {i}": p.grad for i, p in enumerate(D.parameters())}}
        truth, base = harness.expected(reference(loss, penalty_cls, penalty_args, step + 1), (D, real, fake, eps),
                                       dtype)
        harness.assert_close(got, truth, base, dtype, f"step {step}")
        if pen.every > 1 and step % pen.every:
            assert penalty_value.item() == 0.0


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_compiled_step_inductor(backend):
    require(backend)
    run_steps("inductor", backend, dict(cls=fastgan.R1Penalty, gamma=2.0), steps=3)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_compiled_lazy_wgan_gp(backend):
    require(backend)
    run_steps("aot_eager", backend, dict(cls=fastgan.GradientPenalty, weight=5.0, every=2), steps=5)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_compiled_generator_step(backend):
    require(backend)
    torch._dynamo.reset()
    torch.manual_seed(1)
    D = fastgan.MLPDiscriminator(4, (16, 9), pack=3)
    fake = torch.randn(9, 4, requires_grad=True)
    real = torch.randn(9, 4)
    for loss in ("non_saturating", "relativistic"):
        compiled = torch.compile(lambda f, r: generator_step(D, f, loss=loss, real=r, backend=backend),
                                 fullgraph=True, backend="aot_eager")
        fake.grad = None
        compiled(fake, real).backward()
        got = fake.grad.clone()
        fake.grad = None
        truth, base = harness.expected(
            lambda D, f, r: torch.autograd.grad(generator_step(D, f.requires_grad_(True), loss=loss, real=r,
                                                               backend="reference"), f)[0], (D, fake, real), fake.dtype)
        harness.assert_close(got, truth, base, fake.dtype, loss)
        assert all(p.grad is None for p in D.parameters())


def test_constant_marker_matches_torch_compiler():
    """fused.py marks its backend resolution constant without importing dynamo; the marker must
    be what torch.compiler.assume_constant_result itself sets."""
    from fastgan import fused

    marked = torch.compiler.assume_constant_result(lambda: 0)
    probe = _dispatch.assume_constant_result(lambda: 0)
    assert {k for k in vars(marked)} == {k for k in vars(probe)} == {"_dynamo_marked_constant"}


@pytest.mark.parametrize("make", [lambda: fastgan.MLPDiscriminator(3, (8, 8)).double(),
                                  lambda: torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.LeakyReLU(0.2),
                                                              torch.nn.Flatten(), torch.nn.Linear(4, 1)).double()],
                         ids=["mlp", "conv"])
def test_the_public_step_compiles_with_the_backend_left_to_fastgan(make):
    """``fastgan.discriminator_step`` without ``backend=`` (the argument, the ``use_backend``
    context and the environment are read when the graph is traced), inside a ``use_backend``
    block too, on the fused and on the linearised path."""
    torch._dynamo.reset()
    D = make()
    shape = (6, 3) if isinstance(D, fastgan.MLPDiscriminator) else (6, 1, 3)
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen, dtype=torch.float64)
    loss, r1 = fastgan.NonSaturatingLoss(), fastgan.R1Penalty(gamma=2.0)
    want = _grads_of(copy.deepcopy(D), lambda M: fastgan.discriminator_step(M, real, fake, loss=loss, penalty=r1,
                                                                             backend="reference"))
    if not isinstance(D, fastgan.MLPDiscriminator):
        fastgan.generic_step.prepare(D)  # fx tracing runs outside the compiled region
    compiled = torch.compile(lambda r, f: fastgan.discriminator_step(D, r, f, loss=loss, penalty=r1),
                             fullgraph=True, backend="aot_eager")
    with fastgan.use_backend("torch"):
        got = _grads_of(D, lambda M: compiled(real, fake))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)


def _grads_of(D, objective):
    D.zero_grad(set_to_none=True)
    total = objective(D)
    total.backward()
    return {"total": total.detach(), **{n: p.grad for n, p in D.named_parameters()}}


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_compiling_the_steps_draws_no_dynamo_warning(backend):
    """Dynamo traces the discriminator and generator steps without warning about fastgan's code
    (it warned once about a functools cache in the op lookup)."""
    require(backend)
    cache = getattr(torch._dynamo.utils, "warn_once_cache", None)
    if cache is not None:
        cache.clear()  # Dynamo warns once per message and process: forget the other tests' warnings
    torch._dynamo.reset()
    D = fastgan.MLPDiscriminator(4, (16,), pack=2)
    real, fake = torch.randn(6, 4), torch.randn(6, 4, requires_grad=True)
    disc = torch.compile(lambda r, f: discriminator_step(D, r, f, loss="non_saturating", penalty=fastgan.R1Penalty(),
                                                         backend=backend), fullgraph=True, backend="aot_eager")
    gen = torch.compile(lambda f: generator_step(D, f, loss="non_saturating", backend=backend),
                        fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        disc(real, fake.detach()).backward()
        gen(fake).backward()
    assert [str(w.message) for w in caught if "_dynamo" in w.filename] == []


_FIRST_CALL_COMPILED = """
import torch, fastgan
D = fastgan.MLPDiscriminator(3, (8, 8), pack=2)
loss, r1 = fastgan.NonSaturatingLoss(), fastgan.R1Penalty(gamma=2.0)
step = torch.compile(lambda r, f: fastgan.discriminator_step(D, r, f, loss=loss, penalty=r1, backend="torch"),
                     fullgraph=True, backend="aot_eager")
for i in range(3):
    with torch._dynamo.config.patch(error_on_recompile=i > 0):
        step(torch.randn(6, 3), torch.randn(6, 3)).backward()
print("one graph")
"""


def test_a_step_compiled_before_any_eager_call_compiles_once():
    """In a fresh interpreter (no operator looked up yet), the first step runs compiled, and the
    next ones reuse its graph: looking the operator up under Dynamo leaves no guard that fails
    once the lookup has been made (fastgan.ops._library fills its table when it declares)."""
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL_COMPILED], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("one graph")


def test_a_compiled_dropout_step_keeps_its_graph_after_an_eager_forward():
    """The random-bits mask draw caches its tables on eager calls only: a compiled training-mode
    dropout step traced before the cache is filled is not recompiled once an eager forward has
    filled it (its trace reads no cache)."""
    torch._dynamo.reset()
    fastgan.mlp._BIT_TABLES.clear()
    D = fastgan.MLPDiscriminator(3, (8, 8), pack=2, dropout=0.5)
    loss, gp = fastgan.WassersteinLoss(), fastgan.GradientPenalty(10.0)
    step = torch.compile(lambda r, f, e: discriminator_step(D, r, f, loss=loss, penalty=gp, eps=e, backend="torch"),
                         fullgraph=True, backend="aot_eager")
    real, fake, eps = torch.randn(6, 3), torch.randn(6, 3), torch.rand(3)
    step(real, fake, eps).backward()
    D(real)  # eager: fills the tables
    assert fastgan.mlp._BIT_TABLES
    with torch._dynamo.config.patch(error_on_recompile=True):
        total = step(real, fake, eps)
    assert torch.isfinite(total)
