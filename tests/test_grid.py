"""Time grids: built in float64, exact endpoints, monotone; explicit grids for every fixed-step method."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit

pytestmark = pytest.mark.usefixtures("single_thread")

times = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)


@settings(deadline=None)
@given(t0=times, t1=times, steps=st.integers(min_value=1, max_value=2000))
def test_uniform_grid_properties(t0, t1, steps):
    if t0 == t1:
        return
    g = sdekit.uniform_grid(t0, t1, steps)
    assert g.dtype == torch.float64 and g.dim() == 1 and g.numel() == steps + 1
    assert float(g[0]) == t0 and float(g[-1]) == t1  # exact, not approximately
    d = g.diff()
    assert bool((d > 0).all()) if t1 > t0 else bool((d < 0).all())
    # equal steps up to round-off
    h = (t1 - t0) / steps
    assert float((d - h).abs().max()) <= 1e-12 * max(1.0, abs(t0), abs(t1))


@settings(deadline=None)
@given(t0=times, t1=times, frac=st.floats(min_value=1e-4, max_value=2.0))
def test_step_grid_properties(t0, t1, frac):
    span = abs(t1 - t0)
    if span < 1e-6:
        return
    dt = frac * span
    g = sdekit.step_grid(t0, t1, dt)
    assert g.dtype == torch.float64
    assert float(g[0]) == t0 and float(g[-1]) == t1
    d = g.diff()
    assert bool((d > 0).all()) if t1 > t0 else bool((d < 0).all())
    steps = d.abs()
    # every step but the last is dt; the last is shortened (never lengthened beyond round-off)
    if steps.numel() > 1:
        assert float((steps[:-1] - dt).abs().max()) <= 1e-12 * max(1.0, abs(t0), abs(t1))
    assert float(steps[-1]) <= dt * (1 + 1e-9)
    # the fewest steps of size dt that cover the span (a span that is a multiple of dt up to round-off gets
    # no trailing sliver of a step)
    n = g.numel() - 1
    assert n * dt >= span * (1 - 1e-9)
    assert n == 1 or (n - 1) * dt < span * (1 - 1e-9)


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


@pytest.mark.parametrize("method,kind", [("euler", "ode"), ("midpoint", "ode"), ("rk4", "ode"), ("euler", "sde"),
                                         ("milstein", "sde"), ("srk", "sde"), ("heun", "sde"),
                                         ("midpoint", "sde"), ("reversible_heun", "sde"), ("log_ode", "sde"),
                                         ("euler_heun", "sde")])
def test_every_fixed_step_method_takes_a_grid(gaussian, method, kind):
    sde = sdekit.VPSDE()
    data = gaussian.under(sde, [1.0, -1.0], var=[0.5, 2.0])
    x = data.sample(sde.T, 4, torch.Generator().manual_seed(72))
    grid = _quadratic_grid(sde.T, sde.eps, 12)
    proc = sdekit.reverse(sde, data.score) if kind == "sde" else sdekit.probability_flow(sde, data.score)
    sol = proc.solve(x, method=method, grid=grid, seed=0) if kind == "sde" else proc.solve(x, method=method, grid=grid)
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
