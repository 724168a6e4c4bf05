"""Forward SDEs: closed-form coefficients and marginals, priors, event shapes, parameters, user subclasses."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

import sdekit

pytestmark = pytest.mark.usefixtures("single_thread")

TIMES = np.array([1e-5, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.77, 1.0])


def _t(times=TIMES):
    return torch.tensor(times, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Closed forms, written independently of sdekit (numpy/math, DESIGN.md "Formulas")
# ---------------------------------------------------------------------------------------------

def vp_reference(t, b0=0.1, b1=20.0):
    beta = b0 + t * (b1 - b0)
    log_m = -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0
    return dict(beta=beta, f_coef=-0.5 * beta, g=np.sqrt(beta), log_alpha=log_m,
                sigma=np.sqrt(1.0 - np.exp(2 * log_m)))


def subvp_reference(t, b0=0.1, b1=20.0):
    beta = b0 + t * (b1 - b0)
    log_m = -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0
    return dict(f_coef=-0.5 * beta, g=np.sqrt(beta * (1.0 - np.exp(-2 * b0 * t - (b1 - b0) * t ** 2))),
                log_alpha=log_m, sigma=1.0 - np.exp(2 * log_m))


def ve_reference(t, smin=0.01, smax=50.0, marginal="reference"):
    sigma_r = smin * (smax / smin) ** t
    sigma = sigma_r if marginal == "reference" else np.sqrt(sigma_r ** 2 - smin ** 2)
    return dict(f_coef=np.zeros_like(t), g=sigma_r * np.sqrt(2 * np.log(smax / smin)), log_alpha=np.zeros_like(t),
                sigma=sigma, noise_level=sigma_r)


CASES = [
    ("VP", lambda: sdekit.VPSDE(), vp_reference),
    ("subVP", lambda: sdekit.SubVPSDE(), subvp_reference),
    ("VE", lambda: sdekit.VESDE(), ve_reference),
    ("VP-custom", lambda: sdekit.VPSDE(beta_min=0.5, beta_max=7.0), lambda t: vp_reference(t, 0.5, 7.0)),
    ("subVP-custom", lambda: sdekit.SubVPSDE(beta_min=0.2, beta_max=5.0), lambda t: subvp_reference(t, 0.2, 5.0)),
    ("VE-custom", lambda: sdekit.VESDE(sigma_min=0.1, sigma_max=3.0), lambda t: ve_reference(t, 0.1, 3.0)),
    ("VE-exact", lambda: sdekit.VESDE(marginal="exact"), lambda t: ve_reference(t, marginal="exact")),
    ("VE-exact-custom", lambda: sdekit.VESDE(sigma_min=0.1, sigma_max=3.0, marginal="exact"),
     lambda t: ve_reference(t, 0.1, 3.0, marginal="exact")),
]


@pytest.mark.parametrize("name,make,ref", CASES, ids=[c[0] for c in CASES])
def test_coefficients_match_closed_forms(name, make, ref):
    sde = make()
    t = _t()
    r = ref(TIMES)
    x = torch.linspace(-2, 3, 5, dtype=torch.float64).repeat(len(TIMES), 1)  # (batch, 5)
    f = sde.f(t, x)
    assert f.shape == x.shape
    np.testing.assert_allclose(f.numpy(), r["f_coef"][:, None] * x.numpy(), rtol=1e-12, atol=1e-300)
    g = sde.g(t, x)
    assert g.shape in {(len(TIMES),), x.shape}
    g_full = g.reshape(len(TIMES), -1).expand(x.shape) if g.dim() == 1 else g
    np.testing.assert_allclose(g_full.numpy(), np.broadcast_to(r["g"][:, None], x.shape), rtol=1e-10)
    np.testing.assert_allclose(sde.log_alpha(t).numpy(), r["log_alpha"], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(sde.alpha(t).numpy(), np.exp(r["log_alpha"]), rtol=1e-12)
    # sigma near t = 0 loses digits in the naive reference formula (1 - exp(small)); compare with a
    # relative tolerance that allows the reference's cancellation error ~ 1e-16 / sigma^2.
    naive_rel_err = 1e-15 / np.maximum(r["sigma"], 1e-300) ** 2
    np.testing.assert_allclose(sde.sigma(t).numpy(), r["sigma"], rtol=1e-9 + 4 * naive_rel_err.max())
    np.testing.assert_allclose(sde.log_snr(t).numpy(), r["log_alpha"] - np.log(r["sigma"]), rtol=1e-6)
    if "noise_level" in r:
        np.testing.assert_allclose(sde.noise_level(t).numpy(), r["noise_level"], rtol=1e-12)


@pytest.mark.parametrize("name,make,ref", CASES, ids=[c[0] for c in CASES])
def test_sigma_accurate_near_zero(name, make, ref):
    """sigma(t) for tiny t keeps full relative precision (expm1 form), checked against a series expansion."""
    sde = make()
    t = torch.tensor([1e-9, 1e-8], dtype=torch.float64)
    if isinstance(sde, sdekit.VESDE) and sde.marginal == "reference":
        expected = sde.sigma_min * torch.exp(t * math.log(sde.sigma_max / sde.sigma_min))
    elif isinstance(sde, sdekit.VESDE):
        # sigma^2 = smin^2 (exp(2 t L) - 1) ~ smin^2 * 2 t L (1 + t L)
        L = math.log(sde.sigma_max / sde.sigma_min)
        expected = sde.sigma_min * torch.sqrt(2 * t * L * (1 + t * L))
    else:
        # -2 log alpha = u = t b0 + t^2 (b1 - b0)/2 ; 1 - exp(-u) ~ u - u^2/2
        u = t * sde.beta_min + 0.5 * t ** 2 * (sde.beta_max - sde.beta_min)
        one_minus = u - u ** 2 / 2
        expected = torch.sqrt(one_minus) if type(sde) is sdekit.VPSDE else one_minus
    torch.testing.assert_close(sde.sigma(t), expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("name,make,ref", CASES, ids=[c[0] for c in CASES])
def test_marginal_std_solves_the_moment_ode(name, make, ref):
    """sigma(t)^2 is the exact transition variance: d(var)/dt = 2 f(t) var + g(t)^2, var(0) = initial_sigma^2
    (0 but for VE's reference marginal, sigma_min^2); alpha solves d(alpha)/dt = f(t) alpha, alpha(0) = 1. Integrated numerically with scipy."""
    sde = make()

    def rhs(t, y):
        tt = torch.tensor([t], dtype=torch.float64)
        fc = float(sde.drift_coef(tt)[0])
        g = float(sde.diffusion_coef(tt)[0])
        return [fc * y[0], 2 * fc * y[1] + g * g]

    sol = scipy.integrate.solve_ivp(rhs, (0.0, sde.T), [1.0, sde.initial_sigma ** 2], t_eval=TIMES, rtol=1e-11, atol=1e-14,
                                    method="DOP853")
    np.testing.assert_allclose(sde.alpha(_t()).numpy(), sol.y[0], rtol=1e-8)
    np.testing.assert_allclose(sde.sigma(_t()).numpy() ** 2, sol.y[1], rtol=1e-6, atol=1e-13)


def test_default_eps_and_T():
    assert sdekit.VPSDE().eps == 1e-3 and sdekit.VPSDE().T == 1.0
    assert sdekit.SubVPSDE().eps == 1e-3 and sdekit.SubVPSDE().T == 1.0
    assert sdekit.VESDE().eps == 1e-5 and sdekit.VESDE().T == 1.0
    ve = sdekit.VESDE()
    assert (ve.sigma_min, ve.sigma_max) == (0.01, 50.0)
    vp = sdekit.VPSDE()
    assert (vp.beta_min, vp.beta_max) == (0.1, 20.0)


@pytest.mark.parametrize("event_shape", [(3,), (3, 4, 4), (5, 2)])
@pytest.mark.parametrize("make", [sdekit.VPSDE, sdekit.SubVPSDE, sdekit.VESDE], ids=["VP", "subVP", "VE"])
def test_marginal_prob_any_event_shape(make, event_shape):
    sde = make()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((4,) + event_shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.5, 1.0], dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    assert mean.shape == x0.shape and std.shape == (4,)
    alpha = torch.exp(sde.log_alpha(t))
    torch.testing.assert_close(mean, alpha.reshape((4,) + (1,) * len(event_shape)) * x0, rtol=1e-14, atol=0)
    torch.testing.assert_close(std, sde.sigma(t), rtol=0, atol=0)
    # a scalar time broadcasts over the batch
    mean_s, std_s = sde.marginal_prob(x0, 0.3)
    assert std_s.shape == (4,) and torch.all(std_s == std_s[0])
    torch.testing.assert_close(mean_s, x0 * float(torch.exp(sde.log_alpha(torch.tensor(0.3, dtype=torch.float64)))))


def test_marginal_prob_matches_forward_sde_samples(check_moments):
    """Forward-solving the VP SDE from a fixed x0 reproduces N(alpha x0, sigma^2 I) at T (MC tolerance)."""
    sde = sdekit.VPSDE(beta_min=0.1, beta_max=5.0)
    n = 20_000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).repeat(n, 1)
    sol = sde.solve(x0, method="srk", steps=100, seed=11)
    mean, std = sde.marginal_prob(x0[:1], sde.T)
    cov = float(std[0]) ** 2 * torch.eye(2, dtype=torch.float64)
    check_moments(sol.x, mean[0], cov)


