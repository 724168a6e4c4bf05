"""solve(): every registered method, counting, results and errors, reproducibility, save_at, dtypes."""

import re

import pytest
import torch

import sdekit

pytestmark = pytest.mark.usefixtures("single_thread")

ALL = list(sdekit.methods())
SDE_METHODS = [m for m in ALL if m.kind == "sde"]
ADAPTIVE_SDE_METHODS = [m for m in SDE_METHODS if m.adaptive]
SDE_METHODS_ON_FLOW = [m for m in SDE_METHODS if "ode" in m.accepts and m.stepping != "adaptive"]  # steps=
TORCHSDE_METHODS = [m for m in SDE_METHODS if m.backend == "torchsde"]
ODE_METHODS = [m for m in ALL if m.kind == "ode"]
N_STEPS = 8


def _setup(gaussian, sde=None, n=6, event=(3, 2), dtype=torch.float64, seed=0):
    sde = sde or sdekit.VPSDE()
    g = torch.Generator().manual_seed(100 + seed)
    mu = torch.randn(event, generator=g, dtype=torch.float64)
    var = 0.2 + torch.rand(event, generator=g, dtype=torch.float64)
    data = gaussian.under(sde, mu, var=var)
    x = data.sample(sde.T, n, torch.Generator().manual_seed(seed), dtype=dtype)
    return sde, data, x


def _fixed_kwargs(m):
    """Fixed steps, or a tolerance: 1e-5 for an ODE pair, 1e-2 for a strong-order-1/2 SDE pair (1e-5 would take
    about 1e10 steps)."""
    if m.stepping != "adaptive":
        return dict(steps=N_STEPS)
    tol = 1e-2 if m.kind == "sde" else 1e-5
    return dict(rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# Every registered method
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", ALL, ids=[m.qualified_name for m in ALL])
def test_every_method_runs_and_counts(gaussian, recorder, m):
    sde, data, x = _setup(gaussian)
    rec = recorder(data.score)
    proc = sdekit.reverse(sde, rec) if m.kind == "sde" else sdekit.probability_flow(sde, rec)
    kw = _fixed_kwargs(m)
    if m.kind == "sde":
        kw["seed"] = 0
    sol = proc.solve(x, method=m.qualified_name, **kw)
    assert isinstance(sol, sdekit.Solution)
    assert sol.success and sol.result is sdekit.Result.SUCCESS
    assert sol.x.shape == x.shape and sol.x.dtype == x.dtype and sol.x.device == x.device
    assert bool(torch.isfinite(sol.x).all())
    assert sol.t == sde.eps
    assert sol.method == m.name and sol.backend == m.backend
    assert sol.nfe > 0
    assert sol.nfe == rec.calls, "nfe must count every score evaluation, start-up calls included"
    if m.stepping != "adaptive":   # dpm_solver_fast: steps= is a budget of evaluations, spent on fewer steps
        assert sol.steps == (m.grid_steps(N_STEPS) if m.grid_steps else N_STEPS) and sol.rejected == 0
    else:
        assert sol.steps is not None and sol.steps >= 1
    assert sol.wall_time >= 0
    assert sol.ts is None and sol.path is None
    assert isinstance(repr(sol), str) and m.name in repr(sol)


@pytest.mark.parametrize("m", ADAPTIVE_SDE_METHODS, ids=[m.name for m in ADAPTIVE_SDE_METHODS])
def test_sde_methods_adaptive(gaussian, recorder, m):
    sde, data, x = _setup(gaussian)
    rec = recorder(data.score)
    sol = sdekit.reverse(sde, rec).solve(x, method=m.qualified_name, rtol=1e-2, atol=1e-2, seed=1)
    assert sol.success and sol.x.shape == x.shape and bool(torch.isfinite(sol.x).all())
    assert sol.nfe == rec.calls > 0
    assert sol.steps >= 1 and sol.rejected is not None
    assert rec.t_min >= sde.eps and rec.t_max <= sde.T


#: Largest |x - exact flow map| of each SDE method on the VP probability flow of ``_setup`` with 200 steps,
#: measured (float64; |x| ~ 1).  A method is held to MARGIN times its own measured error, so a regression
#: of more than MARGIN fails; a method without an entry is held to MARGIN times Euler's (first order).
FLOW_ERRORS_200 = {
    "torchsde.euler": 1.84e-3, "torchsde.milstein": 1.84e-3, "torchsde.euler_heun": 1.84e-3,
    "torchsde.srk": 2.14e-7, "torchsde.heun": 7.43e-5, "torchsde.reversible_heun": 7.46e-5,
    "torchsde.midpoint": 2.83e-5, "torchsde.log_ode": 2.83e-5,
    "sdekit.ddim": 2.04e-2,   # first order in log-SNR on a uniform grid in t: large log-SNR steps near eps
}
MARGIN = 10.0


@pytest.mark.parametrize("m", SDE_METHODS_ON_FLOW, ids=[m.qualified_name for m in SDE_METHODS_ON_FLOW])
def test_sde_methods_on_probability_flow_are_deterministic(gaussian, m):
    """An SDE method takes the probability-flow ODE (zero noise) from T down: the seed does not matter,
    and the result is as close to the exact flow map as the method's measured error allows (x MARGIN)."""
    sde, data, x = _setup(gaussian)
    pf = sdekit.probability_flow(sde, data.score)
    a = pf.solve(x, method=m.qualified_name, steps=200, seed=1)
    b = pf.solve(x, method=m.qualified_name, steps=200, seed=2)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-12)
    exact = data.flow_map(x, sde.T, sde.eps)
    measured = FLOW_ERRORS_200.get(m.qualified_name, FLOW_ERRORS_200["torchsde.euler"])
    error = float((a.x - exact).abs().max())
    assert error < MARGIN * measured, f"{m.qualified_name}: error {error:.3g}, measured {measured:.3g}"


