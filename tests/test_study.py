"""sdekit.study: budgets and methods, fitted orders with intervals, error measures, resuming, parallel rows."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import sdekit
from sdekit import Budget, InvalidParameterError, MethodSpec, StudyProblem, UnknownMethodError, study
from sdekit._study_engine import fit_slope
from sdekit._study_engine._results import append_row, read_results
from sdekit._study_engine._runner import keyed_noise
from sdekit.studies import ExactSDEProblem, GaussianProblem, MixtureProblem

pytestmark = pytest.mark.usefixtures("single_thread")


# -- budgets and methods ----------------------------------------------------------------------
def test_budgets_parse_every_form():
    from sdekit._study_engine._spec import parse_budgets
    assert parse_budgets("8,16") == [Budget("steps", 8), Budget("steps", 16)]
    assert parse_budgets("nfe=10;tol=1e-3,1e-5") == [Budget("nfe", 10), Budget("tol", 1e-3), Budget("tol", 1e-5)]
    assert parse_budgets([4, "dt=0.5"]) == [Budget("steps", 4), Budget("dt", 0.5)]
    for bad in ("steps=0", "tol=x", "speed=3", "steps=2.5"):
        with pytest.raises(InvalidParameterError):
            parse_budgets(bad)


def test_method_specs_resolve_process_and_budgets():
    assert MethodSpec("euler").method == "torchsde.euler" and MethodSpec("euler").process == "sde"
    assert MethodSpec("ode:euler").method == "torchdiffeq.euler"
    assert MethodSpec("dpmpp_2m").process == "ode"       # an ODE-only method solves the flow
    assert MethodSpec("sde:ddim").label == "sde:sdekit.ddim"
    shared = [Budget("steps", 8), Budget("tol", 1e-3)]
    assert MethodSpec("dopri5").budgets_from(shared) == [Budget("tol", 1e-3)]
    assert MethodSpec("ode:ddim").budgets_from(shared) == [Budget("steps", 8)]
    assert MethodSpec("euler").budgets_from(shared) == [Budget("steps", 8)]   # torchsde: fixed unless told
    with pytest.raises(UnknownMethodError):
        MethodSpec("sde:dpmpp_2m")                          # a flow-only sampler on the SDE
    with pytest.raises(UnknownMethodError):
        MethodSpec("nosuch")


# -- fitted orders ----------------------------------------------------------------------------
def test_fit_slope_matches_fit_order_and_covers_the_true_slope():
    from sdekit.validation import fit_order
    g = torch.Generator().manual_seed(0)
    h = [2.0 ** -k for k in range(3, 9)]
    covered = 0
    for trial in range(200):
        noise = 0.1 * torch.randn(len(h), generator=g, dtype=torch.float64)
        err = [3.0 * x ** 1.5 * math.exp(float(e)) for x, e in zip(h, noise)]
        fit = fit_slope(h, err)
        assert fit.slope == pytest.approx(fit_order(h, err), abs=1e-12)
        covered += fit.lo <= 1.5 <= fit.hi
    # a 95% interval covers the true slope in about 190 of 200 trials (binomial sd ~3)
    assert 178 <= covered <= 199
    two = fit_slope([0.1, 0.05], [1.0, 0.25])
    assert two.slope == pytest.approx(2.0) and math.isnan(two.lo)
    assert math.isnan(fit_slope([0.1], [1.0]).slope)


# -- error measures ---------------------------------------------------------------------------
def test_strong_orders_of_euler_on_exact_solution_sdes():
    """Euler-Maruyama: strong order 1/2 with multiplicative noise, 1 with additive noise, against the exact
    solution on the row's own Brownian path."""
    for name, expected in (("gbm", 0.5), ("additive", 1.0)):
        table = study(ExactSDEProblem(name), ["euler"], [8, 16, 32, 64], samples=400)
        (order,) = table.orders()
        assert order["expected"] == expected
        assert abs(order["slope"] - expected) < 0.2, order
        assert order["verdict"] == "ok"
        for r in table:
            assert r["strong_lo"] < r["strong"] < r["strong_hi"] and r["strong_se"] > 0


def test_ode_orders_against_the_exact_flow_map():
    table = study(GaussianProblem(sdekit.VESDE(sigma_max=10.0)), ["ode:dpmpp_2m", "ode:rk4"], [8, 16, 32, 64],
                  samples=200)
    fits = {o["label"]: o for o in table.orders()}
    assert abs(fits["ode:sdekit.dpmpp_2m"]["slope"] - 2) < 0.3
    assert abs(fits["ode:torchdiffeq.rk4"]["slope"] - 4) < 0.3
    assert all(r["ode"] is not None and r["nfe"] > 0 and r["wall_time"] >= 0 for r in table)
    # NFE of rk4 is 4 per step
    assert [r["nfe"] for r in table if r["method"] == "rk4"] == [32, 64, 128, 256]


