"""Accuracy against exact Gaussian answers: reverse-SDE sample moments and the probability-flow map.

Data N(mu, Sigma) (full 2x2 Sigma for the SDE, diagonal for the closed-form flow map).  Reverse-SDE samples
start from exact samples of p_T and must reproduce p_eps = N(alpha mu, alpha^2 Sigma + sigma^2 I) within
4 Monte Carlo standard errors (SE of a mean sqrt(S_ii / n), of a covariance sqrt((S_ii S_jj + S_ij^2)/(n-1)))
plus an allowance for the discretisation bias, which for Euler–Maruyama is computed exactly below.
"""

import pytest
import torch

import sdekit

pytestmark = pytest.mark.usefixtures("single_thread")

MU = [1.0, -0.5]
COV = [[1.0, 0.6], [0.6, 0.5]]
N_SAMPLES = 20_000


def euler_chain_moments(sde, data, steps):
    """Exact mean and covariance of the Euler–Maruyama chain for the reverse SDE with the exact Gaussian score.

    The drift f - g^2 score is affine in x: x_{k+1} = A_k x_k + b_k + g_k sqrt(h) z_k with
    A_k = I - h (f_k I + g_k^2 P_k), b_k = h g_k^2 P_k alpha_k mu, P_k = (alpha_k^2 Sigma + sigma_k^2 I)^{-1}.
    """
    grid = sdekit.uniform_grid(sde.T, sde.eps, steps)
    eye = torch.eye(data.d, dtype=torch.float64)
    mean, cov = data.mean_cov(sde.T)
    for k in range(steps):
        t = grid[k:k + 1]
        h = float(grid[k] - grid[k + 1])
        a, s = float(sde.alpha(t)[0]), float(sde.sigma(t)[0])
        fc, g2 = float(sde.drift_coef(t)[0]), float(sde.diffusion_coef(t)[0]) ** 2
        P = torch.linalg.inv(a * a * data.cov + s * s * eye)
        A = eye - h * (fc * eye + g2 * P)
        mean = A @ mean + h * g2 * P @ (a * data.mu)
        cov = A @ cov @ A.T + g2 * h * eye
    return mean, cov


def _bias(sde, data, steps):
    """Largest deviation of the Euler chain's moments from p_eps: the O(h) weak error at this step count."""
    mean, cov = euler_chain_moments(sde, data, steps)
    m_eps, c_eps = data.mean_cov(sde.eps)
    return max(float((mean - m_eps).abs().max()), float((cov - c_eps).abs().max()))


@pytest.mark.parametrize("make", [sdekit.VPSDE, sdekit.VESDE], ids=["VP", "VE"])
def test_euler_matches_exact_chain_and_marginal(gaussian, check_moments, make):
    sde = make()
    data = gaussian.under(sde, MU, cov=COV)
    x_T = data.sample(sde.T, N_SAMPLES, torch.Generator().manual_seed(10))
    sol = sdekit.reverse(sde, data.score).solve(x_T, method="euler", steps=200, seed=11)
    chain_mean, chain_cov = euler_chain_moments(sde, data, 200)
    check_moments(sol.x, chain_mean, chain_cov)  # the discrete chain, no allowance
    mean, cov = data.mean_cov(sde.eps)
    bias = _bias(sde, data, 200)
    assert bias < 0.01  # 200 steps are enough for the chain to be close to p_eps
    check_moments(sol.x, mean, cov, bias=bias)


# (method, steps or tolerances): one Ito and one additive-noise SRK, two Stratonovich, adaptive torchsde.
# The allowance for methods of weak order >= 1 at >= 100 steps is the Euler chain's bias at 100 steps
# (the same O(h) error term, largest for the lowest order), computed exactly by euler_chain_moments.
CASES = [  # (VP and VE Euler at 200 steps: test_euler_matches_exact_chain_and_marginal)
    ("VP", "srk", dict(steps=100)),
    ("VP", "heun", dict(steps=200)),
    ("VP", "midpoint", dict(steps=200)),
    ("VP", "euler", dict(rtol=1e-2, atol=1e-2)),
    ("VP", "srk", dict(rtol=1e-2, atol=1e-2)),
    ("VE", "srk", dict(steps=100)),
    ("VE", "heun", dict(steps=200)),
    ("VE", "euler", dict(rtol=1e-2, atol=1e-2)),
    ("subVP", "euler", dict(steps=200)),
]


#: The adaptive rows take 21 (VP srk) to 212 (VE euler) steps at rtol = atol = 1e-2; each must be as accurate as
#: 50 Euler steps (the Euler chain's bias at 50 steps: 2.8e-2 for VP, 9.3e-3 for VE).
ADAPTIVE_STEPS = 50


@pytest.mark.parametrize("which,method,kw", CASES,
                         ids=[f"{w}-{m}" + ("-adaptive" if "rtol" in k else "") for w, m, k in CASES])
