"""The stepping layer's one loop and its steppers, through ``solve()``: NFE, max_steps, save_at, option and
process checks, dtypes, event shapes, the method table, and the edge cases that broke other samplers
(steps=1 and 2 with third-order methods, grids ending exactly at eps, every schedule, VE's two marginals).

The score is exact for isotropic Gaussian data N(0, S I): elementwise, so any event shape works.
"""

import pytest
import torch

import sdekit
from sdekit._stepping import STEPPERS
from sdekit._stepping._dpmpp_multistep import step_orders

ODE_SAMPLERS = ("ddim", "dpm_solver_2", "dpm_solver_3", "dpm_solver_fast", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc",
                "edm_heun", "lms", "ipndm", "deis")
SDE_SAMPLERS = ("ddim", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "edm_stochastic", "restart", "pc")
SCHEDULES = ("uniform", "logsnr", "karras", "quadratic")
SINGLE_STEP = ("ddim", "dpm_solver_2", "dpm_solver_3", "dpmpp_2s", "edm_heun")


def sdes():
    return {"VP": sdekit.VPSDE(), "subVP": sdekit.SubVPSDE(), "VE": sdekit.VESDE(),
            "VE-exact": sdekit.VESDE(marginal="exact")}


class IsoScore:
    """The exact score of N(0, S I) data under a LinearSDE, counting its calls and the times it saw."""

    def __init__(self, sde, S=0.5):
        self.sde, self.S = sde, S
        self.calls = 0
        self.times = []
        self.t_dtypes = set()

    def __call__(self, x, t):
        self.calls += 1
        self.times.append(t.detach().clone())
        self.t_dtypes.add(t.dtype)
        t64 = t.to(torch.float64)
        a, s = torch.exp(self.sde.log_alpha(t64)), self.sde.sigma(t64)
        v = (a * a * self.S + s * s).to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
        return -x / v


def prior(sde, shape=(6, 2), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype) * sde.prior_std


def solve(method, sde=None, x=None, stochastic=False, score=None, **kw):
    sde = sde or sdekit.VPSDE()
    score = score or IsoScore(sde)
    x = prior(sde) if x is None else x
    proc = sdekit.reverse(sde, score) if stochastic else sdekit.probability_flow(sde, score)
    if stochastic:
        kw.setdefault("seed", 0)
    return proc.solve(x, method=method, **kw), score


# ------------------------------------------------------------------------------------------------
# the method table
# ------------------------------------------------------------------------------------------------

def test_methods_lists_every_stepper_with_its_columns():
    table = {m.name: m for m in sdekit.methods(backend="sdekit") if m.stepping == "fixed"}  # adaptive: own tests
    assert set(table) == {cls.name for cls in STEPPERS}
    assert set(ODE_SAMPLERS) | set(SDE_SAMPLERS) == set(table)
    for cls in STEPPERS:
        m = table[cls.name]
        assert m.backend == "sdekit" and m.stepping == "fixed"
        assert m.frame == cls.frame in ("t", "sigma", "logsnr")
        assert m.needs == cls.needs in ("drift", "score", "x0", "eps")
        assert isinstance(m.history, int) and m.history == cls.history >= 0
        assert m.error_estimate is cls.error_estimate is False
        assert m.schedule == cls.schedule in sdekit.SCHEDULES
        assert "denoise" in m.options and set(cls.defaults) <= set(m.options)
        assert m.description
    assert table["dpmpp_2m"].history == 1 and table["dpmpp_3m"].history == 2 and table["lms"].history == 3
    assert table["ipndm"].history == 3 and table["ipndm"].frame == "sigma" and table["ipndm"].schedule == "karras"
    assert table["edm_heun"].schedule == "karras" and table["dpm_solver_2"].schedule == "logsnr"
    assert "ode" in table["ddim"].processes and "sde" in table["ddim"].processes   # eta = 0 on the flow


# ------------------------------------------------------------------------------------------------
# NFE
# ------------------------------------------------------------------------------------------------

