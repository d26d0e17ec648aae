"""fastgan.divergences on Gaussians, where the optimal logit and the divergences are known.

p_r = N(0, 1) (real), p_g = N(mu, 1) (generated): the optimal discriminator's logit is
l*(x) = log p_r/p_g = -mu x + mu^2/2 and KL(p_r||p_g) = KL(p_g||p_r) = mu^2/2. Expectations
of the estimators are Gauss-Hermite quadratures (passed as weights); the ground truths that
have no closed form (JS, KL(p_g||M)) are scipy.integrate.quad integrals of the densities.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate
from scipy.stats import norm

from fastgan import divergences as dv

LOG2 = math.log(2.0)
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(160)  # weight exp(-x^2/2)


def quadrature(mean: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights with sum_i w_i f(x_i) = E_{N(mean, 1)}[f]."""
    return (torch.tensor(NODES + mean, dtype=torch.float64),
            torch.tensor(WEIGHTS / math.sqrt(2 * math.pi), dtype=torch.float64))


def optimal_logit(x, mu: float):
    return -mu * x + mu * mu / 2


def integral(f, mu: float) -> float:
    lo, hi = min(0.0, mu) - 14.0, max(0.0, mu) + 14.0  # both densities < 1e-40 outside
    return integrate.quad(f, lo, hi, epsabs=1e-14, epsrel=1e-13, limit=200)[0]


def kl_g_m(mu: float) -> float:
    """KL(p_g || M), M = (p_r + p_g)/2, from the densities."""
    return integral(lambda x: norm.pdf(x, mu) * math.log(2 * norm.pdf(x, mu) / (norm.pdf(x) + norm.pdf(x, mu))), mu)


def js(mu: float) -> float:
    kl_r_m = integral(lambda x: norm.pdf(x) * math.log(2 * norm.pdf(x) / (norm.pdf(x) + norm.pdf(x, mu))), mu)
    return 0.5 * kl_r_m + 0.5 * kl_g_m(mu)


def logits_and_weights(mu: float):
    xr, wr = quadrature(0.0)
    xg, wg = quadrature(mu)
    return optimal_logit(xr, mu), optimal_logit(xg, mu), wr, wg


@pytest.mark.parametrize("mu", [1.0, 0.3, -2.0])
def test_kl_both_ways_from_the_optimal_logit(mu):
    lr, lg, wr, wg = logits_and_weights(mu)
    assert dv.forward_kl(lr, real_weights=wr).item() == pytest.approx(mu * mu / 2, rel=1e-12)
    assert dv.reverse_kl(None, lg, fake_weights=wg).item() == pytest.approx(mu * mu / 2, rel=1e-12)


def test_kl_is_one_half_between_n0_and_n1():
    lr, lg, wr, wg = logits_and_weights(1.0)
    assert dv.forward_kl(lr, real_weights=wr).item() == pytest.approx(0.5, rel=1e-12)
    assert dv.reverse_kl(lr, lg, fake_weights=wg).item() == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("mu", [1.0, 0.3, 2.5])
def test_jensen_shannon_exact_at_optimum_and_a_lower_bound_elsewhere(mu):
    lr, lg, wr, wg = logits_and_weights(mu)
    truth = js(mu)
    assert dv.jensen_shannon(lr, lg, real_weights=wr, fake_weights=wg).item() == pytest.approx(truth, rel=1e-10)
    for scale, shift in ((0.5, 0.0), (1.5, 0.0), (1.0, 0.7)):
        worse = dv.jensen_shannon(scale * lr + shift, scale * lg + shift, real_weights=wr, fake_weights=wg).item()
        assert worse < truth - 1e-4


def closed_form_f_divergence(name: str, mu: float) -> float:
    d2 = mu * mu
    return {"kl": d2 / 2, "reverse_kl": d2 / 2, "pearson": math.expm1(d2),
            "hellinger": 2 * (1 - math.exp(-d2 / 8)), "gan": 2 * js(mu) - math.log(4)}[name]