@pytest.mark.parametrize("m", TORCHSDE_METHODS, ids=[m.name for m in TORCHSDE_METHODS])
def test_torchsde_methods_refuse_flow_upwards(gaussian, m):
    sde, data, x = _setup(gaussian)
    pf = sdekit.probability_flow(sde, data.score)
    with pytest.raises(sdekit.MethodArgumentError):
        pf.solve(x, method=m.qualified_name, steps=4, t_start=sde.eps, t_end=sde.T)


def test_ode_methods_integrate_flow_upwards(gaussian):
    """ODE methods run the flow from eps up to T too: the inverse map of the closed-form flow."""
    sde, data, x = _setup(gaussian)
    x_eps = data.flow_map(x, sde.T, sde.eps)
    pf = sdekit.probability_flow(sde, data.score)
    for method, kw in [("dopri5", dict(rtol=1e-9, atol=1e-9)), ("RK45", dict(rtol=1e-9, atol=1e-9)),
                       ("rk4", dict(steps=400))]:
        sol = pf.solve(x_eps, method=method, t_start=sde.eps, t_end=sde.T, **kw)
        assert sol.t == sde.T
        torch.testing.assert_close(sol.x, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("m", ODE_METHODS, ids=[m.qualified_name for m in ODE_METHODS])
def test_ode_methods_refuse_reverse_sde(gaussian, m):
    sde, data, x = _setup(gaussian)
    with pytest.raises(sdekit.MethodArgumentError) as info:
        sdekit.reverse(sde, data.score).solve(x, method=m.qualified_name, **_fixed_kwargs(m))
    assert "probability_flow" in str(info.value)


def test_short_names_resolve_by_process_kind(gaussian):
    sde, data, x = _setup(gaussian)
    assert sdekit.reverse(sde, data.score).solve(x, method="euler", steps=3, seed=0).backend == "torchsde"
    assert sdekit.probability_flow(sde, data.score).solve(x, method="euler", steps=3).backend == "torchdiffeq"
    assert sdekit.probability_flow(sde, data.score).solve(x, method="midpoint", steps=3).backend == "torchdiffeq"
    assert sdekit.reverse(sde, data.score).solve(x, method="midpoint", steps=3, seed=0).backend == "torchsde"
    # defaults: euler for SDEs, dopri5 for ODEs
    assert sdekit.reverse(sde, data.score).solve(x, steps=3, seed=0).method == "euler"
    assert sdekit.probability_flow(sde, data.score).solve(x).method == "dopri5"


def test_nfe_counts_network_evaluations_per_call(gaussian, recorder):
    """A function that evaluates its network twice per call (classifier-free guidance) says nfe_per_call = 2."""
    sde, data, x = _setup(gaussian)
    rec = recorder(data.score)

    def guided(x, t):
        return rec(x, t)

    guided.nfe_per_call = 2
    sol = sdekit.probability_flow(sde, guided).solve(x, method="rk4", steps=5)
    assert rec.calls == 20 and sol.nfe == 40


def test_forward_sde_solve():
    """forward(sde) runs 0 -> T; NFE counts drift evaluations; the forward clock refuses T -> eps."""
    sde = sdekit.VESDE(sigma_min=0.1, sigma_max=2.0)
    x0 = torch.zeros(4, 3, dtype=torch.float64)
    sol = sdekit.forward(sde).solve(x0, method="euler", steps=10, seed=0)
    assert sol.t == sde.T and sol.nfe == 10 and sol.x.shape == x0.shape
    with pytest.raises(sdekit.InvalidParameterError):
        sdekit.forward(sde).solve(x0, method="euler", steps=10, t_start=1.0, t_end=0.5)
    with pytest.raises(sdekit.InvalidParameterError):
        sdekit.reverse(sde, lambda x, t: -x).solve(x0, method="euler", steps=10, t_start=0.5, t_end=1.0)


def test_solve_function_entry_point(gaussian):
    sde, data, x = _setup(gaussian)
    pf = sdekit.probability_flow(sde, data.score)
    a = sdekit.solve(pf, x, method="rk4", steps=5)
    b = pf.solve(x, method="rk4", steps=5)
    assert torch.equal(a.x, b.x)
    with pytest.raises(TypeError):
        sdekit.solve(data.score, x, method="rk4", steps=5)


# ---------------------------------------------------------------------------------------------
# Score function errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,why", [
    (lambda x, t: x[:, :1], "shape"),
    (lambda x, t: x.to(torch.float32), "dtype"),
    (lambda x, t: x.numpy(), "ndarray"),
    (lambda x, t: 0.0, "float"),
], ids=["shape", "dtype", "numpy", "float"])
@pytest.mark.parametrize("kind,method,kw", [("sde", "euler", dict(steps=3, seed=0)), ("ode", "rk4", dict(steps=3)),
                                            ("ode", "dopri5", {}), ("ode", "RK45", {})])