NFE_CASES = [
    # (method, options, stochastic, evaluations for n steps)
    ("ddim", {}, False, lambda n: n),
    ("dpm_solver_2", {}, False, lambda n: 2 * n),
    ("dpm_solver_3", {}, False, lambda n: 3 * n),
    ("dpmpp_2s", {}, False, lambda n: 2 * n),
    ("dpmpp_2m", {}, False, lambda n: n),
    ("dpmpp_3m", {}, False, lambda n: n),
    ("dpmpp_3m", {"warmup": "singlestep"}, False, lambda n: n + (n > 1)),   # a 1-step grid has no warm-up
    ("unipc", {}, False, lambda n: n),
    ("unipc", {"order": 2}, False, lambda n: n),
    ("edm_heun", {}, False, lambda n: 2 * n),
    ("lms", {}, False, lambda n: n),
    ("ipndm", {}, False, lambda n: n),
    ("deis", {}, False, lambda n: n),
    ("ddim", {"eta": 1.0}, True, lambda n: n),
    ("euler_ancestral", {}, True, lambda n: n),
    ("dpmpp_2m_sde", {}, True, lambda n: n),
    ("dpmpp_sde", {}, True, lambda n: 2 * n),
    ("edm_stochastic", {}, True, lambda n: 2 * n),
    ("restart", {}, True, lambda n: 2 * n + 2 * 2 * 2),          # VP's eps is below sigma_min = 0.06: 2 restarts
    ("restart", {"restarts": 3, "restart_steps": 4}, True, lambda n: 2 * n + 2 * 3 * 3),
    ("restart", {"restarts": 0}, True, lambda n: 2 * n),
    ("pc", {}, True, lambda n: 2 * n),
    ("pc", {"n_steps": 3}, True, lambda n: 4 * n),
    ("pc", {"n_steps": 2, "predictor": "euler_maruyama"}, True, lambda n: 3 * n),
    ("pc", {"n_steps": 2, "predictor": "none"}, True, lambda n: 2 * n),
    ("pc", {"corrector": "none", "predictor": "ancestral"}, True, lambda n: n),
]


@pytest.mark.parametrize("method,options,stochastic,expected", NFE_CASES,
                         ids=[f"{c[0]}-{'-'.join(map(str, c[1].values())) or 'default'}" for c in NFE_CASES])
def test_nfe_counted_exactly(method, options, stochastic, expected):
    # 12 steps: past the short-grid rules (lower_order_final below 10 steps) of the multistep methods
    for steps in (1, 5, 12) if not stochastic else (1, 5):
        sol, score = solve(method, stochastic=stochastic, steps=steps, options=options)
        assert sol.nfe == score.calls == expected(steps), f"{steps} steps"
        assert sol.steps == steps
    den, score = solve(method, stochastic=stochastic, steps=steps, options={**options, "denoise": True})
    assert den.nfe == score.calls == expected(steps) + 1


@pytest.mark.parametrize("method", ["dpmpp_2m", "dpm_solver_2", "pc"])
def test_nfe_per_call_honoured(method):
    sde = sdekit.VPSDE()
    score = IsoScore(sde)
    score.nfe_per_call = 2
    stochastic = method == "pc"
    sol, _ = solve(method, sde=sde, score=score, stochastic=stochastic, steps=7)
    assert sol.nfe == 2 * score.calls
    assert score.calls == (7 if method == "dpmpp_2m" else 14)


def test_denoise_is_tweedie_at_t_end():
    sde = sdekit.VPSDE()
    plain, _ = solve("dpmpp_2m", sde=sde, steps=8)
    den, _ = solve("dpmpp_2m", sde=sde, steps=8, options={"denoise": True})
    t = torch.full((plain.x.shape[0],), sde.eps, dtype=torch.float64)
    a, s = torch.exp(sde.log_alpha(t)), sde.sigma(t)
    tweedie = (plain.x + (s * s)[:, None] * IsoScore(sde)(plain.x, t)) / a[:, None]
    torch.testing.assert_close(den.x, tweedie, rtol=1e-12, atol=1e-12)
    assert den.t == plain.t == sde.eps
    with pytest.raises(sdekit.SDEKitError, match="denoise"):
        solve("ddim", steps=3, options={"denoise": 1})


@pytest.mark.parametrize("budget", range(1, 14))
def test_dpm_solver_fast_spends_exactly_its_budget(budget):
    """steps= counts evaluations (DPM-Solver's and k-diffusion's dpm_fast convention): K = N // 3 + 1 steps."""
    sol, score = solve("dpm_solver_fast", steps=budget)
    assert sol.nfe == score.calls == budget
    assert sol.steps == budget // 3 + 1
    assert sol.success and torch.isfinite(sol.x).all()
    den, score = solve("dpm_solver_fast", steps=budget, options={"denoise": True})
    assert den.nfe == score.calls == budget + 1


