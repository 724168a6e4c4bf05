"""solve() under hostile use: arguments refused with an SDEKitError, results that say what happened, the score's
own exceptions untouched, no autograd graph unless asked, counters that neither lie nor grow."""

import math
import pickle

import numpy as np
import pytest
import torch
import torchdiffeq

import sdekit
from sdekit.validation import GaussianMixture

SDE = sdekit.VPSDE()
V = 4.0  # data N(0, V I): under VP, p_t = N(0, s_t^2 I) with s_t^2 = 1 + alpha_t^2 (V - 1)


def _standard(x, t):
    """The exact score of N(0, I) data under VP (p_t = N(0, I) for every t)."""
    return -x


def _s(t):
    a = SDE.alpha(torch.as_tensor(t, dtype=torch.float64))
    return torch.sqrt(1 + a * a * (V - 1))


def _wide(x, t):
    """The exact score of N(0, V I) data under VP."""
    var = 1 + SDE.alpha(t.to(torch.float64)) ** 2 * (V - 1)
    return -x / var.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))


def _flow(x_T, t):
    """The exact probability-flow map of N(0, V I) data from T to t."""
    return x_T * (_s(t) / _s(SDE.T)).to(x_T.dtype)


def _x(n=4, d=2, dtype=torch.float64, seed=0, scale=1.0):
    return scale * torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _nan_for(sample, below=0.5, score=_standard):
    def s(x, t):
        out = score(x, t)
        bad = (t < below) & (torch.arange(x.shape[0], device=x.device) == sample)
        return torch.where(bad.reshape(-1, 1), torch.full_like(out, float("nan")), out)
    return s


# ---------------------------------------------------------------------------------------------
# §1 arguments
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dt", [float("nan"), 0.0, -0.1, float("inf")])
@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_adaptive_first_step_must_be_positive_and_finite(dt, kind):
    x = _x()
    with pytest.raises(sdekit.InvalidParameterError, match="dt"):
        if kind == "sde":
            sdekit.reverse(SDE, _standard).solve(x, method="euler", rtol=1e-3, atol=1e-3, dt=dt, seed=0)
        else:
            sdekit.probability_flow(SDE, _standard).solve(x, method="dopri5", dt=dt)


@pytest.mark.parametrize("kw", [dict(dt=True), dict(dt="0.1"), dict(steps=5, dt_min=-1e-3),
                                dict(rtol=1e-3, atol=1e-3, dt_min=-1e-3), dict(rtol=1e-3, dt_min=float("nan")),
                                dict(rtol=True), dict(steps=5, throw="no"), dict(steps=5, grad=1)])
def test_step_arguments_are_numbers_of_the_right_sign(kw):
    with pytest.raises(sdekit.SDEKitError):
        sdekit.reverse(SDE, _standard).solve(_x(), method="euler", seed=0, **kw)


@pytest.mark.parametrize("kw,count", [(dict(steps=10 ** 13), "1e+13"), (dict(dt=1e-13), "9.99e+12")])
def test_a_grid_that_cannot_fit_is_refused_with_its_size(kw, count):
    with pytest.raises(sdekit.InvalidParameterError) as info:
        sdekit.reverse(SDE, _standard).solve(_x(), method="euler", seed=0, **kw)
    assert count in str(info.value) and "steps" in str(info.value)


@pytest.mark.parametrize("kw", [dict(grid="1,0"), dict(grid={1.0: 0}), dict(grid=[1.0, "a"]),
                                dict(steps=5, save_at="0.5"), dict(steps=5, options=[1, 2]),
                                dict(steps=5, options="dt")])
def test_wrong_types_of_grid_save_at_options(kw):
    with pytest.raises(sdekit.ArgumentTypeError):
        sdekit.reverse(SDE, _standard).solve(_x(), method="euler", seed=0, **kw)


@pytest.mark.parametrize("seed", [-1, "abc", 1.7, True, 2 ** 64, None])
def test_seed_must_be_a_nonnegative_integer(seed):
    kw = dict(seed=seed) if seed is not None else dict(generator=np.random.default_rng(0))
    with pytest.raises(sdekit.SDEKitError):
        sdekit.reverse(SDE, _standard).solve(_x(), method="euler", steps=5, **kw)
    with pytest.raises(sdekit.SDEKitError):
        sdekit.brownian_motion(0.0, 1.0, (4, 2), **kw)


