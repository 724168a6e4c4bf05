"""Hardening of the model side (adapters, checkpoints, guidance, losses, training): what a red team found.

Each test fails on the code before its fix: a silently accepted integer network output, raw tracebacks for
damaged checkpoint files, networks on another device or dtype than the state, classifiers without a graph to
x, training data beyond float32's range, 64-bit seeds, and the diffusers adapter solved off its scheduler's grid.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import sdekit
from sdekit import SDEKitError
from sdekit.adapters import (Adapter, UnsafeCheckpointError, classifier_guidance, from_diffusers, load_checkpoint,
                             load_weights)
from sdekit.cli import main
from sdekit.losses import score_matching_loss
from sdekit.studies import load_model, save_model, train_score_model

SDE = sdekit.VPSDE()
TINY = dict(steps=2, batch=8, width=4, depth=1, log_every=1)


def _one_line_exit_2(argv, capsys, words):
    assert main(argv + ["--quiet"]) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, (argv, err)
    return err


def _one_line(err):
    assert isinstance(err, SDEKitError) and "\n" not in str(err), repr(err)


class _Linear(torch.nn.Module):
    def __init__(self, d=2):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)

    def forward(self, x, tau):
        return self.lin(x)


# -- network outputs that are not floating point ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_a_non_floating_network_output_is_refused(dtype):
    x = torch.randn(4, 2)
    net = lambda x, tau: torch.ones(x.shape, dtype=dtype)           # noqa: E731
    for prediction in ("eps", "x0", "v", "score"):
        adapter = Adapter(net, SDE, prediction)
        for call in (adapter, adapter.data, adapter.noise):
            with pytest.raises(sdekit.ScoreFunctionError, match="floating-point") as err:
                call(x, 0.5)
            _one_line(err.value)
    with pytest.raises(sdekit.ScoreFunctionError, match="floating-point"):       # in the loss, adapter or not
        score_matching_loss(SDE, Adapter(net, SDE, "eps"), x)
    with pytest.raises(sdekit.ScoreFunctionError, match="floating-point"):
        score_matching_loss(SDE, net, x)


def test_an_integer_unet_output_is_refused_through_from_diffusers():
    class IntUNet(torch.nn.Module):
        def forward(self, x, t):
            return (x > 0).long()
    adapter = from_diffusers(IntUNet(), dict(num_train_timesteps=1000))
    with pytest.raises(sdekit.ScoreFunctionError, match="torch.int64"):
        adapter(torch.randn(2, 1, 4, 4), 0.5)


# -- damaged checkpoint files -------------------------------------------------------------------------------------
def _damaged_torch_files(tmp_path):
    state = {"lin.weight": torch.randn(64, 64), "lin.bias": torch.randn(64)}
    files = {}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip", "legacy"):
        data = (tmp_path / f"{name}.pt").read_bytes()
        for frac in (0.5, 0.9):
            path = tmp_path / f"{name}_{frac}.pt"
            path.write_bytes(data[:int(len(data) * frac)])
            files[path.name] = str(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint at all")
    files.update({"empty.pt": str(tmp_path / "empty.pt"), "garbage.pt": str(tmp_path / "garbage.pt")})
    return files


def test_a_truncated_or_garbled_torch_checkpoint_is_one_line(tmp_path):
    for name, path in _damaged_torch_files(tmp_path).items():
        with pytest.raises(sdekit.InvalidParameterError, match="truncated or corrupted") as err:
            load_checkpoint(path)
        _one_line(err.value)
        assert not isinstance(err.value, UnsafeCheckpointError), name
        with pytest.raises(sdekit.InvalidParameterError, match="truncated or corrupted"):
            load_weights(_Linear(64), path)


def test_an_unsafe_pickle_is_still_refused_as_unsafe(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"obj": _Linear()}, path)
    with pytest.raises(UnsafeCheckpointError, match="was not executed"):
        load_checkpoint(path)


def _damaged_safetensors(tmp_path):
    from safetensors.torch import save_file
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(good))
    data = good.read_bytes()
    contents = {"half": data[:len(data) // 2], "header_only": data[:40], "eight": data[:8], "empty": b"",
                "garbage": b"\xff" * 64, "text": b"not a safetensors file, just some text"}
    files = {}
    for name, content in contents.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        files[name] = str(path)
    return files


def test_a_truncated_or_garbled_safetensors_file_is_one_line(tmp_path, capsys):
    for name, path in _damaged_safetensors(tmp_path).items():
        for loader in (load_checkpoint, load_model):
            with pytest.raises(sdekit.InvalidParameterError, match="truncated or corrupted") as err:
                loader(path)
            _one_line(err.value)
        _one_line_exit_2(["study", "--model", path], capsys, "truncated or corrupted")


def test_a_half_written_model_file_from_save_model(tmp_path, capsys):
    result = train_score_model(lambda n, g: torch.randn(n, 2, generator=g), SDE, **TINY)
    path = tmp_path / "m.safetensors"
    save_model(str(path), result.model, data="points")
    load_model(str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])
    with pytest.raises(sdekit.InvalidParameterError, match="truncated or corrupted"):
        load_model(str(path))
    _one_line_exit_2(["study", "--model", str(path)], capsys, "truncated or corrupted")


def test_training_data_in_a_truncated_pt_file(tmp_path, capsys):
    path = tmp_path / "points.pt"
    torch.save({"x": torch.randn(200, 2)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _one_line_exit_2(["train", "--data", str(path)], capsys, "truncated or corrupted")


def test_a_checkpoint_that_does_not_fit_the_module(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_Linear(3).state_dict(), path)
    with pytest.raises(sdekit.InvalidParameterError, match="does not fit the _Linear") as err:
        load_weights(_Linear(2), path)
    _one_line(err.value)


# -- networks on another device or dtype --------------------------------------------------------------------------
def test_a_network_on_the_meta_device_says_load_the_weights():
    x = torch.randn(4, 2)
    for net in (_Linear().to("meta"), (lambda m: (lambda x, tau: m(x, tau)))(_Linear().to("meta"))):
        with pytest.raises(sdekit.ShapeError, match="'meta' device") as err:
            Adapter(net, SDE)(x, 0.5)
        _one_line(err.value)
        assert "load_state_dict" in str(err.value)


def test_a_network_that_returns_a_tensor_on_another_device():
    with pytest.raises(sdekit.ShapeError, match="'meta' device"):
        Adapter(lambda x, tau: torch.empty_like(x, device="meta"), SDE)(torch.randn(4, 2), 0.5)


def test_a_network_whose_weights_are_not_on_the_states_device():
    x = torch.randn(4, 2, device="meta")            # the one other device every machine has
    with pytest.raises(sdekit.ShapeError, match="weights on cpu but x is on meta") as err:
        Adapter(_Linear(), SDE)(x, torch.full((4,), 0.5, device="meta"))
    _one_line(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_network_on_a_cpu_state():                              # pragma: no cover - GPU machines only
    with pytest.raises(sdekit.ShapeError, match="weights on cuda:0 but x is on cpu"):
        Adapter(_Linear().cuda(), SDE)(torch.randn(4, 2), 0.5)
    with pytest.raises(sdekit.ShapeError, match="weights on cpu but x is on cuda:0"):
        Adapter(_Linear(), SDE)(torch.randn(4, 2, device="cuda"), 0.5)


def test_a_network_in_another_dtype_says_which():
    with pytest.raises(sdekit.ShapeError, match="float32 weights but x is float64") as err:
        Adapter(_Linear(), SDE)(torch.randn(4, 2, dtype=torch.float64), 0.5)
    _one_line(err.value)


def test_a_diffusers_unet_on_the_meta_device():
    from diffusers import UNet2DModel
    unet = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).to("meta")
    adapter = from_diffusers(unet, dict(num_train_timesteps=1000))
    with pytest.raises(sdekit.ShapeError, match="'meta' device"):
        adapter(torch.randn(2, 2, 8, 8), 0.5)


def test_other_network_errors_are_not_relabelled():
    def broken(x, tau):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom") as err:
        Adapter(broken, SDE)(torch.randn(4, 2), 0.5)
    assert not isinstance(err.value, SDEKitError)


# -- classifiers without a graph to x -----------------------------------------------------------------------------
def _logits(x):
    return torch.stack([x[:, 0], -x[:, 0]], 1)


def test_a_classifier_without_a_graph_to_x_is_one_line():
    weights = torch.randn(2, 2, requires_grad=True)

    @torch.no_grad()
    def under_no_grad(x, t):
        return _logits(x)

    classifiers = {
        "detached": lambda x, t: _logits(x).detach(),
        "no_grad": under_no_grad,
        "parameters only": lambda x, t: x.detach() @ weights,
        "through numpy": lambda x, t: torch.from_numpy(_logits(x).detach().numpy()),
    }
    x = torch.randn(4, 2)
    for name, clf in classifiers.items():
        guided = classifier_guidance(lambda x, t: -x, clf, label=0)
        for grad_mode in (False, True):
            with torch.set_grad_enabled(grad_mode):
                with pytest.raises(sdekit.ScoreFunctionError, match="no autograd graph back to x") as err:
                    guided(x, 0.5)
            _one_line(err.value)


def test_classifier_guidance_under_inference_mode_says_use_no_grad():
    guided = classifier_guidance(lambda x, t: -x, lambda x, t: _logits(x), label=0)
    with torch.inference_mode():
        with pytest.raises(sdekit.InvalidParameterError, match="torch.no_grad") as err:
            guided(torch.randn(4, 2), 0.5)
    _one_line(err.value)
    with torch.inference_mode():                   # a state made under inference_mode, guided outside it
        x = torch.randn(4, 2)
    with torch.no_grad():
        grad = guided.log_prob_gradient(x, 0.5)
    p0 = torch.sigmoid(2 * x[:, 0])
    torch.testing.assert_close(grad[:, 0], 2 * (1 - p0))


def test_integer_logits_are_refused():
    guided = classifier_guidance(lambda x, t: -x, lambda x, t: (x > 0).long(), label=0)
    with pytest.raises(sdekit.ShapeError, match="floating-point logits"):
        guided(torch.randn(4, 2), 0.5)


def test_a_classifier_on_the_meta_device():
    clf = _Linear().to("meta")
    guided = classifier_guidance(lambda x, t: -x, clf, label=0)
    with pytest.raises(sdekit.ShapeError, match="the classifier has its weights on the 'meta' device"):
        guided(torch.randn(4, 2), 0.5)


# -- training data beyond float32 ----------------------------------------------------------------------------------
def test_training_data_beyond_float32_or_not_finite(tmp_path, capsys):
    rng = np.random.default_rng(0)
    cases = []
    np.savez(tmp_path / "huge.npz", x=rng.normal(size=(50, 2)) * 1e300)
    cases.append(("huge.npz", "beyond float32's range"))
    torch.save({"x": torch.from_numpy(rng.normal(size=(50, 2))) * 1e39}, tmp_path / "huge.pt")
    cases.append(("huge.pt", "beyond float32's range"))
    bad = rng.normal(size=(50, 2))
    bad[7, 1] = np.inf
    np.savez(tmp_path / "inf.npz", x=bad)
    cases.append(("inf.npz", "non-finite entries (inf in 1 of 50 points, the first at index 7)"))
    bad[7, 1], bad[9, 0] = np.nan, np.nan
    torch.save(torch.from_numpy(bad), tmp_path / "nan.pt")
    cases.append(("nan.pt", "non-finite entries (nan in 2 of 50 points, the first at index 7)"))
    np.savez(tmp_path / "large.npz", x=rng.normal(size=(50, 2)) * 1e20)  # in range, but its squares are not
    cases.append(("large.npz", "overflows float32"))
    for name, words in cases:
        _one_line_exit_2(["train", "--data", str(tmp_path / name), "--steps", "2", "--batch", "8", "--width", "4",
                          "--depth", "1", "--out", str(tmp_path / "m.safetensors")], capsys, words)


def test_train_score_model_says_why_a_batch_is_not_finite():
    huge = lambda n, g: torch.randn(n, 2, generator=g, dtype=torch.float64) * 1e300      # noqa: E731
    with pytest.raises(sdekit.InvalidParameterError, match="beyond float32's range") as err:
        train_score_model(huge, SDE, **TINY)
    _one_line(err.value)
    nan = lambda n, g: torch.full((n, 2), math.nan)                                            # noqa: E731
    with pytest.raises(sdekit.InvalidParameterError, match="the data sampler's batch has non-finite entries"):
        train_score_model(nan, SDE, **TINY)


def test_the_loss_names_an_overflowing_square():
    x0 = torch.full((4, 2), 1e20)
    with pytest.raises(sdekit.InvalidParameterError, match="overflows float32") as err:
        score_matching_loss(SDE, lambda x, t: x, x0)
    _one_line(err.value)


# -- seeds ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [2 ** 64, 2 ** 70, -1, 1.5, True, "0"])
def test_train_score_model_refuses_seeds_outside_64_bits(seed):
    with pytest.raises(sdekit.InvalidParameterError, match=r"0 \.\. 2\*\*64 - 1") as err:
        train_score_model(lambda n, g: torch.randn(n, 2, generator=g), SDE, seed=seed, **TINY)
    _one_line(err.value)


def test_the_largest_seed_trains():
    result = train_score_model(lambda n, g: torch.randn(n, 2, generator=g), SDE, seed=2 ** 64 - 1, **TINY)
    assert result.settings["seed"] == 2 ** 64 - 1


def test_train_command_seeds(tmp_path, capsys):
    for seed in (str(2 ** 64), str(2 ** 100), "-1"):
        _one_line_exit_2(["train", "--seed", seed], capsys, "--seed must be an integer in 0 .. 2**64 - 1")
    path = str(tmp_path / "m.safetensors")
    assert main(["train", "--seed", str(2 ** 64 - 1), "--steps", "2", "--batch", "8", "--width", "4", "--depth", "1",
                 "--out", path, "--quiet"]) == 0          # its derived seeds (seed + 1, + 2, + 3) wrap
    assert load_model(path)[1]["info"]["seed"] == 2 ** 64 - 1


# -- the diffusers adapter off its scheduler's grid -----------------------------------------------------------------
def test_the_diffusers_adapter_says_how_to_reproduce_diffusers(unet):
    from sdekit.adapters import DiffusersAdapter
    adapter = from_diffusers(unet, dict(num_train_timesteps=1000))
    call = "solve(x_T, **adapter.solve_arguments(scheduler))"
    assert call in repr(adapter) and "only" in repr(adapter)
    assert call in DiffusersAdapter.__doc__ and call in from_diffusers.__doc__
    from pathlib import Path
    doc = (Path(__file__).parents[1] / "docs" / "adapters.md").read_text()
    assert "reproduced only through `solve_arguments(scheduler)`" in doc and call in doc


def test_a_solve_off_the_schedulers_grid_warns_once(unet):
    from diffusers import DDIMScheduler, DDPMScheduler
    config = DDPMScheduler(num_train_timesteps=1000, clip_sample=False).config
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(10)
    x_T = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    x = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    adapter = from_diffusers(unet, config)
    flow = sdekit.probability_flow(adapter.sde, adapter)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        exact = flow.solve(x_T, **adapter.solve_arguments(scheduler)).x
        flow.solve(x_T, method="dpmpp_2m", grid=adapter.grid(scheduler.timesteps),
                   options=dict(denoise=adapter.final_denoise))
        assert not seen, [str(w.message) for w in seen]        # diffusers' own timesteps: nothing to say
        plain = flow.solve(x_T, method="ddim", steps=10).x
        assert len(seen) == 1 and seen[0].category is UserWarning
        assert "adapter.solve_arguments(scheduler)" in str(seen[0].message)
        flow.solve(x_T, method="ddim", steps=10)
        sdekit.probability_flow(adapter.sde, adapter.with_inputs()).solve(x_T, method="ddim", steps=7)
        assert len(seen) == 1                                   # once per adapter, its views included
        other = from_diffusers(unet, dict(config), quantise=False)
        sdekit.probability_flow(other.sde, other).solve(x_T, method="ddim", steps=10)
        assert len(seen) == 2 and "fractional timestep" in str(seen[1].message)
    assert float((exact - x).abs().max()) <= 1e-5 * float(x.abs().max())
    assert float((plain - x).norm()) > 0.5 * float(x.norm())    # the stumble the warning is about
