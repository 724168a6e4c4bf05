"""sdekit.losses against exact answers: Gaussian data, whose scores, entropies and reverse-SDE laws are known.

- the loss at the exact score is its irreducible constant, E_t lambda(t) (d/sigma_t^2 - tr C_t^{-1});
- every parameterisation's natural form is the same number as the score form;
- the importance law of t is uniform in log-SNR (KS test), and its variance reduction is measured;
- the likelihood bound at the exact score is H(p_eps) + KL(p_T || pi); with a perturbed linear score it
  matches Song et al.'s Theorem 1 value and lies above the cross-entropy of the reverse SDE's Gaussian end
  law, whose moments come from linear ODEs solved by scipy to 1e-11.

Monte Carlo comparisons use fixed seeds and tolerances of K standard errors of the sample at hand.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, stats

import sdekit
from sdekit import LinearSDE, SDEKitError
from sdekit.adapters import Adapter, DiscreteVPSDE, RectifiedFlowSDE
from sdekit.losses import likelihood_normaliser, nll_bound, score_matching_loss
from sdekit.validation import GaussianData

K = 4.0                         # standard errors a Monte Carlo mean may stray
MEAN, COV = [1.0, -0.5], [[0.5, 0.2], [0.2, 2.0]]
SDES = {"vp": sdekit.VPSDE, "subvp": sdekit.SubVPSDE, "ve": sdekit.VESDE}


class CosineSDE(LinearSDE):
    """A user's linear SDE: the cosine schedule alpha = cos(pi t / 2 / (1 + s)) / cos(..0..), sigma = sqrt(1 - alpha^2).

    It defines only log_alpha, sigma and the coefficients; t_of_log_snr is LinearSDE's bisection.
    """

    def __init__(self, s=0.008):
        super().__init__(T=0.99, eps=1e-3)
        self.s = s

    def log_alpha(self, t):
        c = math.pi / 2 / (1 + self.s)
        return (torch.log(torch.cos(c * (t + self.s))) - math.log(math.cos(c * self.s))).clamp_max(0)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def drift_coef(self, t):
        c = math.pi / 2 / (1 + self.s)
        return -c * torch.tan(c * (t + self.s))

    def diffusion_coef(self, t):
        return torch.sqrt(-2 * self.drift_coef(t))        # d sigma^2/dt - 2 f sigma^2 with sigma^2 = 1 - alpha^2


def make_sde(name):
    return CosineSDE() if name == "cosine" else SDES[name]()


def coefs(sde, t):
    tt = torch.tensor([float(t)], dtype=torch.float64)
    return float(sde.alpha(tt)[0]), float(sde.sigma(tt)[0]), float(sde.diffusion_coef(tt)[0]) ** 2


def cov_at(sde, t):
    a, s, _ = coefs(sde, t)
    return a * a * np.array(COV) + s * s * np.eye(2)


def quad(fn, lo, hi):
    """A 1-D integral over [lo, hi] to 1e-10 relative, on geometric pieces (the integrands vary like 1/t)."""
    pts = np.geomspace(lo, hi, 40)
    return sum(integrate.quad(fn, a, b, epsabs=0, epsrel=1e-10, limit=200)[0] for a, b in zip(pts[:-1], pts[1:]))


def irreducible(sde, weighting):
    """E_{t~U} lambda(t) E||grad log p_t - grad log p_0t||^2 = E_t lambda (d/sigma^2 - tr C_t^{-1}), exact score."""
    def integrand(t):
        _, s, g2 = coefs(sde, t)
        lam = s * s if weighting == "variance" else g2
        return lam * (2 / (s * s) - np.trace(np.linalg.inv(cov_at(sde, t))))
    return quad(integrand, sde.eps, sde.T) / (sde.T - sde.eps)


def within(values, expected, k=K):
    v = values.detach().to(torch.float64)
    se = float(v.std()) / math.sqrt(v.numel())
    return abs(float(v.mean()) - expected) <= k * se, float(v.mean()), se


def data_and_x0(sde, n, seed):
    data = GaussianData(MEAN, COV, sde)
    g = torch.Generator().manual_seed(seed)
    return data, data.sample(n, t=0.0, generator=g), g


def fixed_draws(sde, shape, seed):
    """Data ``shape``, times uniform on [eps, T] and noise, float64, all from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(shape[0], generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0, t, noise


# -- 1. the exact score gives the irreducible constant -------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "cosine"])
@pytest.mark.parametrize("weighting", ["variance", "likelihood"])
@pytest.mark.parametrize("t_sampler", ["uniform", "importance"])
def test_exact_score_gives_the_irreducible_constant(sde_name, weighting, t_sampler):
    sde = make_sde(sde_name)
    data, x0, g = data_and_x0(sde, 20000, seed=11)
    per = score_matching_loss(sde, data.score, x0, weighting=weighting, t_sampler=t_sampler, reduce="none",
                              generator=g)
    ok, got, se = within(per, irreducible(sde, weighting))
    assert per.shape == (20000,) and ok, (got, se, irreducible(sde, weighting))


def test_reduce_and_generator():
    sde = sdekit.VPSDE()
    data, x0, _ = data_and_x0(sde, 64, seed=1)
    run = lambda reduce, seed: score_matching_loss(sde, data.score, x0, reduce=reduce,            # noqa: E731
                                                   generator=torch.Generator().manual_seed(seed))
    per = run("none", 3)
    assert torch.equal(per, run("none", 3)) and not torch.equal(per, run("none", 4))
    torch.testing.assert_close(run("mean", 3), per.mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(run("sum", 3), per.sum(), rtol=1e-14, atol=0)


# -- 2. natural forms --------------------------------------------------------------------------------------
def _network(x_in, tau):
    """Any smooth function of the network's input and time: the loss identities hold for every output."""
    return torch.tanh(x_in.flip(-1) * 0.7 + 0.3) * (1 + tau.reshape(-1, *([1] * (x_in.dim() - 1))))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "denoiser", "edm", "flow"])