@pytest.mark.parametrize("budget,tail", [(9, ("dpm_solver_2", "ddim")), (10, ("ddim",)), (11, ("dpm_solver_2",)),
                                         (3, ("dpm_solver_2", "ddim")), (2, ("dpm_solver_2",))])
@pytest.mark.parametrize("sde_name", ["VP", "VE"])
def test_dpm_solver_fast_is_dpm_solver_3_then_its_lower_order_tail(budget, tail, sde_name):
    sde = sdes()[sde_name]
    x = prior(sde, shape=(20, 3), seed=budget)
    fast, _ = solve("dpm_solver_fast", sde=sde, x=x, steps=budget)
    grid = sdekit.schedule_grid(sde, "logsnr", budget // 3 + 1, sde.T, sde.eps)
    k = grid.numel() - 1 - len(tail)
    y = solve("dpm_solver_3", sde=sde, x=x, grid=grid[:k + 1])[0].x if k > 0 else x
    for j, method in enumerate(tail):
        y = solve(method, sde=sde, x=y, grid=grid[k + j:k + j + 2])[0].x
    torch.testing.assert_close(fast.x, y, rtol=1e-12, atol=1e-12)


def test_dpm_solver_fast_on_a_given_grid_takes_third_order_steps():
    sde = sdekit.VESDE()
    grid = sdekit.schedule_grid(sde, "logsnr", 4, sde.T, sde.eps)
    fast, score = solve("dpm_solver_fast", sde=sde, grid=grid)
    assert fast.nfe == score.calls == 12
    third, _ = solve("dpm_solver_3", sde=sde, grid=grid)
    assert torch.equal(fast.x, third.x)
    # a save_at time inserted into the budget's grid adds one third-order step
    sol, score = solve("dpm_solver_fast", sde=sde, steps=10, save_at=[0.5])
    assert sol.nfe == score.calls == 13 and sol.steps == 5


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("sde_name", ["VP", "VE", "subVP"])
def test_ipndm_is_adams_bashforth_in_sigma_with_equal_step_coefficients(order, sde_name):
    """iPNDM written out on the VE-frame flow d(x/alpha)/d(sigma/alpha) = eps_hat, against solve()."""
    sde = sdes()[sde_name]
    score = IsoScore(sde)
    x = prior(sde, shape=(7, 3), seed=order)
    grid = sdekit.schedule_grid(sde, "karras", 9, sde.T, sde.eps)
    got = sdekit.probability_flow(sde, score).solve(x, method="ipndm", steps=9, options={"order": order})
    ab = [[1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
    alpha, sigma = torch.exp(sde.log_alpha(grid)), sde.sigma(grid)
    y, past = x / alpha[0], []
    for i in range(9):
        t = grid[i].expand(x.shape[0])
        past = [-sigma[i] * score(alpha[i] * y, t)] + past
        coefs = ab[min(order, i + 1) - 1]
        y = y + (sigma[i + 1] / alpha[i + 1] - sigma[i] / alpha[i]) * sum(c * e for c, e in zip(coefs, past))
    torch.testing.assert_close(got.x, alpha[-1] * y, rtol=1e-12, atol=1e-12)
    if order == 1:   # DDIM is Euler in sigma on this flow
        ddim = sdekit.probability_flow(sde, score).solve(x, method="ddim", grid=grid)
        torch.testing.assert_close(got.x, ddim.x, rtol=1e-10, atol=1e-12)


def test_deis_moments_against_quadrature():
    """I_m(h) = int_0^h v^m e^v dv on both sides of the series' switch (|h| = 1/2) and far from it."""
    import math
    from scipy.integrate import quad
    from sdekit._stepping._deis import exp_moments
    h = torch.tensor([-4.0, -1.0, -0.5000001, -0.4999999, -0.1, -1e-6, 0.2, 1.5], dtype=torch.float64)
    got = exp_moments(h, 3)
    for i, hv in enumerate(h.tolist()):
        for m in range(3):
            ref = quad(lambda v: v ** m * math.exp(v), 0.0, hv, epsabs=0.0, epsrel=1e-13)[0]
            assert abs(float(got[i, m]) - ref) <= 1e-13 * abs(ref), (hv, m, float(got[i, m]), ref)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("sde_name,schedule", [("VP", "logsnr"), ("VE", "karras"), ("subVP", "uniform")])
def test_deis_integrates_the_log_rho_polynomial(order, sde_name, schedule):
    """DEIS written out with its coefficients by 40-point Gauss-Legendre quadrature in log rho, against solve()."""
    np = pytest.importorskip("numpy")
    sde = sdes()[sde_name]
    score = IsoScore(sde)
    x = prior(sde, shape=(5, 2), seed=order)
    n = 12
    grid = sdekit.schedule_grid(sde, schedule, n, sde.T, sde.eps)
    got = sdekit.probability_flow(sde, score).solve(x, method="deis", steps=n, schedule=schedule,
                                                     options={"order": order})
    alpha = torch.exp(sde.log_alpha(grid))
    rho = (sde.sigma(grid) / alpha).numpy()
    nodes_q, weights_q = np.polynomial.legendre.leggauss(40)
    orders = step_orders(sde.log_snr(grid), order, True, last_order=2)    # the grid's orders, as documented
    y, past = x / alpha[0], []
    for i in range(n):
        t = grid[i].expand(x.shape[0])
        past = [(np.log(rho[i]), -float(sde.sigma(grid[i])) * score(alpha[i] * y, t))] + past
        p = orders[i]
        a, b = np.log(rho[i]), np.log(rho[i + 1])          # d rho = e^u du, u = log rho
        u = 0.5 * (b - a) * nodes_q + 0.5 * (b + a)
        for j in range(p):
            basis = np.exp(u)
            for m in range(p):
                if m != j:
                    basis *= (u - past[m][0]) / (past[j][0] - past[m][0])
            y = y + float(0.5 * (b - a) * np.sum(weights_q * basis)) * past[j][1]
    torch.testing.assert_close(got.x, alpha[-1] * y, rtol=1e-10, atol=1e-10)
    if order == 1:   # DDIM is Euler in sigma on this flow
        ddim = sdekit.probability_flow(sde, score).solve(x, method="ddim", grid=grid)
        torch.testing.assert_close(got.x, ddim.x, rtol=1e-10, atol=1e-12)


def test_restart_is_edm_heun_with_noised_returns_over_its_interval():
    """restarts=0 is edm_heun; a restart at the first grid point at or below sigma_min jumps to sigma_max with the
    keyed normal of that time (tag k) and comes back by Heun steps on a Karras grid of that interval."""
    sde = sdekit.VESDE(0.01, 20.0)
    score = IsoScore(sde)
    x = prior(sde, shape=(9, 2), seed=4)
    grid = sdekit.schedule_grid(sde, "karras", 8, sde.T, sde.eps)
    rev = sdekit.reverse(sde, score)
    heun = sdekit.probability_flow(sde, score).solve(x, method="edm_heun", grid=grid)
    assert torch.equal(rev.solve(x, method="restart", grid=grid, seed=5, options={"restarts": 0}).x, heun.x)
    opts = {"sigma_min": 0.5, "sigma_max": 3.0, "restarts": 2, "restart_steps": 4}
    got = rev.solve(x, method="restart", grid=grid, seed=5, options=opts)
    levels = (sde.sigma(grid) / torch.exp(sde.log_alpha(grid))).tolist()
    r = next(k for k in range(1, 9) if levels[k] <= 0.5)
    pf = sdekit.probability_flow(sde, score)
    y = pf.solve(x, method="edm_heun", grid=grid[:r + 1]).x
    path = sdekit.KeyedBrownian(sde.eps, sde.T, tuple(x.shape), seed=5, dtype=x.dtype)
    t_r = grid[r].expand(9)
    s_r = levels[r]
    ks = torch.linspace(0, 1, 4, dtype=torch.float64)
    sub = (3.0 ** (1 / 7) + ks * (s_r ** (1 / 7) - 3.0 ** (1 / 7))) ** 7
    sub_times = sde.t_of_log_snr(-torch.log(sub))
    sub_times[-1] = grid[r]
    for k in range(2):
        y = y + (3.0 ** 2 - s_r ** 2) ** 0.5 * path.normal(t_r, tag=k)      # VE: alpha = 1
        y = pf.solve(y, method="edm_heun", grid=sub_times).x
    y = pf.solve(y, method="edm_heun", grid=grid[r:]).x
    torch.testing.assert_close(got.x, y, rtol=1e-10, atol=1e-10)
    assert got.nfe == 2 * 8 + 2 * 2 * 3


def test_restart_never_asks_above_where_the_walk_starts():
    sde = sdekit.VPSDE()
    score = IsoScore(sde)
    x = prior(sde, shape=(6, 2), seed=1) * 0.5
    sol = sdekit.reverse(sde, score).solve(x, method="restart", steps=10, seed=0, t_start=0.3,
                                           options={"sigma_max": 50.0})
    assert sol.success and torch.isfinite(sol.x).all() and sol.nfe == 2 * 10 + 2 * 2 * 2
    assert max(float(t.max()) for t in score.times) <= 0.3 + 1e-7


# ------------------------------------------------------------------------------------------------
# max_steps, save_at
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,stochastic", [("ddim", False), ("dpmpp_2m", False), ("edm_heun", False),
                                               ("euler_ancestral", True), ("pc", True)])
def test_max_steps_stops_with_the_reached_state(method, stochastic):
    sde = sdekit.VPSDE()
    m = {x.name: x for x in sdekit.methods(backend="sdekit")}[method]
    grid = sdekit.schedule_grid(sde, m.schedule, 12, sde.T, sde.eps)
    sol, score = solve(method, sde=sde, stochastic=stochastic, steps=12, max_steps=5, throw=False)
    assert sol.result is sdekit.Result.MAX_STEPS and not sol.success
    assert sol.steps == 5
    assert sol.t == float(grid[5])
    assert torch.isfinite(sol.x).all()
    assert max(float(t.max()) for t in score.times) <= sde.T
    assert min(float(t.min()) for t in score.times) >= float(grid[5]) - 1e-12   # never looked past where it stopped
    with pytest.raises(sdekit.SolveError, match="max_steps"):
        solve(method, sde=sde, stochastic=stochastic, steps=12, max_steps=5)


def test_max_steps_state_is_the_state_of_the_shorter_grid():
    sde = sdekit.VPSDE()
    grid = sdekit.schedule_grid(sde, "uniform", 12, sde.T, sde.eps)
    stopped, _ = solve("ddim", sde=sde, grid=grid, max_steps=5, throw=False)
    short, _ = solve("ddim", sde=sde, grid=grid[:6])
    assert torch.equal(stopped.x, short.x)
    stopped, _ = solve("ddim", sde=sde, grid=grid, max_steps=5, throw=False, stochastic=True, seed=3)
    assert stopped.t == float(grid[5]) and torch.isfinite(stopped.x).all()


@pytest.mark.parametrize("method", SINGLE_STEP)
def test_save_at_states_equal_solves_ending_there(method):
    sde = sdekit.VESDE()
    grid = sdekit.schedule_grid(sde, "logsnr", 8, sde.T, sde.eps)
    on_grid = float(grid[3])
    between = 0.5 * float(grid[5] + grid[6])      # not a grid time: the grid is refined to contain it
    sol, _ = solve(method, sde=sde, grid=grid, save_at=[on_grid, between])
    assert sol.ts.tolist() == [on_grid, between]
    assert sol.path.shape == (2,) + tuple(sol.x.shape)
    first, _ = solve(method, sde=sde, grid=grid[:4])
    refined = torch.cat([grid[:6], torch.tensor([between], dtype=torch.float64)])
    second, _ = solve(method, sde=sde, grid=refined)
    assert torch.equal(sol.path[0], first.x)
    assert torch.equal(sol.path[1], second.x)
    # the final state is that of the refined grid
    full, _ = solve(method, sde=sde, grid=torch.cat([refined, grid[6:]]))
    assert torch.equal(sol.x, full.x)


# ------------------------------------------------------------------------------------------------
# arguments and processes
# ------------------------------------------------------------------------------------------------

def test_unknown_option_lists_the_options():
    with pytest.raises(sdekit.SDEKitError, match=r"dpmpp_2m does not take option\(s\) 'etaa'.*lower_order_final"):
        solve("dpmpp_2m", steps=4, options={"etaa": 1.0})
    with pytest.raises(sdekit.SDEKitError, match=r"it takes: .*n_steps.*snr"):
        solve("pc", steps=4, stochastic=True, options={"step_size": 0.1})


@pytest.mark.parametrize("options", [{"eta": 2.0}, {"s_noise": -1.0}, {"eta": "1"}])
def test_bad_option_values(options):
    with pytest.raises(sdekit.SDEKitError):
        solve("euler_ancestral", steps=4, stochastic=True, options=options)


@pytest.mark.parametrize("options", [{"predictor": "heun"}, {"corrector": "hmc"}, {"norm": "global"},
                                     {"snr": -0.1}, {"n_steps": 1.5}])
def test_bad_pc_options(options):
    with pytest.raises(sdekit.SDEKitError):
        solve("pc", steps=4, stochastic=True, options=options)


@pytest.mark.parametrize("method", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "edm_stochastic", "pc"])
def test_stochastic_sampler_on_probability_flow_is_refused(method):
    with pytest.raises(sdekit.SDEKitError, match="reverse"):
        solve(method, steps=4)