def test_bad_score_output_raises(bad, why, kind, method, kw):
    sde = sdekit.VPSDE()
    x = sde.prior_sampling((4, 2), dtype=torch.float64)
    proc = sdekit.reverse(sde, bad) if kind == "sde" else sdekit.probability_flow(sde, bad)
    with pytest.raises(sdekit.ScoreFunctionError) as info:
        proc.solve(x, method=method, **kw)
    assert isinstance(info.value, TypeError) and isinstance(info.value, sdekit.SDEKitError)
    assert "score_fn" in str(info.value)


def _nan_below_half(data):
    def score(x, t):
        out = data.score(x, t)
        bad = (t < 0.5).reshape((-1,) + (1,) * (x.dim() - 1))
        return torch.where(bad, torch.full_like(out, float("nan")), out)
    return score


_MSG = re.compile(r"t=([0-9.eE+-]+) \(step (\d+)")


@pytest.mark.parametrize("kind,method,kw", [
    ("sde", "euler", dict(steps=10, seed=0)), ("sde", "srk", dict(steps=10, seed=0)),
    ("sde", "heun", dict(steps=10, seed=0)), ("ode", "rk4", dict(steps=10)), ("ode", "euler", dict(steps=10)),
    ("ode", "dopri5", dict(rtol=1e-6, atol=1e-6)), ("ode", "RK45", dict(rtol=1e-6, atol=1e-6)),
    ("sde", "euler", dict(rtol=1e-2, atol=1e-2, seed=0)),
], ids=["euler", "srk", "heun", "rk4", "ode-euler", "dopri5", "RK45", "euler-adaptive"])
def test_non_finite_score(gaussian, kind, method, kw):
    sde, data, x = _setup(gaussian)
    make = sdekit.reverse if kind == "sde" else sdekit.probability_flow
    with pytest.raises(sdekit.SolveError) as info:
        make(sde, _nan_below_half(data)).solve(x, method=method, **kw)
    msg = str(info.value)
    found = _MSG.search(msg)
    assert found, f"the message must name the time and step: {msg}"
    t_bad, step = float(found.group(1)), int(found.group(2))
    assert sde.eps <= t_bad < 0.5
    assert step >= 1
    if "steps" in kw:
        # fixed grid T -> eps in 10 equal steps: the step whose interval [t_k+1, t_k] holds t_bad
        grid = sdekit.uniform_grid(sde.T, sde.eps, 10)
        containing = [k + 1 for k in range(10) if float(grid[k + 1]) - 1e-9 <= t_bad <= float(grid[k]) + 1e-9]
        assert step in containing, f"step {step} does not contain t={t_bad} (grid {grid.tolist()})"
        # and no score evaluation at t >= 0.5 was flagged: t_bad is the first evaluation below 0.5
    sol = info.value.solution
    assert sol is None or sol.result is sdekit.Result.NON_FINITE
    out = make(sde, _nan_below_half(data)).solve(x, method=method, throw=False, **kw)
    assert isinstance(out, sdekit.Solution)
    assert out.result is sdekit.Result.NON_FINITE and not out.success
    assert out.detail and "t=" in out.detail
    # t is the time of x: the end of a fixed grid (x went on to eps), or the last accepted step of an
    # adaptive method, which stops at the failure (the message gives t_bad to 6 significant digits, and the first
    # failing evaluation can be at that state's own time); every sample's score went NaN, so every sample failed
    assert out.t == sde.eps if "steps" in kw else t_bad <= float(f"{out.t:.6g}") and out.t < sde.T
    assert out.failed.shape == (x.shape[0],) and bool(out.failed.all())