@pytest.mark.parametrize("name", dv.F_DIVERGENCES)
@pytest.mark.parametrize("mu", [1.0, 0.4])
def test_fgan_bound_tight_at_the_optimal_critic(name, mu):
    lr, lg, wr, wg = logits_and_weights(mu)
    bound = dv.fgan_bound(dv.optimal_critic(lr, name), dv.optimal_critic(lg, name), name,
                          real_weights=wr, fake_weights=wg).item()
    assert bound == pytest.approx(closed_form_f_divergence(name, mu), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", dv.F_DIVERGENCES)
def test_fgan_bound_is_a_strict_lower_bound_for_other_critics(name):
    mu = 1.0
    lr, lg, wr, wg = logits_and_weights(mu)
    truth = closed_form_f_divergence(name, mu)
    for scale, shift in ((0.6, 0.0), (1.3, 0.0), (1.0, 0.5), (1.0, -0.5)):
        v_r = dv.optimal_critic(scale * lr + shift, name)
        v_g = dv.optimal_critic(scale * lg + shift, name)
        bound = dv.fgan_bound(v_r, v_g, name, real_weights=wr, fake_weights=wg).item()
        assert bound < truth - 1e-4, (scale, shift, bound, truth)


def test_gan_bound_is_minus_the_discriminator_loss():
    lr, lg = torch.randn(7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    d_loss = F.softplus(-lr).mean() + F.softplus(lg).mean()
    assert dv.fgan_bound(lr, lg, "gan").item() == pytest.approx(-d_loss.item(), rel=1e-14)
    assert dv.jensen_shannon(lr, lg).item() == pytest.approx(LOG2 - d_loss.item() / 2, rel=1e-14)


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5])
def test_value_identity(mu):
    """E_g[softplus(-l*)] = KL(p_g||p_r) - KL(p_g||M) + log 2."""
    _, lg, _, wg = logits_and_weights(mu)
    lhs = (wg * F.softplus(-lg)).sum().item()
    assert lhs == pytest.approx(mu * mu / 2 - kl_g_m(mu) + LOG2, rel=1e-10)


def test_value_is_not_kl_minus_2js_plus_a_constant():
    """E_g[softplus(-l*)] - (KL(p_g||p_r) - 2 JS) = log 2 + KL(p_r||M) depends on mu."""
    def gap(mu):
        _, lg, _, wg = logits_and_weights(mu)
        return (wg * F.softplus(-lg)).sum().item() - (mu * mu / 2 - 2 * js(mu))
    assert abs(gap(0.5) - gap(2.0)) > 0.1


@pytest.mark.parametrize("mu0", [0.3, 1.0, 2.5])
def test_gradient_identity_with_the_discriminator_held_fixed(mu0):
    """d/dmu E_{N(mu,1)}[softplus(-l*_{mu0})] at mu0 = d/dmu [KL(p_g||p_r) - 2 JS(p_r||p_g)] at mu0.

    Left: analytic (score function, d/dmu N(x; mu, 1) = (x - mu) N(x; mu, 1)) with D* of mu0
    fixed. Right: a five-point finite difference of the quadrature values."""
    xg, wg = quadrature(mu0)
    lhs = (wg * (xg - mu0) * F.softplus(-optimal_logit(xg, mu0))).sum().item()
    h = 1e-2
    target = lambda mu: mu * mu / 2 - 2 * js(mu)  # noqa: E731
    rhs = (-target(mu0 + 2 * h) + 8 * target(mu0 + h) - 8 * target(mu0 - h) + target(mu0 - 2 * h)) / (12 * h)
    assert lhs == pytest.approx(rhs, rel=1e-7, abs=1e-9)
    # with D* moving with mu the derivative differs (the identity needs D* held fixed)
    moving = lambda mu: (quadrature(mu)[1] * F.softplus(-optimal_logit(quadrature(mu)[0], mu))).sum().item()  # noqa: E731
    d_moving = (moving(mu0 + h) - moving(mu0 - h)) / (2 * h)
    assert abs(d_moving - lhs) > 1e-3


def test_sample_means_by_default_and_weight_shape_checked():
    lr, lg = torch.randn(6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    assert dv.forward_kl(lr).item() == pytest.approx(lr.mean().item(), rel=1e-14)
    assert dv.reverse_kl(lr, lg).item() == pytest.approx(-lg.mean().item(), rel=1e-14)
    with pytest.raises(ValueError, match="real_weights"):
        dv.forward_kl(lr, real_weights=torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="divergence must be one of"):
        dv.fgan_bound(lr, lg, "wasserstein")


def test_from_logits_reports_every_estimate():
    lr, lg = torch.randn(8), torch.randn(8)
    out = dv.from_logits(lr, lg)
    assert set(out) == {"forward_kl", "reverse_kl", "jensen_shannon"} | {f"fgan_{n}" for n in dv.F_DIVERGENCES}
    assert out["fgan_gan"] == pytest.approx(2 * out["jensen_shannon"] - math.log(4), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mu0", [0.3, 1.0, 2.5])
def test_minimax_generator_gradient_is_the_gradient_of_2js(mu0):
    """d/dmu E_{N(mu,1)}[log(1 - D*_{mu0})] at mu0 = d/dmu 2 JS at mu0 (docs/THEORY.md section 4)."""
    xg, wg = quadrature(mu0)
    lhs = (wg * (xg - mu0) * -F.softplus(optimal_logit(xg, mu0))).sum().item()
    h = 1e-2
    rhs = 2 * (-js(mu0 + 2 * h) + 8 * js(mu0 + h) - 8 * js(mu0 - h) + js(mu0 - 2 * h)) / (12 * h)
    assert lhs == pytest.approx(rhs, rel=1e-7, abs=1e-9)