def test_ddim_with_noise_on_probability_flow_is_refused():
    with pytest.raises(sdekit.SDEKitError, match="eta"):
        solve("ddim", steps=4, options={"eta": 0.5})
    sol, _ = solve("ddim", steps=4, options={"eta": 0.0})
    assert sol.success


class Cubic(sdekit.SDE):
    """A non-linear SDE: dx = -x^3 dt + dw."""

    def f(self, t, x):
        return -x ** 3

    def g(self, t, x):
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)


@pytest.mark.parametrize("method", ODE_SAMPLERS)
def test_ode_sampler_on_non_linear_sde_is_refused(method):
    sde = Cubic()
    with pytest.raises(sdekit.SDEKitError, match="LinearSDE"):
        sdekit.probability_flow(sde, lambda x, t: -x).solve(torch.zeros(3, 2), method=method, steps=4)


@pytest.mark.parametrize("method", SDE_SAMPLERS)
def test_stochastic_sampler_on_non_linear_sde_is_refused(method):
    with pytest.raises(sdekit.SDEKitError, match="LinearSDE"):
        sdekit.reverse(Cubic(), lambda x, t: -x).solve(torch.zeros(3, 2), method=method, steps=4, seed=0)


def test_adaptive_request_is_refused():
    with pytest.raises(sdekit.SDEKitError, match="fixed steps"):
        solve("dpmpp_2m", rtol=1e-3)