@pytest.mark.parametrize("event_shape", [(2,), (3, 4, 4), (5, 2)])
@pytest.mark.parametrize("make", [sdekit.VPSDE, sdekit.SubVPSDE, sdekit.VESDE], ids=["VP", "subVP", "VE"])
def test_prior_sampling(make, event_shape):
    sde = make()
    shape = (7,) + event_shape
    for dtype in (torch.float32, torch.float64):
        z = sde.prior_sampling(shape, dtype=dtype)
        assert z.shape == shape and z.dtype == dtype
    z1 = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z2 = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z3 = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, z3)


@pytest.mark.parametrize("make,std", [(sdekit.VPSDE, 1.0), (sdekit.SubVPSDE, 1.0), (sdekit.VESDE, 50.0)],
                         ids=["VP", "subVP", "VE"])
def test_prior_sampling_statistics(make, std):
    sde = make()
    n = 20_000
    z = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # mean within 4 SE (SE = std / sqrt(n)); variance within 4 SE (SE = std^2 sqrt(2/(n-1)))
    assert z.mean(0).abs().max() < 4 * std / math.sqrt(n)
    assert (z.var(0) - std ** 2).abs().max() < 4 * std ** 2 * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("event_shape", [(2,), (3, 4, 4), (5, 2)])