@pytest.mark.parametrize("sde", [sdekit.VPSDE(), sdekit.VESDE(), RectifiedFlowSDE(), DiscreteVPSDE.cosine(1000)],
                         ids=["vp", "ve", "rf", "ddpm-cosine"])
def test_every_parameterisation_is_the_score_loss_in_its_natural_form(prediction, sde):
    model = Adapter(_network, sde, prediction)
    x0, t, noise = fixed_draws(sde, (256, 3, 2), 5)
    for weighting in ("variance", "likelihood", lambda t: 1 + t):
        natural = score_matching_loss(sde, model, x0, weighting=weighting, t=t, noise=noise, reduce="none")
        as_score = score_matching_loss(sde, lambda x, t: model(x, t), x0, weighting=weighting, t=t, noise=noise,
                                       reduce="none")
        torch.testing.assert_close(natural, as_score, rtol=1e-8, atol=1e-12)


def test_eps_with_variance_weighting_is_ddpm_loss_and_x0_is_the_weighted_data_loss():
    sde = sdekit.VPSDE()
    x0, t, noise = fixed_draws(sde, (128, 2), 2)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x_t = a * x0 + s * noise
    eps_hat = _network(x_t, t)
    ddpm = (eps_hat - noise).pow(2).sum(1)
    got = score_matching_loss(sde, Adapter(_network, sde, "eps"), x0, t=t, noise=noise, reduce="none")
    torch.testing.assert_close(got, ddpm, rtol=1e-12, atol=0)
    x0_hat = _network(x_t, t)
    got = score_matching_loss(sde, Adapter(_network, sde, "x0"), x0, weighting="likelihood", t=t, noise=noise,
                              reduce="none")
    expected = sde.diffusion_coef(t) ** 2 * (a / s ** 2)[:, 0] ** 2 * (x0_hat - x0).pow(2).sum(1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


def test_float32_follows_the_input_and_trains():
    sde = sdekit.VPSDE()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    model = Adapter(lambda x, t: net(torch.cat([x, t[:, None]], 1)), sde, "eps")
    x0 = torch.randn(64, 2)
    loss = score_matching_loss(sde, model, x0, weighting="likelihood", t_sampler="importance",
                               generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# -- 3. the importance law and its variance reduction ----------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "cosine"])
def test_importance_times_are_uniform_in_log_snr(sde_name):
    """q(t) = g^2 / (Z sigma^2) has CDF (lambda_eps - lambda_t) / (lambda_eps - lambda_T): KS against it."""
    sde = make_sde(sde_name)
    seen = []
    _, x0, _ = data_and_x0(sde, 4000, seed=0)
    score_matching_loss(sde, lambda x, t: seen.append(t) or torch.zeros_like(x), x0, weighting="likelihood",
                        t_sampler="importance", generator=torch.Generator().manual_seed(9))
    t = seen[0]
    lam = sde.log_snr(t)
    ends = sde.log_snr(torch.tensor([sde.eps, sde.T], dtype=torch.float64))
    u = (ends[0] - lam) / (ends[0] - ends[1])
    assert float(t.min()) >= sde.eps and float(t.max()) <= sde.T
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    Z = quad(lambda s: coefs(sde, s)[2] / coefs(sde, s)[1] ** 2, sde.eps, sde.T)
    assert likelihood_normaliser(sde) == pytest.approx(Z, rel=1e-8)


def _variance_with_se(v):
    v = v.to(torch.float64)
    n, c = v.numel(), v - v.mean()
    var = float(c.pow(2).mean())
    return var, math.sqrt(max(float(c.pow(4).mean()) - var ** 2, 0.0) / n)


@pytest.mark.parametrize("sde_name", ["vp", "subvp"])
def test_importance_sampling_cuts_the_variance_of_the_likelihood_weighted_loss(sde_name):
    sde = make_sde(sde_name)
    data, x0, g = data_and_x0(sde, 40000, seed=4)
    runs = {s: score_matching_loss(sde, data.score, x0, weighting="likelihood", t_sampler=s, reduce="none",
                                   generator=g) for s in ("uniform", "importance")}
    (vu, su), (vi, si) = _variance_with_se(runs["uniform"]), _variance_with_se(runs["importance"])
    ratio = vu / vi
    ratio_se = ratio * math.hypot(su / vu, si / vi)
    print(f"\n{sde_name}: per-sample variance of the likelihood-weighted loss, uniform t {vu:.4g} ± {su:.2g}, "
          f"importance t {vi:.4g} ± {si:.2g}: reduced {ratio:.1f}x ± {ratio_se:.1f}")
    assert ratio - K * ratio_se > 1, (ratio, ratio_se)


# -- 4. the likelihood bound -------------------------------------------------------------------------------
def _gaussian_entropy(C):
    return 0.5 * float(np.linalg.slogdet(2 * math.pi * math.e * C)[1])


def _kl_to_prior(sde):
    a, _, _ = coefs(sde, sde.T)
    C, m, p2 = cov_at(sde, sde.T), a * np.array(MEAN), sde.prior_std ** 2
    return 0.5 * float(np.trace(C) / p2 + m @ m / p2 - 2 + 2 * math.log(p2) - np.linalg.slogdet(C)[1])


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "cosine"])
def test_bound_at_the_exact_score_is_entropy_plus_prior_kl(sde_name):
    sde = make_sde(sde_name)
    data, x0, g = data_and_x0(sde, 4000, seed=21)
    b = nll_bound(sde, data.score, x0, draws=8, generator=g)
    expected = _gaussian_entropy(cov_at(sde, sde.eps)) + _kl_to_prior(sde)
    assert b.values.shape == b.se.shape == (4000,) and bool((b.se > 0).all())
    assert abs(b.mean - expected) <= K * b.mean_se, (b.mean, b.mean_se, expected)


