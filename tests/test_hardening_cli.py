"""The sdekit command and its packaging, hardened: every package in the wheel, work and seeds refused up front,
one-line errors that name the fix, float32 networks end to end, ``sample --model``, ``--version``, ``methods
NAME``, and a ``--help`` that imports no torch."""

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest
import torch

import sdekit
from sdekit import InvalidParameterError
from sdekit.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The folders each installed package comes from (pyproject's package-dir mapping).
SOURCES = {"sdekit": "sdekit", "sdekit.adapters": "adapters", "sdekit.validation": "validation",
           "sdekit.studies": "studies"}
HEAVY = ("torch", "scipy", "torchsde", "torchdiffeq", "numpy", "matplotlib")


def _pyproject():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_on_disk():
    found = set()
    for name, folder in SOURCES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" not in rel.parts:
                found.add(".".join((name,) + rel.parts))
    return found


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdekit: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


# -- packaging ---------------------------------------------------------------------------------------------------
def test_pyproject_lists_every_package_folder():
    """A package folder missing from pyproject.toml is missing from every wheel: `import sdekit` then fails."""
    tool = _pyproject()["tool"]["setuptools"]
    assert set(tool["packages"]) == _packages_on_disk()
    assert {k: v for k, v in tool["package-dir"].items()} == {k: v for k, v in SOURCES.items() if k != "sdekit"}
    data = tool.get("package-data", {})
    for name, folder in SOURCES.items():              # any data file a package holds must be declared
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
                pkg = ".".join((name,) + path.parent.relative_to(ROOT / folder).parts)
                assert any(path.match(p) for p in data.get(pkg, [])), f"{path} is not in package-data"


def test_the_wheel_holds_every_package(tmp_path):
    """Build the wheel from a copy of the sources (nothing downloaded) and look inside."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_text((ROOT / name).read_text())
    import shutil
    for folder in SOURCES.values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                          "print(b.build_wheel(sys.argv[1]))", str(tmp_path / "dist")], cwd=src,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in _packages_on_disk():
        assert pkg.replace(".", "/") + "/__init__.py" in names, pkg
    assert "sdekit/_commands/sample.py" in names and "sdekit/_likelihood/_bpd.py" in names


def test_ci_installs_the_wheel_and_the_sdist_before_the_tests():
    text = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in text
    order = [text.index(w) for w in ("make install", "build_sdist", "build_wheel", "venv --without-pip", "--target",
                                     "walk_packages", "imported from outside the install", "-m sdekit methods",
                                     "make test")]
    assert order == sorted(order)


# -- --version, --help -------------------------------------------------------------------------------------------
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"sdekit {sdekit.__version__}\n"


_NO_TORCH = """
import sys, types
pkg = types.ModuleType("sdekit")          # the package without its __init__: what the command's own modules import
pkg.__path__ = [sys.argv[1]]
pkg.__version__ = "9.9"
sys.modules["sdekit"] = pkg
from sdekit.cli import main
for argv in (["--help"], ["--version"], ["study", "--help"], ["sample", "--help"], ["methods", "--help"],
             ["orders", "--help"]):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, argv
print(sorted(m for m in sys.modules if m.split(".")[0] in {heavy}))
"""


def test_help_and_version_import_no_torch():
    """The command's modules import torch and the rest only when a command runs."""
    code = _NO_TORCH.replace("{heavy}", repr(set(HEAVY)))
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "sdekit")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]


