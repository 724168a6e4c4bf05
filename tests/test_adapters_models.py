"""k-diffusion-style denoisers as adapters, and checkpoints loaded without running code."""

import pickle

import pytest
import torch

import sdekit
from sdekit.adapters import DiscreteVPSDE, UnsafeCheckpointError, from_k_diffusion, load_checkpoint, load_weights
from sdekit.validation import GaussianData

MEAN = [1.0, -0.5]
COV = [[0.5, 0.2], [0.2, 0.7]]


class _VEDenoiser(torch.nn.Module):
    """The exact VE denoiser D(x; sigma) = x + sigma^2 grad log p_sigma(x), k-diffusion's calling convention."""

    def __init__(self, sigma_min=0.01, sigma_max=50.0):
        super().__init__()
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.ve = sdekit.VESDE(sigma_min, sigma_max)
        self.data = GaussianData(MEAN, COV, self.ve)

    def forward(self, x, sigma):
        t = self.ve.t_of_log_snr(-torch.log(sigma))
        return x + sigma[:, None] ** 2 * self.data.score(x, t)


class _DiscreteDenoiser(torch.nn.Module):
    """A wrapped DDPM model in k-diffusion's VE frame: ``sigmas`` table, D(x~; s~) from the VP score."""

    def __init__(self, sde):
        super().__init__()
        self.sde, self.data = sde, GaussianData(MEAN, COV, sde)
        self.register_buffer("sigmas", ((1 - sde.alphas_cumprod) / sde.alphas_cumprod).sqrt())

    def forward(self, x_ve, sigma):
        t = self.sde.t_of_log_snr(-torch.log(sigma))
        alpha = self.sde.alpha(t)[:, None]
        return x_ve + sigma[:, None] ** 2 * alpha * self.data.score(alpha * x_ve, t)


def test_k_diffusion_ve_denoiser_gives_the_exact_score():
    model = _VEDenoiser()
    a = from_k_diffusion(model)
    assert isinstance(a.sde, sdekit.VESDE) and a.sde.sigma_max == 50.0
    g = torch.Generator().manual_seed(0)
    t = a.sde.eps + torch.rand(64, generator=g, dtype=torch.float64) * (1 - a.sde.eps)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * a.sde.sigma(t)[:, None]
    torch.testing.assert_close(a(x, t), model.data.score(x, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.data(x, t), model(x, a.sde.sigma(t)), rtol=1e-12, atol=1e-12)


def test_k_diffusion_discrete_wrapper_gives_the_exact_vp_score():
    sde = DiscreteVPSDE.cosine(200)
    model = _DiscreteDenoiser(sde)
    a = from_k_diffusion(model)
    assert isinstance(a.sde, DiscreteVPSDE)
    torch.testing.assert_close(a.sde.alphas_cumprod, sde.alphas_cumprod, rtol=1e-13, atol=0)
    g = torch.Generator().manual_seed(1)
    t = sde.eps + torch.rand(64, generator=g, dtype=torch.float64) * (1 - sde.eps)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(a(x, t), model.data.score(x, t), rtol=1e-8, atol=1e-8)


def test_k_diffusion_without_sigmas_asks_for_the_sde():
    with pytest.raises(sdekit.InvalidParameterError, match="pass sde="):
        from_k_diffusion(lambda x, s: x)
    a = from_k_diffusion(lambda x, s: x, sde=sdekit.VESDE(0.002, 80.0))
    assert a.sde.sigma_max == 80.0


# -- safe loading ------------------------------------------------------------------------------

class _Evil:
    """Unpickling this creates a file: the stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": _Evil(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="was not executed"):
        load_checkpoint(path)
    assert not marker.exists()
    legacy = tmp_path / "evil.pkl"
    with open(legacy, "wb") as f:
        pickle.dump(_Evil(str(marker)), f, protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(legacy)
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, sdekit.SDEKitError)


def test_weights_load_from_torch_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.save({"ema": net.state_dict()}, tmp_path / "nested.pt")
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    for name, key in (("w.pt", None), ("nested.pt", "ema"), ("w.safetensors", None)):
        other = torch.nn.Linear(3, 2)
        load_weights(other, tmp_path / name, key=key)
        assert torch.equal(other.weight, net.weight) and torch.equal(other.bias, net.bias)
    with pytest.raises(sdekit.InvalidParameterError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(sdekit.InvalidParameterError, match="no entry 'model'"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "nested.pt", key="model")