class PerturbedScore:
    """s(x, t) = (1 + delta) grad log p_t(x) + shift: linear in x, so the reverse SDE's laws stay Gaussian."""

    def __init__(self, data, delta, shift):
        self.data, self.delta, self.shift = data, delta, torch.tensor(shift, dtype=torch.float64)

    def __call__(self, x, t):
        return (1 + self.delta) * self.data.score(x, t) + self.shift.to(x.dtype)

    def matrices(self, sde, t):
        """A, b with s = A x + b."""
        a, _, _ = coefs(sde, t)
        P = np.linalg.inv(cov_at(sde, t))
        return -(1 + self.delta) * P, (1 + self.delta) * P @ (a * np.array(MEAN)) + self.shift.numpy()


def reverse_end_law(sde, score):
    """Mean and covariance at eps of dx = [f x - g^2 (A x + b)] dt + g dw-bar from N(0, prior_std^2 I) at T:
    dm/dt = M m - g^2 b, dP/dt = M P + P M^T - g^2 I, M = f I - g^2 A (integrated from T down to eps)."""
    def rhs(t, y):
        A, b = score.matrices(sde, t)
        f = float(sde.drift_coef(torch.tensor([t], dtype=torch.float64))[0])
        g2 = coefs(sde, t)[2]
        M = f * np.eye(2) - g2 * A
        m, P = y[:2], y[2:].reshape(2, 2)
        return np.concatenate([M @ m - g2 * b, (M @ P + P @ M.T - g2 * np.eye(2)).ravel()])
    y0 = np.concatenate([np.zeros(2), (sde.prior_std ** 2 * np.eye(2)).ravel()])
    sol = integrate.solve_ivp(rhs, (sde.T, sde.eps), y0, method="DOP853", rtol=1e-11, atol=1e-12)
    assert sol.success
    return sol.y[:2, -1], sol.y[2:, -1].reshape(2, 2)


