"""fastgan.unrolled.unrolled_generator_step: the generator's loss against D after k look-ahead updates.

Specification: ``steps=0`` is ``generator_step``; ``exact`` is autograd through k optimiser
updates of ``loss(D(real), D(fake)) + penalty`` (checked against the same unrolling written out by
hand, and its look-ahead against real ``torch.optim`` steps); ``first_order`` is k fused
``discriminator_step`` + optimiser steps on a copy followed by ``generator_step`` on the copy.
Everything in float64 on tiny shapes.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.unrolled import UnrolledDiscriminator, unrolled_generator_step

TOL = dict(rtol=1e-10, atol=1e-12)
OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.5, 0.9)),
    "adam_wd_amsgrad": lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.6, 0.8), weight_decay=0.1, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, betas=(0.5, 0.9), weight_decay=0.2),
    "adam_maximize": lambda p: torch.optim.Adam(p, lr=0.01, maximize=True),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, weight_decay=0.05, nesterov=True),
    "sgd_dampened": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
}
PENALTIES = {
    "none": lambda: None,
    "r1": lambda: fastgan.R1Penalty(gamma=3.0),
    "r2": lambda: fastgan.R2Penalty(gamma=2.0),
    "gp": lambda: fastgan.GradientPenalty(weight=0.5),
    "dragan": lambda: fastgan.DRAGANPenalty(weight=0.5),
    "r1_every2": lambda: fastgan.R1Penalty(gamma=3.0, every=2),
}


class TanhD(nn.Module):
    """A discriminator the fused step does not cover (reference path); smooth, so every
    second-order term is non-zero."""

    def __init__(self, features: int = 2, width: int = 4):
        super().__init__()
        self.hidden, self.out = nn.Linear(features, width), nn.Linear(width, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x))).squeeze(1)


class NormD(TanhD):
    """With BatchNorm: buffers that every training-mode forward updates."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.hidden(x)))).squeeze(1)


def setup(make_d, optimizer="adam", seed=0, rows=6, warm_steps=2):
    """(D, optimiser with warm state, real, fake) in float64; fake requires grad."""
    torch.manual_seed(seed)
    D = make_d().double()
    opt = OPTIMIZERS[optimizer](D.parameters())
    for _ in range(warm_steps):  # non-trivial optimiser state
        opt.zero_grad()
        fastgan.discriminator_step(D, torch.randn(rows, 2, dtype=torch.float64),
                                   torch.randn(rows, 2, dtype=torch.float64), loss="non_saturating",
                                   backend="reference").backward()
        opt.step()
    real = torch.randn(rows, 2, dtype=torch.float64) * 0.7 + 0.3
    fake = torch.randn(rows, 2, dtype=torch.float64, requires_grad=True)
    return D, opt, real, fake


def mlp():
    return fastgan.MLPDiscriminator(2, (5, 3))


def value_and_grad(out, fake):
    (g,) = torch.autograd.grad(out, fake)
    return out.detach(), g


# ---- k = 0 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["exact", "first_order"])
@pytest.mark.parametrize("loss_name", list(fastgan.LOSSES))
@pytest.mark.parametrize("make_d", [mlp, TanhD], ids=["mlp", "tanh"])
def test_zero_steps_is_the_generator_step(mode, loss_name, make_d):
    D, opt, real, fake = setup(make_d)
    loss = fastgan.LOSSES[loss_name]()
    got = value_and_grad(unrolled_generator_step(D, real, fake, loss=loss, optimizer=opt, steps=0, mode=mode), fake)
    want = value_and_grad(fastgan.generator_step(D, fake, loss=loss, real=real), fake)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ---- exact ------------------------------------------------------------------------------------

