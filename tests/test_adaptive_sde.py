"""Per-sample adaptive stepping of SDEs (improved_euler) and the exponential integrators' adaptive variant
(dpm_adaptive): no rejection bias with the Brownian path kept, the bias of redrawing, strong convergence on the
keyed path, the Itô limit with multiplicative noise, and tolerance behaviour."""

import math

import pytest
import torch

import sdekit
from sdekit.validation import GaussianData, GeometricBrownianMotion, fit_order, mean_cov_error

COV = [[0.3, 0.1], [0.1, 0.3]]


def _gaussian_2d():
    sde = sdekit.VPSDE()
    return sde, GaussianData(torch.tensor([0.5, -0.5]), torch.tensor(COV), sde)


def _sample(noise, tol, n, seed=1):
    sde, data = _gaussian_2d()
    x = data.sample(n, t=sde.T, generator=torch.Generator().manual_seed(seed))
    sol = sdekit.reverse(sde, data.score).solve(x, method="improved_euler", rtol=tol, atol=tol, seed=seed + 10,
                                                options={"on_reject": noise})
    mean, cov = data.marginal(sde.eps)
    return mean_cov_error(sol.x, mean, cov), sol


def test_kept_path_has_no_rejection_bias_and_redrawing_has():
    """The exact 2-D Gaussian with the exact score, 10 000 samples, a loose tolerance (0.1, about 16 rejected steps
    a sample): with the Brownian path kept, mean and covariance are within 4 standard errors of the exact ones; with
    fresh noise per attempt the variances are inflated by more than 8 standard errors (measured ~19)."""
    kept, sol = _sample("keep", 0.1, 10_000)
    assert kept.within(4), (kept.mean_z, kept.cov_z)
    assert float(sol.per_sample.rejected.double().mean()) > 5      # the rejection mechanism is exercised
    redrawn, _ = _sample("redraw", 0.1, 10_000)
    assert float(torch.diagonal(redrawn.cov_z).min()) > 8, redrawn.cov_z


@pytest.mark.slow
def test_redraw_bias_grows_as_the_tolerance_tightens_and_kept_path_has_none():
    """At tolerances 0.1 / 0.02 / 0.005 (20 000 samples): the kept path stays within 4 standard errors of the exact
    mean and covariance at each; redrawing inflates the variance, more at tighter tolerances (measured 0.38 / 0.41 /
    0.43 against 0.30), each step of the increase larger than 3 standard errors of one variance."""
    variances = []
    for tol in (0.1, 0.02, 0.005):
        kept, _ = _sample("keep", tol, 20_000)
        assert kept.within(4), (tol, kept.cov_z)
        redrawn, _ = _sample("redraw", tol, 20_000)
        assert float(torch.diagonal(redrawn.cov_z).min()) > 8
        variances.append(float(torch.diagonal(redrawn.cov_error).mean()))
    se = float(torch.diagonal(redrawn.cov_se).max())
    assert all(b - a > 3 * se for a, b in zip(variances, variances[1:])), (variances, se)


def test_adaptive_steps_follow_the_keyed_path():
    """With one KeyedBrownian, the adaptive solution at a tight tolerance is close to 400 fixed Euler-Maruyama steps
    on the same path (strong convergence: both approximate the same pathwise solution): its mean distance is under
    5% of the distance between the same method on another path and the fixed steps."""
    sde, data = _gaussian_2d()
    n = 64
    x = data.sample(n, t=sde.T, generator=torch.Generator().manual_seed(3))
    rev = sdekit.reverse(sde, data.score)
    bm = sdekit.KeyedBrownian(sde.eps, sde.T, x.shape, seed=5, dtype=torch.float64)
    fine = rev.solve(x, method="pc", steps=400, noise=bm,
                     options={"predictor": "euler_maruyama", "corrector": "none"}).x
    adaptive = rev.solve(x, method="improved_euler", rtol=3e-3, atol=3e-3, noise=bm)
    other = rev.solve(x, method="improved_euler", rtol=3e-3, atol=3e-3, seed=6)
    close = float((adaptive.x - fine).abs().mean())
    far = float((other.x - fine).abs().mean())
    assert close < 0.05 * far, (close, far)
    assert float(adaptive.per_sample.rejected.double().mean()) > 1