@pytest.mark.parametrize("make,std", [(sdekit.VPSDE, 1.0), (sdekit.SubVPSDE, 1.0), (sdekit.VESDE, 50.0)],
                         ids=["VP", "subVP", "VE"])
def test_prior_logp_matches_scipy(make, std, event_shape):
    sde = make()
    z = sde.prior_sampling((6,) + event_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    logp = sde.prior_logp(z)
    assert logp.shape == (6,)
    flat = z.reshape(6, -1).numpy()
    d = flat.shape[1]
    expected = scipy.stats.multivariate_normal(mean=np.zeros(d), cov=std ** 2 * np.eye(d)).logpdf(flat)
    np.testing.assert_allclose(logp.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(logp.numpy(), scipy.stats.norm(0, std).logpdf(flat).sum(1), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Invalid parameters
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda: sdekit.VPSDE(beta_min=-0.1),
    lambda: sdekit.SubVPSDE(beta_min=-1.0),
    lambda: sdekit.VPSDE(beta_min=5.0, beta_max=1.0),
    lambda: sdekit.VPSDE(beta_max=float("nan")),
    lambda: sdekit.VESDE(sigma_min=50.0, sigma_max=50.0),
    lambda: sdekit.VESDE(sigma_min=60.0, sigma_max=50.0),
    lambda: sdekit.VESDE(sigma_min=0.0),
    lambda: sdekit.VESDE(sigma_max=float("inf")),
    lambda: sdekit.VPSDE(eps=0.0),
    lambda: sdekit.VPSDE(eps=-1e-3),
    lambda: sdekit.VESDE(eps=1.0),
    lambda: sdekit.VESDE(eps=2.0),
    lambda: sdekit.SubVPSDE(eps=1.5, T=1.0),
    lambda: sdekit.VPSDE(T=0.0),
    lambda: sdekit.VPSDE(T=float("inf")),
], ids=["beta_min<0", "subvp-beta_min<0", "beta_max<beta_min", "beta_nan", "sigma_min=sigma_max",
        "sigma_min>sigma_max", "sigma_min=0", "sigma_max=inf", "eps=0", "eps<0", "eps=T", "eps>T", "subvp-eps>T",
        "T=0", "T=inf"])
def test_invalid_parameters_raise(build):
    with pytest.raises(sdekit.InvalidParameterError) as info:
        build()
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, sdekit.SDEKitError)
    assert str(info.value)  # says what is wrong


