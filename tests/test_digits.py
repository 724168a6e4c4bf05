"""The digits: data and splits, the score U-Net, a tiny training run, model files, the classifier's Fréchet distance,
the study problem, and the shipped model (its file here; its samples in the slow tests)."""

import math

import pytest
import torch

import sdekit
from sdekit import InvalidParameterError, SDEKitError
from sdekit.cli import main
from sdekit.losses import score_matching_loss
from sdekit.studies import ScoreUNet, digits, load_model, save_model, train_score_model, trained_problem
from sdekit.studies._classifier import (class_frequencies, digits_classifier, frechet_distance, gaussian_stats)
from sdekit.studies._digits import BPD_OFFSET, DATA_RANGE, dequantise, digits_sampler, to_levels
from sdekit.studies._digits_problem import DigitsProblem

pytest.importorskip("sklearn")

TINY_UNET = dict(channels=8, blocks=1, attention=True, features=8)


# -- the data ---------------------------------------------------------------------------------------------------
def test_splits_are_every_fifth_image_in_the_model_space():
    from sklearn.datasets import load_digits
    raw = load_digits()
    d = digits()
    assert d.train.shape == (1437, 1, 8, 8) and d.test.shape == (360, 1, 8, 8) and d.train.dtype == torch.float64
    images = torch.as_tensor(raw.images)
    assert torch.equal(d.test.reshape(-1, 64), images[::5].reshape(-1, 64) / 8 - 1)
    keep = torch.arange(1797) % 5 != 0
    assert torch.equal(d.train.reshape(-1, 64), images[keep].reshape(-1, 64) / 8 - 1)
    assert torch.equal(d.test_labels, torch.as_tensor(raw.target[::5]))
    assert float(d.train.min()) == -1.0 and float(d.train.max()) == 1.0
    assert torch.equal(d.test_levels.to(torch.float64) / 8 - 1, d.test)


