"""The pitfalls of DESIGN.md: scores outside [eps, T], Brownian motions that do not cover the interval,
float32 clocks that gain a step, noise that is not reproducible."""

import math

import pytest
import scipy.stats
import torch
import torchdiffeq

import sdekit

pytestmark = pytest.mark.usefixtures("single_thread")


def _gaussian_problem(gaussian, sde, n=8):
    data = gaussian.under(sde, [0.8, -1.5, 0.3], var=[0.3, 1.7, 0.05])
    return data, data.sample(sde.T, n, torch.Generator().manual_seed(60))


ADAPTIVE_ODE = ["dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2", "RK45", "DOP853", "Radau", "LSODA"]


@pytest.mark.parametrize("make", [sdekit.VESDE, sdekit.VPSDE, sdekit.SubVPSDE], ids=["VE", "VP", "subVP"])
@pytest.mark.parametrize("method", ADAPTIVE_ODE)
def test_score_never_outside_interval_ode(gaussian, recorder, make, method):
    sde = make()
    data, x = _gaussian_problem(gaussian, sde)
    rec = recorder(data.score)
    tol = 1e-4 if method in ("adaptive_heun", "fehlberg2") else 1e-6
    sol = sdekit.probability_flow(sde, rec).solve(x, method=method, rtol=tol, atol=tol)
    assert sol.success and bool(torch.isfinite(sol.x).all())
    assert rec.calls > 0
    assert sde.eps <= rec.t_min and rec.t_max <= sde.T, (rec.t_min, rec.t_max)
    # a sub-interval: the score stays inside the solve's own span
    rec2 = recorder(data.score)
    sdekit.probability_flow(sde, rec2).solve(x, method=method, rtol=tol, atol=tol, t_start=0.8, t_end=0.2)
    assert 0.2 <= rec2.t_min and rec2.t_max <= 0.8, (rec2.t_min, rec2.t_max)


@pytest.mark.parametrize("make", [sdekit.VESDE, sdekit.VPSDE], ids=["VE", "VP"])
@pytest.mark.parametrize("method", ["euler", "srk", "heun", "reversible_heun"])
def test_score_never_outside_interval_adaptive_sde(gaussian, recorder, make, method):
    sde = make()
    data, x = _gaussian_problem(gaussian, sde)
    rec = recorder(data.score)
    sol = sdekit.reverse(sde, rec).solve(x, method=method, rtol=1e-2, atol=1e-2, seed=0)
    assert sol.success and rec.calls > 0
    assert sde.eps <= rec.t_min and rec.t_max <= sde.T, (rec.t_min, rec.t_max)
    assert sol.steps >= 2