def test_torchsde_noise_is_refused_by_native_samplers():
    sde = sdekit.VPSDE()
    x = prior(sde)
    bm = sdekit.brownian_motion(0.0, sde.T - sde.eps, x.shape, seed=0, dtype=x.dtype)
    with pytest.raises(sdekit.SDEKitError, match="KeyedBrownian"):
        solve("euler_ancestral", sde=sde, x=x, stochastic=True, steps=4, noise=bm, seed=None)


def test_keyed_noise_of_the_wrong_shape_or_span_is_refused():
    sde = sdekit.VPSDE()
    x = prior(sde)
    wrong_shape = sdekit.KeyedBrownian(sde.eps, sde.T, (3, 2), seed=0, dtype=x.dtype)
    short_span = sdekit.KeyedBrownian(0.5, sde.T, tuple(x.shape), seed=0, dtype=x.dtype)
    for bm in (wrong_shape, short_span):
        with pytest.raises(sdekit.SDEKitError, match="noise covers"):
            solve("euler_ancestral", sde=sde, x=x, stochastic=True, steps=4, noise=bm, seed=None)


def test_explicit_keyed_noise_equals_seed():
    sde = sdekit.VPSDE()
    x = prior(sde)
    bm = sdekit.KeyedBrownian(sde.eps, sde.T, tuple(x.shape), seed=17, dtype=x.dtype)
    a, _ = solve("dpmpp_sde", sde=sde, x=x, stochastic=True, steps=6, noise=bm, seed=None)
    b, _ = solve("dpmpp_sde", sde=sde, x=x, stochastic=True, steps=6, seed=17)
    c, _ = solve("dpmpp_sde", sde=sde, x=x, stochastic=True, steps=6, seed=18)
    assert torch.equal(a.x, b.x)
    assert not torch.isclose(a.x, c.x).any()