def test_noise_must_be_a_brownian_motion_of_the_state_shape():
    x = _x()
    rev = sdekit.reverse(SDE, _standard)
    span = (0.0, SDE.T - SDE.eps)
    with pytest.raises(sdekit.ArgumentTypeError):
        rev.solve(x, method="euler", steps=5, noise=torch.randn(4, 2))
    with pytest.raises(sdekit.ShapeError, match=r"\(4, 2\)"):
        rev.solve(x, method="euler", steps=5, noise=sdekit.brownian_motion(*span, (3, 2), seed=0))
    with pytest.raises(sdekit.ShapeError):
        rev.solve(x, method="euler", steps=5, noise=sdekit.brownian_motion(*span, (4, 3), seed=0))
    bm = sdekit.brownian_motion(*span, (4, 2), seed=0, dtype=torch.float64)
    for kw in (dict(seed=1), dict(generator=torch.Generator().manual_seed(1))):
        with pytest.raises(sdekit.InvalidParameterError, match="noise"):
            rev.solve(x, method="euler", steps=5, noise=bm, **kw)
    ok = rev.solve(x, method="euler", steps=5, noise=bm)
    assert ok.success and ok.x.shape == x.shape


def test_keyed_noise_objects_are_not_refused():
    """The check of noise= leaves objects that declare themselves keyed (queried per sample) to their method."""
    class Keyed:
        keyed = True
        shape = (999,)
    from sdekit._solve import _check_arguments
    _check_arguments(_x(), max_steps=None, options=None, throw=True, grad=False, seed=None, generator=None,
                     noise=Keyed())


def test_drift_and_evaluator_take_a_zero_dim_time():
    x = _x(n=3)
    shapes = []

    def score(x, t):
        shapes.append(tuple(t.shape))
        return -x
    rev = sdekit.reverse(SDE, score)
    by_scalar = rev.drift(torch.tensor(0.5, dtype=torch.float64), x)
    by_batch = rev.drift(torch.full((3,), 0.5, dtype=torch.float64), x)
    by_number = rev.drift(0.5, x)
    rev.evaluator(x, torch.tensor(0.5, dtype=torch.float64))
    assert shapes == [(3,)] * 4
    assert torch.equal(by_scalar, by_batch) and torch.equal(by_number, by_batch)
    with pytest.raises(sdekit.ShapeError):
        rev.drift(torch.full((2,), 0.5, dtype=torch.float64), x)


@pytest.mark.parametrize("name,kind,expected", [
    ("Euler", "sde", "torchsde.euler"), ("EULER", "ode", "torchdiffeq.euler"), ("DOPRI5", "ode", "torchdiffeq.dopri5"),
    ("rk45", "ode", "scipy.RK45"), ("Dop853", "ode", "scipy.DOP853"), ("TorchSDE.Euler", "ode", "torchsde.euler"),
    ("TORCHDIFFEQ.rk4", "ode", "torchdiffeq.rk4"), ("Reversible_Heun", "sde", "torchsde.reversible_heun"),
])
def test_method_names_ignore_case(name, kind, expected):
    from sdekit._methods import lookup
    assert lookup(name, kind).qualified_name == expected


def test_method_names_ignore_case_in_solve():
    x = _x()
    a = sdekit.reverse(SDE, _standard).solve(x, method="Euler", steps=5, seed=0)
    b = sdekit.reverse(SDE, _standard).solve(x, method="euler", steps=5, seed=0)
    assert a.method == b.method == "euler" and torch.equal(a.x, b.x)
    with pytest.raises(sdekit.UnknownMethodError):
        sdekit.reverse(SDE, _standard).solve(x, method="eulerr", steps=5, seed=0)


@pytest.mark.parametrize("cost", [-1, 0, 2.5, True, "2"])
def test_nfe_per_call_must_be_a_positive_integer(cost):
    def score(x, t):
        return -x
    score.nfe_per_call = cost
    with pytest.raises(sdekit.SDEKitError, match="nfe_per_call"):
        sdekit.probability_flow(SDE, score).solve(_x(), method="rk4", steps=5)


def test_nfe_per_call_set_after_construction_is_checked_at_solve():
    def score(x, t):
        return -x
    pf = sdekit.probability_flow(SDE, score)
    score.nfe_per_call = -1
    with pytest.raises(sdekit.InvalidParameterError, match="nfe_per_call"):
        pf.solve(_x(), method="rk4", steps=5)
    score.nfe_per_call = 2
    assert pf.solve(_x(), method="rk4", steps=5).nfe == 2 * 4 * 5