def hand_unrolled(D: TanhD, opt, real, fake, k, penalty, seed):
    """Metz et al.'s surrogate written out: D(x) = tanh(x W^T + b) w^T + c, non-saturating loss,
    Adam from the optimiser's state; d/d fake flows through every update."""
    rng = torch.Generator().manual_seed(seed)
    group = opt.param_groups[0]
    lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
    params = [D.hidden.weight, D.hidden.bias, D.out.weight, D.out.bias]
    theta = [p.detach().requires_grad_(True) for p in params]
    m = [opt.state[p]["exp_avg"].clone() for p in params]
    v = [opt.state[p]["exp_avg_sq"].clone() for p in params]
    t = [float(opt.state[p]["step"]) for p in params]

    def d(th, x):
        W, b, w, c = th
        return (torch.tanh(x @ W.T + b) @ w.T + c).squeeze(1)

    for _ in range(k):
        ld = F.softplus(-d(theta, real)).mean() + F.softplus(d(theta, fake)).mean()
        if penalty == "r1":
            x = real.clone().requires_grad_(True)
            (gx,) = torch.autograd.grad(d(theta, x).sum(), x, create_graph=True)
            ld = ld + 3.0 / 2 * gx.pow(2).sum(1).mean()
        elif penalty == "r2":
            x = fake.view_as(fake)  # its own node: d/dx at fixed theta (theta depends on fake)
            (gx,) = torch.autograd.grad(d(theta, x).sum(), x, create_graph=True)
            ld = ld + 2.0 / 2 * gx.pow(2).sum(1).mean()
        elif penalty == "gp":
            e = torch.rand(real.shape[0], generator=rng, dtype=real.dtype)[:, None]
            x = e * real + (1 - e) * fake
            (gx,) = torch.autograd.grad(d(theta, x).sum(), x, create_graph=True)
            ld = ld + 0.5 * (gx.norm(dim=1) - 1).pow(2).mean()
        grads = torch.autograd.grad(ld, theta, create_graph=True)
        for i, g in enumerate(grads):
            t[i] += 1
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** t[i]), v[i] / (1 - b2 ** t[i])
            theta[i] = theta[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return F.softplus(-d(theta, fake)).mean()


@pytest.mark.parametrize("penalty", ["none", "r1", "r2", "gp"])
@pytest.mark.parametrize("k", [1, 3])
def test_exact_matches_hand_written_unrolling(penalty, k):
    D, opt, real, fake = setup(TanhD)
    got = unrolled_generator_step(D, real, fake, loss=fastgan.NonSaturatingLoss(), optimizer=opt,
                                  penalty=PENALTIES[penalty](), steps=k, mode="exact",
                                  generator=torch.Generator().manual_seed(5))
    want = hand_unrolled(D, opt, real, fake, k, penalty, seed=5)
    torch.testing.assert_close(value_and_grad(got, fake), value_and_grad(want, fake), **TOL)


def test_exact_with_kernel_backed_loss_and_penalty(backend):
    """A loss or penalty pinned to a compiled backend still differentiates to every order."""
    D, opt, real, fake = setup(TanhD)
    got = unrolled_generator_step(D, real, fake, loss=fastgan.NonSaturatingLoss(backend=backend), optimizer=opt,
                                  penalty=fastgan.GradientPenalty(0.5, backend=backend), steps=2, mode="exact",
                                  generator=torch.Generator().manual_seed(5))
    want = hand_unrolled(D, opt, real, fake, 2, "gp", seed=5)
    torch.testing.assert_close(value_and_grad(got, fake), value_and_grad(want, fake), **TOL)


def test_exact_is_finite_where_a_gradient_is_exactly_zero():
    """A dead ReLU unit gets exactly zero gradients, so fresh Adam state has v = 0 there, where
    d sqrt(v)/dv is infinite: the gradient through the updates must stay finite."""
    D, opt, real, fake = setup(lambda: fastgan.MLPDiscriminator(2, (4,), negative_slope=0.0), warm_steps=0)
    with torch.no_grad():
        D.layers[0].bias[0] = -100.0
    value, grad = value_and_grad(unrolled_generator_step(D, real, fake, loss="non_saturating", optimizer=opt,
                                                         steps=2, mode="exact"), fake)
    assert value.isfinite() and grad.isfinite().all()


def test_exact_keeps_the_terms_through_the_updates():
    """The second-order terms are really there: exact's gradient differs from the first-order
    one while the values agree."""
    D, opt, real, fake = setup(TanhD)
    args = dict(loss="non_saturating", optimizer=opt, steps=3)
    exact = value_and_grad(unrolled_generator_step(D, real, fake, mode="exact", **args), fake)
    first = value_and_grad(unrolled_generator_step(D, real, fake, mode="first_order", **args), fake)
    torch.testing.assert_close(exact[0], first[0], **TOL)
    assert (exact[1] - first[1]).norm() > 1e-3 * first[1].norm()


def reference_look_ahead(D, opt, real, fake, k, loss, penalty, seed):
    """k reference-path discriminator steps with the real optimiser on copies of D and its state."""
    D2 = copy.deepcopy(D)
    opt2 = type(opt)(D2.parameters())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares tensors
    rng = torch.Generator().manual_seed(seed)
    for _ in range(k):
        opt2.zero_grad(set_to_none=True)
        fastgan.discriminator_step(D2, real, fake, loss=loss, penalty=penalty, backend="reference",
                                   generator=rng).backward()
        opt2.step()
    return D2


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("loss_name", list(fastgan.LOSSES))
def test_exact_look_ahead_is_the_optimisers(optimizer, loss_name):
    """The value of exact's surrogate is the generator loss on D after k real optimiser steps."""
    D, opt, real, fake = setup(TanhD, optimizer)
    loss = fastgan.LOSSES[loss_name]()
    got = unrolled_generator_step(D, real, fake, loss=loss, optimizer=opt, penalty=fastgan.R1Penalty(1.0),
                                  steps=3, mode="exact")
    D2 = reference_look_ahead(D, opt, real, fake, 3, loss, fastgan.R1Penalty(1.0), seed=0)
    want = fastgan.generator_step(D2, fake, loss=loss, real=real)
    torch.testing.assert_close(got.detach(), want.detach(), **TOL)


@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("loss_name", list(fastgan.LOSSES))
def test_exact_and_first_order_look_ahead_agree_on_mlp(loss_name, penalty):
    """Same look-ahead, two paths (reference autograd vs the fused step): same surrogate value."""
    D, opt, real, fake = setup(lambda: fastgan.MLPDiscriminator(2, (5, 3), pack=2))
    loss = fastgan.LOSSES[loss_name]()
    values = [unrolled_generator_step(D, real, fake, loss=loss, optimizer=opt, penalty=PENALTIES[penalty](),
                                      steps=2, mode=mode, generator=torch.Generator().manual_seed(1)).detach()
              for mode in ("exact", "first_order")]
    torch.testing.assert_close(values[0], values[1], **TOL)


def test_optimiser_with_groups_and_other_parameters():
    """Per-group settings follow each parameter; parameters that are not D's are ignored."""
    D, _, real, fake = setup(mlp, warm_steps=0)
    extra = nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = torch.optim.Adam([{"params": D.layers.parameters(), "lr": 0.1},
                            {"params": [*D.out.parameters(), extra], "lr": 0.02, "weight_decay": 0.3}])
    opt.zero_grad()
    fastgan.discriminator_step(D, real, fake, loss="hinge").backward()
    extra.grad = torch.ones_like(extra)
    opt.step()
    values = [unrolled_generator_step(D, real, fake, loss="hinge", optimizer=opt, steps=3, mode=mode).detach()
              for mode in ("exact", "first_order")]
    D2 = copy.deepcopy(D)
    opt2 = torch.optim.Adam([{"params": D2.layers.parameters(), "lr": 0.1},
                             {"params": D2.out.parameters(), "lr": 0.02, "weight_decay": 0.3}])
    for p, q in zip(D.parameters(), D2.parameters()):
        opt2.state[q] = copy.deepcopy(opt.state[p])
    for _ in range(3):
        opt2.zero_grad()
        fastgan.discriminator_step(D2, real, fake, loss="hinge").backward()
        opt2.step()
    want = fastgan.generator_step(D2, fake, loss="hinge").detach()
    torch.testing.assert_close(values, [want, want], **TOL)


# ---- first order ------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer, penalty", [("adam", "none"), ("adam_wd_amsgrad", "r1"), ("adamw", "gp"),
                                                ("sgd_nesterov", "r1_every2")])