# ------------------------------------------------------------------------------------------------
# dtypes, event shapes, where the score is asked
# ------------------------------------------------------------------------------------------------

ALL = [(m, False) for m in ODE_SAMPLERS] + [(m, True) for m in SDE_SAMPLERS]
ALL_IDS = [f"{m}-{'sde' if s else 'ode'}" for m, s in ALL]


@pytest.mark.parametrize("method,stochastic", ALL, ids=ALL_IDS)
def test_dtypes_end_to_end(method, stochastic):
    sde = sdekit.VESDE()
    x64 = prior(sde)
    # float32 and float64 draw different keyed streams: the stochastic solves share one float32 path
    kw = dict(noise=sdekit.KeyedBrownian(sde.eps, sde.T, x64.shape, seed=0), seed=None) if stochastic else {}
    r64, s64 = solve(method, sde=sde, x=x64, stochastic=stochastic, steps=5, **kw)
    r32, s32 = solve(method, sde=sde, x=x64.float(), stochastic=stochastic, steps=5, **kw)
    assert r64.x.dtype == torch.float64 and s64.t_dtypes == {torch.float64}
    assert r32.x.dtype == torch.float32 and s32.t_dtypes == {torch.float32}
    # float32 follows float64 to float32 precision relative to the prior's scale (sigma_max = 50)
    torch.testing.assert_close(r32.x.double(), r64.x, rtol=1e-4, atol=1e-4 * sde.prior_std)