# ---------------------------------------------------------------------------------------------
# User-defined SDEs: only f and g
# ---------------------------------------------------------------------------------------------

class OU(sdekit.SDE):
    """Ornstein–Uhlenbeck dx = -theta x dt + s dw, defined only through f and g."""

    def __init__(self, theta=1.5, s=0.8, T=1.0, eps=1e-3):
        super().__init__(T=T, eps=eps)
        self.theta, self.s = theta, s

    def f(self, t, x):
        return -self.theta * x

    def g(self, t, x):
        return torch.full_like(t, self.s)


def _ou_moments(ou, t):
    """alpha(t) and sigma(t) of the OU transition law, for a test Gaussian score."""
    a = torch.exp(-ou.theta * t)
    s = torch.sqrt(ou.s ** 2 / (2 * ou.theta) * -torch.expm1(-2 * ou.theta * t))
    return a, s


def test_base_sde_needs_f_and_g_and_has_no_marginal():
    class Empty(sdekit.SDE):
        pass

    e = Empty()
    t, x = torch.zeros(2, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(NotImplementedError):
        e.f(t, x)
    with pytest.raises(NotImplementedError):
        e.g(t, x)
    with pytest.raises(NotImplementedError):
        OU().marginal_prob(x, t)
    with pytest.raises(NotImplementedError):
        OU().prior_sampling((2, 3))


def test_user_sde_reverse_sampling(gaussian, check_moments):
    """An OU process given only f and g is reversed and sampled; samples match the exact p_eps."""
    ou = OU(T=1.0, eps=1e-3)
    data = gaussian([1.0, -2.0], alpha=lambda t: _ou_moments(ou, t)[0], sigma=lambda t: _ou_moments(ou, t)[1],
                    var=[0.25, 1.0])
    n = 20_000
    x_T = data.sample(ou.T, n, torch.Generator().manual_seed(3))
    sol = sdekit.reverse(ou, data.score).solve(x_T, method="euler", steps=200, seed=4)
    assert sol.x.shape == x_T.shape and sol.success
    mean, cov = data.mean_cov(ou.eps)
    # Euler's weak error on this smooth problem is O(dt) with a constant of order theta*var: 200 steps -> ~0.01
    check_moments(sol.x, mean, cov, bias=0.01)


def test_user_sde_probability_flow_matches_flow_map(gaussian):
    ou = OU(T=1.0, eps=1e-3)
    data = gaussian([1.0, -2.0], alpha=lambda t: _ou_moments(ou, t)[0], sigma=lambda t: _ou_moments(ou, t)[1],
                    var=[0.25, 1.0])
    x_T = data.sample(ou.T, 16, torch.Generator().manual_seed(3))
    sol = sdekit.probability_flow(ou, data.score).solve(x_T, method="dopri5", rtol=1e-10, atol=1e-10)
    exact = data.flow_map(x_T, ou.T, ou.eps)
    torch.testing.assert_close(sol.x, exact, rtol=0, atol=1e-7)


class MultiplicativeNoise(sdekit.SDE):
    r"""dx = f dx + g dw with g = c sqrt(1 + x^2) elementwise, f chosen so that N(0, 1) is stationary.

    Zero probability flux for p = N(0, 1): f p = 1/2 d/dx (g^2 p), so f = 1/2 (g^2)' - 1/2 g^2 x
    = c^2 x - c^2 (1 + x^2) x / 2.  Started in N(0, 1), p_t = N(0, 1) for every t, score = -x.
    """

    def __init__(self, c=0.5, T=1.0, eps=1e-3):
        super().__init__(T=T, eps=eps)
        self.c = c

    def f(self, t, x):
        c2 = self.c ** 2
        return c2 * x - 0.5 * c2 * (1 + x * x) * x

    def g(self, t, x):
        return self.c * torch.sqrt(1 + x * x)


def _standard_score(x, t):
    return -x


def test_x_dependent_diffusion_drift_formulas():
    sde = MultiplicativeNoise(c=0.3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.full((5,), 0.4, dtype=torch.float64)

    def score(x, t):
        return torch.sin(x) - 0.5 * x

    c2 = 0.09
    f = c2 * x - 0.5 * c2 * (1 + x ** 2) * x
    g2 = c2 * (1 + x ** 2)
    div_g2 = 2 * c2 * x  # d/dx_i of g_i^2
    rev = sdekit.reverse(sde, score)
    pf = sdekit.probability_flow(sde, score)
    torch.testing.assert_close(rev.drift(t, x), f - div_g2 - g2 * score(x, t), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(pf.drift(t, x), f - 0.5 * div_g2 - 0.5 * g2 * score(x, t), rtol=1e-13, atol=1e-14)
    assert rev.diffusion_depends_on_x(t, x)
    # torchsde dialect: clock s = T - t, Ito drift -(drift), Stratonovich drift -(drift) - g g'/2
    s = torch.tensor(sde.T - 0.4, dtype=torch.float64)
    r = rev.replace(event_shape=(3,))
    torch.testing.assert_close(r.f(s, x), -(f - div_g2 - g2 * score(x, t)), rtol=1e-13, atol=1e-14)
    g_dg = c2 * x  # g_i dg_i/dx_i
    torch.testing.assert_close(r.as_stratonovich().f(s, x), -(f - div_g2 - g2 * score(x, t)) - 0.5 * g_dg,
                               rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(r.g(s, x), torch.sqrt(g2), rtol=1e-14, atol=0)


@pytest.mark.parametrize("method", ["euler", "milstein", "heun", "midpoint"])
def test_x_dependent_diffusion_reverse_sampling(method):
    """Reverse-solving from the stationary law N(0, 1) keeps N(0, 1) under Ito and Stratonovich methods.

    Dropping the -d(g^2)/dx term or the Ito-Stratonovich correction moves the variance by ~c^2 T = 0.25
    (respectively ~c^2 T / 2), far outside the MC tolerance (~0.04 for n = 20 000).
    """
    sde = MultiplicativeNoise(c=0.5)
    n = 20_000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    sol = sdekit.reverse(sde, _standard_score).solve(x_T, method=method, steps=100, seed=9)
    x = sol.x.detach().reshape(-1)  # torchsde's milstein keeps an autograd graph
    m = x.numel()  # two independent coordinates per sample
    # the ends of the path are correlated with x_T, but the law at eps is N(0,1) exactly; tolerance from the SE
    # of the mean (1/sqrt(m)) and of the variance (sqrt(2/(m-1))), plus O(dt) = 0.01 weak discretisation error
    assert abs(float(x.mean())) < 4 / math.sqrt(m) + 0.01
    assert abs(float(x.var()) - 1.0) < 4 * math.sqrt(2 / (m - 1)) + 0.01
    # fourth moment of N(0,1) is 3; SE of the sample 4th moment is sqrt((105 - 9)/m)
    assert abs(float((x ** 4).mean()) - 3.0) < 4 * math.sqrt(96 / m) + 0.05


@pytest.mark.parametrize("method,kind", [("euler", "sde"), ("heun", "sde"), ("srk", "sde"), ("rk4", "ode"),
                                         ("dopri5", "ode")])
def test_x_dependent_diffusion_keeps_no_graph(method, kind):
    """The divergence term is computed with autograd; a solve of a plain tensor must not return a result that
    requires grad (that would hold every step's graph in memory)."""
    sde = MultiplicativeNoise(c=0.5)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if kind == "sde":
        sol = sdekit.reverse(sde, _standard_score).solve(x, method=method, steps=10, seed=0)
    else:
        kw = dict(steps=10) if method == "rk4" else dict(rtol=1e-6, atol=1e-6)
        sol = sdekit.probability_flow(sde, _standard_score).solve(x, method=method, **kw)
    assert not sol.x.requires_grad and sol.x.grad_fn is None


def test_x_dependent_diffusion_differentiable_through_flow():
    """With x0 requiring grad the flow's result is differentiable, and the gradient (through the divergence
    term too) matches central finite differences."""
    sde = MultiplicativeNoise(c=0.5)

    def score(x, t):
        return -x * (1 + t.reshape(-1, 1))

    pf = sdekit.probability_flow(sde, score)
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    out = pf.solve(x, method="rk4", steps=20).x
    (grad,) = torch.autograd.grad(out[0, 0], x)
    h = 1e-6
    e = torch.tensor([[h, 0.0]], dtype=torch.float64)
    fd = (pf.solve(x0 + e, method="rk4", steps=20).x[0, 0] - pf.solve(x0 - e, method="rk4", steps=20).x[0, 0]) / (2 * h)
    assert abs(float(grad[0, 0]) - float(fd)) < 1e-6
    assert abs(float(grad[0, 1])) < 1e-12  # coordinates are independent
