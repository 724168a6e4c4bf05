"""LinearMoments and moment_residual: closed forms, moment ODEs, and the checks between them."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.validation import LinearMoments, has_closed_form, moment_residual

from _val_helpers import FEW, PROPERTY, ConstantDriftSDE, linear_sdes

GRID = torch.cat([torch.zeros(1), torch.logspace(-3, 0, 40)]).to(torch.float64)


def test_ode_moments_match_hand_derived_closed_form():
    sde = ConstantDriftSDE(c=0.7, a=1.0, b=1.0)           # f = -0.7, g(t) = sqrt(1 + t)
    m = LinearMoments(sde)
    assert not m.closed_form and not has_closed_form(sde)
    la, var = m.log_alpha(GRID), m.variance(GRID)
    torch.testing.assert_close(la, sde.exact_log_alpha(GRID), rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(var, sde.exact_variance(GRID), rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(m.sigma(GRID[1:]), sde.exact_variance(GRID[1:]).sqrt(), rtol=1e-9, atol=0)
    torch.testing.assert_close(m.alpha(GRID), torch.exp(-0.7 * GRID), rtol=1e-9, atol=0)


@FEW
@given(c=st.floats(0.1, 3.0), a=st.floats(0.1, 3.0), b=st.floats(0.0, 5.0), T=st.floats(0.5, 2.0))
def test_ode_moments_match_hand_derived_for_random_coefficients(c, a, b, T):
    sde = ConstantDriftSDE(c, a, b, T=T)
    t = torch.linspace(1e-3, T, 25, dtype=torch.float64)
    m = LinearMoments(sde)
    torch.testing.assert_close(m.variance(t), sde.exact_variance(t), rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(m.log_alpha(t), sde.exact_log_alpha(t), rtol=1e-9, atol=1e-14)


@PROPERTY
@given(sde=linear_sdes(kinds=("vp", "subvp", "ve")))
def test_closed_forms_agree_with_the_moment_odes(sde):
    t = torch.logspace(math.log10(sde.eps), math.log10(sde.T), 30, dtype=torch.float64)
    closed, ode = LinearMoments(sde), LinearMoments(sde, method="ode")
    assert closed.closed_form and not ode.closed_form
    torch.testing.assert_close(ode.log_alpha(t), closed.log_alpha(t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ode.sigma(t), closed.sigma(t), rtol=1e-7, atol=0)


@PROPERTY
@given(sde=linear_sdes(kinds=("vp", "subvp", "ve")))
def test_moment_residual_of_builtin_sdes_is_tiny(sde):
    r = moment_residual(sde)
    assert r.derivative in ("autograd", "mixed")       # VE's log_alpha = zeros_like(t) is constant
    assert r.ok(1e-8), r.max


class ReferenceVE(sdekit.VESDE):
    """The score_sde convention sigma(t) = sigma_min (sigma_max/sigma_min)^t, undeclared: right ODE, wrong start."""

    def __init__(self):
        super().__init__(marginal="exact")

    def sigma(self, t):
        return self.noise_level(t)


class WrongVP(sdekit.VPSDE):
    def sigma(self, t):
        return torch.sqrt(-torch.expm1(self.log_alpha(t)))     # sqrt(1 - alpha), not sqrt(1 - alpha^2)


class NumpyVP(sdekit.VPSDE):
    """Closed forms through numpy: autograd cannot see them, so differences are used."""

    def log_alpha(self, t):
        tn = t.detach().numpy()
        return torch.as_tensor(-0.25 * tn ** 2 * (self.beta_max - self.beta_min) - 0.5 * tn * self.beta_min)


def test_moment_residual_catches_wrong_closed_forms():
    ref = moment_residual(ReferenceVE())
    assert float(ref.variance.max()) < 1e-8 and ref.initial_sigma > 1e-5 and not ref.ok(1e-6)
    wrong = moment_residual(WrongVP())
    assert float(wrong.variance.max()) > 1e-2 and not wrong.ok()


def test_moment_residual_falls_back_to_finite_differences():
    r = moment_residual(NumpyVP())
    assert r.derivative == "finite_difference" and r.ok(1e-6), r.max
    assert moment_residual(sdekit.SubVPSDE(), derivative="finite_difference").ok(1e-6)


def test_dtype_device_follow_t_and_ode_moments_are_differentiable():
    sde = ConstantDriftSDE()
    for m in (LinearMoments(sde), LinearMoments(sdekit.VPSDE())):
        t32 = torch.tensor([0.1, 0.5], dtype=torch.float32)
        assert m.sigma(t32).dtype == torch.float32 and m.alpha(t32).shape == (2,)
        s = m.sigma(0.3)
        assert s.dtype == torch.float64 and s.dim() == 0
    m = LinearMoments(sde)
    t = torch.tensor([0.2, 0.9], dtype=torch.float64, requires_grad=True)
    (dvar,) = torch.autograd.grad(m.variance(t).sum(), t)
    td = t.detach()
    expected = 2 * -0.7 * sde.exact_variance(td) + (1 + td)
    torch.testing.assert_close(dvar, expected, rtol=1e-9, atol=0)


def test_errors():
    with pytest.raises(sdekit.InvalidParameterError):
        LinearMoments(object())
    with pytest.raises(sdekit.InvalidParameterError):
        LinearMoments(ConstantDriftSDE(), method="closed_form")
    with pytest.raises(sdekit.InvalidParameterError):
        LinearMoments(sdekit.VPSDE(), method="exact")
    with pytest.raises(sdekit.InvalidParameterError):
        moment_residual(ConstantDriftSDE())
    with pytest.raises(sdekit.InvalidParameterError):
        LinearMoments(ConstantDriftSDE()).sigma(torch.tensor([1.5], dtype=torch.float64))
    with pytest.raises(ValueError):            # the SDEKitError family is also ValueError
        moment_residual(sdekit.VPSDE(), t=np.array([0.0, 0.5]))
