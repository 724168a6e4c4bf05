"""Metrics: closed forms, agreement with scipy, standard errors and Monte Carlo floors."""

import math

import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.validation import (Distance, GaussianData, GaussianMixture, energy_distance, fitted_gaussian_w2,
                               gaussian_w2, mean_cov_error, mode_masses, monte_carlo_floor, sliced_wasserstein)

from _val_helpers import PROPERTY, gaussian_params, spd_matrices

GAUSS = GaussianData([0.0, 1.0], [[1.0, 0.5], [0.5, 2.0]], sdekit.VPSDE())


def _gauss_sampler(n, g):
    return GAUSS.sample(n, generator=g)


@PROPERTY
@given(params=gaussian_params(), data=st.data())
def test_gaussian_w2_is_a_symmetric_distance_and_zero_on_equal_inputs(params, data):
    mean, cov = params
    assert gaussian_w2(mean, cov, mean, cov) < 1e-6
    mean2, cov2 = mean + 0.5, data.draw(spd_matrices(mean.shape[0]))
    w_ab, w_ba = gaussian_w2(mean, cov, mean2, cov2), gaussian_w2(mean2, cov2, mean, cov)
    assert math.isclose(w_ab, w_ba, rel_tol=1e-8, abs_tol=1e-10)
    assert w_ab >= 0.5 * math.sqrt(mean.shape[0]) - 1e-9            # at least the distance between the means
    # commuting covariances: W2^2 = |m1 - m2|^2 + |sqrt(l1) - sqrt(l2)|^2 in their common eigenbasis
    evals, U = torch.linalg.eigh(cov)
    cov3 = (U * (2.0 * evals + 0.3)) @ U.T
    expected = math.sqrt(0.25 * mean.shape[0] + float(((2.0 * evals + 0.3).sqrt() - evals.sqrt()).pow(2).sum()))
    assert math.isclose(gaussian_w2(mean, cov, mean2, cov3), expected, rel_tol=1e-9)


def test_gaussian_w2_one_dimensional_closed_form():
    # W2(N(m1, s1^2), N(m2, s2^2))^2 = (m1 - m2)^2 + (s1 - s2)^2
    assert math.isclose(gaussian_w2([1.0], [[4.0]], [-2.0], [[0.25]]), math.sqrt(9.0 + 1.5 ** 2), rel_tol=1e-12)
    assert gaussian_w2([0.0, 0.0], [[1.0, 0.0], [0.0, 0.0]], [0.0, 0.0], [[1.0, 0.0], [0.0, 0.0]]) < 1e-7
    with pytest.raises(sdekit.InvalidParameterError):
        gaussian_w2([0.0], [[-1.0]], [0.0], [[1.0]])
    with pytest.raises(sdekit.ShapeError):
        gaussian_w2([0.0, 0.0], [[1.0]], [0.0], [[1.0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_cov_error_standard_errors_are_honest(seed):
    mean, cov = GAUSS.marginal(0.0)
    x = GAUSS.sample(10_000, generator=torch.Generator().manual_seed(seed))
    err = mean_cov_error(x, mean, cov)
    emp = mean_cov_error(x, mean, cov, standard_errors="empirical")
    assert err.within(4.0) and emp.within(4.0), (err.max_z, emp.max_z)
    torch.testing.assert_close(emp.cov_se, err.cov_se, rtol=0.1, atol=0)    # same formula for Gaussian data
    torch.testing.assert_close(emp.mean_se, err.mean_se, rtol=0.05, atol=0)
    biased = mean_cov_error(x + 6 * err.mean_se, mean, cov)
    assert not biased.within(4.0)
    assert not mean_cov_error(1.1 * (x - mean) + mean, mean, cov).within(4.0)   # 21% too much variance


def test_fitted_gaussian_w2_floor():
    mean, cov = GAUSS.marginal(0.0)
    x = GAUSS.sample(4000, generator=torch.Generator().manual_seed(99))
    d = fitted_gaussian_w2(x, mean, cov, repeats=8)
    assert d.floor.repeats == 8 and d.within(4.0), (d.value, d.floor)
    assert not fitted_gaussian_w2(x + 0.2, mean, cov, repeats=8).within(4.0)
    assert math.isclose(d.value, gaussian_w2(x.mean(0), torch.cov(x.T), mean, cov), rel_tol=1e-12)


def test_sliced_wasserstein_and_energy_distance_match_scipy_in_one_dimension():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 1, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(170, 1, generator=g, dtype=torch.float64) + 0.3     # unequal sizes
    # in 1-D every projection is +-x, so the sliced W1 is the 1-D W1
    assert math.isclose(sliced_wasserstein(x, y, n_projections=4, p=1).value,
                        scipy.stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy()), rel_tol=1e-10)
    assert math.isclose(energy_distance(x, y, chunk=64).value,
                        scipy.stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy()), rel_tol=1e-10)
    # W2 in 1-D with unequal sizes: a set against itself repeated is distance 0
    assert sliced_wasserstein(x, torch.cat([x, x]), n_projections=8).value < 1e-12
    assert energy_distance(x, torch.cat([x, x])).value < 1e-6


def test_distances_are_zero_on_identical_sets_and_seeded():
    x = GAUSS.sample(500, generator=torch.Generator().manual_seed(1))
    assert sliced_wasserstein(x, x).value == 0.0 and energy_distance(x, x).value < 1e-6
    y = GAUSS.sample(500, generator=torch.Generator().manual_seed(2))
    assert sliced_wasserstein(x, y).value == sliced_wasserstein(x, y).value
    a = sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(3))
    assert a.value > 0 and a.floor is None
    with pytest.raises(sdekit.InvalidParameterError, match="floor"):
        a.within(3.0)
    with pytest.raises(sdekit.ShapeError):
        sliced_wasserstein(x, torch.zeros(5, 3))