def test_reverse_sde_reproduces_gaussian(gaussian, check_moments, recorder, which, method, kw):
    sde = {"VP": sdekit.VPSDE, "VE": sdekit.VESDE, "subVP": sdekit.SubVPSDE}[which]()
    data = gaussian.under(sde, MU, cov=COV)
    x_T = data.sample(sde.T, N_SAMPLES, torch.Generator().manual_seed(20))
    rec = recorder(data.score)
    sol = sdekit.reverse(sde, rec).solve(x_T, method=method, seed=21, **kw)
    assert sol.success and sol.x.shape == x_T.shape
    mean, cov = data.mean_cov(sde.eps)
    # A fixed allowance, whatever number of steps the method chose: fixed-step rows get the Euler chain's bias at
    # 100 steps; adaptive rows (rtol = atol = 1e-2) the Euler chain's bias at ADAPTIVE_STEPS, so a controller that
    # takes too few steps is not excused by its own step count.
    allowance = _bias(sde, data, ADAPTIVE_STEPS if "rtol" in kw else 100)
    check_moments(sol.x, mean, cov, bias=allowance)
    assert rec.t_min >= sde.eps and rec.t_max <= sde.T


def test_prior_start_vp(gaussian, check_moments):
    """Starting from the prior N(0, I) rather than p_T.  The two differ by alpha(T)|mu| ~ 7e-3 in the mean and
    ~alpha(T)^2 in the covariance; the reverse SDE with the exact score contracts such deviations on the way
    down (a mean error obeys de/dt = (f + g^2 P_t) e with f + g^2 P_t > 0, so it shrinks as t decreases),
    so allowing the full mismatch is an upper bound."""
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, MU, cov=COV)
    x_T = sde.prior_sampling((N_SAMPLES, 2), generator=torch.Generator().manual_seed(30), dtype=torch.float64)
    sol = sdekit.reverse(sde, data.score).solve(x_T, method="srk", steps=100, seed=31)
    mean, cov = data.mean_cov(sde.eps)
    alpha_T = float(sde.alpha(torch.tensor([sde.T], dtype=torch.float64))[0])
    mismatch = alpha_T * max(abs(m) for m in MU) + alpha_T ** 2 * 1.0
    check_moments(sol.x, mean, cov, bias=_bias(sde, data, 100) + mismatch)


# ---------------------------------------------------------------------------------------------
# The probability-flow ODE against the closed-form flow map
# ---------------------------------------------------------------------------------------------

FLOW_SDES = [sdekit.VPSDE, sdekit.SubVPSDE, sdekit.VESDE]


# bosh3 (third order) only at 1e-6: at 1e-9 it takes thousands of steps
ADAPTIVE = [(m, tol) for tol in (1e-6, 1e-9) for m in ("dopri5", "dopri8", "bosh3", "RK45", "DOP853", "Radau", "LSODA")
            if not (m == "bosh3" and tol < 1e-8)]


@pytest.mark.parametrize("make", FLOW_SDES, ids=["VP", "subVP", "VE"])
@pytest.mark.parametrize("method,tol", ADAPTIVE, ids=[f"{m}-{t:g}" for m, t in ADAPTIVE])
def test_flow_map_adaptive(gaussian, make, method, tol):
    """Global error of an adaptive solve stays within a modest multiple (50) of the local tolerance
    atol + rtol |x| (the usual relation for these error-per-step controllers on a non-stiff problem)."""
    sde = make()
    data = gaussian.under(sde, [1.0, -2.0, 0.5], var=[0.5, 2.0, 0.05])
    x_T = data.sample(sde.T, 32, torch.Generator().manual_seed(40))
    sol = sdekit.probability_flow(sde, data.score).solve(x_T, method=method, rtol=tol, atol=tol)
    exact = data.flow_map(x_T, sde.T, sde.eps)
    bound = 50 * (tol + tol * float(exact.abs().max()))
    err = float((sol.x - exact).abs().max())
    assert err < bound, f"{method}: error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("make", FLOW_SDES, ids=["VP", "subVP", "VE"])
def test_flow_map_rk4(gaussian, make):
    """rk4 on a uniform grid: close to the flow map, and its error falls like h^4 (at least 8x per halving)."""
    sde = make()
    data = gaussian.under(sde, [1.0, -2.0, 0.5], var=[0.5, 2.0, 0.05])
    x_T = data.sample(sde.T, 32, torch.Generator().manual_seed(41))
    exact = data.flow_map(x_T, sde.T, sde.eps)
    pf = sdekit.probability_flow(sde, data.score)
    errs = [float((pf.solve(x_T, method="rk4", steps=n).x - exact).abs().max()) for n in (100, 200)]
    assert errs[1] < 1e-5 * (1 + float(exact.abs().max()))
    assert errs[0] / errs[1] > 8


def test_flow_pushes_exact_samples_to_exact_marginal(gaussian, check_moments):
    """Deterministic flow from exact p_T samples gives p_eps samples: same MC tolerance as for the SDE."""
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, MU, cov=COV)
    x_T = data.sample(sde.T, N_SAMPLES, torch.Generator().manual_seed(42))
    sol = sdekit.probability_flow(sde, data.score).solve(x_T, method="dopri5", rtol=1e-7, atol=1e-7)
    mean, cov = data.mean_cov(sde.eps)
    check_moments(sol.x, mean, cov, bias=1e-5)
