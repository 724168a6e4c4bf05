"""sdekit train and sdekit study --model: a tiny training run that lowers the loss, files that round-trip, errors."""

import json
import math

import numpy as np
import pytest
import torch

import sdekit
from sdekit import SDEKitError
from sdekit.cli import main
from sdekit.losses import score_matching_loss
from sdekit.studies import load_model, save_model, train_score_model, trained_problem
from sdekit.validation import GaussianMixture

TINY = dict(steps=120, batch=256, width=48, depth=2, log_every=20)


def _paired_drop(sde, before, after, mixture, n=8000):
    """Per-sample losses of two models on the same data, times and noise: the mean drop and its standard error."""
    g = torch.Generator().manual_seed(123)
    x0 = mixture.sample(n, t=0.0, generator=g).float()
    t = sde.eps + (sde.T - sde.eps) * torch.rand(n, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        a = score_matching_loss(sde, before, x0, t=t, noise=noise, reduce="none").double()
        b = score_matching_loss(sde, after, x0, t=t, noise=noise, reduce="none").double()
    d = a - b
    return float(d.mean()), float(d.std()) / math.sqrt(n)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "edm"])
def test_a_tiny_run_lowers_the_loss_in_every_parameterisation(prediction):
    sde = sdekit.VPSDE()
    mixture = GaussianMixture.default_2d(sde)
    sample = lambda n, g: mixture.sample(n, t=0.0, generator=g)              # noqa: E731
    untrained = train_score_model(sample, sde, prediction=prediction, **dict(TINY, steps=1, ema=0.0))
    result = train_score_model(sample, sde, prediction=prediction, **TINY)
    drop, se = _paired_drop(sde, untrained.model, result.model, mixture)
    assert drop > 4 * se, (drop, se)
    assert len(result.losses) == TINY["steps"] // TINY["log_every"] and all(map(math.isfinite, result.losses))


def test_the_file_round_trips_with_its_metadata(tmp_path):
    sde = sdekit.VESDE(sigma_max=20.0)
    mixture = GaussianMixture.default_2d(sde)
    result = train_score_model(lambda n, g: mixture.sample(n, t=0.0, generator=g), sde, prediction="v",
                               **dict(TINY, steps=5))
    path = str(tmp_path / "m.safetensors")
    save_model(path, result.model, data="mixture-2d", note="test")
    model, meta = load_model(path)
    assert repr(model.sde) == repr(sde) and meta["prediction"] == "v" and meta["time"] == "t"
    assert meta["architecture"] == dict(event_shape=[2], width=48, depth=2, features=16)
    assert meta["info"] == dict(data="mixture-2d", note="test")
    x, t = torch.randn(32, 2), torch.rand(32) * 0.9 + 0.05
    with torch.no_grad():
        assert torch.equal(model(x, t), result.model(x, t))


def test_train_command_on_the_mixture_then_study_model(tmp_path, capsys):
    path = str(tmp_path / "m.safetensors")
    assert main(["train", "--steps", "40", "--batch", "128", "--width", "32", "--depth", "2", "--out", path,
                 "--quiet"]) == 0
    model, meta = load_model(path)
    assert meta["info"]["data"] == "mixture-2d" and meta["info"]["steps"] == 40
    assert math.isfinite(meta["info"]["nll_bound"]) and meta["info"]["nll_bound_se"] > 0
    out = tmp_path / "study"
    assert main(["study", "--model", path, "--methods", "ode:dpmpp_2m", "--budgets", "steps=8", "--samples", "400",
                 "--out", str(out), "--no-plots", "--quiet"]) == 0
    table = (out / "comparison.md").read_text()
    assert "ode:sdekit.dpmpp_2m | steps=8 | 0 | 8 |" in table
    rows = [json.loads(line) for line in (out / "model" / "results.jsonl").read_text().splitlines()]
    exact = [json.loads(line) for line in (out / "exact" / "results.jsonl").read_text().splitlines()]
    assert "trained" in rows[0]["problem"] and "trained" not in exact[0]["problem"]
    assert trained_problem(path).name != trained_problem(path, exact=True).name
    config = tmp_path / "study.toml"                        # the same study from a config file
    config.write_text(f'[study]\nmodel = "{path}"\nmethods = "ode:dpmpp_2m"\nbudgets = "steps=8"\nsamples = 400\n')
    assert main(["study", "--config", str(config), "--out", str(out), "--no-plots", "--quiet"]) == 0
    assert (out / "comparison.md").read_text() == table      # every row reused from the results files
    # another model in the same file, studied into the same folder: the comparison is of this run's rows, not of
    # the old model's (which stay in the results file, after this run's)
    assert main(["train", "--steps", "40", "--batch", "128", "--width", "32", "--depth", "2", "--seed", "5",
                 "--out", path, "--quiet"]) == 0
    assert main(["study", "--config", str(config), "--out", str(out), "--no-plots", "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "model" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["key"] != rows[1]["key"]    # this run's row first, the old one kept
    retrained = (out / "comparison.md").read_text()
    assert f"| {rows[0]['nfe']} | {rows[0]['sw2']:.3g}" in retrained
    assert f"| {rows[1]['nfe']} | {rows[1]['sw2']:.3g}" not in retrained


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_train_command_on_user_points(tmp_path, suffix):
    pts = np.random.default_rng(0).normal(size=(500, 3)) * [1.0, 0.5, 2.0]
    data = str(tmp_path / f"pts{suffix}")
    if suffix == ".npz":
        np.savez(data, x=pts)
    else:
        torch.save({"x": torch.from_numpy(pts)}, data)
    path = str(tmp_path / "m.safetensors")
    assert main(["train", "--data", data, "--steps", "20", "--batch", "64", "--width", "16", "--out", path,
                 "--weighting", "likelihood", "--quiet"]) == 0
    model, meta = load_model(path)
    assert meta["architecture"]["event_shape"] == [3] and meta["info"]["t_sampler"] == "importance"
    with pytest.raises(SDEKitError, match="no exact score"):
        trained_problem(path, exact=True)


def test_train_errors_are_one_line(tmp_path, capsys):
    bad = str(tmp_path / "flat.npz")
    np.savez(bad, x=np.zeros(10))
    notes = str(tmp_path / "notes.txt")
    open(notes, "w").write("hi")
    cases = [
        (["train", "--data", bad], "shape (n, d)"),
        (["train", "--data", notes], ".npz or .pt"),
        (["train", "--data", str(tmp_path / "missing.npz")], "no data file"),
        (["train", "--prediction", "flow"], "unknown --prediction"),
        (["train", "--weighting", "snr"], "--weighting"),
        (["train", "--out", "model.pt"], ".safetensors"),
        (["train", "--steps", "0"], "--steps"),
        (["study", "--model", str(tmp_path / "none.safetensors")], "no checkpoint file"),
    ]
    for argv, words in cases:
        assert main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, (argv, err)
    from safetensors.torch import save_file
    foreign = str(tmp_path / "foreign.safetensors")
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(SDEKitError, match="not an sdekit score model"):
        load_model(foreign)