def test_bound_with_a_perturbed_linear_score_lies_above_the_exact_cross_entropy():
    sde = sdekit.VPSDE()
    data, x0, g = data_and_x0(sde, 4000, seed=31)
    score = PerturbedScore(data, delta=0.3, shift=[0.4, -0.3])
    b = nll_bound(sde, score, x0, draws=8, generator=g)
    # the cross-entropy E_{p_eps}[-log p_theta] of the reverse SDE's Gaussian end law N(m, P)
    m, P = reverse_end_law(sde, score)
    C, mu = cov_at(sde, sde.eps), coefs(sde, sde.eps)[0] * np.array(MEAN)
    Pi = np.linalg.inv(P)
    cross_entropy = 0.5 * (2 * math.log(2 * math.pi) + np.linalg.slogdet(P)[1] + np.trace(Pi @ C)
                           + (mu - m) @ Pi @ (mu - m))
    # Theorem 1's value of the bound's mean: H + KL(p_T || pi) + 1/2 int g^2 E||s - grad log p_t||^2
    excess = quad(lambda t: coefs(sde, t)[2] * (0.3 ** 2 * np.trace(np.linalg.inv(cov_at(sde, t))) + 0.25),
                  sde.eps, sde.T)
    expected = _gaussian_entropy(C) + _kl_to_prior(sde) + 0.5 * excess
    print(f"\nperturbed score: bound {b.mean:.4f} ± {b.mean_se:.3f}, Theorem 1 value {expected:.4f}, "
          f"cross-entropy {cross_entropy:.4f}, entropy {_gaussian_entropy(C):.4f}")
    assert expected >= cross_entropy
    assert abs(b.mean - expected) <= K * b.mean_se, (b.mean, b.mean_se, expected)
    assert b.mean - cross_entropy > 3 * b.mean_se, (b.mean, b.mean_se, cross_entropy)


def test_bound_terms_add_up_and_prior_term_is_exact():
    sde = sdekit.VESDE()
    data, x0, g = data_and_x0(sde, 50, seed=2)
    b = nll_bound(sde, data.score, x0, draws=4, generator=g)
    torch.testing.assert_close(b.values, b.prior + b.score_term + b.constant, rtol=1e-12, atol=1e-12)
    z = torch.randn(20000, 2, generator=g, dtype=torch.float64)
    mc = -sde.prior_logp(x0[0] + sde.sigma(torch.tensor(sde.T, dtype=torch.float64)) * z)
    ok, got, se = within(mc, float(b.prior[0]))
    assert ok, (got, se, float(b.prior[0]))
    assert b.bits_per_dim == pytest.approx(b.mean / (2 * math.log(2)))


# -- 5. bad input --------------------------------------------------------------------------------------------
def _one_line(err):
    msg = str(err.value)
    assert isinstance(err.value, SDEKitError) and "\n" not in msg and msg
    return msg


