"""The stochastic samplers: every sample is its own (batch independence, keyed noise), refining the grid
refines the same path, and each sampler converges in distribution with the exact score.

Distribution checks compare against exact laws with Monte Carlo standard errors computed from the
sample size (``sdekit.validation.mean_cov_error``, ``mode_masses``), 4 standard errors, fixed seeds.
"""

import pytest
import torch

import sdekit
from sdekit.validation import GaussianData, GaussianMixture, mean_cov_error, mode_masses

#: every stochastic sampler, with the predictor-corrector pairs that matter
STOCHASTIC = [
    ("ddim", {"eta": 1.0}),
    ("euler_ancestral", {}),
    ("dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_sde", {}),
    ("edm_stochastic", {}),
    ("restart", {}),
    ("restart", {"sigma_min": 1.0, "sigma_max": 2.0, "restarts": 3, "restart_steps": 4}),
    ("pc", {}),
    ("pc", {"corrector": "annealed_langevin", "n_steps": 2}),
    ("pc", {"predictor": "ancestral", "corrector": "none"}),
    ("pc", {"predictor": "euler_maruyama", "corrector": "langevin"}),
]
IDS = [f"{m}-{'-'.join(map(str, o.values())) or 'default'}" for m, o in STOCHASTIC]


def gaussian(sde):
    """2-D anisotropic, correlated Gaussian data with its exact score."""
    return GaussianData(torch.tensor([1.0, -0.5]), torch.tensor([[1.0, 0.6], [0.6, 0.5]]), sde)


def start(data, n, seed=1):
    """``n`` exact samples of p_T (so that the prior's mismatch plays no part)."""
    return data.sample(n, data.sde.T, generator=torch.Generator().manual_seed(seed))


def sample(data, x, method, options, steps, seed=2, **kw):
    return sdekit.reverse(data.sde, data.score).solve(x, method=method, steps=steps, seed=seed,
                                                      options=options, **kw)


# ------------------------------------------------------------------------------------------------
# batch independence, keyed noise
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,options", STOCHASTIC, ids=IDS)
def test_sample_does_not_depend_on_its_batch(method, options):
    sde = sdekit.VESDE(0.01, 20.0)
    data = gaussian(sde)
    x = start(data, 50)
    big = sample(data, x, method, options, steps=5).x
    small = sample(data, x[:5], method, options, steps=5).x
    torch.testing.assert_close(small, big[:5], rtol=0, atol=1e-12)
    # a shuffled shard, its global indices given: each sample is still itself
    idx = torch.tensor([41, 7, 19], dtype=torch.int64)
    bm = sdekit.KeyedBrownian(sde.eps, sde.T, (3, 2), seed=2, index=idx, dtype=x.dtype)
    shard = sample(data, x[idx], method, options, steps=5, seed=None, noise=bm).x
    torch.testing.assert_close(shard, big[idx], rtol=0, atol=1e-12)
    other = sample(data, x[:5], method, options, steps=5, seed=3).x
    assert not torch.isclose(other, small).any(), "another seed gives other samples"


def test_batch_norm_langevin_couples_the_samples():
    """score_sde's batch-averaged Langevin norms: sample i depends on the rest of its batch."""
    data = gaussian(sdekit.VPSDE())
    x = start(data, 50)
    big = sample(data, x, "pc", {"norm": "batch"}, steps=8).x
    small = sample(data, x[:5], "pc", {"norm": "batch"}, steps=8).x
    assert (small - big[:5]).abs().max() > 1e-3


@pytest.mark.parametrize("method,options", STOCHASTIC, ids=IDS)
def test_save_at_grid_times_leaves_the_samples_unchanged(method, options):
    sde = sdekit.VPSDE()
    data = gaussian(sde)
    x = start(data, 20)
    schedule = {m.name: m for m in sdekit.methods(backend="sdekit")}[method].schedule
    grid = sdekit.schedule_grid(sde, schedule, 8, sde.T, sde.eps)
    plain = sample(data, x, method, options, steps=8)
    saved = sample(data, x, method, options, steps=8, save_at=[float(grid[3]), float(grid[6])])
    assert torch.equal(saved.x, plain.x)
    assert saved.path.shape == (2, 20, 2) and torch.isfinite(saved.path).all()


@pytest.mark.parametrize("method,options", [("ddim", {"eta": 1.0}), ("pc", {"predictor": "ancestral",
                                                                            "corrector": "none"})])
def test_refining_the_grid_refines_the_same_path(method, options):
    """With a path built ``refine=True``, save_at between grid times splits steps; the samples move by the
    discretisation error only, far less than a new Brownian path moves them.  With the default fresh step
    noise (seed= alone) the split steps draw new normals, and the samples move as far as with a new seed."""
    sde = sdekit.VPSDE()
    data = gaussian(sde)
    x = start(data, 200)
    grid = sdekit.uniform_grid(sde.T, sde.eps, 20)
    between = [0.5 * float(grid[k] + grid[k + 1]) for k in range(0, 20, 2)]

    def path(seed):
        return sdekit.KeyedBrownian(sde.eps, sde.T, x.shape, seed=seed, dtype=x.dtype, refine=True)
    plain = sample(data, x, method, options, steps=20, seed=None, noise=path(2))
    refined = sample(data, x, method, options, steps=20, seed=None, save_at=between, noise=path(2))
    reseeded = sample(data, x, method, options, steps=20, seed=None, noise=path(9))
    moved = float((refined.x - plain.x).abs().mean())
    unrelated = float((reseeded.x - plain.x).abs().mean())
    assert 0 < moved < 0.1 * unrelated, (moved, unrelated)
    fresh, fresh_split = (sample(data, x, method, options, steps=20, **kw).x for kw in ({}, {"save_at": between}))
    assert float((fresh_split - fresh).abs().mean()) > 0.3 * unrelated