# ---------------------------------------------------------------------------------------------
# §2 a result says what really happened
# ---------------------------------------------------------------------------------------------

def test_fixed_steps_failure_keeps_finite_rows_and_names_the_failed_ones():
    """One sample's score goes NaN below t = 0.5: x is at eps (t says so), that row is flagged, the others are
    exactly what a clean solve gives."""
    x = _x(n=5)
    rev_bad = sdekit.reverse(SDE, _nan_for(2))
    out = rev_bad.solve(x, method="euler", steps=20, seed=3, throw=False)
    clean = sdekit.reverse(SDE, _standard).solve(x, method="euler", steps=20, seed=3)
    assert out.result is sdekit.Result.NON_FINITE and not out.success
    assert out.t == SDE.eps
    assert out.failed.tolist() == [False, False, True, False, False]
    keep = ~out.failed
    assert torch.equal(out.x[keep], clean.x[keep])
    assert "samples [2] failed" in out.detail
    assert not bool(clean.failed.any()) and clean.failed.shape == (5,)
    with pytest.raises(sdekit.SolveError) as info:
        rev_bad.solve(x, method="euler", steps=20, seed=3)
    assert info.value.solution.failed.tolist() == out.failed.tolist()


@pytest.mark.parametrize("method,kw", [("dopri5", dict(rtol=1e-7, atol=1e-7)), ("RK45", dict(rtol=1e-7, atol=1e-7)),
                                       ("rk4", dict(steps=50))])
def test_t_is_the_time_of_x_after_a_failure(method, kw):
    """Against the exact flow map: the rows that did not fail are the flow's state at the reported t."""
    x = _x(n=4, scale=math.sqrt(V))
    out = sdekit.probability_flow(SDE, _nan_for(1, score=_wide)).solve(x, method=method, throw=False, **kw)
    assert out.result is sdekit.Result.NON_FINITE
    assert out.failed.tolist() == [False, True, False, False]
    keep = ~out.failed
    err = float((out.x[keep] - _flow(x[keep], out.t)).abs().max())
    assert err < 1e-5, f"{method}: x is not the state at t={out.t} (error {err})"


def test_save_at_points_before_a_failure_are_kept():
    x = _x(n=4, scale=math.sqrt(V))
    out = sdekit.probability_flow(SDE, _nan_for(1, score=_wide)).solve(
        x, method="dopri5", rtol=1e-7, atol=1e-7, save_at=[0.9, 0.7], throw=False)
    assert out.ts.tolist() == [0.9, 0.7]
    for k, t in enumerate(out.ts.tolist()):
        assert float((out.path[k] - _flow(x, t)).abs().max()) < 1e-5


class _Mine(Exception):
    pass


@pytest.mark.parametrize("exc", [AssertionError, _Mine, RuntimeError])
@pytest.mark.parametrize("method,kw", [("dopri5", {}), ("rk4", dict(steps=10)), ("RK45", {}),
                                       ("euler-sde", dict(steps=10, seed=0))])
def test_the_scores_own_exception_reaches_the_caller_unchanged(exc, method, kw):
    raised = []

    def score(x, t):
        if bool((t < 0.6).any()):
            err = exc("raised by the score")
            raised.append(err)
            raise err
        return -x
    make = sdekit.reverse if method == "euler-sde" else sdekit.probability_flow
    for throw in (True, False):
        with pytest.raises(exc) as info:
            make(SDE, score).solve(_x(), method=method.split("-")[0], throw=throw, **kw)
        assert info.value is raised[-1] and not isinstance(info.value, sdekit.SDEKitError)
        assert any(entry.name == "score" for entry in info.traceback), "the score's frame must be in the traceback"


def test_an_exception_after_an_earlier_nan_is_not_swallowed():
    calls = []

    def score(x, t):
        calls.append(1)
        if len(calls) == 6:
            raise _Mine("later")
        return torch.where((torch.arange(x.shape[0]) == 0).reshape(-1, 1), float("nan"), -x)
    with pytest.raises(_Mine):
        sdekit.reverse(SDE, score).solve(_x(), method="euler", steps=10, seed=0)


