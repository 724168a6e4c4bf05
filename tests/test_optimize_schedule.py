"""sdekit.optimize_schedule: valid grids that beat the stock schedule on calibration and held-out states, the saved
file and its checks, one-line refusals of bad input, and the study's ``schedule=optimized`` rows."""

import json
import math
import os

import pytest
import torch

import sdekit
from sdekit.validation import GaussianMixture

torch.set_num_threads(1)


def _flow(sde):
    data = GaussianMixture.default_2d(sde)
    return data, sdekit.probability_flow(sde, data.score)


def _states(data, sde, n, seed):
    return data.sample(n, t=sde.T, generator=torch.Generator().manual_seed(seed))


def _one_line(err):
    text = str(err.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def vp_schedule():
    sde = sdekit.VPSDE()
    data, pf = _flow(sde)
    x_cal = _states(data, sde, 128, 1)
    return sde, data, pf, x_cal, sdekit.optimize_schedule(pf, "dpmpp_2m", 4, x_cal, candidates=16, polish=40)


def test_grid_is_valid(vp_schedule):
    sde, _, _, x_cal, s = vp_schedule
    g = s.grid
    assert g.dtype == torch.float64 and g.device.type == "cpu" and g.shape == (5,)
    assert float(g[0]) == sde.T and float(g[-1]) == sde.eps
    assert bool((g.diff() < 0).all())
    assert s.steps == 4 and s.calibration == x_cal.shape[0] and s.method == "sdekit.dpmpp_2m"
    assert s.stock_schedule == "logsnr" and s.variable == "log-SNR"
    assert s.error <= s.stock_error and s.improvement >= 1


def test_cost_is_counted(vp_schedule):
    """score_calls equals the calls a counting score sees; evaluations count samples too."""
    sde, data, _, x_cal, _ = vp_schedule
    calls = []

    def score(x, t):
        calls.append(x.shape[0])
        return data.score(x, t)

    pf = sdekit.probability_flow(sde, score)
    s = sdekit.optimize_schedule(pf, "dpmpp_2m", 3, x_cal[:32], candidates=8, polish=6)
    assert s.score_calls == len(calls) > 0
    assert s.evaluations == sum(calls) - 3 * 2      # the three fingerprint probes of two states are not evaluations
    assert s.seconds > 0


def _paired_gain(pf, method, steps, grid, x, exact, options=None):
    """Per-sample squared errors of the stock and the optimized grid on ``x``: their mean difference and its
    standard error (the two solves share the samples, so the difference is paired)."""
    stock = pf.solve(x, method=method, steps=steps, options=options).x
    opt = pf.solve(x, method=method, grid=grid, options=options).x
    d = (stock - exact).pow(2).sum(1) - (opt - exact).pow(2).sum(1)
    return float(d.mean()), float(d.std() / math.sqrt(d.numel())), stock, opt


@pytest.mark.parametrize("sde_name, method, steps", [("vp", "dpmpp_2m", 4), ("ve", "unipc", 4),
                                                     ("subvp", "ipndm", 5), ("ve", "euler", 4)])
def test_beats_stock_on_calibration_and_held_out_states(sde_name, method, steps):
    """On calibration states by construction; on 512 held-out states (another seed) the paired mean gain in
    squared error is positive by more than three of its standard errors."""
    sde = {"vp": sdekit.VPSDE(), "ve": sdekit.VESDE(), "subvp": sdekit.SubVPSDE()}[sde_name]
    data, pf = _flow(sde)
    x_cal = _states(data, sde, 128, 1)
    s = sdekit.optimize_schedule(pf, method, steps, x_cal, candidates=16, polish=50)
    assert s.error < s.stock_error
    x_test = _states(data, sde, 512, 2)
    exact = pf.solve(x_test, method="dopri5", rtol=1e-9, atol=1e-9).x
    gain, se, stock, opt = _paired_gain(pf, method, steps, s.grid, x_test, exact)
    assert gain > 3 * se, (gain, se)
    assert float((opt - exact).pow(2).mean()) < float((stock - exact).pow(2).mean())


def test_options_are_the_solves(vp_schedule):
    """The grid is made for the method's options: the reported error is the solve's with them."""
    sde, data, pf, x_cal, _ = vp_schedule
    opts = {"lower_order_final": False}
    s = sdekit.optimize_schedule(pf, "dpmpp_2m", 3, x_cal, options=opts, candidates=8, polish=10)
    ref = pf.solve(x_cal, method="dopri5", rtol=1e-9, atol=1e-9).x
    x = pf.solve(x_cal, method="dpmpp_2m", grid=s.grid, options=opts).x
    assert float((x - ref).pow(2).mean().sqrt()) == pytest.approx(s.error, rel=1e-6)
    assert s.options == opts


def test_float32_states_and_span():
    sde = sdekit.VESDE()
    data, pf = _flow(sde)
    x = _states(data, sde, 32, 3).float()
    s = sdekit.optimize_schedule(pf, "ddim", 3, x, candidates=8, polish=6, t_end=1e-3)
    assert s.dtype == "float32" and float(s.grid[-1]) == 1e-3 and s.grid.dtype == torch.float64


def test_save_load_round_trip_and_refusals(vp_schedule, tmp_path):
    sde, data, pf, _, s = vp_schedule
    path = s.save(tmp_path / "grid.json")
    back = sdekit.load_schedule(path, pf, method="dpmpp_2m", steps=4)
    assert torch.equal(back.grid, s.grid) and back.grid.dtype == torch.float64
    assert (back.method, back.steps, back.error, back.sde) == (s.method, s.steps, s.error, repr(sde))
    assert json.loads(open(path).read())["format"] == sdekit.OptimizedSchedule.load.__globals__["FORMAT"]
    cases = [
        (dict(process=sdekit.probability_flow(sdekit.VESDE(), data.score)), "VPSDE"),
        (dict(process=pf, method="unipc"), "sdekit.dpmpp_2m"),
        (dict(process=pf, steps=5), "4 steps"),
        (dict(process=pf, options={"lower_order_final": False}), "options"),
        (dict(process=sdekit.probability_flow(sde, lambda x, t: 1.01 * data.score(x, t))), "another score"),
    ]
    for kw, says in cases:
        with pytest.raises(sdekit.InvalidParameterError) as err:
            sdekit.load_schedule(path, **kw)
        assert says in _one_line(err)
    with pytest.raises(sdekit.InvalidParameterError) as err:
        sdekit.load_schedule(tmp_path / "none.json", pf)
    assert "no schedule file" in _one_line(err)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(sdekit.InvalidParameterError) as err:
        sdekit.load_schedule(tmp_path / "bad.json", pf)
    assert "not a schedule file" in _one_line(err)


def test_model_file_fingerprint(vp_schedule, tmp_path):
    sde, data, pf, x_cal, _ = vp_schedule
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights v1")
    s = sdekit.optimize_schedule(pf, "ddim", 2, x_cal[:16], candidates=6, polish=4, model=model)
    path = s.save(tmp_path / "g.json")
    assert len(s.model["sha256"]) == 64
    sdekit.load_schedule(path, pf, model=model)
    model.write_bytes(b"weights v2")
    with pytest.raises(sdekit.InvalidParameterError) as err:
        sdekit.load_schedule(path, pf, model=model)
    assert "sha256" in _one_line(err)


def test_bad_input_one_line(vp_schedule):
    sde, data, pf, x_cal, _ = vp_schedule
    x = x_cal[:8]
    cases = [
        (dict(method="dpmpp_2m", steps=0, x_T=x), sdekit.InvalidParameterError, "steps"),
        (dict(method="dpmpp_2m", steps=2.5, x_T=x), sdekit.InvalidParameterError, "steps"),
        (dict(method="euler_ancestral", steps=3, x_T=x), sdekit.MethodArgumentError, "stochastic"),
        (dict(method="dopri5", steps=3, x_T=x), sdekit.MethodArgumentError, "adaptive"),
        (dict(method="dpm_solver_fast", steps=3, x_T=x), sdekit.MethodArgumentError, "dpm_solver_3"),
        (dict(method="dpmpp_2x", steps=3, x_T=x), sdekit.UnknownMethodError, "did you mean"),
        (dict(method="dpmpp_2m", steps=3, x_T=x[:, 0]), sdekit.ShapeError, "(batch, *event_shape)"),
        (dict(method="dpmpp_2m", steps=3, x_T=x.clone().fill_(math.nan)), sdekit.InvalidParameterError, "NaN"),
    ]
    for kw, cls, says in cases:
        with pytest.raises(cls) as err:
            sdekit.optimize_schedule(pf, **kw)
        assert says in _one_line(err)
    with pytest.raises(sdekit.ShapeError) as err:
        sdekit.optimize_schedule(pf.replace(event_shape=(3,)), "dpmpp_2m", 3, x)
    assert "event shape" in _one_line(err)
    with pytest.raises(sdekit.MethodArgumentError) as err:
        sdekit.optimize_schedule(sdekit.reverse(sde, data.score), "ddim", 3, x)
    assert "probability_flow" in _one_line(err)

    def nan_score(x, t):
        return torch.full_like(x, math.nan)

    with pytest.raises(sdekit.ScoreFunctionError) as err:
        sdekit.optimize_schedule(sdekit.probability_flow(sde, nan_score), "dpmpp_2m", 3, x)
    assert "finite" in _one_line(err)


# -- the study's rows -----------------------------------------------------------------------------
def test_study_spec_parses_and_refuses():
    from sdekit._study_engine._spec import as_method_spec
    spec = as_method_spec("ode:dpmpp_2m[schedule=optimized]")
    assert spec.schedule == "optimized" and spec.label == "ode:sdekit.dpmpp_2m[schedule=optimized]"
    assert as_method_spec({"method": "unipc", "schedule": "optimized"}).process == "ode"
    for bad in ("sde:ddim[schedule=optimized]", "dopri5[schedule=optimized]", "dpmpp_2m[order=2]",
                "dpmpp_2m[schedule=optimized"):
        with pytest.raises(sdekit.InvalidParameterError) as err:
            as_method_spec(bad)
        _one_line(err)


def test_study_optimized_rows_cached_and_apart(tmp_path, monkeypatch):
    from sdekit._study_engine import _runner
    from sdekit.studies import MixtureProblem
    problem = MixtureProblem(sdekit.VPSDE())
    monkeypatch.setattr(_runner, "CALIBRATION_SAMPLES", 32)
    made = []
    import sdekit._optimized_schedule as opt
    real = opt.optimize_schedule

    def counted(*a, **kw):
        made.append(a[2])
        return real(*a, **kw, candidates=8, polish=8)

    monkeypatch.setattr(opt, "optimize_schedule", counted)
    methods = ["ode:dpmpp_2m", "ode:dpmpp_2m[schedule=optimized]"]
    results = tmp_path / "results.jsonl"
    table = sdekit.study(problem, methods, "steps=3", samples=64, results=results)
    assert made == [3]
    rows = {r["label"]: r for r in table.rows}
    assert rows["ode:sdekit.dpmpp_2m[schedule=optimized]"]["steps"] == 3
    assert rows["ode:sdekit.dpmpp_2m[schedule=optimized]"]["result"] == "SUCCESS"
    files = os.listdir(tmp_path / "schedules")
    assert len(files) == 1
    saved = sdekit.load_schedule(tmp_path / "schedules" / files[0], problem.ode_process())
    assert saved.calibration == 32
    # a new seed reuses the cached grid: nothing is optimized again
    sdekit.study(problem, methods, "steps=3", samples=64, seeds=[1], results=results)
    assert made == [3]
    with pytest.raises(sdekit.InvalidParameterError) as err:
        sdekit.study(problem, methods, "steps=3", samples=64, seeds=[2 ** 64 - 1], results=results)
    assert "calibration" in _one_line(err)