@pytest.mark.parametrize("method,stochastic", ALL, ids=ALL_IDS)
def test_event_shapes(method, stochastic):
    """A (batch, 3, 4, 4) state gives per sample what the flattened (batch, 48) state gives."""
    sde = sdekit.VPSDE()
    x = prior(sde, shape=(3, 3, 4, 4))
    img, _ = solve(method, sde=sde, x=x, stochastic=stochastic, steps=3)
    flat, _ = solve(method, sde=sde, x=x.reshape(3, 48), stochastic=stochastic, steps=3)
    assert img.x.shape == (3, 3, 4, 4)
    torch.testing.assert_close(img.x.reshape(3, 48), flat.x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method,stochastic", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("sde_name", ["VP", "VE"])
def test_score_asked_only_inside_the_span_at_shared_times(method, stochastic, sde_name):
    sde = sdes()[sde_name]
    sol, score = solve(method, sde=sde, stochastic=stochastic, steps=4, t_end=0.01)
    ts = torch.stack(score.times)
    assert float(ts.max()) <= sde.T and float(ts.min()) >= 0.01 - 1e-12
    assert bool((ts == ts[:, :1]).all()), "samples on one grid share their times"


# ------------------------------------------------------------------------------------------------
# edge cases: short grids, grids ending at eps, every schedule, both VE marginals
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dpm_solver_3", "dpmpp_3m", "unipc", "lms", "dpmpp_2m", "edm_heun", "ipndm",
                                    "dpm_solver_fast", "deis"])