@pytest.mark.parametrize("noise", ["keep", "redraw"])
def test_each_sample_is_the_same_in_any_batch(noise):
    """Keyed noise and per-sample steps: sample i of a batch of 10 equals sample i solved in the batch of its index
    alone (noise keyed by the sample's global index), also as others finish and leave the batch.

    The score is computed row by row in elementwise operations (data N(m, 0.3 I)), so that its rows are the same
    to the last bit in any batch, as a network's are on one device; a matrix product's rows may differ in their
    last bits between batch sizes, and an adaptive SDE solve carries such a difference into other steps
    (Brownian paths are rough: W(t + d) - W(t) is of order sqrt(d))."""
    sde = sdekit.VPSDE()
    mean = torch.tensor([0.5, -0.5], dtype=torch.float64)

    def score(x, t):
        log_alpha, sigma = sde.log_alpha_sigma(t)
        alpha = torch.exp(log_alpha)[:, None]
        return -(x - alpha * mean) / (0.3 * alpha * alpha + sigma[:, None] ** 2)

    x = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rev = sdekit.reverse(sde, score)
    full = rev.solve(x, method="improved_euler", rtol=0.05, atol=0.05, seed=7, options={"on_reject": noise})
    for i in (0, 6, 9):
        bm = sdekit.KeyedBrownian(sde.eps, sde.T, (1, 2), seed=7, index=torch.tensor([i]), dtype=torch.float64)
        alone = rev.solve(x[i:i + 1], method="improved_euler", rtol=0.05, atol=0.05, noise=bm,
                          options={"on_reject": noise})
        torch.testing.assert_close(full.x[i:i + 1], alone.x, rtol=1e-12, atol=1e-12)
        assert int(full.per_sample.nfe[i]) == int(alone.per_sample.nfe[0])


def _strong_errors(sde, seed, n=400, tols=(1e-1, 1e-2, 1e-3)):
    """improved_euler's mean strong error against the exact solution on the keyed path, and its mean NFE, per tol."""
    x0 = sde.initial_state(n)
    bm = sdekit.KeyedBrownian(0.0, sde.T, x0.shape, seed=seed, dtype=torch.float64)
    exact = sde.exact(x0, sde.T, bm.value(torch.full((n,), sde.T, dtype=torch.float64)))
    errors, nfes = [], []
    for tol in tols:
        sol = sdekit.forward(sde).solve(x0, method="improved_euler", rtol=tol, atol=tol, noise=bm)
        errors.append(float((sol.x - exact).abs().mean()))
        nfes.append(sol.stats["nfe_mean"])
    return errors, nfes


def test_multiplicative_noise_converges_to_the_ito_solution():
    """Geometric Brownian motion (g depends on x), exact solution from the keyed path's W(T): the strong error falls
    as the tolerance tightens, with slope 1/2 against the mean NFE (band +-0.2; measured 0.52).  An error estimate
    that read the step's own increment would refine where dW^2 is large and converge to a wrong limit."""
    errors, nfes = _strong_errors(GeometricBrownianMotion(), seed=3)
    assert errors[0] > errors[1] > errors[2], errors
    slope = fit_order([1 / k for k in nfes], errors)
    assert abs(slope - 0.5) <= 0.2, (slope, errors, nfes)


def test_additive_user_sde_converges_strongly_with_order_one():
    """A user SDE with additive noise (sdekit.validation.AdditiveSDE, exact given W): the strong error falls with the
    tolerance, slope against the mean NFE near 1 (Heun's strong order with additive noise; band +-0.3)."""
    from sdekit.validation import AdditiveSDE
    errors, nfes = _strong_errors(AdditiveSDE(), seed=4)
    slope = fit_order([1 / k for k in nfes], errors)
    assert errors[0] > errors[1] > errors[2] and slope > 1.0 - 0.3, (slope, errors, nfes)


def test_improved_euler_on_an_ode_is_heun():
    """On the probability flow (no noise) the pair is Euler / Heun: tolerance 1e-4 gives an error of that order."""
    sde = sdekit.VPSDE()
    data = GaussianData(torch.tensor([1.0, -0.5]), torch.diag(torch.tensor([0.5, 2.0])), sde)
    x = data.sample(16, t=sde.T, generator=torch.Generator().manual_seed(0))
    flow = sdekit.probability_flow(sde, data.score)
    sol = flow.solve(x, method="improved_euler", rtol=1e-4, atol=1e-4, seed=1)
    other = flow.solve(x, method="improved_euler", rtol=1e-4, atol=1e-4, seed=2)
    torch.testing.assert_close(sol.x, other.x, rtol=0, atol=0)      # no noise: the seed does not matter
    assert float((sol.x - data.flow_map(x, sde.T, sde.eps)).abs().max()) < 1e-2
    assert sol.per_sample.results() == [sdekit.Result.SUCCESS] * 16


def test_default_tolerances_are_the_papers():
    sde, data = _gaussian_2d()
    x = data.sample(4, t=sde.T, generator=torch.Generator().manual_seed(0))
    rev = sdekit.reverse(sde, data.score)
    a = rev.solve(x, method="improved_euler", seed=0)
    b = rev.solve(x, method="improved_euler", seed=0, rtol=0.05, atol=0.0078)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    m = {m.name: m for m in sdekit.methods(backend="sdekit")}
    assert (m["improved_euler"].default_rtol, m["improved_euler"].default_atol) == (0.05, 0.0078)
    assert m["improved_euler"].order == 0.5 and m["improved_euler"].order_additive == 1.0
    assert m["improved_euler"].weak_order == 1.0 and m["improved_euler"].accepts == ("sde", "ode")


