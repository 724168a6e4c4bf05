"""GaussianData: exact scores, marginals, samples and probability-flow maps."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.validation import GaussianData, mean_cov_error

from _val_helpers import PROPERTY, ConstantDriftSDE, autograd_score, rand_x, gaussian_params, linear_sdes, time_in


@PROPERTY
@given(sde=linear_sdes(), params=gaussian_params(), data=st.data())
def test_score_is_the_gradient_of_log_prob(sde, params, data):
    g = GaussianData(*params, sde)
    t = time_in(data.draw, sde, batch=6)                 # a different time per sample
    x = g.sample(6, t, generator=torch.Generator().manual_seed(0)) + rand_x(6, g.dim, 1, 0.5)
    s = g.score(x, t)
    torch.testing.assert_close(s, autograd_score(g.log_prob, x, t), rtol=1e-9, atol=1e-12 * float(s.abs().max()))


@PROPERTY
@given(sde=linear_sdes(), params=gaussian_params(), data=st.data())
def test_marginal_and_log_prob_match_the_definition(sde, params, data):
    mean, cov = params
    g = GaussianData(mean, cov, sde)
    t = time_in(data.draw, sde)
    m_t, c_t = g.marginal(t)
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = g.moments.alpha(tt), g.moments.sigma(tt)
    torch.testing.assert_close(m_t, a * mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c_t, a ** 2 * cov + s ** 2 * torch.eye(g.dim, dtype=torch.float64),
                               rtol=1e-10, atol=1e-12 * float(c_t.abs().max()))
    x = rand_x(5, g.dim, 2, 3.0)
    ref = torch.distributions.MultivariateNormal(m_t, c_t).log_prob(x)
    torch.testing.assert_close(g.log_prob(x, t), ref, rtol=1e-9, atol=1e-9)
    mb, cb = g.marginal(torch.full((3,), t, dtype=torch.float64))
    assert mb.shape == (3, g.dim) and cb.shape == (3, g.dim, g.dim)
    torch.testing.assert_close(cb[1], c_t)


@PROPERTY
@given(sde=linear_sdes(), params=gaussian_params(), data=st.data())
def test_flow_map_composes_is_identity_at_equal_times_and_pushes_marginals(sde, params, data):
    g = GaussianData(*params, sde)
    u, t, s = (time_in(data.draw, sde) for _ in range(3))
    x = rand_x(4, g.dim, 3, 3.0)
    torch.testing.assert_close(g.flow_map(x, t, t), x, rtol=1e-12, atol=1e-12)
    scale = 1.0 + float(g.flow_map(x, u, s).abs().max())
    torch.testing.assert_close(g.flow_map(g.flow_map(x, u, t), t, s), g.flow_map(x, u, s),
                               rtol=1e-9, atol=1e-10 * scale)
    # the map is affine, x -> A x + b: read A and b off it and push N(mean_t, cov_t) forward analytically
    m_t, c_t = g.marginal(t)
    m_s, c_s = g.marginal(s)
    b = g.flow_map(m_t[None], t, s)[0]
    A = (g.flow_map(m_t + torch.eye(g.dim, dtype=torch.float64), t, s) - b).T
    torch.testing.assert_close(b, m_s, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A @ c_t @ A.T, c_s, rtol=1e-8, atol=1e-10 * float(c_s.abs().max()))


@pytest.mark.parametrize("sde", [sdekit.VPSDE(), sdekit.SubVPSDE(), sdekit.VESDE(), ConstantDriftSDE()],
                         ids=["vp", "subvp", "ve", "ode-moments"])
def test_flow_map_is_the_solution_of_the_probability_flow_ode(sde):
    g = GaussianData([1.0, -2.0], [[1.0, 0.6], [0.6, 0.5]], sde)
    x_T = g.sample(8, sde.T, generator=torch.Generator().manual_seed(4))
    sol = sdekit.probability_flow(sde, g.score).solve(x_T, method="dopri5", rtol=1e-9, atol=1e-9)
    exact = g.flow_map(x_T, sde.T, sde.eps)
    err = float((sol.x - exact).abs().max() / (1 + exact.abs().max()))
    assert err < 1e-6, err


@pytest.mark.parametrize("sde,t", [(sdekit.VPSDE(), 0.0), (sdekit.VPSDE(), 0.3), (sdekit.SubVPSDE(), 0.05),
                                   (sdekit.VESDE(), 0.5), (ConstantDriftSDE(), 1.0)])
def test_samples_match_marginal_moments(sde, t):
    g = GaussianData([1.0, -2.0, 0.5], [[1.0, 0.6, 0.1], [0.6, 0.5, 0.0], [0.1, 0.0, 0.2]], sde)
    x = g.sample(20_000, t, generator=torch.Generator().manual_seed(11))
    m_t, c_t = g.marginal(t)
    err = mean_cov_error(x, m_t, c_t)
    assert err.within(4.0), err.max_z
    tb = torch.full((20_000,), t, dtype=torch.float64)   # per-sample times give the same law
    assert mean_cov_error(g.sample(20_000, tb, generator=torch.Generator().manual_seed(12)), m_t, c_t).within(4.0)


def test_seeded_sampling_is_reproducible_and_dtype_follows_input():
    g = GaussianData([0.0, 1.0], [[1.0, 0.2], [0.2, 2.0]], sdekit.VPSDE())
    a = g.sample(5, 0.5, generator=torch.Generator().manual_seed(3))
    b = g.sample(5, 0.5, generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.float64 and torch.equal(a, b)
    x32 = a.float()
    assert g.score(x32, torch.full((5,), 0.5)).dtype == torch.float32
    torch.testing.assert_close(g.score(x32, 0.5), g.score(a, 0.5).float(), rtol=1e-5, atol=1e-5)
    assert g.sample(4, torch.tensor(0.2, dtype=torch.float32)).dtype == torch.float32


def test_errors():
    sde = sdekit.VPSDE()
    with pytest.raises(sdekit.InvalidParameterError, match="positive definite"):
        GaussianData([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], sde)
    with pytest.raises(sdekit.InvalidParameterError, match="symmetric"):
        GaussianData([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]], sde)
    with pytest.raises(sdekit.ShapeError):
        GaussianData([0.0, 0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], sde)
    with pytest.raises(sdekit.InvalidParameterError):
        GaussianData([0.0, float("nan")], [[1.0, 0.0], [0.0, 1.0]], sde)
    g = GaussianData([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], sde)
    with pytest.raises(sdekit.ShapeError):
        g.score(torch.zeros(3, 3, dtype=torch.float64), 0.5)
    with pytest.raises(sdekit.ShapeError):
        g.score(torch.zeros(3, 2, dtype=torch.float64), torch.full((2,), 0.5))