def test_first_order_is_fused_steps_on_a_copy(backend, optimizer, penalty):
    D, opt, real, fake = setup(mlp, optimizer)
    loss = fastgan.NonSaturatingLoss()
    got = unrolled_generator_step(D, real, fake, loss=loss, optimizer=opt, penalty=PENALTIES[penalty](), steps=3,
                                  mode="first_order", backend=backend, generator=torch.Generator().manual_seed(2))
    D2 = copy.deepcopy(D)
    opt2 = type(opt)(D2.parameters())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares tensors
    rng, pen = torch.Generator().manual_seed(2), PENALTIES[penalty]()
    for _ in range(3):
        opt2.zero_grad(set_to_none=True)
        fastgan.discriminator_step(D2, real, fake.detach(), loss=loss, penalty=pen, backend=backend,
                                   generator=rng).backward()
        opt2.step()
    want = fastgan.generator_step(D2, fake, loss=loss, backend=backend)
    torch.testing.assert_close(value_and_grad(got, fake), value_and_grad(want, fake), **TOL)


# ---- nothing changes ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["exact", "first_order"])
@pytest.mark.parametrize("make_d", [mlp, TanhD, NormD], ids=["mlp", "tanh", "batchnorm"])
def test_d_optimiser_and_penalty_unchanged(mode, make_d):
    D, opt, real, fake = setup(make_d, "adam_wd_amsgrad")
    for p in D.parameters():
        p.grad = torch.randn_like(p)
    before = copy.deepcopy((D.state_dict(), {n: p.grad for n, p in D.named_parameters()}, opt.state_dict()))
    penalty = fastgan.R1Penalty(1.0, every=3)
    penalty.next_scale()
    real.requires_grad_(True)
    unrolled_generator_step(D, real, fake, loss="relativistic", optimizer=opt, penalty=penalty, steps=2,
                            mode=mode).backward()
    assert fake.grad is not None and real.grad is None  # real is data
    after = (D.state_dict(), {n: p.grad for n, p in D.named_parameters()}, opt.state_dict())
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert penalty.calls == 1