def test_bad_input_gets_one_line_errors():
    sde = sdekit.VPSDE()
    data, x0, _ = data_and_x0(sde, 8, seed=0)
    cases = [
        (dict(x0=x0[0]), "shape (batch"),
        (dict(x0=x0.long()), "floating"),
        (dict(x0=x0.clone().fill_(float("nan"))), "non-finite"),
        (dict(x0=x0[:0]), "batch >= 1"),
        (dict(model=lambda x, t: x[:, :1]), "returned (8, 1)"),
        (dict(model=lambda x, t: x.sum()), "returned ()"),
        (dict(model=lambda x, t: x * float("nan")), "non-finite"),
        (dict(model=Adapter(lambda x, t: x[:, :1], sde, "eps")), "returned shape"),
        (dict(model=Adapter(_network, sdekit.VESDE(), "eps")), "built for VESDE"),
        (dict(weighting=lambda t: -t), "must be finite and >= 0"),
        (dict(weighting=lambda t: t / 0 * 0), "must be finite and >= 0"),
        (dict(weighting=lambda t: t[:2]), "one weight per time"),
        (dict(weighting="min_snr"), "unknown weighting"),
        (dict(t_sampler="beta"), "unknown t_sampler"),
        (dict(reduce="max"), "reduce must be"),
        (dict(t=0.0), "[eps, T]"),
        (dict(t=torch.full((8,), 1.5)), "[eps, T]"),
        (dict(t=torch.full((3,), 0.5)), "shape (8,)"),
        (dict(eps=0.0), "0 < eps < T"),
        (dict(noise=x0[:3]), "shaped like x0"),
        (dict(noise=x0 * float("inf")), "noise has non-finite"),
        (dict(model=3), "score function"),
        (dict(sde=sdekit.SDE()), "LinearSDE"),
    ]
    for kwargs, words in cases:
        args = dict(sde=sde, model=data.score, x0=x0)
        args.update(kwargs)
        with pytest.raises(SDEKitError) as err:
            score_matching_loss(args.pop("sde"), args.pop("model"), args.pop("x0"), **args)
        assert words in _one_line(err), (kwargs, str(err.value))
    with pytest.raises(SDEKitError) as err:
        nll_bound(sde, data.score, x0, draws=1)
    assert "draws" in _one_line(err)
    with pytest.raises(SDEKitError) as err:
        nll_bound(LinearSDE(), data.score, x0)
    assert "log_alpha" in _one_line(err)


def test_k_diffusion_weightings_are_their_f_space_weights():
    """k-diffusion's Denoiser.loss is c_weight(sigma) ||F - F*||^2 with F* = (x0 - c_skip x~)/c_out (summed here):
    "karras" is c_weight = 1, "soft-min-snr" (sigma sd)^2 / (sigma^2 + sd^2)^2, "snr" sd^2 / (sigma^2 + sd^2)."""
    sde, sd = sdekit.VESDE(sigma_min=0.002, sigma_max=80.0), 1.0
    model = Adapter(_network, sde, "edm", sigma_data=sd)
    x0, t, noise = fixed_draws(sde, (128, 2), 3)
    sigma = sde.sigma(t)[:, None]
    x = x0 + sigma * noise
    c_skip, c_out, c_in = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / (sigma ** 2 + sd ** 2).sqrt(), \
        1 / (sigma ** 2 + sd ** 2).sqrt()
    F = _network(c_in * x, 0.25 * torch.log(sigma[:, 0]))
    sq = (F - (x0 - c_skip * x) / c_out).pow(2).sum(1)
    s2 = sigma[:, 0] ** 2
    for name, c_weight in [("karras", torch.ones_like(s2)), ("soft-min-snr", s2 * sd ** 2 / (s2 + sd ** 2) ** 2),
                           ("snr", sd ** 2 / (s2 + sd ** 2))]:
        got = score_matching_loss(sde, model, x0, weighting=name, t=t, noise=noise, reduce="none")
        torch.testing.assert_close(got, c_weight * sq, rtol=1e-9, atol=0)
    with pytest.raises(SDEKitError, match="sigma_data"):
        score_matching_loss(sde, model, x0, weighting="karras", sigma_data=-1.0)


@given(beta_min=st.floats(0.01, 1.0), span=st.floats(1.0, 30.0), seed=st.integers(0, 2 ** 16),
       prediction=st.sampled_from(["eps", "x0", "v", "score", "edm", "flow"]),
       weighting=st.sampled_from(["variance", "likelihood", "karras", "soft_min_snr"]))
def test_natural_form_is_the_score_loss_for_any_vp_schedule(beta_min, span, seed, prediction, weighting):
    sde = sdekit.VPSDE(beta_min=beta_min, beta_max=beta_min + span)
    model = Adapter(_network, sde, prediction)
    x0, t, noise = fixed_draws(sde, (32, 2), seed)
    natural = score_matching_loss(sde, model, x0, weighting=weighting, t=t, noise=noise, reduce="none")
    as_score = score_matching_loss(sde, lambda x, t: model(x, t), x0, weighting=weighting, t=t, noise=noise,
                                   reduce="none", sigma_data=0.5)
    torch.testing.assert_close(natural, as_score, rtol=1e-8, atol=1e-12)
