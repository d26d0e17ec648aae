"""Every operator (:mod:`fastgan.ops`) in every backend that runs here: registered, with its
schema's signature, passing ``torch.library.opcheck`` (schema, fake tensors, autograd
registration, AOT dispatch), and the fused step's operators within the harness bound of the
float64 reference. One test per (operator, backend): the backends share one contract."""
from __future__ import annotations

import inspect
import os

import pytest
import torch

import harness
from fastgan import _dispatch, closed_form, fused, ops
from fastgan.ops import loss_term, mlp_step, penalty
from harness import Case

OPERATORS = [loss_term.FORWARD, loss_term.BACKWARD, penalty.FORWARD, penalty.BACKWARD, mlp_step.DISC, mlp_step.GEN]
PYTHON_BACKENDS = ("torch", "triton")


def _runnable(backend: str) -> None:
    """Skip unless ``backend`` runs on CPU tensors here (triton: under TRITON_INTERPRET=1)."""
    why = _dispatch._why_unavailable(backend)
    if why or not _dispatch.serves_device(backend, torch.device("cpu")):
        pytest.skip(f"{backend} does not run on CPU tensors here: {why or 'it needs a CUDA device'}")


def backends(names=("cpu", "torch", "triton")):
    return pytest.mark.parametrize("backend", names)


@pytest.mark.parametrize("op", OPERATORS, ids=lambda o: o.name)
def test_every_operator_is_defined_for_every_backend_with_one_schema(op):
    schemas = {b: str(op.op(b)._schema).split("(", 1)[1] for b in ("cpu", *PYTHON_BACKENDS)}
    assert len(set(schemas.values())) == 1, schemas
    assert str(op.op("cpu")._schema) == f"fastgan::{op.name}{op.schema}"
    assert list(op.args._fields) == [a.name for a in op.op("cpu")._schema.arguments]
    for backend in ("cpu", "triton"):  # opaque kernels: a fake for tracing
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname(backend), "Meta"), op.qualname(backend)
    # the torch variant is decomposed into torch operations wherever it runs
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname("torch"), "CompositeImplicitAutograd")


def _implementations():
    pairs = [(mlp_step.DISC, closed_form.mlp_disc_step), (mlp_step.GEN, closed_form.mlp_gen_step),
             (loss_term.FORWARD, loss_term._torch_forward), (loss_term.BACKWARD, loss_term._closed_form_derivative),
             (penalty.FORWARD, penalty._torch_forward), (penalty.BACKWARD, penalty._closed_form_derivative)]
    if _dispatch._triton_installed():
        from fastgan.kernels import losses, mlp_step as triton_step, penalties
        pairs += [(mlp_step.DISC, triton_step.mlp_disc_step), (mlp_step.GEN, triton_step.mlp_gen_step),
                  (loss_term.FORWARD, losses.loss_term_forward), (loss_term.BACKWARD, losses.loss_term_backward),
                  (penalty.FORWARD, penalties.penalty_forward), (penalty.BACKWARD, penalties.penalty_backward)]
    return pairs


@pytest.mark.parametrize("op,impl", _implementations(), ids=lambda v: getattr(v, "__module__", None) or v.name)
def test_python_implementations_take_the_schemas_arguments(op, impl):
    """The dispatcher passes the schema's arguments by position, trailing defaults left out: every
    implementation has the schema's parameters, in order, with its defaults (keyword-only extras
    are allowed: options the tests use)."""
    params = [p for p in inspect.signature(impl).parameters.values() if p.kind != p.KEYWORD_ONLY]
    assert [p.name for p in params] == list(op.args._fields)
    for p, a in zip(params, op.op("cpu")._schema.arguments):
        if a.has_default_value():
            assert p.default == a.default_value, (p.name, p.default, a.default_value)


