"""The backends (torchsde, torchdiffeq, scipy) under hostile use: bad options and spans refused, loops that
always end, results whose time is the time of their state, noise that covers its solve, honest method labels."""

import contextlib
import math
import signal
import warnings

import pytest
import torch

import sdekit
import sdekit.validation
from sdekit._methods import Problem, lookup
from sdekit.validation.orders import strong_order, weak_order

pytestmark = pytest.mark.usefixtures("single_thread")

SDE = sdekit.VPSDE()


def _standard(x, t):
    return -x


def _x(n=8, d=2, dtype=torch.float64, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _steep(x, t):
    """A score under which the VP flow moves (with -x, the score of N(0, I) data, dx/dt = 0 for VP)."""
    return -2 * x


def _nan_below(t_bad, row, score=_standard):
    """A score that returns NaN for sample ``row`` at times below ``t_bad``."""
    def fn(x, t):
        out = score(x, t)
        hit = ((t < t_bad) & (torch.arange(len(x)) == row)).reshape((-1,) + (1,) * (x.dim() - 1))
        return torch.where(hit, torch.full_like(out, float("nan")), out)
    return fn


class BrownianSDE(sdekit.SDE):
    """dx = dW: Euler–Maruyama is exact, so the solution is x0 plus the Brownian path itself."""

    def f(self, t, x):
        return torch.zeros_like(x)

    def g(self, t, x):
        return torch.ones_like(t)


# ---------------------------------------------------------------------------------------------
# 1. Arguments: refused with an SDEKitError, never a hang
# ---------------------------------------------------------------------------------------------

def test_adaptive_torchsde_refuses_a_span_it_cannot_resolve():
    rev = sdekit.reverse(SDE, _standard)
    with pytest.raises(sdekit.InvalidParameterError, match="too short"):
        rev.solve(_x(), method="euler", rtol=1e-3, t_start=0.5, t_end=0.5 - 1e-16, seed=0)
    ok = rev.solve(_x(), method="euler", rtol=1e-3, t_start=0.5, t_end=0.5 - 1e-6, seed=0)
    assert ok.success


@pytest.mark.parametrize("method, kind, stepping", [
    ("euler", "sde", dict(steps=4)), ("milstein", "sde", dict(rtol=1e-3)), ("dopri5", "ode", {}),
    ("rk4", "ode", dict(steps=4)), ("RK45", "ode", {}), ("Radau", "ode", {}),
])
def test_unknown_options_are_refused_naming_the_ones_taken(method, kind, stepping):
    proc = (sdekit.reverse if kind == "sde" else sdekit.probability_flow)(SDE, _standard)
    m = lookup(method, kind)
    takes = ", ".join(m.options) if m.options else "none"
    with pytest.raises(sdekit.MethodArgumentError, match=f"bogus.*it takes: {takes}$"):
        proc.solve(_x(), method=method, options=dict(bogus=1), **stepping)


@pytest.mark.parametrize("method, kind, options", [
    ("milstein", "sde", dict(grad_free=True)), ("dopri5", "ode", dict(max_step=0.1, first_step=0.01)),
    ("bosh3", "ode", dict(step_t=[0.5])), ("rk4", "ode", dict(perturb=False)), ("RK45", "ode", dict(max_step=0.2)),
    ("LSODA", "ode", dict(min_step=1e-12)),
])
def test_the_options_a_method_lists_are_taken(method, kind, options):
    proc = (sdekit.reverse if kind == "sde" else sdekit.probability_flow)(SDE, _standard)
    stepping = dict(steps=8) if lookup(method, kind).stepping == "fixed" else dict(rtol=1e-4)
    assert set(options) <= set(lookup(method, kind).options)
    assert proc.solve(_x(), method=method, options=options, seed=0 if kind == "sde" else None, **stepping).success


def test_every_backend_method_lists_its_options():
    for m in sdekit.methods():
        if m.backend in ("torchsde", "torchdiffeq", "scipy"):
            assert isinstance(m.options, tuple), m.name
            assert m.error_estimate == (m.stepping != "fixed"), m.name


def _direct(method, kind, x, **problem):
    """Run a registered method on a bound process directly, past solve()'s own argument checks."""
    proc = (sdekit.reverse if kind == "sde" else sdekit.probability_flow)(SDE, _counting_score())
    bound = proc.replace(event_shape=tuple(x.shape[1:]), t_min=SDE.eps, t_max=SDE.T,
                         sde_type=lookup(method, kind).sde_type or "ito")
    m = lookup(method, kind)
    pb = Problem(process=bound, x0=x, t_start=SDE.T, t_end=SDE.eps, rtol=1e-5, atol=1e-5, **problem)
    return m.integrate(m, pb), proc.fn


def _counting_score(limit=20000):
    def fn(x, t):
        fn.calls += 1
        if fn.calls > limit:
            raise RuntimeError("the method never stops calling the score")
        if not bool(torch.isfinite(t).all()):
            fn.nan_times += 1
        return -x
    fn.calls = fn.nan_times = 0
    return fn


@contextlib.contextmanager
def _deadline(seconds=60):
    """Fail, rather than hang, if the block does not return within ``seconds``."""
    def stop(*_):
        raise TimeoutError(f"did not return within {seconds} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_scipy_with_a_nan_first_step_stops_instead_of_looping():
    with _deadline():
        out, score = _direct("RK45", "ode", _x(), dt0=float("nan"))
    assert out.result is sdekit.Result.DT_TOO_SMALL and out.t == SDE.T
    assert score.nan_times == 0 and score.calls < 10


def test_scipy_first_step_longer_than_the_span_is_shortened():
    out, _ = _direct("RK45", "ode", _x(), dt0=5.0)
    assert out.result is sdekit.Result.SUCCESS and out.t == SDE.eps


def test_torchsde_adaptive_refuses_a_first_step_that_is_not_positive():
    for dt0 in (float("nan"), 0.0, -0.1):
        with _deadline(), pytest.raises(sdekit.InvalidParameterError, match="first step"):
            _direct("euler", "sde", _x(), dt0=dt0, seed=0)


# ---------------------------------------------------------------------------------------------
# 2. A result says what really happened
# ---------------------------------------------------------------------------------------------

def test_fixed_torchsde_failure_returns_the_time_of_its_state():
    """Fixed steps run to the end of the grid: the finite rows are samples at t_end, the failed row is non-finite."""
    rev_bad = sdekit.reverse(SDE, _nan_below(0.5, row=3))
    sol = rev_bad.solve(_x(), method="euler", steps=20, seed=5, throw=False)
    clean = sdekit.reverse(SDE, _standard).solve(_x(), method="euler", steps=20, seed=5)
    assert sol.result is sdekit.Result.NON_FINITE and sol.t == SDE.eps
    assert not bool(torch.isfinite(sol.x[3]).any())
    keep = torch.arange(8) != 3
    torch.testing.assert_close(sol.x[keep], clean.x[keep], rtol=0, atol=0)


def test_dopri5_failure_returns_the_time_of_its_state():
    """The state returned is the clean solution at the time returned (to dopri5's accuracy)."""
    pf = sdekit.probability_flow(SDE, _nan_below(0.5, row=3, score=_steep))
    sol = pf.solve(_x(), method="dopri5", throw=False)
    assert sol.result is not sdekit.Result.SUCCESS and 0.5 <= sol.t < SDE.T
    clean = sdekit.probability_flow(SDE, _steep).solve(_x(), method="dopri5", t_end=sol.t, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sol.x, clean.x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method, stepping", [("dopri5", {}), ("bosh3", {}), ("rk4", dict(steps=40))])
def test_torchdiffeq_keeps_the_save_points_reached_before_a_failure(method, stepping):
    saves = [0.9, 0.7, 0.3]
    bad = sdekit.probability_flow(SDE, _nan_below(0.5, row=3, score=_steep)).solve(
        _x(), method=method, save_at=saves, throw=False, **stepping)
    clean = sdekit.probability_flow(SDE, _steep).solve(_x(), method=method, save_at=saves, **stepping)
    assert bad.result is sdekit.Result.NON_FINITE
    reached = 2 if method != "rk4" else 3   # fixed steps run to the end (row 3 non-finite at 0.3)
    assert bad.path is not None and len(bad.path) == reached
    torch.testing.assert_close(bad.ts, clean.ts[:reached])
    torch.testing.assert_close(bad.path[:2], clean.path[:2], rtol=0, atol=0)


def test_adding_save_at_keeps_torchdiffeq_within_its_tolerance():
    """Each save time ends an odeint call (so it survives a later failure); the result moves by its tolerance."""
    pf = sdekit.probability_flow(SDE, _steep)
    reference = pf.solve(_x(), method="dopri5", rtol=1e-10, atol=1e-10).x
    for kw in ({}, dict(save_at=[0.8, 0.5, 0.2])):
        torch.testing.assert_close(pf.solve(_x(), method="dopri5", **kw).x, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method, stepping", [("dopri5", {}), ("rk4", dict(steps=10))])
def test_an_assertion_inside_the_score_reaches_the_user(method, stepping):
    def score(x, t):
        if float(t.min()) < 0.5:
            raise AssertionError("the user's own check")
        return -x
    with pytest.raises(AssertionError, match="the user's own check"):
        sdekit.probability_flow(SDE, score).solve(_x(), method=method, throw=False, **stepping)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_dopri5_never_asks_for_a_nan_time(dtype):
    gm = sdekit.validation.GaussianMixture.default_2d(SDE)
    seen = []

    def score(x, t):
        seen.append(bool(torch.isfinite(t).all()))
        return gm.score(x.double(), t.double()).to(x.dtype)
    sol = sdekit.probability_flow(SDE, score).solve(_x(64, dtype=torch.float32).to(dtype), method="dopri5",
                                                     throw=False)
    assert all(seen) and sol.success and sol.x.dtype == dtype


def test_a_tiny_first_step_is_not_blamed_on_the_score():
    rev = sdekit.reverse(SDE, _standard)
    sol = rev.solve(_x(dtype=torch.float32), method="euler", rtol=1e-3, dt=1e-300, seed=0, throw=False)
    assert sol.success
    sol = sdekit.probability_flow(SDE, _standard).solve(_x(), method="dopri5", dt=1e-300, throw=False)
    assert sol.result is sdekit.Result.DT_TOO_SMALL and "score_fn" not in sol.detail


class _NanDiffusion(sdekit.VPSDE):
    def g(self, t, x):
        return torch.where(t < 0.5, torch.full_like(t, float("nan")), super().g(t, x))


@pytest.mark.parametrize("method, stepping", [("dopri5", {}), ("rk4", dict(steps=20)), ("RK45", {})])
def test_a_nan_diffusion_is_not_blamed_on_the_score(method, stepping):
    sol = sdekit.probability_flow(_NanDiffusion(), _standard).solve(_x(), method=method, throw=False, **stepping)
    assert sol.result is not sdekit.Result.SUCCESS
    assert "score_fn returned non-finite" not in sol.detail


# ---------------------------------------------------------------------------------------------
# 5. Noise
# ---------------------------------------------------------------------------------------------

def test_noise_that_does_not_cover_the_span_is_refused():
    rev = sdekit.reverse(SDE, _standard)
    short = sdekit.brownian_motion(0.0, 0.5, (8, 2), dtype=torch.float64, seed=1)
    with pytest.raises(sdekit.InvalidParameterError, match="covers"):
        rev.solve(_x(), method="euler", steps=10, noise=short)
    whole = sdekit.brownian_motion(0.0, SDE.T - SDE.eps, (8, 2), dtype=torch.float64, seed=1)
    assert rev.solve(_x(), method="euler", steps=10, noise=whole).success


def test_noise_of_another_dtype_is_refused():
    rev = sdekit.reverse(SDE, _standard)
    bm = sdekit.brownian_motion(0.0, SDE.T - SDE.eps, (8, 2), dtype=torch.float64, seed=1)
    with pytest.raises(sdekit.ShapeError, match="dtype"):
        rev.solve(_x(dtype=torch.float32), method="euler", steps=10, noise=bm)


def test_save_at_does_not_change_the_brownian_path():
    """dx = dW under Euler is x0 + W: the path at a grid time is the same with or without an extra save time."""
    fwd = sdekit.forward(BrownianSDE())
    grid = torch.linspace(0.0, 1.0, 161, dtype=torch.float64)
    x0 = torch.zeros(4, 3, dtype=torch.float64)
    on = float(grid[128])
    plain = fwd.solve(x0, method="euler", grid=grid, save_at=[on], seed=3)
    extra = fwd.solve(x0, method="euler", grid=grid, save_at=[0.1 + 1e-9, on], seed=3)
    # equal but for the rounding of one increment summed in two parts
    torch.testing.assert_close(extra.path[-1], plain.path[-1], rtol=0, atol=1e-14)
    torch.testing.assert_close(extra.x, plain.x, rtol=0, atol=1e-14)


def test_keyed_noise_keeps_samples_under_a_save_time_off_the_grid():
    """torchsde's Brownian interval splits where it is queried; sdekit's keyed noise is queried, not split."""
    gm = sdekit.validation.GaussianMixture.default_2d(SDE)
    rev = sdekit.reverse(SDE, gm.score)
    x = _x(32)
    grid = torch.linspace(SDE.T, SDE.eps, 41, dtype=torch.float64)
    off = math.nextafter(float(grid[20]), 0.0)   # one ulp off a grid time

    def keyed():
        return sdekit.KeyedBrownian(SDE.eps, SDE.T, x.shape, seed=4, dtype=torch.float64)
    plain = rev.solve(x, method="euler", grid=grid, noise=keyed())
    saved = rev.solve(x, method="euler", grid=grid, save_at=[off], noise=keyed())
    # the extra step is one ulp long: its Brownian increment, ~1e-8, moves the drift's argument, nothing else
    torch.testing.assert_close(saved.x, plain.x, rtol=0, atol=1e-6)
    assert rev.solve(x, method="heun", grid=grid, noise=keyed()).success
    with pytest.raises(sdekit.MethodArgumentError, match="levy_area"):
        rev.solve(x, method="srk", grid=grid, noise=keyed())
    with pytest.raises(sdekit.InvalidParameterError, match="covers"):
        rev.solve(x, method="euler", grid=grid, noise=sdekit.KeyedBrownian(0.5, SDE.T, x.shape, seed=4))


def test_seed_fixes_the_path_by_seed_and_span_alone():
    """seed= on a torchsde method without Lévy area reads the keyed path: a save time one ulp off the grid, another
    grid, another batch: the same path, so dx = dW ends at W(1) and the reverse mixture sampler keeps its samples."""
    gm = sdekit.validation.GaussianMixture.default_2d(SDE)
    rev = sdekit.reverse(SDE, gm.score)
    x = _x(32)
    grid = torch.linspace(SDE.T, SDE.eps, 41, dtype=torch.float64)
    off = math.nextafter(float(grid[20]), 0.0)
    plain = rev.solve(x, method="euler", grid=grid, seed=4)
    saved = rev.solve(x, method="euler", grid=grid, save_at=[off], seed=4)
    torch.testing.assert_close(saved.x, plain.x, rtol=0, atol=1e-6)   # the one-ulp step moves nothing more
    fewer = rev.solve(x[:5], method="euler", grid=grid, seed=4)
    torch.testing.assert_close(fewer.x, plain.x[:5], rtol=0, atol=0)   # a sample does not depend on its batch

    fwd = sdekit.forward(BrownianSDE())
    x0 = torch.zeros(6, 3, dtype=torch.float64)
    ends = [fwd.solve(x0, method=m, grid=g, seed=9).x
            for m in ("euler", "heun")
            for g in (torch.linspace(0.0, 1.0, 11, dtype=torch.float64),
                      torch.linspace(0.0, 1.0, 38, dtype=torch.float64),
                      torch.linspace(0.0, 1.0, 26, dtype=torch.float64) ** 3)]
    for end in ends[1:]:
        torch.testing.assert_close(end, ends[0], rtol=0, atol=1e-12)      # W(1), whatever the grid and method
    assert float(ends[0].std()) > 0.3


def test_save_times_on_the_grid_leave_every_sample_unchanged():
    gm = sdekit.validation.GaussianMixture.default_2d(SDE)
    rev = sdekit.reverse(SDE, gm.score)
    x = _x(64)
    grid = torch.linspace(SDE.T, SDE.eps, 301, dtype=torch.float64)
    plain = rev.solve(x, method="euler", grid=grid, seed=11)
    saved = rev.solve(x, method="euler", grid=grid, save_at=grid[[50, 100, 250]], seed=11)
    torch.testing.assert_close(saved.x, plain.x, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# 6. Autograd and memory
# ---------------------------------------------------------------------------------------------

def test_implicit_scipy_methods_refuse_a_jacobian_that_does_not_fit():
    pf = sdekit.probability_flow(SDE, _standard)
    for method in ("Radau", "LSODA"):
        with pytest.raises(sdekit.MethodArgumentError, match=r"Jacobian of \d+ MiB"):
            pf.solve(torch.randn(4, 3, 16, 16), method=method)
    assert pf.solve(_x(4, 8), method="Radau").success


def test_scipy_refuses_an_input_that_requires_grad():
    x = _x().requires_grad_(True)
    with pytest.raises(sdekit.MethodArgumentError, match="torchdiffeq"):
        sdekit.probability_flow(SDE, _standard).solve(x, method="RK45")
    m = lookup("RK45", "ode")
    bound = sdekit.probability_flow(SDE, _standard).replace(event_shape=(2,), t_min=SDE.eps, t_max=SDE.T)
    with pytest.raises(sdekit.MethodArgumentError, match="torchdiffeq"):
        m.integrate(m, Problem(process=bound, x0=x, t_start=SDE.T, t_end=SDE.eps, rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize("method, stepping", [("dopri5", {}), ("bosh3", dict(save_at=[0.5])),
                                              ("rk4", dict(steps=5))])
@pytest.mark.parametrize("grad", [False, True])
def test_torchdiffeq_solves_warn_nothing(method, stepping, grad):
    """A score with parameters makes torchdiffeq's step sizes require grad; reading them must not warn."""
    weight = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def score(x, t):
        return -weight * x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extra = dict(grad=True) if grad else {}
        sol = sdekit.probability_flow(SDE, score).solve(_x(), method=method, **extra, **stepping)
    assert sol.success and sol.x.requires_grad == grad


# ---------------------------------------------------------------------------------------------
# 7. Methods that mislead
# ---------------------------------------------------------------------------------------------

def test_reversible_heun_warns_on_a_reverse_sde_and_says_so():
    m = lookup("reversible_heun", "sde")
    assert "not dissipative" in m.description
    with pytest.warns(UserWarning, match="not dissipative") as caught:
        sdekit.reverse(SDE, _standard).solve(_x(), method="reversible_heun", steps=10, seed=0)
    assert caught[0].filename == __file__   # pointed at the caller, not at sdekit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sdekit.forward(SDE).solve(_x(), method="reversible_heun", steps=10, seed=0)
        sdekit.probability_flow(SDE, _standard).solve(_x(), method="reversible_heun", steps=10)


def test_reversible_heun_declares_the_strong_order_it_measures():
    m = lookup("reversible_heun", "sde")
    r = strong_order("reversible_heun", "gbm", ks=range(4, 9), batch=500)
    assert abs(r.measured - m.order) <= 0.3


@pytest.mark.parametrize("method", ["milstein", "euler_heun"])
def test_declared_weak_orders_are_measured(method):
    declared = lookup(method, "sde").weak_order
    rows = weak_order(method, steps=(8, 16, 32, 64), batch=4000, reference_steps=256, seed=0)
    for r in rows:
        # each bias is at least 3 standard errors from zero at every step count: the fitted slope is the order's
        assert all(abs(b) > 3 * s for b, s in zip(r.extra["bias"], r.extra["stderr"]))
        assert abs(r.measured - declared) <= 0.3, r


def test_unmeasured_weak_orders_are_not_declared():
    measured = {"euler", "milstein", "euler_heun"}
    for m in sdekit.methods(backend="torchsde"):
        assert (m.weak_order is not None) == (m.name in measured), m.name
    assert math.isclose(lookup("euler", "sde").weak_order, 1.0)