@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("sde_name", ["VP", "VE", "VE-exact"])
def test_short_grids_finite(method, steps, sde_name):
    sde = sdes()[sde_name]
    for options in ({}, {"denoise": True}):
        sol, _ = solve(method, sde=sde, steps=steps, options=options)
        assert sol.success and torch.isfinite(sol.x).all()
        assert sol.steps == (steps // 3 + 1 if method == "dpm_solver_fast" else steps)   # its steps= is NFE


def test_three_steps_of_third_order_methods_improve_on_one():
    """Short grids lower the order at the end (lower_order_final) rather than extrapolate wildly."""
    sde = sdekit.VPSDE()
    x = prior(sde, shape=(50, 2))
    from sdekit.validation import GaussianData
    exact = GaussianData(torch.zeros(2), 0.5 * torch.eye(2), sde).flow_map(x, sde.T, sde.eps)
    for method in ("dpm_solver_3", "dpmpp_3m", "unipc"):
        errs = [float((solve(method, sde=sde, x=x, steps=n)[0].x - exact).abs().max()) for n in (1, 3, 10)]
        assert errs[0] > errs[1] > errs[2], f"{method}: errors {errs} at 1, 3, 10 steps"


@pytest.mark.parametrize("method", ODE_SAMPLERS)
@pytest.mark.parametrize("sde_name", ["VP", "subVP", "VE", "VE-exact"])
def test_every_schedule_finite(method, sde_name):
    sde = sdes()[sde_name]
    for schedule in SCHEDULES:
        for steps in (1, 2, 7):
            sol, _ = solve(method, sde=sde, steps=steps, schedule=schedule, options={"denoise": True})
            assert sol.success and torch.isfinite(sol.x).all(), f"{schedule}, {steps} steps"


def _stochastic_finite(method, sde_name, schedules, step_counts):
    sde = sdes()[sde_name]
    for schedule in schedules:
        for steps in step_counts:
            sol, _ = solve(method, sde=sde, steps=steps, schedule=schedule, stochastic=True, seed=steps)
            assert sol.success and torch.isfinite(sol.x).all(), f"{schedule}, {steps} steps"


@pytest.mark.parametrize("method", SDE_SAMPLERS)
@pytest.mark.parametrize("sde_name", ["VP", "subVP", "VE", "VE-exact"])
def test_short_grids_finite_stochastic(method, sde_name):
    _stochastic_finite(method, sde_name, (None,), (1, 2))


@pytest.mark.slow
@pytest.mark.parametrize("method", SDE_SAMPLERS)
@pytest.mark.parametrize("sde_name", ["VP", "subVP", "VE", "VE-exact"])
def test_every_schedule_finite_stochastic(method, sde_name):
    _stochastic_finite(method, sde_name, SCHEDULES, (1, 2, 7))


@pytest.mark.parametrize("method,stochastic", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("marginal", ["reference", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_ending_exactly_at_eps(method, stochastic, marginal, dtype):
    """VE at its default eps = 1e-5 (sigma 0.0013 with the exact marginal), a grid whose last time is eps."""
    sde = sdekit.VESDE(marginal=marginal)
    grid = torch.tensor([sde.T, 0.1, 1e-3, sde.eps], dtype=torch.float64)
    sol, score = solve(method, sde=sde, x=prior(sde, dtype=dtype), stochastic=stochastic, grid=grid,
                       options={"denoise": True})
    assert sol.success and sol.t == sde.eps and torch.isfinite(sol.x).all()
    assert min(float(t.min()) for t in score.times) == pytest.approx(sde.eps, rel=1e-6)


def test_tiny_eps_with_the_exact_ve_marginal():
    """sigma(t_end) = 1.4e-8: log-SNR 18; no overflow in the frames."""
    sde = sdekit.VESDE(marginal="exact", eps=1e-12)
    for method in ODE_SAMPLERS:
        sol, _ = solve(method, sde=sde, steps=6, options={"denoise": True})
        assert sol.success and torch.isfinite(sol.x).all(), method


# ------------------------------------------------------------------------------------------------
# time per sample: every stepper takes each sample's own (t, t_next)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", STEPPERS, ids=[c.name for c in STEPPERS])
def test_steppers_take_per_sample_times(cls):
    """Four samples on four different grids, stepped together, equal each sample stepped alone on its own
    grid (with its own keyed noise): the steppers are ready for per-sample adaptive stepping."""
    from sdekit._stepping import Model
    sde = sdekit.VPSDE()
    score = IsoScore(sde)
    batch, steps = 4, 5
    grids = torch.stack([torch.linspace(1.0 - 0.1 * i, 0.05 + 0.02 * i, steps + 1, dtype=torch.float64)
                         for i in range(batch)])
    x = prior(sde, shape=(batch, 2))
    stochastic = cls.kind == "sde"

    def run(xs, g, idx):
        make = sdekit.reverse if stochastic else sdekit.probability_flow
        proc = make(sde, score).replace(event_shape=(2,), t_min=sde.eps, t_max=sde.T)
        noise = (sdekit.KeyedBrownian(sde.eps, sde.T, tuple(xs.shape), seed=4, index=idx, dtype=xs.dtype)
                 if stochastic else None)
        stepper = cls(Model(proc, cls.name), noise, {})
        for j in range(steps):
            xs = stepper.step(xs, g[:, j].contiguous(), g[:, j + 1].contiguous(), j, steps)
        return xs

    together = run(x, grids, torch.arange(batch))
    alone = torch.cat([run(x[i:i + 1], grids[i:i + 1], torch.tensor([i])) for i in range(batch)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)
    assert not torch.allclose(together, x)