def test_non_finite_first_time_for_fixed_euler(gaussian):
    """Euler evaluates at the grid points: the first flagged time is the first grid point below 0.5; the solve's
    t is the time of its x (the grid's end)."""
    sde, data, x = _setup(gaussian)
    grid = sdekit.uniform_grid(sde.T, sde.eps, 10)
    k = int((grid < 0.5).nonzero()[0])
    out = sdekit.reverse(sde, _nan_below_half(data)).solve(x, method="euler", steps=10, seed=0, throw=False)
    found = _MSG.search(out.detail)
    assert float(found.group(1)) == pytest.approx(float(grid[k]), abs=1e-6)
    assert f"step {k + 1}" in out.detail
    assert out.t == sde.eps


# ---------------------------------------------------------------------------------------------
# Method and argument errors
# ---------------------------------------------------------------------------------------------

def test_unknown_method_lists_valid_methods(gaussian):
    sde, data, x = _setup(gaussian)
    with pytest.raises(sdekit.UnknownMethodError) as info:
        sdekit.reverse(sde, data.score).solve(x, method="euler_maruyama_typo", steps=3)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    for m in ALL:
        assert m.name in msg and m.qualified_name in msg
    with pytest.raises(sdekit.UnknownMethodError):
        sdekit.probability_flow(sde, data.score).solve(x, method=42, steps=3)  # not a string