def test_nfe_budgets_and_float32_rows():
    table = study(GaussianProblem(), ["ode:dpm_solver_2", "ode:dpmpp_2m"], "nfe=8,16", samples=50,
                  dtype=torch.float32)
    assert [(r["steps"], r["nfe"]) for r in table] == [(4, 8), (8, 16), (8, 8), (16, 16)]   # 2 and 1 per step
    assert all(r["dtype"] == "float32" and r["ode"] > 0 for r in table)
    assert table.samples["ode:sdekit.dpm_solver_2"].dtype == torch.float32
    fit = table.fit("ode:sdekit.dpm_solver_2", x="nfe")
    assert fit.slope < 0                                     # error falls as the work grows


def test_torchsde_rows_read_the_reference_path():
    """A row's Brownian motion, built from its seed and queried on the reference grid first, gives a coarse
    step the sum of the reference's increments over it: the coarse solve and the reference share one path,
    whatever other rows ran before (each row builds its own)."""
    from sdekit._study_engine._runner import torchsde_noise
    problem = GaussianProblem()
    process = problem.sde_process()
    x = problem.initial(5, torch.Generator().manual_seed(0))
    fine = torchsde_noise(problem, process, x, seed=7, steps=16)
    s = [float(v) for v in process._t_of_s(sdekit.uniform_grid(problem.t_start, problem.t_end, 16))]
    steps = [fine(a, b) for a, b in zip(s[:-1], s[1:])]
    coarse = torchsde_noise(problem, process, x, seed=7, steps=16)
    for k in range(4):
        assert torch.allclose(coarse(s[4 * k], s[4 * k + 4]), sum(steps[4 * k:4 * k + 4]), atol=1e-12)
    other = torchsde_noise(problem, process, x, seed=8, steps=16)
    assert not torch.allclose(other(s[0], s[4]), coarse(s[0], s[4]))


def test_native_rows_use_the_keyed_path_of_their_seed():
    """A native SDE row's samples are those of a solve on the keyed path of its seed built ``refine=True`` (the
    ancestral steps read the path, which does not depend on the grid, so the pathwise errors converge)."""
    problem = MixtureProblem()
    table = study(problem, ["sde:euler_ancestral"], [6], samples=50, seeds=[3], reference=dict(steps=16))
    x0 = problem.initial(50, torch.Generator().manual_seed(3))
    path = keyed_noise(problem, x0, 3)
    assert isinstance(path, sdekit.KeyedBrownian) and path.refine and path.seed == 3
    direct = problem.sde_process().solve(x0, method="euler_ancestral", steps=6, noise=path).x
    assert torch.equal(table.samples["sde:sdekit.euler_ancestral"], direct)


def test_distributional_measures_have_floors_and_verdicts():
    table = study(MixtureProblem(), ["dopri5", "ode:ddim"], "steps=2;tol=1e-5", samples=400)
    rows = {r["label"]: r for r in table}
    good, bad = rows["ode:torchdiffeq.dopri5"], rows["ode:sdekit.ddim"]
    for r in (good, bad):
        assert r["sw2_floor"] > 0 and r["sw2_floor_std"] > 0 and r["modes_z"] >= 0
    assert good["verdict"] == "ok"
    assert bad["verdict"] == "CHECK"                       # two DDIM steps cannot carry the mixture
    assert bad["weak:sqnorm"] > good["weak:sqnorm"]
    assert "CHECK" in table.report() and "floor" in table.summary()


def test_to_pandas_needs_pandas(monkeypatch):
    table = study(GaussianProblem(), ["ode:ddim"], [4], samples=20)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(InvalidParameterError, match="pip install pandas"):
        table.to_pandas()


def test_a_failed_reference_says_so():
    def score(x, t):                    # non-finite below t = 0.3: no reference solve can get through
        return torch.where((t < 0.3)[:, None], torch.full_like(x, float("nan")), -x)
    problem = StudyProblem(sdekit.VPSDE(), score, name="broken")
    with pytest.raises(sdekit.SolveError, match="the ode reference of seed 0 failed.*reference=dict"):
        study(problem, ["ode:dpmpp_2m"], [4], samples=10)


def test_study_refuses_bad_arguments():
    p = GaussianProblem()
    with pytest.raises(InvalidParameterError, match="no budget applies"):
        study(p, ["dopri5"], [8], samples=10)
    with pytest.raises(InvalidParameterError, match="samples"):
        study(p, ["ode:ddim"], [8], samples=1)
    with pytest.raises(InvalidParameterError, match="label"):
        study(p, ["ode:ddim", "ode:sdekit.ddim"], [8], samples=10)
    with pytest.raises(InvalidParameterError, match="forward SDE"):
        study(ExactSDEProblem("gbm"), ["ode:rk4"], [8], samples=10)
    with pytest.raises(InvalidParameterError, match="unknown reference"):
        study(p, ["ode:ddim"], [8], samples=10, reference=dict(stepz=3))


