"""GaussianMixture: exact scores, log-densities, component posteriors and samples."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.validation import GaussianData, GaussianMixture, mean_cov_error

from _val_helpers import PROPERTY, ConstantDriftSDE, autograd_score, rand_x, linear_sdes, mixture_params, time_in


@PROPERTY
@given(sde=linear_sdes(), params=mixture_params(), data=st.data())
def test_score_is_the_gradient_of_log_prob(sde, params, data):
    mix = GaussianMixture(*params, sde)
    t = time_in(data.draw, sde, batch=6)
    x = mix.sample(6, t, generator=torch.Generator().manual_seed(0)) + rand_x(6, mix.dim, 1, 0.5)
    s = mix.score(x, t)
    torch.testing.assert_close(s, autograd_score(mix.log_prob, x, t), rtol=1e-8,
                               atol=1e-10 * (1 + float(s.abs().max())))


@PROPERTY
@given(sde=linear_sdes(), params=mixture_params(), data=st.data())
def test_log_prob_and_posterior_match_the_components(sde, params, data):
    w, _, _ = params
    mix = GaussianMixture(*params, sde)
    t = time_in(data.draw, sde)
    x = rand_x(7, mix.dim, 2, 4.0)
    comp = torch.stack([c.log_prob(x, t) for c in mix.components], dim=1) + w.log()
    torch.testing.assert_close(mix.log_prob(x, t), torch.logsumexp(comp, 1), rtol=1e-10, atol=1e-10)
    post = mix.posterior(x, t)
    assert post.shape == (7, mix.n_components) and (post >= 0).all()
    torch.testing.assert_close(post.sum(1), torch.ones(7, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(post, torch.softmax(comp, 1), rtol=1e-9, atol=1e-12)
    # the score is the posterior-weighted mean of the component scores
    comp_scores = torch.stack([c.score(x, t) for c in mix.components], dim=1)
    torch.testing.assert_close(mix.score(x, t), (post[:, :, None] * comp_scores).sum(1), rtol=1e-9, atol=1e-10)


def test_one_component_mixture_is_gaussian_data():
    sde = ConstantDriftSDE()
    mean, cov = [0.5, -1.0], [[0.8, -0.3], [-0.3, 0.4]]
    mix, g = GaussianMixture([1.0], [mean], [cov], sde), GaussianData(mean, cov, sde)
    x, t = rand_x(5, 2, 3, 4.0), torch.linspace(0.01, 1.0, 5, dtype=torch.float64)
    torch.testing.assert_close(mix.score(x, t), g.score(x, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mix.log_prob(x, t), g.log_prob(x, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mix.marginal(0.4)[2][0], g.marginal(0.4)[1])


def test_per_sample_times_match_row_by_row():
    mix = GaussianMixture.default_2d(sdekit.VESDE())
    x, t = rand_x(4, 2, 5, 4.0), torch.tensor([1e-5, 0.1, 0.5, 1.0], dtype=torch.float64)
    rows = torch.cat([mix.score(x[i:i + 1], float(t[i])) for i in range(4)])
    torch.testing.assert_close(mix.score(x, t), rows, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde,t", [(sdekit.VPSDE(), 0.0), (sdekit.VESDE(), 0.3), (sdekit.SubVPSDE(), 0.7)])
def test_samples_match_components_weights_and_overall_moments(sde, t):
    mix = GaussianMixture.default_2d(sde)
    n = 30_000
    x, k = mix.sample(n, t, generator=torch.Generator().manual_seed(21), return_components=True)
    counts = torch.bincount(k, minlength=3).to(torch.float64) / n
    se = (mix.weights * (1 - mix.weights) / n).sqrt()
    assert ((counts - mix.weights).abs() <= 4 * se).all(), counts
    _, m_k, c_k = mix.marginal(t)
    for j in range(3):
        assert mean_cov_error(x[k == j], m_k[j], c_k[j]).within(4.0)
    m, c = mix.moments_at(t)
    err = mean_cov_error(x, m, c, standard_errors="empirical")
    assert err.within(4.0), err.max_z


def test_default_2d_modes_are_well_separated_and_unequal():
    mix = GaussianMixture.default_2d(sdekit.VPSDE())
    assert mix.n_components == 3 and mix.dim == 2 and len(set(mix.weights.tolist())) == 3
    x, k = mix.sample(5000, 0.0, generator=torch.Generator().manual_seed(2), return_components=True)
    post = mix.posterior(x, 1e-3)
    assert (post.argmax(1) == k).double().mean() > 0.999
    assert float(post.max(1).values.median()) > 1 - 1e-6


def test_float32_and_errors():
    mix = GaussianMixture.default_2d(sdekit.VPSDE())
    x = rand_x(3, 2, 6, 4.0).float()
    assert mix.score(x, 0.5).dtype == torch.float32 and mix.posterior(x, torch.full((3,), 0.5)).dtype == torch.float32
    sde, c = sdekit.VPSDE(), [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(sdekit.InvalidParameterError, match="sum to 1"):
        GaussianMixture([0.5, 0.6], [[0, 0], [1, 1]], [c, c], sde)
    with pytest.raises(sdekit.InvalidParameterError, match="positive"):
        GaussianMixture([1.5, -0.5], [[0, 0], [1, 1]], [c, c], sde)
    with pytest.raises(sdekit.ShapeError):
        GaussianMixture([0.5, 0.5], [[0, 0]], [c, c], sde)
    with pytest.raises(sdekit.ShapeError):
        GaussianMixture([0.5, 0.5], [[0, 0], [1, 1]], [c], sde)
    with pytest.raises(sdekit.InvalidParameterError, match="positive definite"):
        GaussianMixture([0.5, 0.5], [[0, 0], [1, 1]], [c, [[1.0, 0.0], [0.0, -1.0]]], sde)
    with pytest.raises(sdekit.ShapeError):
        mix.score(torch.zeros(2, 3, dtype=torch.float64), 0.5)
    assert math.isclose(float(mix.weights.sum()), 1.0)