def test_the_score_never_sees_a_nan_time_and_the_method_is_blamed():
    seen = []

    def score(x, t):
        seen.append(t.clone())
        return -x
    rev = sdekit.reverse(SDE, score)
    x = _x(n=2)
    out = rev.drift(torch.tensor([0.5, float("nan")], dtype=torch.float64), x)
    assert not bool(torch.isnan(seen[-1]).any())
    assert bool(torch.isfinite(out[0]).all())
    record = rev.evaluator.first_non_finite()
    assert record.cause == "time" and record.samples == [1]
    from sdekit._solve import _non_finite_message
    msg = _non_finite_message(record)
    assert "not of score_fn" in msg and not msg.startswith("score_fn")


class _NaNDiffusion(sdekit.VPSDE):
    def g(self, t, x):
        g = super().g(t, x)
        return torch.where(t < 0.5, torch.full_like(g, float("nan")), g)


def test_a_nan_diffusion_is_not_blamed_on_the_score():
    out = sdekit.reverse(_NaNDiffusion(), _standard).solve(_x(), method="euler", steps=10, seed=0, throw=False)
    assert out.result is sdekit.Result.NON_FINITE and bool(out.failed.all())
    assert not out.detail.startswith("score_fn returned") and "not score_fn" in out.detail


@pytest.mark.parametrize("bad,message", [
    (lambda x: None, "returned NoneType at evaluation 3"),
    (lambda x: -x[:, :1], "returned shape (4, 1)"),
    (lambda x: (-x).double(), "returned torch.float64 for x of torch.float32 at evaluation 3"),
    (lambda x: -x.to("meta"), "on meta"),
])
@pytest.mark.parametrize("method,kw", [("rk4", dict(steps=5)), ("euler-sde", dict(steps=5, seed=0))])
def test_the_scores_output_is_checked_at_every_call(bad, message, method, kw):
    calls = []

    def score(x, t):
        calls.append(1)
        return bad(x) if len(calls) == 3 else -x
    make = sdekit.reverse if method == "euler-sde" else sdekit.probability_flow
    with pytest.raises(sdekit.ScoreFunctionError) as info:
        make(SDE, score).solve(_x(dtype=torch.float32), method=method.split("-")[0], **kw)
    assert message in str(info.value) and "(step " in str(info.value)


@pytest.mark.parametrize("method,kw,make", [("rk4", dict(steps=5), sdekit.probability_flow),
                                            ("dopri5", {}, sdekit.probability_flow),
                                            ("euler", dict(steps=5, seed=0), sdekit.reverse),
                                            ("srk", dict(steps=5, seed=0), sdekit.reverse)])