@pytest.mark.parametrize("kind,method,kw", [
    ("ode", "rk4", dict(rtol=1e-3)), ("ode", "rk4", dict(atol=1e-3)), ("ode", "rk4", dict(steps=3, dt=0.1)),
    ("ode", "rk4", {}), ("ode", "dopri5", dict(steps=10)), ("ode", "dopri5", dict(grid=[1.0, 0.5, 0.001])),
    ("ode", "RK45", dict(steps=10)), ("sde", "euler", dict(steps=10, rtol=1e-3)), ("sde", "euler", {}),
], ids=["rk4-rtol", "rk4-atol", "rk4-steps+dt", "rk4-nothing", "dopri5-steps", "dopri5-grid", "RK45-steps",
        "euler-steps+rtol", "euler-nothing"])
def test_stepping_arguments_checked(gaussian, kind, method, kw):
    sde, data, x = _setup(gaussian)
    make = sdekit.reverse if kind == "sde" else sdekit.probability_flow
    with pytest.raises(sdekit.MethodArgumentError) as info:
        make(sde, data.score).solve(x, method=method, **kw)
    assert isinstance(info.value, ValueError) and method in str(info.value)


@pytest.mark.parametrize("kw", [
    dict(steps=0), dict(steps=2.5), dict(dt=-0.1), dict(dt=0.0), dict(t_end=0.0), dict(t_start=1.5),
    dict(t_start=0.5, t_end=0.5), dict(seed=1, generator=torch.Generator()), dict(steps=5, max_steps=0),
    dict(steps=5, save_at=[2.0]), dict(steps=5, save_at=[0.5, 0.5]), dict(steps=5, save_at=[]),
])
def test_invalid_solve_arguments(gaussian, kw):
    sde, data, x = _setup(gaussian)
    kw = dict(kw)
    if "steps" not in kw and "dt" not in kw:
        kw["steps"] = 5
    with pytest.raises(sdekit.InvalidParameterError):
        sdekit.reverse(sde, data.score).solve(x, method="euler", **kw)


@pytest.mark.parametrize("x", [
    torch.zeros(0, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.int64),
    torch.tensor([[float("nan"), 0.0]], dtype=torch.float64),
], ids=["empty", "int", "nan"])
def test_invalid_initial_state(x):
    sde = sdekit.VPSDE()
    with pytest.raises(sdekit.ShapeError):
        sdekit.reverse(sde, lambda x, t: -x).solve(x, method="euler", steps=3, seed=0)
    with pytest.raises(TypeError):
        sdekit.reverse(sde, lambda x, t: -x).solve([[0.0, 1.0]], method="euler", steps=3, seed=0)


@pytest.mark.parametrize("kind,method,kw", [
    ("ode", "dopri5", dict(rtol=1e-9, atol=1e-9)), ("sde", "euler", dict(rtol=1e-3, atol=1e-3, seed=0)),
    ("ode", "RK45", dict(rtol=1e-9, atol=1e-9)), ("ode", "bosh3", dict(rtol=1e-9, atol=1e-9)),
    ("sde", "euler", dict(steps=50, seed=0)), ("ode", "rk4", dict(steps=50)),
], ids=["dopri5", "euler-adaptive", "RK45", "bosh3", "euler-fixed", "rk4-fixed"])
def test_max_steps(gaussian, kind, method, kw):
    sde, data, x = _setup(gaussian)
    make = sdekit.reverse if kind == "sde" else sdekit.probability_flow
    with pytest.raises(sdekit.SolveError) as info:
        make(sde, data.score).solve(x, method=method, max_steps=5, **kw)
    assert "max_steps" in str(info.value)
    err_sol = info.value.solution
    assert err_sol is not None and err_sol.result is sdekit.Result.MAX_STEPS
    sol = make(sde, data.score).solve(x, method=method, max_steps=5, throw=False, **kw)
    assert sol.result is sdekit.Result.MAX_STEPS and not sol.success
    assert sol.steps == 5
    assert sde.eps < sol.t < sde.T
    assert sol.x.shape == x.shape and sol.x.dtype == x.dtype and bool(torch.isfinite(sol.x).all())
    if "steps" in kw:
        assert sol.t == pytest.approx(float(sdekit.uniform_grid(sde.T, sde.eps, 50)[5]), abs=1e-14)
    if kind == "ode":
        # the state reached is the flow map's image at the time reached (up to the solver's error)
        exact = data.flow_map(x, sde.T, sol.t)
        torch.testing.assert_close(sol.x, exact, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Reproducibility and batch independence
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,kw", [("euler", dict(steps=20)), ("srk", dict(steps=10)), ("heun", dict(steps=10)),
                                       ("euler", dict(rtol=1e-2, atol=1e-2))],
                         ids=["euler", "srk", "heun", "euler-adaptive"])