def test_floors_shrink_like_one_over_root_n_and_are_reproducible():
    def sliced(x, y):
        return sliced_wasserstein(x, y, n_projections=64)

    for metric in (sliced, energy_distance):
        small = monte_carlo_floor(metric, _gauss_sampler, 100, repeats=5)
        large = monte_carlo_floor(metric, _gauss_sampler, 1600, repeats=5)
        assert 2.5 < small.mean / large.mean < 6.5, (metric.__name__, small.mean, large.mean)   # sqrt(16) = 4
        assert small.values == monte_carlo_floor(metric, _gauss_sampler, 100, repeats=5).values
        assert small.min <= small.mean <= small.max and small.std > 0


def test_exact_samples_sit_on_the_floor_and_a_shifted_sampler_does_not():
    mix = GaussianMixture.default_2d(sdekit.VESDE())
    sampler = lambda n, g: mix.sample(n, generator=g)       # noqa: E731
    floor = monte_carlo_floor(sliced_wasserstein, sampler, 2000, repeats=8, seed=10)
    ref = mix.sample(2000, generator=torch.Generator().manual_seed(1000))
    good = sliced_wasserstein(mix.sample(2000, generator=torch.Generator().manual_seed(1001)), ref, floor=floor)
    bad = sliced_wasserstein(1.3 * mix.sample(2000, generator=torch.Generator().manual_seed(1001)), ref, floor=floor)
    assert isinstance(good, Distance) and good.within(4.0) and 0.3 < good.ratio < 3.0, (good.value, floor)
    assert not bad.within(4.0), (bad.value, floor)       # 30% too wide; sliced W2 misses 15% at this n


def test_mode_masses_of_exact_samples_and_of_a_mass_shifting_sampler():
    mix = GaussianMixture.default_2d(sdekit.VPSDE())
    x, k = mix.sample(20_000, sdekit.VPSDE().eps, generator=torch.Generator().manual_seed(7), return_components=True)
    mm = mode_masses(x, mix)
    assert mm.within(4.0) and math.isclose(float(mm.masses.sum()), 1.0, rel_tol=1e-12), mm.z
    torch.testing.assert_close(mm.se_empirical, mm.se, rtol=0.05, atol=0)   # hard posteriors: binomial
    # drop 6% of mode 0: its mass falls from 0.5 to 0.485, about 4 standard errors, and TV sees 0.015
    keep = (k != 0) | (torch.arange(20_000) % 16 != 0)
    shifted = mode_masses(x[keep], mix)
    assert not shifted.within(3.0) and shifted.total_variation > 0.01, shifted.z
    with pytest.raises(sdekit.ShapeError):
        mode_masses(torch.zeros(10), mix)
