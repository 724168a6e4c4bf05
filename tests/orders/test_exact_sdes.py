"""The exact-solution SDEs: each ``exact`` solves its own SDE, checked by Itô's formula with autograd.

For :math:`X_t = h(t, W_t, U_t)` with :math:`U_t = \\int_0^t W_s ds` (so :math:`dU = W dt`), Itô's
formula gives :math:`dX = (\\partial_t h + W\\partial_U h + \\tfrac12\\partial_{WW} h)\\,dt + \\partial_W h\\,dW`:
the diffusion must equal :math:`\\partial_W h` and the drift the rest, at every point.
"""

import math

import pytest
import torch

import sdekit
from sdekit.validation import AdditiveSDE, ArctanSDE, ExactSDE, GeometricBrownianMotion, SinhSDE, exact_sdes

PROBLEMS = exact_sdes()


def _points(sde, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = sde.dim
    x0 = sde.initial_state(n) + 0.2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    if isinstance(sde, ArctanSDE):
        x0 = x0.clamp(-1.2, 1.2)
    t = sde.T * (0.05 + 0.95 * torch.rand(n, d, generator=g, dtype=torch.float64))
    w = torch.sqrt(t) * torch.randn(n, d, generator=g, dtype=torch.float64)
    u = torch.sqrt(t ** 3 / 3) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x0, t, w, u


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_exact_solution_satisfies_its_sde(name):
    sde = PROBLEMS[name]
    x0, t, w, u = _points(sde)
    t, w, u = (v.clone().requires_grad_(True) for v in (t, w, u))
    x = sde.exact(x0, t, w, u)  # every problem is coordinatewise: t of shape (n, d) gives per-coordinate times
    h_t, h_w, h_u = torch.autograd.grad(x.sum(), (t, w, u), create_graph=True, allow_unused=True)
    h_t = torch.zeros_like(x) if h_t is None else h_t  # autonomous solutions (arctan, sinh)
    h_u = torch.zeros_like(x) if h_u is None else h_u
    (h_ww,) = torch.autograd.grad(h_w.sum(), w, allow_unused=True)
    h_ww = torch.zeros_like(x) if h_ww is None else h_ww
    with torch.no_grad():
        drift = h_t + w * h_u + 0.5 * h_ww
        g = sde.g(t, x).expand_as(x)
        f = sde.f(t, x)
    torch.testing.assert_close(h_w.detach(), g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(drift.detach(), f, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_exact_starts_at_x0(name):
    sde = PROBLEMS[name]
    x0 = sde.initial_state(5)
    zero = torch.zeros_like(x0)
    torch.testing.assert_close(sde.exact(x0, 0.0, zero, zero), x0, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_is_an_sdekit_sde_with_declared_noise(name):
    sde = PROBLEMS[name]
    assert isinstance(sde, ExactSDE) and isinstance(sde, sdekit.SDE)
    x = sde.initial_state(4)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    g = sde.g(t, xr)
    depends = g.requires_grad and torch.autograd.grad(g.sum(), xr, allow_unused=True)[0] is not None
    assert depends == (sde.noise == "diagonal")
    assert sde.f(t, x).shape == x.shape


def test_time_integral_required_where_the_solution_needs_it():
    assert PROBLEMS["gbm-tv"].needs_time_integral and PROBLEMS["additive-tv"].needs_time_integral
    assert not any(PROBLEMS[n].needs_time_integral for n in ("gbm", "additive", "arctan", "sinh"))
    x0 = PROBLEMS["gbm-tv"].initial_state(2)
    with pytest.raises(ValueError, match="space-time"):
        PROBLEMS["gbm-tv"].exact(x0, 1.0, torch.zeros_like(x0))


def test_torchsde_time_integral_is_int_w_ds():
    """``bm(0, T, return_U=True)`` returns :math:`\\int_0^T W_s ds`, what the tv problems' solutions use."""
    bm = sdekit.brownian_motion(0.0, 1.0, (200, 1), dtype=torch.float64, seed=5, levy_area="space-time")
    w_T, u_T = bm(0.0, 1.0, return_U=True)
    n = 256
    ts = torch.linspace(0, 1, n + 1, dtype=torch.float64).tolist()
    steps = torch.stack([bm(a, b) for a, b in zip(ts[:-1], ts[1:])])
    ws = torch.cat([torch.zeros_like(w_T)[None], steps.cumsum(0)])
    trapezoid = (0.5 * (ws[1:] + ws[:-1])).sum(0) / n
    # trapezoid error of a Brownian path: std sqrt(n h^3 / 12) = 1.1e-3
    assert float((u_T - trapezoid).abs().mean()) < 2e-3
    torch.testing.assert_close(ws[-1], w_T)


def test_parameters_broadcast_and_validate():
    gbm = GeometricBrownianMotion(mu=0.1, sigma=(0.2, 0.3))
    assert gbm.dim == 2 and gbm.mu.tolist() == [0.1, 0.1]
    assert AdditiveSDE(alpha=0.1, beta=0.05).dim == 1
    assert SinhSDE(c=1.0).initial_state(3).shape == (3, 1)
    with pytest.raises(ValueError, match="pi/2"):
        ArctanSDE(x0=2.0)
    assert "ArctanSDE" in repr(ArctanSDE()) and math.isclose(float(ArctanSDE().a), 0.1)


def test_float32_follows_input():
    sde = PROBLEMS["gbm"]
    x0 = sde.initial_state(3, dtype=torch.float32)
    out = sde.exact(x0, 1.0, torch.zeros_like(x0))
    assert out.dtype == torch.float32
    assert sde.f(torch.ones(3, dtype=torch.float32), x0).dtype == torch.float32
