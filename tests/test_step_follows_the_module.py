"""The fused step does what the module would do, or says it cannot.

Regression tests for gradients that were silently wrong: frozen parameters that trained,
spectral / weight norm that the kernels ignored, subclasses and hooks that were bypassed, a lazy
penalty whose phase moved on a failed step and was lost on resume, arguments checked only on
some calls, and the step under ``no_grad`` / ``inference_mode``. Every fused backend that runs
here is compared with ``backend="reference"`` (autograd, double backward) in float64.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import fastgan
from fastgan import fused

F64 = torch.float64


def _data(rows=12, features=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, features, generator=g, dtype=F64),
            torch.randn(rows, features, generator=g, dtype=F64))


def _D(seed=0, **kwargs):
    torch.manual_seed(seed)
    return fastgan.MLPDiscriminator(3, (8, 5), **kwargs).to(F64)


def _run(D, backend, backward, penalty=None, loss="non_saturating", **kwargs):
    real, fake = _data()
    penalty = penalty if penalty is not None else fastgan.R1Penalty(gamma=2.0)
    total = fused.discriminator_step(D, real, fake, loss=loss, penalty=penalty, backend=backend,
                                     backward=backward, **kwargs)
    if not backward:
        total.backward()
    return float(total.detach())


def _grads(D):
    return {n: p.grad for n, p in D.named_parameters()}


def _assert_same(D, want_D, value, want_value):
    assert value == pytest.approx(want_value, rel=1e-12, abs=1e-14)
    got, want = _grads(D), _grads(want_D)
    assert {n for n, g in got.items() if g is not None} == {n for n, g in want.items() if g is not None}
    for n, g in got.items():
        if g is not None:
            torch.testing.assert_close(g, want[n], rtol=1e-10, atol=1e-13, msg=n)
    for (n, b), (_, wb) in zip(D.named_buffers(), want_D.named_buffers()):
        assert torch.equal(b, wb), f"buffer {n} differs from the reference's"


# ---- frozen parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("backward", [True, False], ids=["backward=True", "backward()"])
def test_frozen_parameters_get_no_gradient(backend, backward):
    D = _D()
    D.layers[0].requires_grad_(False)
    D.out.bias.requires_grad_(False)
    want = copy.deepcopy(D)
    value = _run(D, backend, backward)
    want_value = _run(want, "reference", backward)
    assert D.layers[0].weight.grad is None and D.layers[0].bias.grad is None and D.out.bias.grad is None
    _assert_same(D, want, value, want_value)


def test_unrolled_look_ahead_leaves_frozen_layers_alone(backend):
    D = _D()
    D.layers[0].requires_grad_(False)
    opt = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=0.1)
    real, fake = _data()
    looks = {}
    for name in (backend, "reference"):
        fake_g = fake.clone().requires_grad_(True)
        fastgan.unrolled_generator_step(D, real, fake_g, loss="non_saturating", optimizer=opt, steps=3,
                                        mode="first_order", backend=name).backward()
        looks[name] = fake_g.grad
    torch.testing.assert_close(looks[backend], looks["reference"], rtol=1e-10, atol=1e-13)


# ---- spectral norm, weight norm, any parametrization ----------------------------------------------

def _normed(form: str, train: bool) -> fastgan.MLPDiscriminator:
    D = _D(seed=3)
    if form == "spectral_norm hook":
        torch.nn.utils.spectral_norm(D.layers[0])
    elif form == "spectral_norm":
        torch.nn.utils.parametrizations.spectral_norm(D.layers[0])
        torch.nn.utils.parametrizations.spectral_norm(D.out)
    elif form == "weight_norm":
        torch.nn.utils.parametrizations.weight_norm(D.layers[1])
    elif form == "weight_norm hook":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the hook form is deprecated, still used
            torch.nn.utils.weight_norm(D.layers[1])
    return D.train(train)


FORMS = ["spectral_norm hook", "spectral_norm", "weight_norm", "weight_norm hook"]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backward", [True, False], ids=["backward=True", "backward()"])
@pytest.mark.parametrize("form", FORMS)
def test_parametrized_weights_are_followed(backend, form, backward, train):
    D, want = _normed(form, train), _normed(form, train)
    value = _run(D, backend, backward)
    want_value = _run(want, "reference", backward)
    plain = {f"{m}.{k}" for m in ("layers.0", "layers.1", "out") for k in ("weight", "bias")}
    originals = [n for n, _ in D.named_parameters() if n not in plain]  # weight_orig, weight_g, original0...
    assert originals and all(D.get_parameter(n).grad is not None for n in originals)
    _assert_same(D, want, value, want_value)


def test_spectral_norm_power_iteration_advances_once_per_step(backend):
    """One step moves spectral norm's u exactly as one D(...) forward in training mode does."""
    D = _normed("spectral_norm", train=True)
    once = copy.deepcopy(D)
    once(_data()[0])
    _run(D, backend, backward=True)
    for (n, b), (_, w) in zip(D.named_buffers(), once.named_buffers()):
        torch.testing.assert_close(b, w, rtol=0, atol=0, msg=n)


