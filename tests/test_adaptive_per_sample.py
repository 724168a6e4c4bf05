"""Per-sample adaptive stepping (sdekit's adaptive loop): the Runge-Kutta pairs on the probability flow and on any
drift, samples dropping out of the batch, per-sample counts and status, the host reads, and the argument checks."""

import math

import pytest
import torch

import sdekit
from sdekit._stepping._rk import Bosh3, Dopri5
from sdekit.validation import GaussianData, fit_order

PAIRS = ["sdekit.bosh3", "sdekit.dopri5"]


def _gaussian(sde, n=32, seed=0, dtype=torch.float64):
    data = GaussianData(torch.tensor([1.0, -0.5, 2.0]), torch.diag(torch.tensor([0.5, 2.0, 0.25])), sde)
    x = data.sample(n, t=sde.T, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return data, x


class Clock(sdekit.SDE):
    """f = 0, g = 1: the probability flow is dx/dt = -score/2, any 'score' a chosen right-hand side."""

    def f(self, t, x):
        return torch.zeros_like(x)

    def g(self, t):
        return torch.ones_like(t)


class Oscillators:
    r"""dx_0/dt = w cos(w t), dx_1/dt = 0, with w = x_1 (a per-sample frequency carried by the state):
    x_0(t) = x_0(t_0) + sin(w t) - sin(w t_0).  Samples with a large w need many more steps."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t):
        self.batches.append(x.shape[0])
        w = x[:, 1]
        s = torch.zeros_like(x)
        s[:, 0] = -2 * w * torch.cos(w * t)
        return s

    @staticmethod
    def exact(x, t0, t1):
        out = x.clone()
        w = x[:, 1]
        out[:, 0] = x[:, 0] + torch.sin(w * t1) - torch.sin(w * t0)
        return out


def _states(ws):
    """Oscillators' states at t = 1: x_0 = 0 and the frequencies ``ws``."""
    return torch.stack([torch.zeros(len(ws), dtype=torch.float64), torch.tensor(ws, dtype=torch.float64)], 1)


def _oscillators(ws):
    fn = Oscillators()
    return sdekit.probability_flow(Clock(), fn), fn, _states(ws)


@pytest.mark.parametrize("method", PAIRS)
def test_tolerance_proportionality(method):
    """The global error of a pair with local extrapolation is proportional to the tolerance: the slope of log error
    on log tolerance over 1e-4 .. 1e-8 on the exact VE Gaussian flow is 1 within +-0.3 (measured 0.99 bosh3, 1.03
    dopri5), and every sample meets about the tolerance."""
    sde = sdekit.VESDE(sigma_max=10.0)
    data, x = _gaussian(sde)
    exact = data.flow_map(x, sde.T, sde.eps)
    flow = sdekit.probability_flow(sde, data.score)
    tols = [10.0 ** -k for k in range(4, 9)]
    errors = [float((flow.solve(x, method=method, rtol=tol, atol=tol).x - exact).abs().max()) for tol in tols]
    slope = fit_order(tols, errors)
    assert 0.7 <= slope <= 1.3, (slope, errors)
    assert all(e < 30 * tol for e, tol in zip(errors, tols)), errors


def _fixed_steps(cls, flow, x, grid):
    st = cls(None, None, {})
    st.bind(flow, 1e-3, 1e-3)
    n = x.shape[0]
    t = grid[0].expand(n)
    carry = st.start(x, t)
    for i in range(len(grid) - 1):
        t_next = grid[i + 1].expand(n)
        x, _, carry = st.attempt(x, t, t_next, carry, i)
        t = t_next
    return x


@pytest.mark.parametrize("cls,order", [(Bosh3, 3.0), (Dopri5, 5.0)])
def test_fixed_step_order(cls, order):
    """The tableaux themselves, stepped on uniform grids of 16 .. 128 steps on the exact VE Gaussian flow (the
    problem of docs/orders.md): the least-squares slope of log error on log step is the method's order within +-0.3,
    and the steps agree with torchdiffeq's own tableau stepped on the same grid."""
    from sdekit.validation._orders import _rk_fixed, _tableau, gaussian_flows
    case = gaussian_flows()["VE"]
    x = case.sample(20, case.t_start, seed=0)
    flow = case.ode()
    exact = case.flow_map(x, case.t_start, case.t_end)
    hs, errors = [], []
    for n in (16, 32, 64, 128):
        grid = torch.linspace(case.t_start, case.t_end, n + 1, dtype=torch.float64)
        y = _fixed_steps(cls, flow, x, grid)
        if n == 16:
            theirs = _rk_fixed(flow, x, grid.tolist(), _tableau(cls.name))
            torch.testing.assert_close(y, theirs, rtol=1e-12, atol=1e-12)
        hs.append(float(grid[0] - grid[1]))
        errors.append(float((y - exact).abs().max()))
    slope = fit_order(hs, errors)
    assert abs(slope - order) <= 0.3, (slope, errors)


@pytest.mark.parametrize("method", PAIRS)
def test_each_sample_is_solved_as_if_alone(method):
    """Per-sample error norms and step sizes: sample i comes out the same in a batch of 12 as alone."""
    sde = sdekit.VPSDE()
    data, x = _gaussian(sde, n=12, seed=3)
    flow = sdekit.probability_flow(sde, data.score)
    batch = flow.solve(x, method=method, rtol=1e-5, atol=1e-5)
    for i in (0, 5, 11):
        alone = flow.solve(x[i:i + 1], method=method, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.x[i:i + 1], alone.x, rtol=1e-12, atol=1e-12)
        assert int(batch.per_sample.nfe[i]) == int(alone.per_sample.nfe[0])
        assert int(batch.per_sample.steps[i]) == alone.steps


def test_finished_samples_leave_the_batch_and_counts_are_per_sample():
    """Oscillators of frequency 1 .. 64: the slow ones finish in a few steps and leave the batch, so the function sees
    smaller batches; each sample's NFE grows with its frequency; every sample meets the tolerance."""
    ws = [1.0, 2.0, 4.0, 8.0, 64.0, 16.0, 32.0]
    proc, fn, x = _oscillators(ws)
    sol = proc.solve(x, method="sdekit.dopri5", rtol=1e-6, atol=1e-6)
    exact = Oscillators.exact(x, 1.0, 1e-3)
    assert float((sol.x - exact).abs().max()) < 1e-4
    ps = sol.per_sample
    order = torch.argsort(torch.tensor(ws))
    assert bool((ps.nfe[order].diff() >= 0).all()), ps.nfe
    assert int(ps.nfe[0]) * 4 < int(ps.nfe[4])
    assert min(fn.batches) == 1 and max(fn.batches) == len(ws)
    assert sol.nfe == len(fn.batches) and sol.stats["row_evaluations"] == sum(fn.batches)
    assert sol.stats["nfe_mean"] == pytest.approx(float(ps.nfe.double().mean()))
    assert sol.steps == int(ps.steps.max()) and sol.rejected == int(ps.rejected.max())
    assert ps.results() == [sdekit.Result.SUCCESS] * len(ws) and bool((ps.t == 1e-3).all())
    # finished samples wait at most sync_every - 1 iterations for the next host read
    waste = sol.stats["row_evaluations"] - ps.total("nfe")
    assert 0 <= waste <= len(ws) * (sdekit._stepping.SYNC_EVERY - 1) * 6
    assert sol.stats["syncs"] <= sol.stats["iterations"] // 1


def test_sync_every_bounds_the_host_reads():
    """With sync_every=k the loop reads the host at most once per k iterations (plus the first read); with k = 1 a
    finished sample wastes nothing."""
    proc, fn, x = _oscillators([1.0, 64.0])
    one = proc.solve(x, method="sdekit.bosh3", rtol=1e-5, atol=1e-5,
                     options={"sync_every": 1})
    assert one.stats["row_evaluations"] == one.per_sample.total("nfe")
    many = proc.solve(x, method="sdekit.bosh3", rtol=1e-5, atol=1e-5,
                      options={"sync_every": 16})
    assert one.stats["syncs"] == one.stats["iterations"] + 1
    # one read before the first step, one every 16 iterations, and a few closer together as the last sample ends
    assert many.stats["syncs"] <= many.stats["iterations"] // 16 + 6
    torch.testing.assert_close(one.x, many.x, rtol=0, atol=0)


def test_shared_step_size():
    """per_sample=False: the batch shares one step (the RMS of the samples' error ratios), as torchdiffeq's."""
    proc, fn, x = _oscillators([1.0, 8.0, 64.0])
    sol = proc.solve(x, method="sdekit.dopri5", rtol=1e-6, atol=1e-6, per_sample=False)
    ps = sol.per_sample
    assert bool((ps.steps == ps.steps[0]).all()) and bool((ps.nfe == ps.nfe[0]).all())
    assert min(fn.batches) == 3
    per = proc.solve(x, method="sdekit.dopri5", rtol=1e-6, atol=1e-6)
    assert per.per_sample.total("nfe") < ps.total("nfe")


def test_failure_record_names_the_sample_after_the_batch_shrank():
    """The sample that goes non-finite after others left the batch is named by its index in the caller's batch."""
    ws = [1.0, 2.0, 64.0, 3.0]

    def score(x, t):
        s = Oscillators()(x, t)
        bad = (x[:, 1] > 50) & (t < 0.3)
        return torch.where(bad[:, None], torch.full_like(s, math.nan), s)

    x = _states(ws)
    sol = sdekit.probability_flow(Clock(), score).solve(x, method="sdekit.dopri5", rtol=1e-6, atol=1e-6,
                                                        throw=False)
    assert sol.result is sdekit.Result.NON_FINITE
    assert sol.failed.tolist() == [False, False, True, False]
    assert "samples [2]" in sol.detail
    assert sol.per_sample.results()[2] is sdekit.Result.NON_FINITE
    assert [sol.per_sample.results()[i] for i in (0, 1, 3)] == [sdekit.Result.SUCCESS] * 3
    assert bool(torch.isfinite(sol.x).all())          # the failed sample keeps its last finite state
    with pytest.raises(sdekit.SolveError, match=r"samples \[2\]"):
        sdekit.probability_flow(Clock(), score).solve(x, method="sdekit.dopri5", rtol=1e-6, atol=1e-6)


def test_max_steps_is_per_sample():
    """max_steps stops only the samples that need more; the others reach t_end."""
    proc, fn, x = _oscillators([1.0, 64.0, 2.0])
    sol = proc.solve(x, method="sdekit.dopri5", rtol=1e-6, atol=1e-6, max_steps=15,
                     throw=False)
    assert sol.result is sdekit.Result.MAX_STEPS and "samples [1]" in sol.detail
    codes = sol.per_sample.results()
    assert codes == [sdekit.Result.SUCCESS, sdekit.Result.MAX_STEPS, sdekit.Result.SUCCESS]
    assert int(sol.per_sample.steps[1]) == 15 and 0 < float(sol.per_sample.t[1]) < 1
    assert sol.t == float(sol.per_sample.t[1])
    exact = Oscillators.exact(x, 1.0, sol.per_sample.t)
    assert float((sol.x - exact).abs().max()) < 1e-4     # the stopped sample is a valid state at its own time
    with pytest.raises(sdekit.SolveError, match="max_steps"):
        proc.solve(x, method="sdekit.dopri5", rtol=1e-6, atol=1e-6, max_steps=15)


@pytest.mark.parametrize("method", PAIRS)
def test_save_at_lands_on_the_times(method):
    sde = sdekit.VPSDE()
    data, x = _gaussian(sde, n=6)
    times = [0.7, 0.3, 0.05]
    sol = sdekit.probability_flow(sde, data.score).solve(x, method=method, rtol=1e-7, atol=1e-7, save_at=times)
    assert sol.path.shape == (3,) + x.shape
    for k, s in enumerate(times):
        torch.testing.assert_close(sol.path[k], data.flow_map(x, sde.T, s), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_input(dtype):
    sde = sdekit.VPSDE()
    data, x = _gaussian(sde, n=5, dtype=dtype)
    sol = sdekit.probability_flow(sde, data.score).solve(x, method="sdekit.dopri5", rtol=1e-5, atol=1e-5)
    assert sol.x.dtype == dtype and sol.per_sample.t.dtype == torch.float64
    exact = data.flow_map(x.double(), sde.T, sde.eps)
    assert float((sol.x.double() - exact).abs().max()) < (1e-3 if dtype == torch.float32 else 1e-4)


def test_denoise_and_first_step():
    sde = sdekit.VPSDE()
    data, x = _gaussian(sde, n=4)
    flow = sdekit.probability_flow(sde, data.score)
    plain = flow.solve(x, method="sdekit.bosh3", rtol=1e-4, atol=1e-4, dt=1e-3)
    den = flow.solve(x, method="sdekit.bosh3", rtol=1e-4, atol=1e-4, dt=1e-3, options={"denoise": True})
    assert den.per_sample.total("nfe") == plain.per_sample.total("nfe") + 4
    assert not torch.equal(den.x, plain.x)


def test_arguments_are_checked():
    sde = sdekit.VPSDE()
    data, x = _gaussian(sde, n=2)
    flow = sdekit.probability_flow(sde, data.score)
    kw = dict(method="sdekit.dopri5", rtol=1e-3, atol=1e-3)
    for bad in (0, 1.5, True):
        with pytest.raises(sdekit.InvalidParameterError, match="sync_every"):
            flow.solve(x, options={"sync_every": bad}, **kw)
    with pytest.raises(sdekit.ArgumentTypeError, match="per_sample"):
        flow.solve(x, per_sample="yes", **kw)
    with pytest.raises(sdekit.MethodArgumentError, match="per_sample"):
        flow.solve(x, method="ddim", steps=5, per_sample=True)
    with pytest.raises(sdekit.MethodArgumentError, match="sdekit.dopri5"):
        flow.solve(x, method="torchdiffeq.dopri5", rtol=1e-3, atol=1e-3, per_sample=True)
    with pytest.raises(sdekit.MethodArgumentError, match="hook"):
        flow.solve(x, options={"hook": lambda x, t, noise: x}, **kw)
    with pytest.raises(sdekit.MethodArgumentError, match="safety"):
        flow.solve(x, options={"safty": 0.9}, **kw)
    with pytest.raises(sdekit.InvalidParameterError, match="fac_max"):
        flow.solve(x, options={"fac_max": 0.5}, **kw)
    with pytest.raises(sdekit.MethodArgumentError, match="adapts its step"):
        flow.solve(x, method="sdekit.dopri5", steps=4)
    with pytest.raises(sdekit.MethodArgumentError, match="SDE"):
        sdekit.reverse(sde, data.score).solve(x, **kw)


def test_every_backend_reports_per_sample_counts():
    """Solution.per_sample exists for every backend; a shared step repeats the solve's counts over the batch."""
    sde = sdekit.VPSDE()
    data, x = _gaussian(sde, n=3)
    sol = sdekit.probability_flow(sde, data.score).solve(x, method="torchdiffeq.dopri5", rtol=1e-4, atol=1e-4)
    assert sol.per_sample.nfe.tolist() == [sol.nfe] * 3 and sol.per_sample.steps.tolist() == [sol.steps] * 3
    assert sol.per_sample.results() == [sdekit.Result.SUCCESS] * 3
    fixed = sdekit.reverse(sde, data.score).solve(x, method="euler", steps=4, seed=0)
    assert fixed.per_sample.steps.tolist() == [4] * 3 and "SUCCESS=3" in repr(fixed.per_sample)


def test_adaptive_steppers_are_registered():
    from sdekit._stepping import ADAPTIVE_STEPPERS
    table = {m.name: m for m in sdekit.methods(backend="sdekit") if m.stepping == "adaptive"}
    assert set(table) == {cls.name for cls in ADAPTIVE_STEPPERS}
    for cls in ADAPTIVE_STEPPERS:
        m = table[cls.name]
        assert m.error_estimate and m.frame == cls.frame and m.needs == cls.needs and m.description
        assert set(cls.defaults) | {"sync_every", "denoise"} == set(m.options)
        assert sdekit._methods.lookup(f"sdekit.{cls.name}", cls.kind) is m


def test_save_at_the_start_and_gradients():
    """A save time at t_start is kept (a zero-length step that does not shrink the next one); with x requiring grad
    the result is differentiable and the step sizes are not (no graph through the controller)."""
    sde = sdekit.VPSDE()
    data, x = _gaussian(sde, n=3)
    flow = sdekit.probability_flow(sde, data.score)
    sol = flow.solve(x, method="sdekit.bosh3", rtol=1e-4, atol=1e-4, save_at=[1.0, 0.5])
    torch.testing.assert_close(sol.path[0], x, rtol=0, atol=0)
    plain = flow.solve(x, method="sdekit.bosh3", rtol=1e-4, atol=1e-4, save_at=[0.5])
    assert sol.steps <= plain.steps + 1
    xg = x.clone().requires_grad_(True)
    out = flow.solve(xg, method="sdekit.dopri5", rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(out.x.sum(), xg)
    # the flow map of Gaussian data is linear: its Jacobian is diag(sqrt(v_eps / v_T)) per coordinate
    mean, cov_t = data.marginal(sde.T)
    _, cov_e = data.marginal(sde.eps)
    expected = (torch.diagonal(cov_e) / torch.diagonal(cov_t)).sqrt().expand_as(grad)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
