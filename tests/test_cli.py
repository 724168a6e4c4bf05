"""The sdekit command: study (default, options, TOML, module:attr), methods, sample, orders; one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdekit.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = ["--samples", "200", "--quiet"]


def test_study_writes_results_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["study", "--methods", "ode:dpmpp_2m,dopri5", "--budgets", "steps=4,8,16;tol=1e-3,1e-5",
               "--out", str(out)] + SMALL)
    assert rc == 0
    assert capsys.readouterr().out == ""                              # --quiet
    names = set(os.listdir(out))
    for stem in ("convergence", "work_precision_nfe", "work_precision_time", "samples"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert {"results.jsonl", "summary.md", "rows.csv"} <= names
    assert len((out / "results.jsonl").read_text().splitlines()) == 5
    summary = (out / "summary.md").read_text()
    assert "verdict" in summary and "Fitted orders" in summary and "ode:sdekit.dpmpp_2m" in summary


def test_study_prints_threads_and_table_and_resumes(tmp_path, capsys):
    args = ["study", "--methods", "ode:ddim", "--budgets", "4,8", "--samples", "100", "--out", str(tmp_path),
            "--no-plots"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "threads: 1 (small problem: 200 numbers per state" in text
    assert "| ode:sdekit.ddim | steps=8 |" in text and "0 reused" in text
    assert main(args) == 0
    assert "2 reused" in capsys.readouterr().out


def test_study_from_toml(tmp_path, capsys):
    conf = tmp_path / "study.toml"
    conf.write_text(f'''
[study]
sde = "ve"
samples = 100
out = "{tmp_path / 'toml-out'}"
methods = ["ode:ddim", {{ method = "dopri5", budgets = "tol=1e-3,1e-4" }}]
budgets = [4, 8]
''')
    assert main(["study", "--config", str(conf), "--no-plots", "--quiet"]) == 0
    rows = (tmp_path / "toml-out" / "rows.csv").read_text()
    assert "mixture-2d VESDE" in rows and "tol=0.0001" in rows and "steps=8" in rows


def test_study_with_a_users_score(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymodel.py").write_text("def score(x, t):\n    return -x\n")     # N(0, I) data under VP
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["study", "--score", "mymodel:score", "--methods", "ode:dpmpp_2m", "--budgets", "4,8",
                 "--out", "o", "--no-plots"] + SMALL) == 0
    rows = (tmp_path / "o" / "rows.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert len(rows) == 3 and "ode" in head and "sw2" not in head      # a fine solve is the reference


BAD = [
    (["study", "--bogus"], "unrecognized arguments"),
    (["study", "--methods", "nosuch"], "unknown method"),
    (["study", "--methods", "sde:dpmpp_2m"], "does not solve SDEs"),
    (["study", "--budgets", "steps=abc"], "not a number"),
    (["study", "--problem", "no_such_module:x"], "cannot import"),
    (["study", "--problem", "sdekit:no_such_thing"], "has no attribute"),
    (["study", "--score", "justtext"], "module:attribute"),
    (["study", "--dtype", "float16", "--methods", "ode:ddim"], "float32 or float64"),
    (["study", "--config", "missing.toml"], "no config file"),
    (["study", "--sde", "xx"], "unknown --sde"),
    (["study", "--samples", "1"], "samples >= 2"),
    (["study", "--device", "nodevice"], "not a torch device"),
    (["sample", "--steps", "4", "--out", "x.txt"], ".pt or .npz"),
    (["sample"], "--steps N"),
    (["methods", "--kind", "pde"], "sde or ode"),
    (["orders", "--parts", "nope"], "choose from"),
]


@pytest.mark.parametrize("argv, text", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_errors_are_one_line_with_a_fix_and_exit_2(argv, text, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdekit: error: ") and text in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content, text", [("samples = [\n", "bad TOML"), ("speed = 3\n", "unknown keys"),
                                           ('threads = "two"\n', "threads must be an integer"),
                                           ("reference = 3\n", "reference must be a table"),
                                           ('methods = ["nosuch"]\n', "unknown method")])
def test_bad_toml_is_one_line(content, text, tmp_path, capsys):
    conf = tmp_path / "s.toml"
    conf.write_text(content)
    assert main(["study", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err


@pytest.mark.parametrize("command", [[], ["study"], ["methods"], ["sample"], ["orders"]])
def test_help_on_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command + ["--help"])
    assert e.value.code == 0
    assert "usage: sdekit" in capsys.readouterr().out


def test_methods_lists_the_registry(capsys):
    assert main(["methods", "--backend", "sdekit"]) == 0
    out = capsys.readouterr().out
    assert "dpmpp_2m" in out and "torchdiffeq" not in out


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_sample_saves_samples(suffix, tmp_path, capsys):
    path = tmp_path / f"x{suffix}"
    assert main(["sample", "--method", "ode:dpmpp_2m", "--steps", "6", "--samples", "64", "--out", str(path)]) == 0
    x = torch.load(path)["x"] if suffix == ".pt" else torch.as_tensor(np.load(path)["x"])
    assert x.shape == (64, 2) and torch.isfinite(x).all()
    assert "64 samples of mixture-2d VPSDE by ode:sdekit.dpmpp_2m" in capsys.readouterr().out


def test_orders_runs_the_validation_table(monkeypatch):
    import sdekit.studies
    seen = []
    monkeypatch.setattr(sdekit.studies, "run_orders", lambda argv: seen.append(argv) or 0)
    assert main(["orders", "--parts", "weak,ode", "--verbose"]) == 0
    assert seen == [["--parts", "weak,ode", "--threads", "1", "--verbose"]]


def test_python_dash_m_sdekit_is_the_command():
    out = subprocess.run([sys.executable, "-m", "sdekit", "methods", "--kind", "ode"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0 and "dopri5" in out.stdout and "euler_ancestral" not in out.stdout


def test_the_documented_toml_is_valid(tmp_path):
    import pathlib
    import re

    from sdekit._study_engine._spec import as_method_spec, parse_budgets
    from sdekit._commands.study import _read_toml
    page = (pathlib.Path(__file__).parents[1] / "docs" / "study.md").read_text()
    conf = tmp_path / "study.toml"
    conf.write_text(re.search(r"```toml\n(.*?)```", page, re.S).group(1))
    data = _read_toml(str(conf))
    specs = [as_method_spec(m) for m in data["methods"]]
    assert [s.label for s in specs] == ["sde:torchsde.euler", "sde:sdekit.pc[corrector=annealed_langevin,snr=0.16]",
                                        "ode:torchdiffeq.dopri5"]
    assert len(parse_budgets(data["budgets"])) == 4 and len(specs[2].budgets) == 3


def test_strict_exits_1_when_a_row_is_not_ok(tmp_path):
    args = ["study", "--methods", "ode:ddim", "--budgets", "2", "--out", str(tmp_path), "--no-plots"] + SMALL
    assert main(args) == 0                                   # two DDIM steps: verdict CHECK, but it ran
    assert main(args + ["--strict"]) == 1


def test_study_of_a_problem_without_two_d_samples_writes_its_plots(tmp_path):
    """An exact-solution problem (no 2-D density to draw): the report's plots are written, not a crash."""
    out = tmp_path / "gbm"
    assert main(["study", "--problem", "exact:gbm", "--methods", "euler", "--budgets", "4,8", "--samples", "64",
                 "-q", "--out", str(out)]) == 0
    assert (out / "summary.md").exists() and (out / "convergence.png").exists()


def test_budgets_no_method_can_use_are_refused_before_any_folder(tmp_path, capsys):
    """Steps-only budgets with the default methods (dopri5 adapts): one line, exit 2, nothing written."""
    out = tmp_path / "never"
    assert main(["study", "--budgets", "8,16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no budget applies" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
