"""Time grids: uniform in t, fixed dt, uniform in log-SNR, Karras rho; the log-SNR inverse; explicit grids in solve().

Property tests over random SDE parameters, spans and step counts check what every fixed-step method
relies on: float64, ``steps + 1`` times, endpoints exact, strictly monotone, finite, inside the span.
The schedule tests check each grid against its defining formula, computed here independently.  Every
fixed-step method takes an explicit grid.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sdekit
from sdekit import InvalidParameterError, LinearSDE

pytestmark = pytest.mark.usefixtures("single_thread")

PROPS = settings(deadline=None)
F64 = torch.float64
TIMES = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)


class CosineSDE(LinearSDE):
    """A linear SDE with no closed-form inverse: alpha = cos(0.45 pi t / T), sigma = sin(...); the fallback inverts it."""

    def log_alpha(self, t):
        return torch.log(torch.cos(0.45 * math.pi * t / self.T))

    def sigma(self, t):
        return torch.sin(0.45 * math.pi * t / self.T)


@st.composite
def sdes(draw, kinds=("vp", "subvp", "ve")):
    kind = draw(st.sampled_from(kinds))
    T = draw(st.floats(0.5, 2.0))
    eps = draw(st.floats(1e-5, 1e-2))
    if kind == "ve":
        return sdekit.VESDE(sigma_min=draw(st.floats(1e-3, 0.1)), sigma_max=draw(st.floats(5.0, 100.0)), T=T, eps=eps)
    if kind == "cosine":
        return CosineSDE(T=T, eps=eps)
    cls = sdekit.VPSDE if kind == "vp" else sdekit.SubVPSDE
    return cls(beta_min=draw(st.floats(0.01, 1.0)), beta_max=draw(st.floats(5.0, 30.0)), T=T, eps=eps)


@st.composite
def spans(draw, sde, low=None):
    """``(t_start, t_end)`` in ``[low, T]`` (default ``[eps, T]``), either direction, at least 1e-3 of it apart;
    or ``(None, None)``, the default ``T -> eps``."""
    if draw(st.booleans()) and low is None:
        return None, None
    low = sde.eps if low is None else low
    u, v = draw(st.floats(0.0, 1.0)), draw(st.floats(0.0, 1.0))
    assume(abs(u - v) >= 1e-3)
    return low + u * (sde.T - low), low + v * (sde.T - low)


def _t(x):
    return torch.as_tensor(x, dtype=F64)


def check_grid(grid, t_start, t_end, length):
    assert isinstance(grid, torch.Tensor) and grid.dtype == F64 and grid.device.type == "cpu"
    assert grid.dim() == 1 and grid.numel() == length
    assert float(grid[0]) == t_start and float(grid[-1]) == t_end          # exact, not approximately
    assert bool(torch.isfinite(grid).all())
    d = grid.diff()
    assert bool((d < 0).all()) if t_end < t_start else bool((d > 0).all())
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    assert float(grid.min()) >= lo and float(grid.max()) <= hi


def _resolved(sde, t_start, t_end):
    return (sde.T if t_start is None else t_start), (sde.eps if t_end is None else t_end)


# -- the generic grids ----------------------------------------------------------------------------

@PROPS
@given(t0=TIMES, t1=TIMES, steps=st.integers(min_value=1, max_value=2000))
def test_uniform_grid_properties(t0, t1, steps):
    assume(t0 != t1)
    grid = sdekit.uniform_grid(t0, t1, steps)
    check_grid(grid, t0, t1, steps + 1)
    h = (t1 - t0) / steps      # equal steps up to round-off
    assert float((grid.diff() - h).abs().max()) <= 1e-12 * max(1.0, abs(t0), abs(t1))


@PROPS
@given(t0=TIMES, t1=TIMES, frac=st.floats(min_value=1e-4, max_value=2.0))
def test_step_grid_properties(t0, t1, frac):
    """Every step but the last is dt, the last shortened (never lengthened beyond round-off), and the grid takes the
    fewest steps of dt that cover the span (a span that is a multiple of dt up to round-off gets no trailing sliver)."""
    span = abs(t1 - t0)
    assume(span >= 1e-6)
    dt = frac * span
    grid = sdekit.step_grid(t0, t1, dt)
    n = grid.numel() - 1
    check_grid(grid, t0, t1, n + 1)
    d = grid.diff().abs()
    if n > 1:
        assert float((d[:-1] - dt).abs().max()) <= 1e-12 * max(1.0, abs(t0), abs(t1))
    assert float(d[-1]) <= dt * (1 + 1e-9)
    assert n * dt >= span * (1 - 1e-9)
    assert n == 1 or (n - 1) * dt < span * (1 - 1e-9)


@PROPS
@given(data=st.data(), steps=st.integers(1, 300), frac=st.floats(0.0, 0.99))
def test_step_grid_takes_ceil_span_over_dt_steps(data, steps, frac):
    sde = data.draw(sdes())
    t_start, t_end = data.draw(spans(sde, low=0.0))
    dt = abs(t_end - t_start) / (steps - frac)        # ceil(span / dt) == steps
    grid = sdekit.step_grid(t_start, t_end, dt)
    check_grid(grid, t_start, t_end, math.ceil(abs(t_end - t_start) / dt * (1 - 1e-12)) + 1)
    assert grid.numel() == steps + 1
    d = grid.diff().abs()
    assert torch.allclose(d[:-1], torch.full_like(d[:-1], dt), rtol=1e-9)
    assert float(d[-1]) <= dt * (1 + 1e-9)


def test_step_grid_no_extra_step_from_round_off():
    """dt = (T - eps)/N in floating point: exactly N steps, no trailing round-off step."""
    for T, eps in [(1.0, 1e-3), (1.0, 1e-5), (1.0, 0.1)]:
        for n in (3, 7, 10, 40, 1000):
            g = sdekit.step_grid(T, eps, (T - eps) / n)
            assert g.numel() == n + 1, (T, eps, n)
            assert float(g[-1]) == eps


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None, "10"])
def test_uniform_grid_rejects_bad_steps(bad):
    with pytest.raises(sdekit.InvalidParameterError):
        sdekit.uniform_grid(1.0, 0.001, bad)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_step_grid_rejects_bad_dt(bad):
    with pytest.raises(sdekit.InvalidParameterError):
        sdekit.step_grid(1.0, 0.001, bad)


def test_grids_are_float64_under_float32_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        assert sdekit.uniform_grid(1.0, 1e-3, 10).dtype == torch.float64
        assert sdekit.step_grid(1.0, 1e-3, 0.1).dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


# -- the log-SNR inverse ----------------------------------------------------------------------------

@PROPS
@given(data=st.data(), u=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_t_of_log_snr_round_trips(data, u):
    sde = data.draw(sdes(("vp", "subvp", "ve", "cosine")))
    t = _t([sde.eps + x * (sde.T - sde.eps) for x in u])
    lam = sde.log_snr(t)
    for inverse in (sde.t_of_log_snr, lambda l: LinearSDE.t_of_log_snr(sde, l)):   # closed form, then fallback
        t_back = inverse(lam)
        assert t_back.dtype == F64 and t_back.shape == lam.shape
        err = (sde.log_snr(t_back) - lam).abs() / lam.abs().clamp(min=1.0)
        assert float(err.max()) <= 1e-12, (type(sde).__name__, float(err.max()))
        assert torch.allclose(t_back, t, rtol=1e-9, atol=0)


def test_t_of_log_snr_extremes_and_dtype():
    ref = sdekit.VESDE()                                       # reference marginal: lambda(0) = -log sigma_min
    t = torch.logspace(-12, 0, 97, dtype=F64)
    assert torch.allclose(ref.t_of_log_snr(ref.log_snr(t)), t, rtol=1e-9, atol=1e-15)
    assert abs(float(ref.t_of_log_snr(_t(-math.log(ref.sigma_min))))) < 1e-15
    for sde in (sdekit.VPSDE(), sdekit.SubVPSDE(), sdekit.VESDE(marginal="exact")):
        t = torch.logspace(-12, 0, 97, dtype=F64) * sde.T
        lam = sde.log_snr(t)
        assert torch.allclose(sde.t_of_log_snr(lam), t, rtol=1e-9, atol=0)
        assert float(sde.t_of_log_snr(_t(math.inf))) == 0.0                      # sigma = 0 at t = 0
        t32 = sde.t_of_log_snr(lam.float())                                        # computed in float64, cast back
        assert t32.dtype == torch.float32 and torch.equal(t32, sde.t_of_log_snr(lam.float().double()).float())
        with pytest.raises(InvalidParameterError):
            sde.t_of_log_snr(_t([0.0, math.nan]))
    sde = CosineSDE()
    with pytest.raises(InvalidParameterError, match="log-SNR values must lie in"):
        sde.t_of_log_snr(sde.log_snr(_t([sde.T])) - 1.0)                       # beyond lambda(T): no bracket


# -- the schedules ------------------------------------------------------------------------------------

@PROPS
@given(data=st.data(), steps=st.integers(1, 300))
def test_log_snr_grid_properties(data, steps):
    sde = data.draw(sdes())
    t_start, t_end = data.draw(spans(sde))
    grid = sdekit.log_snr_grid(sde, steps, t_start=t_start, t_end=t_end)
    t_start, t_end = _resolved(sde, t_start, t_end)
    check_grid(grid, t_start, t_end, steps + 1)
    lam = sde.log_snr(grid)
    step = (lam[-1] - lam[0]) / steps
    assert float(((lam.diff() - step).abs() / step.abs()).max()) <= 1e-9


@PROPS
@given(data=st.data(), steps=st.integers(1, 300), rho=st.one_of(st.just(7.0), st.floats(0.5, 20.0)))
def test_karras_grid_properties(data, steps, rho):
    sde = data.draw(sdes())
    t_start, t_end = data.draw(spans(sde))
    grid = sdekit.karras_grid(sde, steps, rho=rho, t_start=t_start, t_end=t_end)
    t_start, t_end = _resolved(sde, t_start, t_end)
    check_grid(grid, t_start, t_end, steps + 1)

    def sigma_ve(t):
        return sde.sigma(t) / sde.alpha(t)

    s_max, s_min = sigma_ve(_t(t_start)), sigma_ve(_t(t_end))
    i = torch.arange(steps + 1, dtype=F64)
    # eq. 5, s_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho, in its convex form (no cancellation)
    expected = ((1 - i / steps) * s_max ** (1 / rho) + i / steps * s_min ** (1 / rho)) ** rho
    assert float(((sigma_ve(grid) - expected).abs() / expected).max()) <= 1e-9


def test_default_grids_and_solve_accepts_them():
    sde = sdekit.VPSDE()
    for make in (sdekit.log_snr_grid, sdekit.karras_grid):
        grid = make(sde, 10)
        check_grid(grid, sde.T, sde.eps, 11)
        sol = sdekit.probability_flow(sde, lambda x, t: -x).solve(torch.ones(3, 2, dtype=F64), method="euler",
                                                                  grid=grid)
        assert sol.steps == 10 and sol.nfe == 10
    assert torch.equal(sdekit.karras_grid(sde, 1), _t([sde.T, sde.eps]))
    up = sdekit.log_snr_grid(sde, 4, t_start=sde.eps, t_end=sde.T)                   # either direction
    assert torch.allclose(up, sdekit.log_snr_grid(sde, 4).flip(0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("make", [sdekit.log_snr_grid, sdekit.karras_grid])
@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(steps=-3), "steps must be a positive integer"),
    (dict(steps=2.0), "steps must be a positive integer"),
    (dict(steps=True), "steps must be a positive integer"),
    (dict(steps="4"), "steps must be a positive integer"),
    (dict(steps=5, t_end=0.0), "sigma = 0"),                  # no step to sigma = 0
    (dict(steps=5, t_start=0.0, t_end=0.5), "sigma = 0"),
    (dict(steps=5, t_start=1.5), r"must be a number in \[0, T"),
    (dict(steps=5, t_end=-1e-3), r"must be a number in \[0, T"),
    (dict(steps=5, t_end=math.nan), r"must be a number in \[0, T"),
    (dict(steps=5, t_start="x"), r"must be a number in \[0, T"),
    (dict(steps=5, t_start=0.5, t_end=0.5), "two distinct times"),
])
def test_invalid_inputs(make, bad, match):
    for sde in (sdekit.VPSDE(), sdekit.SubVPSDE(), sdekit.VESDE(marginal="exact")):
        with pytest.raises(InvalidParameterError, match=match) as info:
            make(sde, **bad)
        assert "\n" not in str(info.value)


def test_invalid_schedule_inputs():
    with pytest.raises(InvalidParameterError, match="rho must be a positive finite number"):
        sdekit.karras_grid(sdekit.VESDE(), 10, rho=0.0)
    with pytest.raises(InvalidParameterError, match="rho must be a positive finite number"):
        sdekit.karras_grid(sdekit.VESDE(), 10, rho=math.inf)

    class Plain(sdekit.SDE):
        pass

    with pytest.raises(InvalidParameterError, match="needs an sdekit.LinearSDE"):
        sdekit.log_snr_grid(Plain(), 10)

    class NoClosedForm(LinearSDE):
        pass

    with pytest.raises(InvalidParameterError, match="closed-form log_alpha"):
        sdekit.karras_grid(NoClosedForm(), 10)
    with pytest.raises(InvalidParameterError, match="too narrow"):
        sdekit.uniform_grid(0.5, 0.5 + 1e-15, 300)
    with pytest.raises(InvalidParameterError, match="too narrow"):
        sdekit.log_snr_grid(sdekit.VPSDE(), 300, t_start=0.5 + 1e-14, t_end=0.5)


# -- end to end: the grid matters ------------------------------------------------------------------

def test_grid_matters_for_probability_flow_euler_on_mixture():
    """Probability-flow Euler, 10 steps, on the sharp 2-D mixture under the VE SDE, against the exact flow map.

    Measured (256 samples, seed 0, float64): Karras rho=7 RMS 3.86, uniform in t 3.86, Karras rho=1
    (uniform in sigma) 18.3.  sdekit's VESDE has sigma ~ sigma_min r^t, so a grid uniform in t is already
    geometric in sigma (the rho -> infinity limit of Karras) and the two grids tie; the grid that loses is the
    one uniform in sigma.  Convergence: at 50 steps both good grids reach about 0.7.
    """
    from sdekit.validation import GaussianMixture

    sde = sdekit.VESDE()
    mix = GaussianMixture.default_2d(sde)
    x_T = mix.sample(256, t=sde.T, generator=torch.Generator().manual_seed(0)).to(F64)
    flow = sdekit.probability_flow(sde, mix.score)
    ref = flow.solve(x_T, method="dopri5", rtol=1e-9, atol=1e-9).x
    check = flow.solve(x_T, method="dopri5", rtol=1e-7, atol=1e-7).x

    def rms(x):
        return float((x - ref).pow(2).sum(1).mean().sqrt())

    assert rms(check) < 1e-4                                   # the reference is converged far below the errors

    def euler(grid):
        return rms(flow.solve(x_T, method="euler", grid=grid).x)

    karras, uniform = euler(sdekit.karras_grid(sde, 10)), euler(sdekit.uniform_grid(sde.T, sde.eps, 10))
    in_sigma = euler(sdekit.karras_grid(sde, 10, rho=1.0))
    message = f"PF Euler, 10 steps, RMS vs exact flow: Karras rho=7 {karras:.3f}, uniform in t {uniform:.3f}, " \
              f"uniform in sigma {in_sigma:.3f}"
    print(message)
    assert in_sigma >= 3 * karras, message
    assert in_sigma >= 3 * uniform, message
    karras50, uniform50 = euler(sdekit.karras_grid(sde, 50)), euler(sdekit.uniform_grid(sde.T, sde.eps, 50))
    assert karras50 < karras / 3 and uniform50 < uniform / 3, (message, karras50, uniform50)


# ---------------------------------------------------------------------------------------------
# Explicit grids in solve()
# ---------------------------------------------------------------------------------------------

def _quadratic_grid(T, eps, n):
    """Nonuniform (denser near eps): t_k = eps + (T - eps) (1 - k/n)^2."""
    k = torch.arange(n + 1, dtype=torch.float64)
    g = eps + (T - eps) * (1 - k / n) ** 2
    g[0], g[-1] = T, eps
    return g


def test_explicit_grid_rk4(gaussian, recorder):
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, [1.0, -1.0], var=[0.5, 2.0])
    x = data.sample(sde.T, 8, torch.Generator().manual_seed(70))
    grid = _quadratic_grid(sde.T, sde.eps, 60)
    rec = recorder(data.score)
    sol = sdekit.probability_flow(sde, rec).solve(x, method="rk4", grid=grid)
    assert sol.steps == 60 and sol.nfe == 4 * 60 == rec.calls and sol.t == sde.eps
    seen = {float(t[0]) for t in rec.t_seen}
    assert {float(t) for t in grid} <= seen  # rk4 evaluates at every grid point
    exact = data.flow_map(x, sde.T, sde.eps)
    assert float((sol.x - exact).abs().max()) < 1e-4
    # the nonuniform grid differs from the uniform one
    uni = sdekit.probability_flow(sde, data.score).solve(x, method="rk4", steps=60)
    assert not torch.equal(uni.x, sol.x)


@pytest.mark.parametrize("method", ["euler", "srk", "heun"])
def test_explicit_grid_sde(gaussian, recorder, method):
    sde = sdekit.VESDE()
    data = gaussian.under(sde, [1.0, -1.0], var=[0.5, 2.0])
    x = data.sample(sde.T, 8, torch.Generator().manual_seed(71))
    grid = _quadratic_grid(sde.T, sde.eps, 25)
    rec = recorder(data.score)
    sol = sdekit.reverse(sde, rec).solve(x, method=method, grid=grid, seed=0)
    assert sol.steps == 25 and sol.t == sde.eps
    seen = torch.tensor([float(t[0]) for t in rec.t_seen], dtype=torch.float64)
    # torchsde runs on the clock s = T - t, so the score sees t = T - (T - t_k): t_k up to an ulp
    if method == "euler":
        assert seen.numel() == 25
        torch.testing.assert_close(seen, grid[:-1], rtol=0, atol=1e-15)  # the grid's left ends
    else:
        assert all(float((seen - t).abs().min()) <= 1e-15 for t in grid[:-1])
    # the same grid through a list gives the same result: list entries are not rounded through float32
    again = sdekit.reverse(sde, data.score).solve(x, method=method, grid=grid.tolist(), seed=0)
    assert torch.equal(again.x, sol.x)


FIXED = [m for m in sdekit.methods() if m.stepping != "adaptive"]


@pytest.mark.parametrize("m", FIXED, ids=[m.qualified_name for m in FIXED])
def test_every_fixed_step_method_takes_a_grid(gaussian, m):
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, [1.0, -1.0], var=[0.5, 2.0])
    x = data.sample(sde.T, 4, torch.Generator().manual_seed(72))
    grid = _quadratic_grid(sde.T, sde.eps, 12)
    proc = sdekit.reverse(sde, data.score) if m.kind == "sde" else sdekit.probability_flow(sde, data.score)
    sol = proc.solve(x, method=m.qualified_name, grid=grid, seed=0) if m.kind == "sde" else \
        proc.solve(x, method=m.qualified_name, grid=grid)
    assert sol.steps == 12 and sol.t == sde.eps and bool(torch.isfinite(sol.x).all())


def test_grid_sets_the_span(gaussian):
    """A grid from 0.9 down to 0.2 integrates exactly that span; a flow solve agrees with the exact map."""
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, [1.0, -1.0], var=[0.5, 2.0])
    x = data.sample(0.9, 4, torch.Generator().manual_seed(73))
    grid = sdekit.uniform_grid(0.9, 0.2, 100)
    sol = sdekit.probability_flow(sde, data.score).solve(x, method="rk4", grid=grid)
    assert sol.t == 0.2
    torch.testing.assert_close(sol.x, data.flow_map(x, 0.9, 0.2), rtol=0, atol=1e-8)


@pytest.mark.parametrize("grid,kw", [
    (torch.tensor([[1.0, 0.5], [0.5, 0.001]], dtype=torch.float64), {}),
    (torch.tensor([1.0], dtype=torch.float64), {}),
    ([1.0, 0.5, 0.7, 0.001], {}),
    ([1.0, 0.5, 0.5, 0.001], {}),
    ([1.5, 0.5, 0.001], {}),
    ([1.0, 0.5, -0.1], {}),
    ([1.0, float("nan"), 0.001], {}),
    ([1.0, 0.5, 0.0], {}),
    ([0.001, 0.5, 1.0], {}),
    ([1.0, 0.5, 0.001], dict(t_start=1.0)),
    ([1.0, 0.5, 0.001], dict(t_end=0.001)),
], ids=["2d", "one-point", "non-monotone", "repeated", "above-T", "below-0", "nan", "ends-at-0", "upwards-sde",
        "with-t_start", "with-t_end"])
def test_invalid_grids_rejected(gaussian, grid, kw):
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, [1.0, -1.0], var=[0.5, 2.0])
    x = data.sample(sde.T, 4, torch.Generator().manual_seed(74))
    with pytest.raises(sdekit.InvalidParameterError):
        sdekit.reverse(sde, data.score).solve(x, method="euler", grid=grid, seed=0, **kw)


def test_grid_with_steps_is_ambiguous(gaussian):
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, [1.0, -1.0], var=[0.5, 2.0])
    x = data.sample(sde.T, 4, torch.Generator().manual_seed(75))
    with pytest.raises(sdekit.MethodArgumentError):
        sdekit.probability_flow(sde, data.score).solve(x, method="rk4", grid=[1.0, 0.5, 0.001], steps=2)


def test_dt_builds_a_step_grid(gaussian, recorder):
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, [1.0, -1.0], var=[0.5, 2.0])
    x = data.sample(sde.T, 4, torch.Generator().manual_seed(76))
    rec = recorder(data.score)
    sol = sdekit.reverse(sde, rec).solve(x, method="euler", dt=0.3, seed=0)
    expected = sdekit.step_grid(sde.T, sde.eps, 0.3)
    assert sol.steps == expected.numel() - 1 == 4
    seen = torch.tensor([float(t[0]) for t in rec.t_seen], dtype=torch.float64)
    torch.testing.assert_close(seen, expected[:-1], rtol=0, atol=1e-15)
