"""Shared strategies and problems for the sdekit.validation tests (imported by the test_val_* files)."""

import math

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import sdekit

PROPERTY = settings(deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
FEW = settings(PROPERTY, max_examples=10)


class ConstantDriftSDE(sdekit.LinearSDE):
    r"""dx = -c x dt + sqrt(a + b t) dw: no closed form in sdekit, so LinearMoments integrates its ODEs.

    By hand: log alpha = -c t and sigma^2 = int_0^t e^{-2c(t-s)} (a + b s) ds
    = (a + b t)/(2c) - b/(4c^2) - (a/(2c) - b/(4c^2)) e^{-2ct}.
    """

    def __init__(self, c=0.7, a=1.0, b=1.0, T=1.0, eps=1e-3):
        super().__init__(T=T, eps=eps)
        self.c, self.a, self.b = c, a, b

    def drift_coef(self, t):
        return torch.full_like(t, -self.c)

    def diffusion_coef(self, t):
        return torch.sqrt(self.a + self.b * t)

    def exact_log_alpha(self, t):
        return -self.c * t

    def exact_variance(self, t):
        c, a, b = self.c, self.a, self.b
        return (a + b * t) / (2 * c) - b / (4 * c * c) - (a / (2 * c) - b / (4 * c * c)) * torch.exp(-2 * c * t)


@st.composite
def linear_sdes(draw, kinds=("vp", "subvp", "ve", "ode")):
    """A VP, sub-VP, VE or closed-form-free linear SDE with random parameters."""
    kind = draw(st.sampled_from(kinds))
    if kind in ("vp", "subvp"):
        beta_min = draw(st.floats(0.05, 1.0))
        beta_max = draw(st.floats(5.0, 25.0))
        return (sdekit.VPSDE if kind == "vp" else sdekit.SubVPSDE)(beta_min, beta_max)
    if kind == "ve":
        return sdekit.VESDE(draw(st.floats(0.005, 0.1)), draw(st.floats(5.0, 80.0)))
    return ConstantDriftSDE(draw(st.floats(0.1, 2.0)), draw(st.floats(0.2, 2.0)), draw(st.floats(0.0, 3.0)))


@st.composite
def spd_matrices(draw, d):
    """A random SPD matrix: a random rotation with log-uniform eigenvalues in [1e-2, 10]."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.exp(rng.uniform(math.log(1e-2), math.log(10.0), d))
    return torch.as_tensor((q * lam) @ q.T, dtype=torch.float64)


@st.composite
def gaussian_params(draw, max_dim=4):
    d = draw(st.integers(1, max_dim))
    mean = torch.as_tensor(draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d)), dtype=torch.float64)
    return mean, draw(spd_matrices(d))


@st.composite
def mixture_params(draw, max_dim=4, max_k=4):
    d = draw(st.integers(1, max_dim))
    k = draw(st.integers(1, max_k))
    raw = torch.as_tensor(draw(st.lists(st.floats(0.1, 1.0), min_size=k, max_size=k)), dtype=torch.float64)
    means = torch.as_tensor(draw(st.lists(st.lists(st.floats(-4, 4), min_size=d, max_size=d),
                                          min_size=k, max_size=k)), dtype=torch.float64)
    covs = torch.stack([draw(spd_matrices(d)) for _ in range(k)])
    return raw / raw.sum(), means, covs


def time_in(draw, sde, batch=None):
    """A time in [eps, T] (a float), or ``batch`` of them as a float64 tensor."""
    if batch is None:
        return draw(st.floats(sde.eps, sde.T))
    return torch.as_tensor(draw(st.lists(st.floats(sde.eps, sde.T), min_size=batch, max_size=batch)),
                           dtype=torch.float64)


def autograd_score(log_prob, x, t):
    """grad_x log_prob(x, t) by autograd."""
    xr = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(log_prob(xr, t).sum(), xr)
    return g


def rand_x(n, d, seed, scale):
    """``n`` float64 points in R^d, ``scale`` times standard normal, from a fixed seed."""
    return scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