def test_dequantisation_fills_the_cell_of_each_level():
    d = digits()
    x = dequantise(d.train_levels, torch.Generator().manual_seed(0))
    assert torch.equal(to_levels(x), d.train_levels)
    offset = (x - d.train) * 8                    # u - 1/2, uniform on [-1/2, 1/2)
    assert float(offset.min()) >= -0.5 and float(offset.max()) < 0.5
    n = offset.numel()                            # mean 0 and variance 1/12, within 5 standard errors
    assert abs(float(offset.mean())) < 5 * math.sqrt(1 / 12 / n)
    assert abs(float(offset.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    lo, hi = DATA_RANGE                           # bits_per_dim's cells: 17 of width 1/8, centred on the levels
    assert (hi - lo) / 17 == 1 / 8 and math.log2(17 / (hi - lo)) == BPD_OFFSET
    sample = digits_sampler(d.train_levels)(64, torch.Generator().manual_seed(1))
    assert sample.shape == (64, 1, 8, 8) and sample.dtype == torch.float64


# -- the network -------------------------------------------------------------------------------------------------
def test_unet_starts_at_zero_and_depends_on_the_time_and_the_image():
    torch.manual_seed(0)
    net = ScoreUNet(**TINY_UNET)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    assert torch.equal(net(x, t), torch.zeros_like(x))              # zero-initialised output layer
    for p in net.parameters():                                       # any weights: time and image both matter
        torch.nn.init.normal_(p, std=0.3)
    y = net(x, t)
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    assert not torch.allclose(net(x, t + 0.05), y) and not torch.allclose(net(x + 0.1, t), y)
    assert torch.allclose(net(x[:1], t[:1]), y[:1], atol=1e-5)       # per sample: no batch coupling
    y64 = net.double()(x.double(), t.double())
    assert y64.dtype == torch.float64 and torch.allclose(y64.float(), y, atol=1e-4)


def test_unet_refuses_other_shapes():
    with pytest.raises(InvalidParameterError, match="even H and W"):
        ScoreUNet((1, 7, 7))
    with pytest.raises(InvalidParameterError, match="built for images"):
        ScoreUNet(**TINY_UNET)(torch.zeros(2, 1, 4, 4), torch.zeros(2))


def _paired_loss(sde, model, x0, seed=5):
    g = torch.Generator().manual_seed(seed)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(x0.shape[0], generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        return score_matching_loss(sde, model, x0.float(), t=t, noise=noise.float(), reduce="none").double()


def test_a_tiny_unet_run_on_the_digits_lowers_the_held_out_loss(tmp_path):
    sde = sdekit.VPSDE()
    d = digits()
    net = lambda: ScoreUNet(**TINY_UNET)                              # noqa: E731
    kw = dict(batch=32, lr=2e-3, ema=0.9, network=net, grad_clip=1.0, log_every=50)
    before = train_score_model(digits_sampler(d.train_levels), sde, (1, 8, 8), steps=1, **kw)
    after = train_score_model(digits_sampler(d.train_levels), sde, (1, 8, 8), steps=200, **kw)
    x0 = dequantise(d.test_levels, torch.Generator().manual_seed(3))  # held out: the test split
    diff = _paired_loss(sde, before.model, x0) - _paired_loss(sde, after.model, x0)
    assert float(diff.mean()) > 4 * float(diff.std()) / math.sqrt(diff.numel())
    assert len(after.losses) == 4 and after.settings["grad_clip"] == 1.0
    path = save_model(str(tmp_path / "u.safetensors"), after.model, data="digits")
    model, meta = load_model(path)
    assert meta["network"] == "ScoreUNet" and meta["architecture"] == dict(after.model.network.architecture())
    assert meta["architecture"]["event_shape"] == [1, 8, 8]
    with torch.no_grad():
        assert torch.equal(model(x0[:4].float(), torch.full((4,), 0.3)), after.model(x0[:4].float(),
                                                                                     torch.full((4,), 0.3)))


def test_train_refuses_a_network_of_another_shape_or_class():
    sde = sdekit.VPSDE()
    sample = digits_sampler(digits().train_levels)
    with pytest.raises(SDEKitError, match="event shape"):
        train_score_model(sample, sde, (1, 8, 8), steps=1, network=lambda: ScoreUNet((1, 4, 4), channels=8))
    with pytest.raises(SDEKitError, match="must return one of"):
        train_score_model(sample, sde, (1, 8, 8), steps=1, network=lambda: torch.nn.Identity())
    with pytest.raises(SDEKitError, match="grad_clip"):
        train_score_model(sample, sde, (1, 8, 8), steps=1, grad_clip=-1.0, network=lambda: ScoreUNet(**TINY_UNET))


# -- the shipped model and classifier (the files; their samples are in the slow tests) ----------------------------
def test_the_shipped_model_loads_by_name_with_its_metadata():
    model, meta = load_model("digits")
    assert meta["network"] == "ScoreUNet" and meta["prediction"] == "eps" and meta["time"] == "t"
    assert type(meta["sde"]) is sdekit.VPSDE and model.sde is meta["sde"]
    assert meta["architecture"]["event_shape"] == [1, 8, 8]
    info = meta["info"]
    assert info["data"] == "digits" and info["event_shape"] == [1, 8, 8] and "n/8 - 1" in info["data_space"]
    assert info["seed"] == 0 and info["steps"] >= 1000 and math.isfinite(info["nll_bound_bits_per_dim"])
    flow = sdekit.probability_flow(meta["sde"], model)               # the flow of the recipe
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert flow.drift(torch.full((2,), 0.5), x).shape == x.shape
    with pytest.raises(SDEKitError, match="not a .safetensors model"):
        load_model("digitz")


def test_sampling_the_shipped_model_needs_no_scikit_learn(tmp_path, monkeypatch):
    """`sdekit sample --model digits` draws from the network alone: the data (scikit-learn) is for judging."""
    import sys
    monkeypatch.setitem(sys.modules, "sklearn", None)               # import sklearn raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    out = tmp_path / "d.pt"
    assert main(["sample", "--model", "digits", "--method", "ode:ddim", "--steps", "2", "-n", "3",
                 "--out", str(out)]) in (0, None)
    assert out.exists()
    with pytest.raises(InvalidParameterError, match="scikit-learn"):
        trained_problem("digits").measures(torch.zeros(2, 1, 8, 8), None, 0)


def test_the_shipped_classifier_classifies_the_test_split():
    d = digits()
    c = digits_classifier()
    x = dequantise(d.test_levels, torch.Generator().manual_seed(0))
    accuracy = float((c.predict(x) == d.test_labels).double().mean())
    assert accuracy > 0.95                                           # 0.975 when it was trained
    assert c.features(x).shape == (360, 16)


# -- Fréchet distance and the problem's measures -----------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5]) + 1.0
    b = torch.randn(4000, 3, generator=g, dtype=torch.float64) * torch.tensor([0.5, 1.0, 1.5])
    sa, sb = gaussian_stats(a), gaussian_stats(b)
    # with the fitted moments: |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2), here through scipy's sqrtm
    import scipy.linalg
    root = scipy.linalg.sqrtm(sa.cov.numpy() @ sb.cov.numpy()).real
    expected = float((sa.mean - sb.mean).pow(2).sum()) + float(sa.cov.trace() + sb.cov.trace()) - 2 * root.trace()
    assert frechet_distance(sa, sb) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(sb, sa) == pytest.approx(expected, rel=1e-9)
    assert abs(frechet_distance(sa, sa)) < 1e-9


def test_the_problem_judges_test_images_as_real_and_noise_as_not():
    problem = trained_problem("digits")
    assert isinstance(problem, DigitsProblem) and problem.event_shape == (1, 8, 8)
    assert problem.floor > 0 and problem.floor_std > 0
    d = digits()
    real = dequantise(d.test_levels, torch.Generator().manual_seed(9))
    m = problem.measures(real, None, 0)
    assert m["fd"].value < problem.floor and m["fd"].ok                 # the test split against itself
    assert m["classes"].ok and 0.05 <= m["class_min"].value <= m["class_max"].value <= 0.15
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    bad = problem.measures(noise, None, 0)
    assert bad["fd"].value > 3 * problem.floor and not bad["fd"].ok
    shares = class_frequencies(d.train_labels)
    assert float(shares.sum()) == pytest.approx(1.0) and shares.shape == (10,)


# -- the commands ------------------------------------------------------------------------------------------------
def test_train_digits_then_sample_and_study_the_file(tmp_path, capsys):
    path = str(tmp_path / "d.safetensors")
    assert main(["train", "--data", "digits", "--steps", "20", "--batch", "16", "--channels", "8",
                 "--eval-every", "10", "--out", path, "--quiet"]) == 0
    model, meta = load_model(path)
    info = meta["info"]
    assert info["data"] == "digits" and info["steps"] == 20 and info["held_out"] == "test split"
    assert math.isfinite(info["nll_bound_bits_per_dim"]) and meta["architecture"]["channels"] == 8
    out = str(tmp_path / "s.pt")
    assert main(["sample", "--model", path, "--method", "ode:dpmpp_2m", "--steps", "3", "-n", "6", "--out", out,
                 "--quiet"]) == 0
    saved = torch.load(out)
    assert saved["x"].shape == (6, 1, 8, 8) and bool(torch.isfinite(saved["x"]).all())


def test_train_digits_prints_the_held_out_bound_every_eval_every_steps(tmp_path, capsys):
    """--eval-every need not be a multiple of the log interval (50 steps): the bound is printed at the first log
    after each multiple (step 50 for --eval-every 30 over 60 steps; never at the end, which has its own line)."""
    path = str(tmp_path / "d.safetensors")
    assert main(["train", "--data", "digits", "--steps", "60", "--batch", "8", "--channels", "8",
                 "--eval-every", "30", "--out", path]) == 0
    printed = capsys.readouterr()
    lines = [ln for ln in (printed.out + printed.err).splitlines() if "held-out bound" in ln]
    assert len(lines) == 1 and lines[0].startswith("step 50:"), lines


def test_study_of_a_digits_model_writes_its_report_and_pictures(tmp_path, monkeypatch):
    from functools import cached_property
    from sdekit.studies._digits_problem import DigitsProblem
    real, floors = DigitsProblem.__dict__["_floor"].func, []

    def counted(problem):                                    # the judge's floor: 16 bootstrap Frechet distances
        floors.append(problem)
        return real(problem)
    prop = cached_property(counted)
    prop.__set_name__(DigitsProblem, "_floor")
    monkeypatch.setattr(DigitsProblem, "_floor", prop)
    path = str(tmp_path / "d.safetensors")
    assert main(["train", "--data", "digits", "--steps", "10", "--batch", "16", "--channels", "8", "--out", path,
                 "--quiet"]) == 0
    out = tmp_path / "study"
    args = ["study", "--model", path, "--methods", "ode:ddim,sde:ddim", "--budgets", "nfe=2,4", "--samples", "40",
            "--reference-steps", "16", "--out", str(out), "--no-likelihood", "--quiet"]
    assert main(args) == 0
    assert len(floors) == 1     # the study and its report judge with one problem: the floor is computed once
    report = (out / "digits.md").read_text()
    assert "| training split (the floor) |" in report and "| Gaussian fitted to the training split |" in report
    assert "| ode:sdekit.ddim | nfe=4 | 4 |" in report and "| sde:sdekit.ddim | nfe=2 | 2 |" in report
    for name in ("digits_samples.png", "digits_fd.png", "summary.md", "results.jsonl"):
        assert (out / name).is_file(), name
    rows = (out / "results.jsonl").read_text()
    assert main(args) == 0                                   # resumed: every row reused, the same report
    assert (out / "results.jsonl").read_text() == rows and (out / "digits.md").read_text() == report


def test_likelihood_baselines_in_bits_per_pixel():
    from sdekit.studies._digits_report import gaussian_bpd, mixture_bpd, model_bpd
    d = digits()
    test = dequantise(d.test_levels, torch.Generator().manual_seed(0))
    g, m = gaussian_bpd(d.train_levels, test), mixture_bpd(d.train_levels, test, components=(2, 5))
    assert m["components"] in (2, 5) and 0 < m["bpd"] < g["bpd"] < 4.087     # log2(17): a uniform density's
    model, meta = load_model("digits")
    r = model_bpd(model, meta["sde"], d.test_levels[:4], batch=4)
    assert math.isfinite(r["bpd"]) and math.isfinite(r["bound"]) and r["se"] > 0


@pytest.mark.parametrize("method", ["ode:dpmpp_2m", "sde:euler_ancestral", "ode:sdekit.dopri5"])
def test_sample_the_shipped_model(tmp_path, method):
    out = str(tmp_path / "s.npz")
    budget = ["--tol", "1e-2"] if method.endswith("dopri5") else ["--steps", "3"]
    assert main(["sample", "--model", "digits", "--method", method, *budget, "-n", "4", "--out", out,
                 "--quiet"]) == 0
    import numpy as np
    with np.load(out) as f:
        x = f["x"]
    assert x.shape == (4, 1, 8, 8) and np.isfinite(x).all()


# -- the shipped model's samples (slow: about a minute on one busy core) ------------------------------------------
@pytest.mark.slow
def test_the_shipped_model_samples_digits_closer_than_a_gaussian_with_balanced_classes():
    from sdekit.studies._digits_report import gaussian_fd
    problem = trained_problem("digits")
    n = 2000
    x_T = problem.initial(n, torch.Generator().manual_seed(0))
    x = problem.ode_process().solve(x_T, method="dpmpp_2m", steps=20).x       # 20 NFE
    assert x.shape == (n, 1, 8, 8) and bool(torch.isfinite(x).all())
    m = problem.measures(x, None, 0)
    g_fd, g_se, _ = gaussian_fd(problem, n)
    # clearly closer than the Gaussian: the gap beyond 3 standard errors of the difference (bootstrap, independent)
    assert g_fd - m["fd"].value > 3 * math.hypot(m["fd"].se, g_se), (m["fd"], g_fd, g_se)
    assert 0.05 <= m["class_min"].value and m["class_max"].value <= 0.15, (m["class_min"], m["class_max"])


@pytest.mark.slow
def test_sample_the_shipped_model_with_every_method(tmp_path, capsys):
    """``sdekit sample --model digits`` with each of ``sdekit.methods()``: finite images of the right shape.  The
    methods that need a Lévy area (torchsde's srk, log_ode) are refused in one line by ``sdekit sample``, whose
    keyed noise carries none, for every model."""
    import numpy as np
    for i, m in enumerate(sdekit.methods()):
        label = f"{m.kind}:{m.qualified_name}"
        budget = ["--tol", "1e-2", "--batch", "1"] if m.stepping == "adaptive" else ["--steps", "4"]
        out = str(tmp_path / f"s{i}.npz")
        args = ["sample", "--model", "digits", "--method", label, *budget, "-n", "2", "--out", out, "--quiet"]
        if m.levy_area != "none":
            assert main(args) == 2, label
            assert "levy_area" in capsys.readouterr().err, label
            continue
        assert main(args) == 0, label
        with np.load(out) as f:
            x = f["x"]
        assert x.shape == (2, 1, 8, 8) and np.isfinite(x).all(), label