def _x(*shape, seed=0):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@backends()
@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("phi", [0, 1, 2, 3])
def test_opcheck_loss_term(backend, phi, reduction):
    _runnable(backend)
    x = _x(3, 5)
    torch.library.opcheck(loss_term.FORWARD.op(backend), (x, phi, -1.0, 0.5, 2.0, reduction))
    grad_out = _x(3, 5, seed=1) if reduction == 0 else torch.tensor(0.5, dtype=torch.float64)
    torch.library.opcheck(loss_term.BACKWARD.op(backend), (grad_out, x, phi, -1.0, 0.5, 2.0, reduction))


@backends()
@pytest.mark.parametrize("kind", [0, 1])
def test_opcheck_penalty(backend, kind):
    _runnable(backend)
    g = _x(4, 3)
    torch.library.opcheck(penalty.FORWARD.op(backend), (g, kind, 2.0, 1.0))
    torch.library.opcheck(penalty.BACKWARD.op(backend), (torch.tensor(0.5, dtype=torch.float64), g, kind, 2.0, 1.0))


@backends()
@pytest.mark.parametrize("kind", [0, 1])
def test_loss_and_penalty_gradients_match_torch_to_second_order(backend, kind):
    """The registered autograd: first order by the backend's backward operator, double backward
    through the closed form; both equal the torch variant's (decomposed) autograd."""
    _runnable(backend)
    results = []
    for b in (backend, "torch"):
        x = _x(6, 3).requires_grad_()
        value = loss_term.FORWARD.op(b)(x, 0, -1.0, 0.5, 2.0, 1) + penalty.FORWARD.op(b)(x, kind, 2.0, 1.0)
        (g,) = torch.autograd.grad(value, x, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), x)
        results.append((value.detach(), g.detach(), h))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


ARCH = Case(3, (5, 4), pack=2, rows_real=2, rows_fake=2, loss="relativistic", seed=1)


@backends()
@pytest.mark.parametrize("pen_name", ["none", "r1", "gp"])
def test_opcheck_mlp_steps(backend, pen_name):
    _runnable(backend)
    torch.library.opcheck(mlp_step.DISC.op(backend), (), harness.disc_op_args(ARCH.with_(penalty=pen_name).build()))
    torch.library.opcheck(mlp_step.GEN.op(backend), (), harness.gen_op_args(ARCH.build()))


@backends()
def test_opcheck_mlp_steps_with_dropout_masks(backend):
    _runnable(backend)
    if backend not in fused.DROPOUT_BACKENDS:
        pytest.skip(f"{backend} takes no dropout masks")
    D = ARCH.build().D
    D.dropout = 0.5
    problem = ARCH.with_(penalty="gp").build()
    problem.D.dropout = 0.5
    from fastgan import step_spec
    args = step_spec.disc_step_op_args(problem.D, problem.real, problem.fake, loss=problem.loss(),
                                       penalty=problem.penalty(), generator=torch.Generator().manual_seed(0))
    assert args["masks_real"] and args["masks_penalty"]
    torch.library.opcheck(mlp_step.DISC.op(backend), (), harness._detached(args))


STEP_CASES = [Case(5, (37, 64, 3), pack=2, rows_real=40, rows_fake=21, penalty=p, loss=l, seed=3)
              for p, l in (("r1", "non_saturating"), ("r2", "hinge"), ("gp", "relativistic"), ("none", "wasserstein"))]


@backends()
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: c.id)
def test_mlp_steps_match_the_reference(backend, case, dtype):
    """Each backend's registered operators (not its Python function) against the reference."""
    _runnable(backend)
    problem = case.build(dtype)
    harness.check_disc_op(problem, mlp_step.DISC.op(backend))
    harness.check_gen_op(problem, mlp_step.GEN.op(backend))


def test_the_package_lists_its_operators():
    assert {op.name for op in OPERATORS} == {
        getattr(getattr(ops, m), n).name for m in ops.__all__ for n in dir(getattr(ops, m))
        if isinstance(getattr(getattr(ops, m), n), ops._library.Operator)}