def test_generator_step_uses_the_effective_weights(backend):
    D, want = _normed("spectral_norm hook", True), _normed("spectral_norm hook", True)
    _, fake = _data()
    grads = []
    for module, name in ((D, backend), (want, "reference")):
        x = fake.clone().requires_grad_(True)
        fused.generator_step(module, x, loss="relativistic", real=_data()[0], backend=name).backward()
        grads.append(x.grad)
        assert all(p.grad is None for p in module.parameters()), "the generator step trained D"
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-13)
    for (n, b), (_, w) in zip(D.named_buffers(), want.named_buffers()):
        assert torch.equal(b, w), n


# ---- what the kernels cannot reproduce: subclasses and hooks ----------------------------------------

class Doubled(fastgan.MLPDiscriminator):
    def forward(self, x, *, fused=None):
        return super().forward(2 * x) if fused is None else super().forward(x, fused=fused)


class NoFusedKeyword(fastgan.MLPDiscriminator):
    def forward(self, x):
        return super().forward(x) + 1.0


def _with_layer_hook(D):
    D.layers[1].register_forward_hook(lambda m, args, out: out * 0.5)
    return D


def _with_pre_hook(D):
    D.register_forward_pre_hook(lambda m, args: (args[0] * 3,))
    return D


@pytest.mark.parametrize("make, path", [
    (lambda: Doubled(3, (8, 5)).to(F64), "linearized"),
    (lambda: NoFusedKeyword(3, (8, 5)).to(F64), "linearized"),
    (lambda: _with_layer_hook(_D()), "reference"),
    (lambda: _with_pre_hook(_D()), "reference"),
], ids=["overridden forward", "forward without fused=", "layer forward hook", "D pre-hook"])
def test_what_the_kernels_cannot_reproduce_takes_another_exact_path(make, path, monkeypatch):
    """Overridden forwards take the linearised step (which traces forward); hooks, which neither
    the kernels nor the trace run, the reference path. Either way the gradients are the module's."""
    monkeypatch.setattr(fused, "_warned", set())
    torch.manual_seed(0)
    D = make()
    want = copy.deepcopy(D)
    assert fastgan.explain(D).path == path
    with pytest.warns(UserWarning, match=f"takes the {path} path"):
        value = _run(D, None, backward=False)
    want_value = _run(want, "reference", backward=False)
    _assert_same(D, want, value, want_value)
    with warnings.catch_warnings():  # once per reason
        warnings.simplefilter("error")
        _run(copy.deepcopy(want), None, backward=True)


def test_an_explicit_fused_backend_on_such_a_module_is_an_error(backend):
    D = _with_layer_hook(_D())
    with pytest.raises(ValueError, match="layers\\[1\\] has forward hooks.*backend='reference'"):
        _run(D, backend, backward=True)
    assert all(p.grad is None for p in D.parameters())


def test_a_forward_hook_on_D_sees_logits(monkeypatch):
    monkeypatch.setattr(fused, "_warned", set())
    D = _D()
    seen = []
    D.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with pytest.warns(UserWarning, match="D has forward hooks"):
        _run(D, None, backward=True)
    assert seen and all(shape == (12,) for shape in seen)


# ---- the lazy phase ---------------------------------------------------------------------------------

def test_lazy_phase_moves_only_after_a_successful_step(backend):
    D = _D()
    real, fake = _data()
    gp = fastgan.GradientPenalty(every=3)
    with pytest.raises(ValueError, match=r"eps must have shape \(12,\) \(one value per row\)"):
        fused.discriminator_step(D, real, fake, loss="wasserstein", penalty=gp, backend=backend,
                                 eps=torch.rand(5, dtype=F64))
    assert gp.calls == 0
    fused.discriminator_step(D, real, fake, loss="wasserstein", penalty=gp, backend=backend,
                             eps=torch.rand(12, dtype=F64))
    assert gp.calls == 1
    # not due now, and a wrong eps is still an error
    with pytest.raises(ValueError, match="eps must have shape"):
        fused.discriminator_step(D, real, fake, loss="wasserstein", penalty=gp, backend=backend,
                                 eps=torch.rand(5, dtype=F64))
    assert gp.calls == 1