# -- results that survive ---------------------------------------------------------------------
def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_time", "measures") and not k.endswith("_time")}
            for r in rows]


def test_resume_skips_done_rows_and_a_changed_config_recomputes(tmp_path):
    path = tmp_path / "r.jsonl"
    p = GaussianProblem()
    first = study(p, ["ode:ddim", "ode:dpmpp_2m"], [4, 8], samples=50, results=path)
    assert first.reused == 0 and len(path.read_text().splitlines()) == 4
    again = study(p, ["ode:ddim", "ode:dpmpp_2m"], [4, 8, 16], samples=50, results=path)
    assert again.reused == 4 and len(again) == 6 and len(path.read_text().splitlines()) == 6
    assert _strip(again.rows[:2]) == _strip(first.rows[:2])
    same = study(p, ["ode:ddim", "ode:dpmpp_2m"], [4, 8, 16], samples=50, results=path)
    assert same.reused == 6 and set(same.samples) == set(again.samples)        # the plots' samples, solved again
    assert all(torch.equal(same.samples[k], again.samples[k]) for k in same.samples)
    changed = study(p, ["ode:ddim"], [4], samples=60, results=path)     # another sample count: another config
    assert changed.reused == 0 and changed.stale == 6
    edited = StudyProblem(p.sde, lambda x, t: 0.9 * p.score(x, t), p.initial, name=p.name, config=p.config)
    assert edited.fingerprint() != StudyProblem(p.sde, p.score, p.initial, name=p.name,
                                                config=p.config).fingerprint()


def test_a_torn_last_line_is_skipped_and_the_next_row_starts_a_new_line(tmp_path):
    path = tmp_path / "r.jsonl"
    append_row(str(path), {"key": "a", "v": 1})
    with open(path, "a") as fh:
        fh.write('{"key": "b", "v"')                       # killed mid-write
    assert set(read_results(str(path))) == {"a"}
    append_row(str(path), {"key": "c", "v": 3})
    assert set(read_results(str(path))) == {"a", "c"}


SCRIPT = textwrap.dedent('''
    import json, sys, time, torch, sdekit
    from sdekit.studies import GaussianProblem
    torch.set_num_threads(1)

    class Slow(GaussianProblem):
        def measures(self, x, exact, seed):
            time.sleep(0.25)                                  # each row takes a while
            return super().measures(x, exact, seed)

    t = sdekit.study(Slow(), ["ode:ddim", "ode:dpmpp_2m"], [2, 3, 4, 5, 6], samples=20, results=sys.argv[1])
    print(json.dumps(dict(reused=t.reused, rows=len(t))))
''')


def test_sigkill_halfway_loses_nothing_and_repeats_nothing(tmp_path):
    script, path = tmp_path / "run.py", tmp_path / "r.jsonl"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = path.read_text().splitlines()
    done = len(read_results(str(path)))
    assert 3 <= done < 10, "the kill should land halfway"
    out = subprocess.run([sys.executable, str(script), str(path)], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary == dict(reused=done, rows=10)
    lines = path.read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines if line.strip().endswith("}")]
    assert len(keys) == len(set(keys)) == 10                # nothing repeated, nothing lost
    assert lines[:len(before) - 1] == before[:-1]           # finished rows untouched


def test_parallel_rows_equal_serial_rows(tmp_path):
    p = GaussianProblem()
    methods = ["sde:euler", "sde:dpmpp_2m_sde", "ode:unipc"]
    ref = dict(steps=32)                                    # a coarse reference: this test is about equality
    serial = study(p, methods, [4, 8], samples=60, seeds=[0, 1], reference=ref)
    parallel = study(p, methods, [4, 8], samples=60, seeds=[0, 1], workers=2, results=tmp_path / "p.jsonl",
                     reference=ref)
    assert _strip(parallel.rows) == _strip(serial.rows)
    for label, x in serial.samples.items():
        assert torch.equal(parallel.samples[label], x)


def test_the_documented_study_runs(tmp_path, monkeypatch, capsys):
    import pathlib
    import re
    page = (pathlib.Path(__file__).parents[1] / "docs" / "study.md").read_text()
    code = re.search(r"```python\n(.*?)```", page.split("## The Python API", 1)[1], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/study.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "[0.5, 1.0]"
    assert "ode:sdekit.dpmpp_2m ode 2.2 ok" in lines and "ode:sdekit.unipc ode 3.0 ok" in lines
    assert lines[-2].endswith(" ok") and (tmp_path / "mixture.jsonl").exists()