def test_options_are_checked():
    sde, data = _gaussian_2d()
    x = data.sample(2, t=sde.T, generator=torch.Generator().manual_seed(0))
    rev = sdekit.reverse(sde, data.score)
    with pytest.raises(sdekit.InvalidParameterError, match="redraw"):
        rev.solve(x, method="improved_euler", seed=0, options={"on_reject": "fresh"})
    # the option's former name is refused with its new one (not a guess at a similar name such as denoise)
    with pytest.raises(sdekit.MethodArgumentError, match=r"'noise' \(now 'on_reject'\)") as err:
        rev.solve(x, method="improved_euler", seed=0, options={"noise": "redraw"})
    assert "did you mean" not in str(err.value)
    with pytest.raises(sdekit.InvalidParameterError, match="theta"):
        rev.solve(x, method="improved_euler", seed=0, options={"theta": 2.0})
    flow = sdekit.probability_flow(sde, data.score)
    with pytest.raises(sdekit.InvalidParameterError, match="order"):
        flow.solve(x, method="dpm_adaptive", options={"order": 4})
    with pytest.raises(sdekit.MethodArgumentError, match="SDE"):
        rev.solve(x, method="dpm_adaptive", seed=0)
    with pytest.raises(sdekit.MethodArgumentError, match="KeyedBrownian"):
        rev.solve(x, method="improved_euler", noise=sdekit.brownian_motion(0.0, 1.0, (2, 2)))


# ---------------------------------------------------------------------------------------------
# dpm_adaptive
# ---------------------------------------------------------------------------------------------

def _flow_case(sde, n=128, dtype=torch.float64):
    data = GaussianData(torch.tensor([1.0, -0.5, 2.0]), torch.diag(torch.tensor([0.5, 2.0, 0.25])), sde)
    x = data.sample(n, t=sde.T, generator=torch.Generator().manual_seed(0)).to(dtype)
    return data, x, sdekit.probability_flow(sde, data.score)


@pytest.mark.parametrize("make", [sdekit.VPSDE, sdekit.VESDE, sdekit.SubVPSDE], ids=["VP", "VE", "subVP"])
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_error_follows_the_tolerance(make, order):
    """DPM-Solver-12/23 per sample on the exact Gaussian flows: the median error over the samples falls as the
    tolerance tightens (1e-2 -> 1e-4) by at least a factor 10 and stays below 3x the tolerance scale at 1e-4;
    the mean NFE grows."""
    sde = make()
    data, x, flow = _flow_case(sde)
    exact = data.flow_map(x, sde.T, sde.eps)
    med, nfe = [], []
    for tol in (1e-2, 1e-4):
        sol = flow.solve(x, method="dpm_adaptive", rtol=tol, atol=tol, options={"order": order})
        err = (sol.x - exact).abs().amax(1)
        med.append(float(err.median()))
        nfe.append(sol.stats["nfe_mean"])
    scale = 1 + float(exact.abs().max())
    assert med[1] * 10 < med[0] and med[1] < 3e-4 * scale, (med, nfe)
    assert nfe[0] < nfe[1]


def test_dpm_adaptive_float32_and_evaluations():
    sde = sdekit.VPSDE()
    data, x, flow = _flow_case(sde, n=8, dtype=torch.float32)
    sol = flow.solve(x, method="dpm_adaptive", options={"order": 2})
    assert sol.x.dtype == torch.float32
    ps = sol.per_sample
    assert bool((ps.nfe == 2 * (ps.steps + ps.rejected)).all())     # two evaluations an attempt
    sol3 = flow.solve(x, method="dpm_adaptive")
    assert bool((sol3.per_sample.nfe == 3 * (sol3.per_sample.steps + sol3.per_sample.rejected)).all())
    exact = data.flow_map(x.double(), sde.T, sde.eps)
    assert float((sol3.x.double() - exact).abs().median()) < 0.05


def test_dpm_adaptive_needs_a_linear_sde():
    sde = GeometricBrownianMotion()
    flow = sdekit.probability_flow(sde, lambda x, t: -x)
    with pytest.raises(sdekit.MethodArgumentError, match="LinearSDE"):
        flow.solve(torch.ones(2, 3, dtype=torch.float64), method="dpm_adaptive", t_start=1.0, t_end=0.5)
    assert math.isfinite(float(flow.solve(torch.ones(2, 3, dtype=torch.float64), method="sdekit.dopri5",
                                          t_start=1.0, t_end=0.5).x.sum()))