def test_lazy_phase_travels_with_the_state_dict():
    r1 = fastgan.R1Penalty(every=4)
    D = _D()
    real, fake = _data()
    for _ in range(3):
        r1(D, real, fake)
    resumed = fastgan.R1Penalty(every=4)
    resumed.load_state_dict(r1.state_dict())
    assert resumed.calls == 3
    assert float(resumed(D, real, fake)) == 0.0 and resumed.calls == 0
    assert float(resumed(D, real, fake).detach()) > 0.0
    with pytest.raises(ValueError, match="lazy phase"):
        fastgan.R1Penalty(every=2).load_state_dict(r1.state_dict())


def test_graphed_step_warms_up_every_phase():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            fastgan.GraphedStep(lambda: None, phases=16)
        return
    assert fastgan.GraphedStep(lambda: None, phases=16).warmup == 16


# ---- arguments, checked on every call ---------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: fastgan.R1Penalty(gamma="10"), TypeError, "gamma must be a real number"),
    (lambda: fastgan.R1Penalty(gamma=float("nan")), ValueError, "gamma must be finite"),
    (lambda: fastgan.R1Penalty(gamma=-1.0), ValueError, "gamma must be non-negative"),
    (lambda: fastgan.R1Penalty(every=True), TypeError, "every must be a positive integer"),
    (lambda: fastgan.R1Penalty(every=0), ValueError, "every must be a positive integer"),
    (lambda: fastgan.GradientPenalty(center=float("inf")), ValueError, "center must be finite"),
    (lambda: fastgan.LeastSquaresLoss(a=float("nan")), ValueError, "a must be finite"),
    (lambda: fastgan.MLPDiscriminator(2, (8, 2.5)), TypeError, r"hidden\[1\] must be a positive integer"),
])
def test_bad_settings_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_integer_like_settings_are_accepted():
    assert fastgan.R1Penalty(every=np.int64(4)).every == 4
    D = fastgan.MLPDiscriminator(np.int64(3), (np.int32(8),), pack=np.int64(2))
    assert (D.in_features, D.hidden, D.pack) == (3, (8,), 2)


@pytest.mark.parametrize("eps, error, match", [
    ([0.5] * 12, TypeError, "eps must be a torch.Tensor"),
    (torch.rand(12, dtype=F64, device="meta"), ValueError, "eps is on meta"),
    (torch.arange(12), TypeError, "eps must be a floating-point tensor"),
])
def test_bad_eps_is_named_before_any_kernel(backend, eps, error, match):
    D = _D()
    real, fake = _data()
    with pytest.raises(error, match=match):
        fused.discriminator_step(D, real, fake, loss="wasserstein", penalty=fastgan.GradientPenalty(),
                                 backend=backend, eps=eps, backward=True)
    assert all(p.grad is None for p in D.parameters())


def test_bad_generator_is_named(backend):
    real, fake = _data()
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fused.discriminator_step(_D(), real, fake, loss="wasserstein", penalty=fastgan.GradientPenalty(),
                                 backend=backend, generator=0)


def test_mixed_dtype_names_the_layer(backend):
    D = _D()
    D.layers[1].to(torch.float32)
    real, fake = _data()
    with pytest.raises(ValueError, match=r"D's parameters are torch.float32 on cpu \(from layers\[1\].weight\)"):
        fused.discriminator_step(D, real, fake, loss="hinge", backend=backend)


# ---- grad modes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", ["fused", "reference"])
def test_backward_true_computes_gradients_in_any_grad_mode(backend, name, mode):
    name = backend if name == "fused" else "reference"
    D, want = _D(), _D()
    want_value = _run(want, "reference", backward=True)
    with mode():
        value = _run(D, name, backward=True)
    assert not any(p.grad.is_inference() for p in D.parameters())
    _assert_same(D, want, value, want_value)
    torch.optim.SGD(D.parameters(), lr=0.1).step()  # the gradients are usable: the next step runs
    _run(D, name, backward=True)