def test_a_score_that_writes_into_x_leaves_the_callers_state_alone(method, kw, make):
    def score(x, t):
        x.mul_(0.5)
        return -x
    x = _x()
    before = x.clone()
    make(SDE, score).solve(x, method=method, **kw)
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_states_hand_the_score_float32_times(dtype):
    """1000 distinct float64 times reach the score as 1000 distinct float32 times (bfloat16 keeps ~500)."""
    seen = []

    def score(x, t):
        seen.append(t)
        return -x
    rev = sdekit.reverse(SDE, score)
    x = _x(n=1).to(dtype)
    times = torch.linspace(SDE.T, SDE.eps, 1000, dtype=torch.float64)
    for t in times:
        out = rev.drift(t.reshape(1), x)
        assert out.dtype == dtype
    assert {s.dtype for s in seen} == {torch.float32}
    assert len({float(s) for s in seen}) == 1000
    rev.evaluator(x, times[:1])
    assert seen[-1].dtype == torch.float32 and float(seen[-1]) == float(times[0].float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_sde_still_solves(dtype):
    """The forward SDE's drift is the SDE's own coefficient: it keeps seeing times in the state's dtype."""
    sol = sdekit.forward(SDE).solve(_x(dtype=torch.float32).to(dtype), method="euler", steps=10, seed=0)
    assert sol.success and sol.x.dtype == dtype


# ---------------------------------------------------------------------------------------------
# §5 the result keeps the state's dtype
# ---------------------------------------------------------------------------------------------

class _Float64Increments:
    """A Brownian motion of torchsde's interface whose increments are float64 and which declares no dtype."""

    levy_area_approximation = "none"

    def __init__(self, bm):
        self.bm = bm
        self.shape = bm.shape

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        return self.bm(ta, tb)


def test_float64_noise_with_a_float32_state_returns_float32():
    x = _x(dtype=torch.float32)
    bm = _Float64Increments(sdekit.brownian_motion(0.0, SDE.T - SDE.eps, (4, 2), dtype=torch.float64, seed=0))
    sol = sdekit.reverse(SDE, _standard).solve(x, method="euler", steps=10, noise=bm, save_at=[0.5])
    assert sol.x.dtype == torch.float32 and sol.path.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# §6 autograd and memory
# ---------------------------------------------------------------------------------------------

def _net_score():
    lin = torch.nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(-torch.eye(2, dtype=torch.float64))

    def score(x, t):
        return lin(x)
    return lin, score


@pytest.mark.parametrize("method,kw,make", [("rk4", dict(steps=5), sdekit.probability_flow),
                                            ("dopri5", {}, sdekit.probability_flow),
                                            ("euler", dict(steps=5, seed=0), sdekit.reverse)])
def test_no_graph_unless_asked(method, kw, make):
    lin, score = _net_score()
    x = _x()
    plain = make(SDE, score).solve(x, method=method, **kw)
    assert not plain.x.requires_grad and plain.x.grad_fn is None
    asked = make(SDE, score).solve(x, method=method, grad=True, **kw)
    assert asked.x.requires_grad
    (g,) = torch.autograd.grad(asked.x.sum(), lin.weight)
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
    assert torch.allclose(plain.x, asked.x.detach(), rtol=0, atol=1e-12)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(make(SDE, score).solve(xr, method=method, **kw).x.sum(), xr)
    assert bool(torch.isfinite(gx).all())


def test_scipy_refuses_to_keep_a_graph():
    lin, score = _net_score()
    with pytest.raises(sdekit.MethodArgumentError, match="graph"):
        sdekit.probability_flow(SDE, score).solve(_x(), method="RK45", grad=True)
    with pytest.raises(sdekit.MethodArgumentError):
        sdekit.probability_flow(SDE, score).solve(_x().requires_grad_(True), method="RK45")
    assert sdekit.probability_flow(SDE, score).solve(_x(), method="RK45").success


def _score_for_pickle(x, t):
    return -x


def test_the_evaluator_does_not_grow_under_direct_torchdiffeq_use():
    pf = sdekit.probability_flow(SDE, _score_for_pickle)
    x = _x()
    ts = torch.tensor([SDE.T, SDE.eps], dtype=torch.float64)
    torchdiffeq.odeint(pf, x, ts, method="dopri5")
    size = len(pickle.dumps(pf))
    for _ in range(5):
        torchdiffeq.odeint(pf, x, ts, method="dopri5")
    assert len(pickle.dumps(pf)) == size
    assert pf.nfe > 0


def test_process_nfe_counts_its_solves():
    pf = sdekit.probability_flow(SDE, _standard)
    sol = pf.solve(_x(), method="rk4", steps=5)
    assert sol.nfe == 20 and pf.nfe == 20
    sdekit.solve(pf, _x(), method="euler", steps=3)
    assert pf.nfe == 23
    rev = sdekit.reverse(SDE, _nan_for(0))
    out = rev.solve(_x(), method="euler", steps=10, seed=0, throw=False)
    assert rev.nfe == out.nfe == 10


@pytest.mark.parametrize("method,kw", [("euler", dict(steps=50, seed=0)), ("dopri5", dict(rtol=1e-9, atol=1e-9))])
def test_max_steps_error_says_what_to_do(method, kw):
    make = sdekit.reverse if "seed" in kw else sdekit.probability_flow
    with pytest.raises(sdekit.SolveError, match="raise max_steps"):
        make(SDE, _standard).solve(_x(), method=method, max_steps=3, **kw)


def test_mixture_sampling_unchanged_by_the_checks():
    """A plain solve on the 2-D mixture still succeeds, with every row valid and no graph."""
    mix = GaussianMixture.default_2d(SDE)
    x = SDE.prior_sampling((256, 2), generator=torch.Generator().manual_seed(0))
    sol = sdekit.reverse(SDE, mix.score).solve(x, method="euler", steps=50, seed=0)
    assert sol.success and not bool(sol.failed.any()) and sol.x.grad_fn is None and sol.t == SDE.eps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_solve_hands_the_score_every_grid_time(dtype):
    """Through torchsde's stepping too: 1000 Euler steps show the score 1000 distinct float32 times."""
    seen = []

    def score(x, t):
        seen.append(t)
        return -x
    sol = sdekit.reverse(SDE, score).solve(_x(n=2).to(dtype), method="euler", steps=1000, seed=0)
    assert sol.success and sol.x.dtype == dtype
    assert {s.dtype for s in seen} == {torch.float32}
    assert len({float(s[0]) for s in seen}) == 1000