def test_sdekit_help_end_to_end_imports_no_torch():
    """`sdekit --help` as users run it: sdekit/__init__.py imports its submodules lazily, so neither `import sdekit`
    nor the help loads torch."""
    probe = "import sys, sdekit; print('torch' in sys.modules)"
    eager = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert eager.stdout.strip() == "False", eager.stdout + eager.stderr
    code = ("import sys, runpy; sys.argv = ['sdekit', '--help']\ntry:\n    runpy.run_module('sdekit', "
            "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False"


# -- work, seeds and settings refused up front -------------------------------------------------------------------
@pytest.fixture
def no_reference(monkeypatch):
    """Fail at once if a study gets as far as its references (without the up-front checks, minutes and GBs)."""
    import sdekit._study_engine._executors as executors

    def refuse(*a, **k):
        raise AssertionError("the study started building its references")
    monkeypatch.setattr(executors, "seed_context", refuse)


REFUSED = [
    (["--budgets", "100000000"], "more than the 1e+07"),
    (["--budgets", "dt=1e-9"], "more than the 1e+07"),
    (["--budgets", "2000000"], "--reference-steps N"),
    (["--budgets", "16", "--reference-steps", "100000000"], "reference steps must be a whole number from 1 to 1e+07"),
    (["--budgets", "16", "--reference-steps", "0"], "--reference-steps must be at least 1"),
    (["--budgets", "nan"], "not a finite number"),
    (["--budgets", "inf"], "not a finite number"),
    (["--budgets", "steps=16;dt=inf"], "not a finite number"),
    (["--budgets", "16", "--samples", "1e12"], "more than the 1e+07 a row takes"),
    (["--budgets", "16", "--samples", "2.5"], "whole number"),
    (["--budgets", "16", "--device", "meta"], "torch cannot compute on it"),
    (["--budgets", "16", "--seed", str(2 ** 64)], "[0, 2**64)"),
    (["--budgets", "16", "--seed", "-1"], "[0, 2**64)"),
    (["--budgets", "16", "--seed", str(2 ** 64 - 1), "--seeds", "2"], "below 2**64"),
]


@pytest.mark.parametrize("argv, words", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_study_refuses_up_front(argv, words, tmp_path, capsys, no_reference):
    out = tmp_path / "never"
    assert main(["study", "--methods", "sde:euler,sde:ddim", "--out", str(out), "-q"] + argv) == 2
    _one_line_error(capsys, words)
    assert not out.exists()


TOML = [
    ("budgets = {}\n", "no budgets in {}"),
    ("budgets = []\n", "no budgets in []"),
    ("methods = []\n", "methods is empty"),
    ('budgets = ""\n', "no budgets in ''"),
    ("study = 3\n", "must be a table"),
    ("[study]\nreference = { steps = 0 }\n", "reference steps must be a whole number"),
    ("[study]\nreference = { ode_tol = -1.0 }\n", "ode_tol must be a positive number"),
    ("samples = 1000000000000\n", "more than the 1e+07"),
    (b"samples = 100\n# caf\xe9\n", "is not UTF-8 text"),
]


@pytest.mark.parametrize("content, words", TOML, ids=[str(c) for c, _ in TOML])
def test_bad_config_files_are_refused(content, words, tmp_path, capsys, no_reference):
    conf = tmp_path / "s.toml"
    conf.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["study", "--config", str(conf), "--out", str(tmp_path / "o"), "-q"]) == 2
    _one_line_error(capsys, words)
    assert not (tmp_path / "o").exists()


def test_the_library_refuses_the_same(no_reference):
    from sdekit.studies import GaussianProblem
    p = GaussianProblem()
    for kwargs, words in [(dict(budgets=[10 ** 8]), r"more than the 1e\+07"),
                          (dict(budgets=[8], reference=dict(steps=0)), "reference steps"),
                          (dict(budgets=[8], seeds=[2 ** 64]), r"\[0, 2\*\*64\)"),
                          (dict(budgets=[8], samples=10 ** 8), "samples must be an integer from 2"),
                          (dict(budgets={}), "no budgets")]:
        with pytest.raises(InvalidParameterError, match=words):
            sdekit.study(p, ["sde:euler"], **kwargs)
    with pytest.raises(InvalidParameterError, match="finite"):
        sdekit.Budget("tol", float("inf"))


SAMPLE_REFUSED = [
    (["--steps", "100000000"], "--steps must be from 1 to 1e+07"),
    (["--steps", "4", "-n", "1e12"], "-n must be from 1 to 1e+08"),
    (["--steps", "4", "--seed", str(2 ** 64)], "[0, 2**64)"),
    (["--steps", "4", "--seed", "-1"], "[0, 2**64)"),
    (["--steps", "4", "--device", "meta"], "torch cannot compute on it"),
]


@pytest.mark.parametrize("argv, words", SAMPLE_REFUSED, ids=[" ".join(a) for a, _ in SAMPLE_REFUSED])
def test_sample_refuses_up_front(argv, words, tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert main(["sample", "--out", str(out), "-q"] + argv) == 2
    _one_line_error(capsys, words)
    assert not out.exists() and not (tmp_path / "x.pt.shards").exists()


def test_the_limits_are_the_librarys():
    from sdekit._commands import sample, study
    from sdekit._solve import MAX_GRID_STEPS
    from sdekit._study_engine import _study
    assert sample.MAX_STEPS == MAX_GRID_STEPS and study.MAX_SAMPLES == _study.MAX_SAMPLES


def test_sample_takes_every_64_bit_seed(tmp_path):
    out = tmp_path / "x.pt"
    assert main(["sample", "--steps", "3", "-n", "4", "--seed", str(2 ** 64 - 1), "--out", str(out), "-q"]) == 0
    assert torch.load(out)["seed"] == 2 ** 64 - 1


def test_study_takes_every_64_bit_seed(tmp_path):
    out = tmp_path / "o"
    assert main(["study", "--seed", str(2 ** 64 - 1), "--methods", "sde:euler,ode:ddim,sde:ddim", "--budgets", "4",
                 "--samples", "20", "--out", str(out), "-q", "--no-plots"]) == 0


# -- float32 networks, --model -----------------------------------------------------------------------------------
NET = '''
import torch
torch.manual_seed(0)


class Net(torch.nn.Module):                 # float32, as every trained network is
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)

    def forward(self, x, t):
        return -x + 0.01 * self.layer(torch.cat([x, t[:, None]], 1))


net = Net()


def score(x, t):                            # a plain function around the network
    return net(x, t)
'''


@pytest.fixture
def float32_net(tmp_path, monkeypatch):
    (tmp_path / "f32net.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("f32net", None)


@pytest.mark.parametrize("attr", ["net", "score"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float32_networks_sample_and_study(attr, dtype, float32_net, tmp_path):
    assert main(["sample", "--score", f"f32net:{attr}", "--method", "ode:dpmpp_2m", "--steps", "4", "-n", "8",
                 "--dtype", dtype, "--out", "x.pt", "-q"]) == 0
    x = torch.load(tmp_path / "x.pt")["x"]
    assert x.dtype == getattr(torch, dtype) and x.shape == (8, 2) and torch.isfinite(x).all()
    assert main(["study", "--score", f"f32net:{attr}", "--methods", "ode:ddim,sde:euler", "--budgets", "4",
                 "--samples", "16", "--dtype", dtype, "--out", "o", "-q", "--no-plots"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [r["result"] for r in rows] == ["SUCCESS", "SUCCESS"]


def test_study_problem_score_dtype():
    net = torch.nn.Linear(2, 2)
    p = sdekit.StudyProblem(sdekit.VPSDE(), lambda x, t: net(x), score_dtype=torch.float32)
    assert "score_dtype" in p.fingerprint()
    x = p.initial(3, torch.Generator().manual_seed(0))
    assert p.score(x, torch.full((3,), 0.5, dtype=torch.float64)).dtype == torch.float64
    plain = sdekit.StudyProblem(sdekit.VPSDE(), lambda x, t: -x)
    assert "score_dtype" not in plain.fingerprint()          # float64 scores keep their results' hashes


def _model(path, sde, data="mixture-2d", shape=(2,)):
    from sdekit.studies import save_model, train_score_model
    result = train_score_model(lambda n, g: torch.randn((n,) + shape, generator=g), sde, shape, steps=2, batch=32,
                               width=8, depth=1)
    save_model(str(path), result.model, data=data)
    return str(path)


def test_sample_model_uses_the_models_sde(tmp_path, capsys):
    path = _model(tmp_path / "ve.safetensors", sdekit.VESDE())
    for dtype in ("float32", "float64"):
        out = tmp_path / f"x{dtype}.pt"
        assert main(["sample", "--model", path, "--method", "ode:dpmpp_2m", "--steps", "4", "-n", "8", "--dtype",
                     dtype, "--out", str(out), "-q"]) == 0
        saved = torch.load(out)
        assert "VESDE" in saved["problem"] and "trained" in saved["problem"]
        assert saved["x"].dtype == getattr(torch, dtype) and torch.isfinite(saved["x"]).all()
    capsys.readouterr()
    assert main(["sample", "--model", path, "--sde", "vp", "--steps", "4", "--out", str(tmp_path / "y.pt")]) == 2
    _one_line_error(capsys, "drop --sde")
    assert main(["study", "--model", path, "--sde", "vp", "--out", str(tmp_path / "s")]) == 2
    _one_line_error(capsys, "drop --sde")
    assert main(["sample", "--model", path, "--score", "m:s", "--steps", "4", "--out", str(tmp_path / "y.pt")]) == 2
    _one_line_error(capsys, "not both")


def test_sample_model_of_other_data(tmp_path):
    path = _model(tmp_path / "pts.safetensors", sdekit.VPSDE(), data="pts.npz", shape=(3,))
    out = tmp_path / "x.npz"
    assert main(["sample", "--model", path, "--steps", "4", "-n", "5", "--out", str(out), "-q"]) == 0
    import numpy as np
    assert np.load(out)["x"].shape == (5, 3)


def test_a_score_that_carries_its_sde_is_sampled_under_it(tmp_path, monkeypatch):
    path = _model(tmp_path / "ve.safetensors", sdekit.VESDE())
    (tmp_path / "loaded.py").write_text(f"from sdekit.studies import load_model\nscore, meta = load_model({path!r})\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["sample", "--score", "loaded:score", "--steps", "4", "-n", "4", "--out", "x.pt", "-q"]) == 0
        assert "VESDE" in torch.load(tmp_path / "x.pt")["problem"]
    finally:
        sys.modules.pop("loaded", None)


# -- methods -----------------------------------------------------------------------------------------------------
def test_methods_name_shows_one_method(capsys):
    assert main(["methods", "pc"]) == 0
    out = capsys.readouterr().out
    m = sdekit.methods(backend="sdekit")
    pc = next(x for x in m if x.name == "pc")
    assert "sdekit.pc" in out and pc.description in out
    assert ", ".join(pc.options) in out and "needs" in out and "order" in out
    assert main(["methods", "euler"]) == 0                   # one short name, two backends: both shown
    out = capsys.readouterr().out
    assert "torchsde.euler" in out and "torchdiffeq.euler" in out
    assert main(["methods", "ode:euler"]) == 0
    out = capsys.readouterr().out
    assert "torchdiffeq.euler" in out and "torchsde.euler" not in out


@pytest.mark.parametrize("argv", [["methods", "eulr"], ["study", "--methods", "eulr"],
                                  ["sample", "--method", "eulr", "--steps", "4"]])
def test_a_misspelt_method_gets_the_librarys_message(argv, capsys, tmp_path, monkeypatch):
    from sdekit._methods import lookup
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sdekit.UnknownMethodError) as e:
        lookup("eulr", "sde")
    assert main(argv + ["-q"] if argv[0] != "methods" else argv) == 2
    err = _one_line_error(capsys)
    assert " ".join(str(e.value).split()) in err
    assert os.listdir(tmp_path) == []


def test_a_leading_double_dash_is_dropped(capsys):
    """`python -m sdekit -- sample ...`, the torchrun spelling, also works by hand."""
    assert main(["--", "methods", "--kind", "ode"]) == 0
    assert "dopri5" in capsys.readouterr().out