@pytest.mark.parametrize("make", [sdekit.VESDE, sdekit.VPSDE], ids=["VE", "VP"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun"])
def test_score_never_outside_interval_direct_odeint(gaussian, recorder, make, method):
    """The process handed to torchdiffeq directly: its initial-step heuristic and the last step that runs past
    eps ask for times outside [eps, T]; the score still sees only times inside, and the solve finishes."""
    sde = make()
    data, x = _gaussian_problem(gaussian, sde)
    rec = recorder(data.score)
    pf = sdekit.probability_flow(sde, rec)
    out = torchdiffeq.odeint(pf, x, torch.tensor([sde.T, sde.eps], dtype=torch.float64), method=method,
                             rtol=1e-4, atol=1e-4)
    assert bool(torch.isfinite(out).all())
    assert sde.eps <= rec.t_min and rec.t_max <= sde.T, (rec.t_min, rec.t_max)


# ---------------------------------------------------------------------------------------------
# Brownian motion
# ---------------------------------------------------------------------------------------------

def _var_tolerance(var, n, k=4.0):
    """k standard errors of a sample variance of n Gaussian values: SE = var * sqrt(2 / (n - 1))."""
    return k * var * math.sqrt(2.0 / (n - 1))


@pytest.mark.parametrize("span", [1.0 - 1e-3, 1.0 - 1e-5, 2.5])
def test_brownian_motion_covers_whole_interval(span):
    n = 20_000
    bm = sdekit.brownian_motion(0.0, span, (n, 1), dtype=torch.float64, seed=123)
    cuts = [0.0, 0.1 * span, 0.5 * span, 0.9 * span, span]
    whole = bm(0.0, span)
    assert whole.shape == (n, 1) and whole.dtype == torch.float64
    assert abs(float(whole.var()) - span) < _var_tolerance(span, n)
    assert abs(float(whole.mean())) < 4 * math.sqrt(span / n)
    # increments over consecutive pieces: independent N(0, length); their sum is the whole increment
    pieces = [bm(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    torch.testing.assert_close(sum(pieces), whole, rtol=0, atol=1e-12)
    normalised = []
    for (a, b), inc in zip(zip(cuts[:-1], cuts[1:]), pieces):
        assert abs(float(inc.var()) - (b - a)) < _var_tolerance(b - a, n)
        normalised.append(inc.reshape(-1) / math.sqrt(b - a))
    z = torch.cat(normalised).numpy()
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    # the last piece is not clamped (torchsde's default [t0, t0 + 1] would make increments past 1 vanish)
    tail = bm(0.9 * span, span)
    assert float(tail.var()) > 0.5 * 0.1 * span
    # pieces are uncorrelated: correlation of independent samples has SE 1/sqrt(n)
    c = torch.corrcoef(torch.stack([pieces[0].reshape(-1), pieces[-1].reshape(-1)]))[0, 1]
    assert abs(float(c)) < 4 / math.sqrt(n)


def test_brownian_motion_seeding():
    a = sdekit.brownian_motion(0.0, 1.0, (5, 3), dtype=torch.float64, seed=1)(0.2, 0.7)
    b = sdekit.brownian_motion(0.0, 1.0, (5, 3), dtype=torch.float64, seed=1)(0.2, 0.7)
    c = sdekit.brownian_motion(0.0, 1.0, (5, 3), dtype=torch.float64, seed=2)(0.2, 0.7)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    d = sdekit.brownian_motion(0.0, 1.0, (5, 3), dtype=torch.float64, generator=g1)(0.0, 1.0)
    e = sdekit.brownian_motion(0.0, 1.0, (5, 3), dtype=torch.float64, generator=g2)(0.0, 1.0)
    assert torch.equal(d, e)
    f = sdekit.brownian_motion(0.0, 1.0, (5, 3), dtype=torch.float64, generator=g1)(0.0, 1.0)
    assert not torch.equal(d, f)
    with pytest.raises(sdekit.InvalidParameterError):
        sdekit.brownian_motion(1.0, 1.0, (5, 3))
    with pytest.raises(sdekit.InvalidParameterError):
        sdekit.brownian_motion(0.0, 1.0, (5, 3), seed=1, generator=torch.Generator())
    st = sdekit.brownian_motion(0.0, 1.0, (5, 3), levy_area="space-time", seed=1)
    assert st.levy_area_approximation == "space-time"


class _Wiener(sdekit.SDE):
    """dx = dw on [0, T]: the solve's noise itself."""

    def f(self, t, x):
        return torch.zeros_like(x)

    def g(self, t, x):
        return torch.ones_like(t)


@pytest.mark.parametrize("method", ["euler", "srk", "heun"])
def test_solve_noise_covers_whole_interval(method):
    """With T = 3 (beyond torchsde's default [0, 1]) the solve's own Brownian motion spans the whole clock:
    forward, x_T - x_0 has variance T; in reverse with a zero score, variance T - eps."""
    n = 20_000
    sde = _Wiener(T=3.0, eps=1e-3)
    x0 = torch.zeros(n, 1, dtype=torch.float64)
    fwd = sdekit.forward(sde).solve(x0, method=method, steps=30, seed=4).x
    assert abs(float(fwd.var()) - 3.0) < _var_tolerance(3.0, n)
    rev = sdekit.reverse(sde, lambda x, t: torch.zeros_like(x)).solve(x0, method=method, steps=30, seed=5).x
    assert abs(float(rev.var()) - (3.0 - 1e-3)) < _var_tolerance(3.0, n)
    assert scipy.stats.kstest((rev.reshape(-1) / math.sqrt(3.0 - 1e-3)).numpy(), "norm").pvalue > 1e-3


def test_adaptive_solve_noise_is_unbiased():
    """Adaptive steps refine the same Brownian path (bridge), never redraw it after a rejection.

    dx = dw with data N(0, v0): p_t = N(0, v0 + t), score -x / (v0 + t).  The reverse drift x / (v0 + t)
    stiffens near 0, so the controller rejects steps; the samples at eps must still have variance v0 + eps."""
    n, v0 = 20_000, 0.05
    sde = _Wiener(T=2.0, eps=1e-3)
    x_T = math.sqrt(v0 + sde.T) * torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sol = sdekit.reverse(sde, lambda x, t: -x / (v0 + t.reshape(-1, 1))).solve(
        x_T, method="srk", rtol=1e-3, atol=1e-3, seed=2)
    assert sol.rejected > 0
    assert abs(float(sol.x.mean())) < 4 * math.sqrt((v0 + sde.eps) / n)
    assert abs(float(sol.x.var()) - (v0 + sde.eps)) < _var_tolerance(v0 + sde.eps, n)


@pytest.mark.parametrize("method,kw", [("euler", dict(steps=40)), ("srk", dict(steps=40)),
                                       ("heun", dict(steps=40)), ("rk4", dict(steps=40))])
def test_float32_clock_takes_no_extra_step(recorder, method, kw):
    """Grids are built in float64: a float32 state still takes exactly the requested steps, and the score sees
    the grid's times (cast once to float32)."""
    sde = sdekit.VPSDE()
    rec = recorder(lambda x, t: -x)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    if method == "rk4":
        sol = sdekit.probability_flow(sde, rec).solve(x, method=method, **kw)
    else:
        sol = sdekit.reverse(sde, rec).solve(x, method=method, seed=0, **kw)
    assert sol.steps == 40 and sol.x.dtype == torch.float32 and sol.t == sde.eps
    if method == "euler":
        seen = torch.stack([t[0] for t in rec.t_seen])
        expected = sdekit.uniform_grid(sde.T, sde.eps, 40)[:-1].to(torch.float32)
        assert torch.equal(seen, expected)


@pytest.mark.slow
def test_very_fine_fixed_grid():
    sde = sdekit.VPSDE()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # torchsde's BrownianInterval without a dt hint grows a linear chain of splits under sequential queries
    # and exceeds Python's recursion limit after ~15-20k steps; sdekit builds it with dt = the grid's step.
    sol = sdekit.reverse(sde, lambda x, t: -x).solve(x, method="euler", steps=30_000, seed=0)
    assert sol.steps == 30_000 and bool(torch.isfinite(sol.x).all())