def test_same_seed_same_samples(gaussian, method, kw):
    sde, data, x = _setup(gaussian, n=16)
    rev = sdekit.reverse(sde, data.score)
    a = rev.solve(x, method=method, seed=123, **kw).x
    b = rev.solve(x, method=method, seed=123, **kw).x
    c = rev.solve(x, method=method, seed=124, **kw).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    d = rev.solve(x, method=method, generator=g1, **kw).x
    e = rev.solve(x, method=method, generator=g2, **kw).x
    assert torch.equal(d, e)
    f = rev.solve(x, method=method, generator=g1, **kw).x  # the generator has advanced: new noise
    assert not torch.allclose(d, f)
    torch.manual_seed(5)
    h = rev.solve(x, method=method, **kw).x
    torch.manual_seed(5)
    i = rev.solve(x, method=method, **kw).x
    assert torch.equal(h, i)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_step_ode_batch_independence(gaussian, method):
    sde, data, x = _setup(gaussian, n=10)
    pf = sdekit.probability_flow(sde, data.score)
    whole = pf.solve(x, method=method, steps=12).x
    halves = torch.cat([pf.solve(x[:5], method=method, steps=12).x, pf.solve(x[5:], method=method, steps=12).x])
    torch.testing.assert_close(whole, halves, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# save_at
# ---------------------------------------------------------------------------------------------

SAVE = [1.0, 0.8, 0.55, 0.3, 0.001]


@pytest.mark.parametrize("method,kw,tol", [
    ("dopri5", dict(rtol=1e-9, atol=1e-9), 1e-6), ("RK45", dict(rtol=1e-9, atol=1e-9), 1e-6),
    ("DOP853", dict(rtol=1e-9, atol=1e-9), 1e-6), ("rk4", dict(steps=200), 1e-5),
    ("torchsde.heun", dict(steps=200), 1e-3),  # second order: error ~ h^2 = 2.5e-5 times the flow's stiffness
], ids=["dopri5", "RK45", "DOP853", "rk4", "torchsde-heun"])
def test_save_at_on_the_flow(gaussian, method, kw, tol):
    sde, data, x = _setup(gaussian)
    pf = sdekit.probability_flow(sde, data.score)
    sol = pf.solve(x, method=method, save_at=SAVE, **kw)
    assert sol.path.shape == (len(SAVE),) + x.shape
    assert sol.ts.dtype == torch.float64 and sol.ts.tolist() == SAVE
    assert torch.equal(sol.path[-1], sol.x)
    torch.testing.assert_close(sol.path[0], x, rtol=0, atol=0)
    for t, xs in zip(SAVE, sol.path):
        torch.testing.assert_close(xs, data.flow_map(x, sde.T, t), rtol=0, atol=tol)


def test_save_at_unordered_and_without_ends(gaussian):
    sde, data, x = _setup(gaussian)
    sol = sdekit.probability_flow(sde, data.score).solve(x, method="dopri5", save_at=[0.3, 0.9, 0.6])
    assert sol.ts.tolist() == [0.9, 0.6, 0.3]  # in the direction of integration
    assert sol.path.shape == (3,) + x.shape


def test_save_at_refines_fixed_grid(gaussian, recorder):
    """Save times off the grid are added to it: 10 steps + 2 off-grid times = 12 steps, and the states there
    are true grid states (equal to a solve that stops there), not interpolations."""
    sde, data, x = _setup(gaussian)
    save = [0.55, 0.33, sde.eps]
    pf = sdekit.probability_flow(sde, data.score)
    sol = pf.solve(x, method="rk4", steps=10, save_at=save)
    assert sol.steps == 12
    refined = sdekit.uniform_grid(sde.T, sde.eps, 10)
    refined = torch.cat([refined, torch.tensor([0.55, 0.33], dtype=torch.float64)]).sort(descending=True).values
    for t, xs in zip(save, sol.path):
        k = int((refined == t).nonzero()[0])
        partial = pf.solve(x, method="rk4", grid=refined[:k + 1])
        torch.testing.assert_close(xs, partial.x, rtol=0, atol=1e-14)
    # reverse SDE on torchsde, same Brownian path: the saved state equals a solve that stops there
    rev = sdekit.reverse(sde, data.score)
    d = x[0].numel()
    span = sde.T - sde.eps

    def bm():
        return sdekit.brownian_motion(0.0, span, (x.shape[0], d), dtype=x.dtype, seed=3)

    full = rev.solve(x, method="euler", steps=10, save_at=save, noise=bm())
    assert full.steps == 12 and full.path.shape == (3,) + x.shape
    assert torch.equal(full.path[-1], full.x)
    for t, xs in zip(save, full.path):
        k = int((refined == t).nonzero()[0])
        partial = rev.solve(x, method="euler", grid=refined[:k + 1], noise=bm())
        torch.testing.assert_close(xs, partial.x, rtol=0, atol=1e-12)


def test_save_at_adaptive_torchsde(gaussian):
    sde, data, x = _setup(gaussian)
    sol = sdekit.reverse(sde, data.score).solve(x, method="euler", rtol=1e-2, atol=1e-2, seed=0, save_at=SAVE)
    assert sol.path.shape == (len(SAVE),) + x.shape
    assert torch.equal(sol.path[0], x) and torch.equal(sol.path[-1], sol.x)
    assert sol.ts.tolist() == SAVE


# ---------------------------------------------------------------------------------------------
# dtypes and events
# ---------------------------------------------------------------------------------------------

#: Measured float32 errors of the ODE rows below (rk4 10 steps; the adaptive ones at rtol = atol = 1e-4).
FLOAT32_FLOW_ERRORS = {"rk4": 4.5e-5, "dopri5": 3.3e-4, "RK45": 1.3e-3, "LSODA": 4.5e-4}


@pytest.mark.parametrize("kind,method,kw", [
    ("sde", "euler", dict(steps=10, seed=0)), ("sde", "srk", dict(steps=10, seed=0)),
    ("sde", "heun", dict(steps=10, seed=0)), ("sde", "euler", dict(rtol=1e-2, atol=1e-2, seed=0)),
    ("ode", "rk4", dict(steps=10)), ("ode", "dopri5", dict(rtol=1e-4, atol=1e-4)),
    ("ode", "RK45", dict(rtol=1e-4, atol=1e-4)), ("ode", "LSODA", dict(rtol=1e-4, atol=1e-4)),
], ids=["euler", "srk", "heun", "euler-adaptive", "rk4", "dopri5", "RK45", "LSODA"])
def test_float32_state_stays_float32(gaussian, recorder, kind, method, kw):
    sde, data, x = _setup(gaussian, dtype=torch.float32)
    rec = recorder(data.score)
    make = sdekit.reverse if kind == "sde" else sdekit.probability_flow
    sol = make(sde, rec).solve(x, method=method, **kw)
    assert sol.x.dtype == torch.float32 and sol.x.shape == x.shape
    assert rec.x_dtypes == {torch.float32} and rec.t_dtypes == {torch.float32}
    assert bool(torch.isfinite(sol.x).all())
    if kind == "ode":   # float32 error against the exact flow map: MARGIN times the error measured for this method
        exact = data.flow_map(x.double(), sde.T, sde.eps)
        error = float((sol.x.double() - exact).abs().max())
        assert error < MARGIN * FLOAT32_FLOW_ERRORS[method], f"{method}: error {error:.3g}"


@pytest.mark.parametrize("event", [(2,), (3, 4, 4), (5, 2)])
@pytest.mark.parametrize("make", [sdekit.VPSDE, sdekit.SubVPSDE, sdekit.VESDE], ids=["VP", "subVP", "VE"])
def test_event_shapes_flow_map(gaussian, make, event):
    """Any event shape: the probability flow from T to eps matches the exact per-coordinate flow map."""
    sde, data, x = _setup(gaussian, sde=make(), event=event, n=3)
    sol = sdekit.probability_flow(sde, data.score).solve(x, method="dopri5", rtol=1e-8, atol=1e-8)
    exact = data.flow_map(x, sde.T, sde.eps)
    scale = 1.0 + float(x.abs().max())
    torch.testing.assert_close(sol.x, exact, rtol=0, atol=1e-5 * scale)
    rev = sdekit.reverse(sde, data.score).solve(x, method="srk", steps=5, seed=0)
    assert rev.x.shape == x.shape and bool(torch.isfinite(rev.x).all())


# ---------------------------------------------------------------------------------------------
# Adaptive stepping: every accepted step meets the tolerance
# ---------------------------------------------------------------------------------------------

ACCEPTING = [m for m in ALL if m.adaptive and "ode" in m.accepts]
_LOOSE_ESTIMATE = {"torchdiffeq.fehlberg2": "torchdiffeq's fehlberg2 estimates its error as h (f(t+h) - f(t)) / 512, "
                                            "far below its actual local error (docs/orders.md): it accepts steps "
                                            "about 140x over the tolerance"}


@pytest.mark.parametrize("m", [pytest.param(m, id=m.qualified_name, marks=[pytest.mark.xfail(
    strict=True, reason=_LOOSE_ESTIMATE[m.qualified_name])] if m.qualified_name in _LOOSE_ESTIMATE else [])
    for m in ACCEPTING])
def test_every_accepted_step_meets_the_tolerance(m):
    """Acceptance itself, on the probability flow (deterministic, exact flow map): the state after k accepted steps is
    the solve stopped by max_steps=k, so each accepted step [t_k-1, t_k] is compared with the exact map from the
    previous state.  Its local error, in the controllers' scaled RMS norm |e| / (atol + rtol |x|), must be at most
    2 (measured: at most 1.14 for every method but fehlberg2); a controller accepting 100x over the tolerance fails."""
    from sdekit.validation import GaussianData
    sde = sdekit.VPSDE()
    data = GaussianData([1.0, -0.5], [[0.5, 0.2], [0.2, 2.0]], sde)
    x = data.sample(4, t=sde.T, generator=torch.Generator().manual_seed(0))
    flow = sdekit.probability_flow(sde, data.score)
    tol = 1e-3
    kw = dict(method=m.qualified_name, rtol=tol, atol=tol, seed=0)
    full = flow.solve(x, **kw)
    assert full.steps >= 2
    t_prev, x_prev, worst = torch.full((4,), sde.T, dtype=torch.float64), x, 0.0
    for k in range(1, full.steps + 1):
        s = flow.solve(x, max_steps=k, throw=False, **kw)
        t_now = s.per_sample.t   # per-sample times (sdekit's adaptive methods step each sample on its own)
        local = data.flow_map(x_prev, t_prev, t_now) - s.x
        worst = max(worst, float((local / (tol + tol * s.x.abs())).pow(2).mean(1).sqrt().max()))
        t_prev, x_prev = t_now, s.x
    assert bool((t_prev == sde.eps).all()) and full.t == sde.eps
    assert worst <= 2.0, f"{m.qualified_name}: an accepted step has local error {worst:.3g} x the tolerance"