# ---- bad arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("change, error, match", [
    (dict(steps=-1), ValueError, "steps"),
    (dict(steps=1.5), ValueError, "steps"),
    (dict(steps=True), ValueError, "steps"),
    (dict(mode="second_order"), ValueError, "mode"),
    (dict(optimizer="rmsprop"), TypeError, "optimizer"),
    (dict(optimizer="other_params"), ValueError, "optimizer does not hold"),
    (dict(loss=fastgan.NonSaturatingLoss(reduction="none")), ValueError, "scalar loss"),
    (dict(loss="no_such_loss"), ValueError, "no_such_loss"),
    (dict(penalty="r1"), TypeError, "penalty"),
    (dict(D="tanh", backend="cpu"), ValueError, "MLPDiscriminator"),
    (dict(backend="nope"), ValueError, "backend"),
    (dict(fake="wrong_shape"), ValueError, "fake"),
])
def test_bad_arguments_raise(change, error, match):
    D, opt, real, fake = setup(mlp, warm_steps=0)
    args = dict(D=D, real=real, fake=fake, loss="non_saturating", optimizer=opt, steps=2, mode="exact")
    args.update(change)
    if args["optimizer"] == "rmsprop":
        args["optimizer"] = torch.optim.RMSprop(D.parameters())
    elif args["optimizer"] == "other_params":
        args["optimizer"] = torch.optim.Adam(TanhD().parameters())
    if args["D"] == "tanh":
        args["D"] = TanhD().double()
        args["optimizer"] = torch.optim.Adam(args["D"].parameters())
    if isinstance(args["fake"], str):
        args["fake"] = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(error, match=match):
        unrolled_generator_step(args.pop("D"), args.pop("real"), args.pop("fake"), **args)


def test_unrolled_discriminator_is_the_step_with_its_settings():
    D, opt, real, fake = setup(TanhD)
    unrolled = UnrolledDiscriminator(D, opt, loss="hinge", penalty=fastgan.R2Penalty(1.0), steps=2)
    want = unrolled_generator_step(D, real, fake, loss="hinge", optimizer=opt, penalty=fastgan.R2Penalty(1.0),
                                   steps=2, mode="exact")
    torch.testing.assert_close(value_and_grad(unrolled.generator_step(real, fake), fake),
                               value_and_grad(want, fake), rtol=0, atol=0)
    with pytest.raises(ValueError, match="mode"):
        UnrolledDiscriminator(D, opt, loss="hinge", mode="exactly")
    with pytest.raises(TypeError, match="optimizer"):
        UnrolledDiscriminator(D, torch.optim.RMSprop(D.parameters()), loss="hinge")