# ------------------------------------------------------------------------------------------------
# convergence in distribution, exact score
# ------------------------------------------------------------------------------------------------

#: (method, options, first order): samplers that converge in distribution with their defaults, in any
#: dimension.  First order in the step (weak): a bias of about C/N remains after N steps, measured on the
#: 2-D Gaussian below (VP and VE, 8000 samples, N = 25 and 100) at most 12/N in a covariance entry.
CONVERGENT = [
    ("ddim", {"eta": 1.0}, True),
    ("euler_ancestral", {}, True),
    ("dpmpp_2m_sde", {}, False),
    ("dpmpp_sde", {}, False),
    ("edm_stochastic", {}, False),
    ("restart", {}, False),
    ("pc", {"corrector": "annealed_langevin"}, False),
    ("pc", {"norm": "batch"}, False),
    ("pc", {"corrector": "none"}, True),
    ("pc", {"predictor": "ancestral", "corrector": "none"}, True),
    ("pc", {"predictor": "euler_maruyama", "corrector": "none"}, True),
]
CONVERGENT_IDS = [f"{m}-{'-'.join(map(str, o.values())) or 'default'}" for m, o, _ in CONVERGENT]
BIAS_C = 15.0


def moment_errors(x, data, allowance):
    """Mean and covariance of ``x`` against p_eps: every entry within 4 standard errors (computed from n)
    plus ``allowance``; returns the largest absolute error."""
    mean, cov = data.marginal(data.sde.eps)
    r = mean_cov_error(x, mean, cov)
    assert bool((r.mean_error.abs() <= 4 * r.mean_se + allowance).all()), (r.mean_error, r.mean_se, allowance)
    assert bool((r.cov_error.abs() <= 4 * r.cov_se + allowance).all()), (r.cov_error, r.cov_se, allowance)
    return max(float(r.mean_error.abs().max()), float(r.cov_error.abs().max()))


@pytest.mark.parametrize("method,options,first_order", CONVERGENT, ids=CONVERGENT_IDS)
def test_moments_converge(method, options, first_order):
    """2000 samples of a 2-D correlated Gaussian (VP) at 40 steps: mean and covariance within 4 standard
    errors (about 0.15 in a covariance entry), plus C/N for the first-order samplers."""
    data = gaussian(sdekit.VPSDE())
    x = sample(data, start(data, 2000), method, options, steps=40).x
    moment_errors(x, data, allowance=BIAS_C / 40 if first_order else 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["VP", "VE"])
@pytest.mark.parametrize("method,options,first_order", CONVERGENT, ids=CONVERGENT_IDS)
def test_moments_converge_closely(method, options, first_order, sde_name):
    """10000 samples at 200 steps: within 4 standard errors (about 0.06 in a covariance entry), plus C/N
    for the first-order samplers; and closer than at 25 steps, unless 25 steps are within Monte Carlo error
    already."""
    sde = sdekit.VPSDE() if sde_name == "VP" else sdekit.VESDE(0.01, 20.0)
    data = gaussian(sde)
    x = start(data, 10000)
    allowance = BIAS_C / 200 if first_order else 0.0
    err_fine = moment_errors(sample(data, x, method, options, steps=200).x, data, allowance)
    coarse = sample(data, x, method, options, steps=25).x
    err_coarse = moment_errors(coarse, data, BIAS_C / 25)
    mean, cov = data.marginal(sde.eps)
    assert err_fine < err_coarse or mean_cov_error(coarse, mean, cov).within(4), \
        "a discretisation error visible at 25 steps must shrink by 200"


#: the mixture at 40 steps on VP for four samplers in the quick run, all of them with ``-m slow``
QUICK_MIXTURE = ("ddim-1.0", "dpmpp_2m_sde-default", "edm_stochastic-default", "restart-default",
                 "pc-annealed_langevin")
MIXTURE_CASES = [pytest.param(*case, id=name, marks=() if name in QUICK_MIXTURE else pytest.mark.slow)
                 for case, name in zip(CONVERGENT, CONVERGENT_IDS)]


@pytest.mark.parametrize("method,options,first_order", MIXTURE_CASES)
def test_mode_masses(method, options, first_order):
    """The default 2-D mixture (weights 0.5, 0.3, 0.2, modes > 7 standard deviations apart) under VP:
    1000 samples at 40 steps put each mode's mass within 4 binomial standard errors of its weight."""
    sde = sdekit.VPSDE()
    mix = GaussianMixture.default_2d(sde)
    x = mix.sample(1000, sde.T, generator=torch.Generator().manual_seed(1))
    x = sdekit.reverse(sde, mix.score).solve(x, method=method, steps=40, seed=2, options=options).x
    masses = mode_masses(x, mix)
    assert masses.within(4), (masses.masses, masses.weights, masses.se)


@pytest.mark.slow
@pytest.mark.parametrize("method,options,first_order", CONVERGENT, ids=CONVERGENT_IDS)
def test_mode_masses_ve(method, options, first_order):
    """The same mixture under VE (sigma_max = 20), 8000 samples at 100 steps."""
    sde = sdekit.VESDE(0.01, 20.0)
    mix = GaussianMixture.default_2d(sde)
    x = mix.sample(8000, sde.T, generator=torch.Generator().manual_seed(1))
    x = sdekit.reverse(sde, mix.score).solve(x, method=method, steps=100, seed=2, options=options).x
    masses = mode_masses(x, mix)
    assert masses.within(4), (masses.masses, masses.weights, masses.se)
