"""Likelihoods through the probability-flow ODE against exact model densities.

The model density of ``probability_flow(sde, score)`` started from the prior :math:`\\pi` at ``T`` is
:math:`\\log\\pi(\\Phi(x)) + \\log|\\det\\partial\\Phi/\\partial x|`, :math:`\\Phi` the flow map from ``eps`` to
``T``.  For Gaussian data with the exact score :math:`\\Phi` is affine and known in closed form
(``GaussianData.flow_map``), so the exact value is computed without any ODE solver.  For mixtures,
:math:`\\log p_{model}(x) = \\log p_\\epsilon(x) - \\log p_T(\\Phi(x)) + \\log\\pi(\\Phi(x))` (the same flow carries
:math:`p_\\epsilon` to :math:`p_T` and the model density to :math:`\\pi`), with :math:`\\Phi(x)` from a solve at
a tolerance far below the one tested.
"""

import math

import pytest
import torch

import sdekit
from sdekit.validation import GaussianData, GaussianMixture

F64 = torch.float64
EPS = 1e-5          # the likelihood's default start time (min(sde.eps, 1e-5))
TOL = 1e-3          # nats per dimension, at rtol = atol = 1e-5 with the exact divergence


class RampSDE(sdekit.LinearSDE):
    """A user's linear SDE with no closed form: dx = -c x dt + sqrt(a + b t) dw (moments integrated numerically)."""

    def __init__(self, c=0.7, a=1.0, b=2.0, T=1.0, eps=1e-3):
        super().__init__(T=T, eps=eps)
        self.c, self.a, self.b = c, a, b

    def drift_coef(self, t):
        return torch.full_like(t, -self.c)

    def diffusion_coef(self, t):
        return torch.sqrt(self.a + self.b * t)


SDES = {"vp": sdekit.VPSDE, "subvp": sdekit.SubVPSDE, "ve": sdekit.VESDE, "user": RampSDE}


def gaussian(sde, dim=2):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(dim, dim, generator=g, dtype=F64)
    cov = a @ a.T / dim + 0.2 * torch.eye(dim, dtype=F64)
    return GaussianData(torch.linspace(-1.0, 1.0, dim, dtype=F64), cov, sde)


def exact_model_logp(data, x, sde, eps=EPS):
    r"""log pi(Phi(x)) + log det dPhi/dx for Gaussian data: Phi = U diag(sqrt(den_T / den_eps)) U^T (affine)."""
    z = data.flow_map(x, eps, sde.T)
    _, den_eps = data._coefs(eps, x.shape[0], x.dtype, x.device)
    _, den_T = data._coefs(sde.T, x.shape[0], x.dtype, x.device)
    return sde.prior_logp(z) + 0.5 * (den_T.log() - den_eps.log()).sum(-1), z


@pytest.mark.parametrize("kind", list(SDES))
def test_gaussian_exact_divergence_matches_model_density(kind):
    sde = SDES[kind]()
    data = gaussian(sde)
    x = data.sample(32, t=EPS, generator=torch.Generator().manual_seed(0))
    flow = sdekit.probability_flow(sde, data.score)
    res = flow.log_likelihood(x, divergence="exact", rtol=1e-5, atol=1e-5)
    exact, z = exact_model_logp(data, x, sde)
    assert res.log_likelihood.dtype == F64 and res.log_likelihood.shape == (32,)
    assert ((res.log_likelihood - exact).abs() / 2).max() < TOL
    assert torch.allclose(res.prior_logp + res.delta_logp, res.log_likelihood)
    assert res.nfe > 0 and res.steps > 0 and res.divergence == "exact" and res.stderr is None
    assert res.solution.success and res.method == "dopri5"


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_mixture_exact_divergence_matches_model_density(kind):
    sde = SDES[kind]()
    mix = GaussianMixture.default_2d(sde)
    x = mix.sample(32, t=EPS, generator=torch.Generator().manual_seed(1))
    flow = sdekit.probability_flow(sde, mix.score)
    res = flow.log_likelihood(x, divergence="exact", rtol=1e-5, atol=1e-5)
    z = flow.encode(x, rtol=1e-10, atol=1e-10).x          # the flow map, far more accurately
    exact = mix.log_prob(x, EPS) - mix.log_prob(z, sde.T) + sde.prior_logp(z)
    assert ((res.log_likelihood - exact).abs() / 2).max() < TOL


def test_image_shaped_data_exact_and_hutchinson():
    """Event shape (3, 4, 4), isotropic Gaussian data N(0, s^2 I): the score is -x / (alpha^2 s^2 + sigma^2)."""
    sde, s = sdekit.VPSDE(), 0.5

    def score(x, t):
        a, sig = sde.alpha(t), sde.sigma(t)
        return -x / (a * a * s * s + sig * sig).view(-1, 1, 1, 1)

    data = GaussianData(torch.zeros(48, dtype=F64), s * s * torch.eye(48, dtype=F64), sde)
    x = data.sample(16, t=EPS, generator=torch.Generator().manual_seed(2)).view(16, 3, 4, 4)
    exact, z = exact_model_logp(data, x.reshape(16, 48), sde)
    flow = sdekit.probability_flow(sde, score)
    res = sdekit.log_likelihood(flow, x, divergence="exact")
    assert res.z.shape == x.shape and res.dim == 48
    assert ((res.log_likelihood - exact).abs() / 48).max() < TOL
    # probes=k: each probe's integral kept apart, so stderr is an honest error bar per sample
    hut = sdekit.log_likelihood(flow, x, divergence="gaussian", probes=4, seed=0)
    err = hut.log_likelihood - exact
    assert hut.stderr.shape == (16,) and bool((hut.stderr > 0).all())
    assert abs(float(err.mean())) < 4 * float((hut.stderr ** 2).mean().sqrt()) / math.sqrt(16)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(probe):
    sde = sdekit.VPSDE()
    data = gaussian(sde, dim=6)
    n = 400
    x = data.sample(n, t=EPS, generator=torch.Generator().manual_seed(4))
    flow = sdekit.probability_flow(sde, data.score)
    exact = flow.log_likelihood(x, divergence="exact").log_likelihood
    est = flow.log_likelihood(x, divergence=probe, seed=5).log_likelihood
    err = est - exact
    se = err.std() / math.sqrt(n)
    assert err.std() > 0                                   # the estimate does vary from probe to probe
    assert abs(float(err.mean())) < 4 * float(se)


def test_hutchinson_standard_error_is_calibrated():
    """With k probes per sample, E[(estimate - exact)^2] = E[stderr^2]; checked within 4 standard errors."""
    sde = sdekit.VESDE()
    data = gaussian(sde, dim=6)
    n = 300
    x = data.sample(n, t=EPS, generator=torch.Generator().manual_seed(6))
    flow = sdekit.probability_flow(sde, data.score)
    exact = flow.log_likelihood(x, divergence="exact").log_likelihood
    res = flow.log_likelihood(x, divergence="rademacher", probes=8, seed=7)
    err = res.log_likelihood - exact
    assert abs(float(err.mean())) < 4 * float((res.stderr ** 2).mean().sqrt()) / math.sqrt(n)
    d = err ** 2 - res.stderr ** 2
    assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(n)


def test_probes_are_reproducible_from_a_seed_or_generator():
    sde = sdekit.VPSDE()
    data = gaussian(sde, dim=4)
    x = data.sample(8, t=EPS, generator=torch.Generator().manual_seed(0))
    flow = sdekit.probability_flow(sde, data.score)
    a = flow.log_likelihood(x, divergence="rademacher", seed=11).log_likelihood
    b = flow.log_likelihood(x, divergence="rademacher", generator=torch.Generator().manual_seed(11)).log_likelihood
    c = flow.log_likelihood(x, divergence="rademacher", seed=12).log_likelihood
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def exact_model_gaussian(data, sde, eps=EPS):
    """The model density as a Gaussian N(m, P^{-1}): pi = N(0, s^2 I) pulled back through the affine flow map."""
    d = data.dim
    a_e, den_e = data._coefs(eps, 1, F64, "cpu")
    a_T, den_T = data._coefs(sde.T, 1, F64, "cpu")
    U = data.eigvecs
    A = U @ torch.diag((den_T[0] / den_e[0]).sqrt()) @ U.T          # x_T = A (x - a_e mu) + a_T mu
    m = a_e[0] * data.mean - torch.linalg.solve(A, a_T[0] * data.mean)
    P = A.T @ A / sde.prior_std ** 2
    return m, P, d


@pytest.mark.parametrize("data_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_bits_per_dim_of_a_discretised_gaussian(data_range):
    """E_u[bpd] of uniform dequantisation in closed form: for x uniform in a bin of width w around c,
    E[(x - m)^T P (x - m)] = (c - m)^T P (c - m) + w^2/12 tr P."""
    lo, hi = data_range
    sde = sdekit.VPSDE()
    centre = (lo + hi) / 2
    data = GaussianData(torch.full((3,), centre, dtype=F64) + torch.tensor([0.0, 0.05, -0.05], dtype=F64),
                        (0.1 * (hi - lo)) ** 2 * torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]],
                                                              dtype=F64), sde)
    n_samples, bins = 256, 256
    xs = data.sample(n_samples, t=0.0, generator=torch.Generator().manual_seed(8))
    levels = ((xs - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).to(torch.uint8)
    flow = sdekit.probability_flow(sde, data.score)
    res = sdekit.bits_per_dim(flow, levels, data_range=data_range, dequantize="uniform", seed=9, dtype=F64,
                              divergence="exact")
    assert res.offset == pytest.approx(math.log2(bins / (hi - lo)))    # 8 bits on [0, 1], 7 on [-1, 1]
    m, P, d = exact_model_gaussian(data, sde)
    # per sample: the model's bpd at the dequantised point, exactly
    exact_logp, _ = exact_model_logp(data, res.x, sde)
    exact_bpd = -exact_logp / (d * math.log(2)) + res.offset
    assert ((res.bpd - exact_bpd).abs() * math.log(2)).max() < TOL
    # in expectation over u: closed form per level
    w = (hi - lo) / bins
    c = lo + w * (levels.to(F64) + 0.5)
    quad = (((c - m) @ P) * (c - m)).sum(-1) + w * w / 12 * P.trace()
    expected = (0.5 * (d * math.log(2 * math.pi) - torch.logdet(P)) + 0.5 * quad) / (d * math.log(2)) + res.offset
    diff = res.bpd - expected
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n_samples)
    # the same data as floats on the ToTensor grid lo + (hi - lo) n / 255 give the same levels and bpd
    floats = lo + (hi - lo) * levels.to(F64) / (bins - 1)
    again = sdekit.bits_per_dim(flow, floats, data_range=data_range, dequantize="uniform", seed=9,
                                divergence="exact")
    assert torch.allclose(again.x, res.x) and torch.allclose(again.bpd, res.bpd)


def test_bits_per_dim_continuous_data_and_variational_dequantisation():
    sde = sdekit.VPSDE()
    data = gaussian(sde, dim=2)
    flow = sdekit.probability_flow(sde, data.score)
    x = data.sample(16, t=EPS, generator=torch.Generator().manual_seed(10)).clamp(-1, 1)
    res = sdekit.bits_per_dim(flow, x, data_range=(-1, 1), divergence="exact")
    lik = flow.log_likelihood(x, divergence="exact")
    assert torch.allclose(res.bpd, -lik.log_likelihood / (2 * math.log(2)) + 7.0, atol=1e-8)

    def q(n, generator):   # a dequantiser with density prod_i 2 u_i (u_i = sqrt of a uniform)
        u = torch.rand(n.shape, generator=generator, dtype=n.dtype).sqrt()
        return u, torch.log(2 * u).sum(1)

    levels = torch.randint(0, 256, (16, 2), generator=torch.Generator().manual_seed(0))
    var = sdekit.bits_per_dim(flow, levels, data_range=(-1, 1), dequantize=q, seed=1, dtype=F64, divergence="exact")
    lik = flow.log_likelihood(var.x, divergence="exact")
    assert torch.allclose(var.bpd, (-lik.log_likelihood + var.log_q) / (2 * math.log(2)) + 7.0, atol=1e-8)


def test_bits_per_dim_bad_input():
    sde = sdekit.VPSDE()
    flow = sdekit.probability_flow(sde, gaussian(sde).score)
    ints = torch.randint(0, 256, (4, 2))
    with pytest.raises(sdekit.ArgumentTypeError, match="dequantis"):
        sdekit.bits_per_dim(flow, ints, data_range=(0, 1))                    # integers, no dequantisation
    with pytest.raises(sdekit.InvalidParameterError, match="outside data_range"):
        sdekit.bits_per_dim(flow, torch.full((4, 2), 1.5, dtype=F64), data_range=(-1, 1))
    with pytest.raises(sdekit.InvalidParameterError, match="outside data_range"):
        sdekit.bits_per_dim(flow, torch.full((4, 2), -0.5, dtype=F64), data_range=(0, 1), dequantize="uniform")
    with pytest.raises(sdekit.InvalidParameterError, match=r"\[0, 255\]"):
        sdekit.bits_per_dim(flow, ints + 200, data_range=(0, 1), dequantize="uniform")
    with pytest.raises(sdekit.InvalidParameterError, match="grid"):
        sdekit.bits_per_dim(flow, torch.full((4, 2), 0.5, dtype=F64), data_range=(0, 1), dequantize="uniform")
    with pytest.raises(sdekit.InvalidParameterError, match="unknown dequantize"):
        sdekit.bits_per_dim(flow, ints, data_range=(0, 1), dequantize="gaussian")
    with pytest.raises(sdekit.InvalidParameterError, match="lo < hi"):
        sdekit.bits_per_dim(flow, ints, data_range=(1, 0), dequantize="uniform")
    with pytest.raises(sdekit.ArgumentTypeError, match="pair"):
        sdekit.bits_per_dim(flow, ints, data_range="0-1", dequantize="uniform")
    with pytest.raises(sdekit.InvalidParameterError, match="unknown divergence"):
        sdekit.bits_per_dim(flow, ints, data_range=(0, 1), dequantize="uniform", divergence="skilling")
    with pytest.raises(sdekit.InvalidParameterError, match=r"\[0, 1\)"):
        sdekit.bits_per_dim(flow, ints, data_range=(0, 1), dtype=F64,
                            dequantize=lambda n, g: (n + 0.5, n.new_zeros(n.shape[0])))     # u is the level
    with pytest.raises(sdekit.ShapeError, match="log_q"):
        sdekit.bits_per_dim(flow, ints, data_range=(0, 1), dtype=F64,
                            dequantize=lambda n, g: (torch.zeros_like(n), torch.zeros_like(n)))
    with pytest.raises(sdekit.ArgumentTypeError, match="pair"):
        sdekit.bits_per_dim(flow, ints, data_range=(0, 1), dequantize=lambda n, g: n)
    with pytest.raises(sdekit.InvalidParameterError, match="bins"):
        sdekit.bits_per_dim(flow, ints, data_range=(0, 1), dequantize="uniform", bins=1)


def test_encode_decode_round_trip_within_tolerance():
    sde = sdekit.VPSDE()
    data = gaussian(sde, dim=3)
    flow = sdekit.probability_flow(sde, data.score)
    x = data.sample(64, t=EPS, generator=torch.Generator().manual_seed(12))
    for tol in (1e-4, 1e-6):
        enc = flow.encode(x, rtol=tol, atol=tol)
        assert (enc.x - data.flow_map(x, EPS, sde.T)).abs().max() < 10 * tol * (1 + enc.x.abs().max())
        back = flow.decode(enc.x, rtol=tol, atol=tol)
        assert back.t == pytest.approx(EPS) and enc.t == pytest.approx(sde.T)
        assert (back.x - x).abs().max() < 10 * tol * (1 + x.abs().max())


@pytest.mark.parametrize("method,kw", [("bosh3", {}), ("dopri8", {}), ("rk4", {"steps": 200}), ("RK45", {}),
                                       ("sdekit.dopri5", {}), ("sdekit.bosh3", {}),
                                       ("sdekit.dopri5", {"per_sample": False}), ("dopri5", {"error_norm": "rms"})])
def test_other_drift_methods(method, kw):
    sde = sdekit.VPSDE()
    data = gaussian(sde)
    x = data.sample(16, t=EPS, generator=torch.Generator().manual_seed(13))
    flow = sdekit.probability_flow(sde, data.score)
    res = flow.log_likelihood(x, method, divergence="exact", **kw)
    exact, _ = exact_model_logp(data, x, sde)
    assert ((res.log_likelihood - exact).abs() / 2).max() < TOL


def test_samplers_and_sde_methods_are_refused():
    sde = sdekit.VPSDE()
    flow = sdekit.probability_flow(sde, gaussian(sde).score)
    x = torch.zeros(4, 2, dtype=F64)
    for name in ("ddim", "dpmpp_2m", "unipc", "edm_heun"):
        with pytest.raises(sdekit.MethodArgumentError, match="dopri5"):
            flow.log_likelihood(x, name, steps=10)
    with pytest.raises(sdekit.MethodArgumentError, match="dopri5"):
        flow.log_likelihood(x, "torchsde.euler", steps=10)
    with pytest.raises(sdekit.UnknownMethodError):
        flow.log_likelihood(x, "no_such_method")


def test_divergence_and_argument_errors():
    sde = sdekit.VPSDE()
    flow = sdekit.probability_flow(sde, lambda x, t: -x)
    x = torch.zeros(2, 300, dtype=F64)
    with pytest.raises(sdekit.InvalidParameterError, match="rademacher"):
        flow.log_likelihood(x, divergence="exact")                      # too many dimensions for exact
    with pytest.raises(sdekit.InvalidParameterError, match="unknown divergence"):
        flow.log_likelihood(x, divergence="trace")
    with pytest.raises(sdekit.ArgumentTypeError):
        flow.log_likelihood(x, divergence=None)
    with pytest.raises(sdekit.InvalidParameterError, match="probes"):
        flow.log_likelihood(x[:, :2], divergence="exact", probes=3)
    with pytest.raises(sdekit.InvalidParameterError, match="probes"):
        flow.log_likelihood(x, probes=0)
    with pytest.raises(sdekit.InvalidParameterError, match="not both"):
        flow.log_likelihood(x, seed=1, generator=torch.Generator())
    with pytest.raises(sdekit.ArgumentTypeError, match="dequantis"):
        flow.log_likelihood(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(sdekit.ArgumentTypeError, match="probability_flow"):
        sdekit.log_likelihood(sdekit.reverse(sde, lambda x, t: -x), x)
    with pytest.raises(sdekit.InvalidParameterError, match="eps"):
        flow.log_likelihood(x, eps=0.0)
    with pytest.raises(sdekit.MethodArgumentError, match="eps="):
        flow.log_likelihood(x, t_end=0.5)
    with pytest.raises(sdekit.MethodArgumentError, match="eps="):
        flow.encode(x, t_start=0.5)
    for err in (sdekit.InvalidParameterError, sdekit.ArgumentTypeError, sdekit.ShapeError,
                sdekit.MethodArgumentError):
        assert issubclass(err, sdekit.SDEKitError)


def test_no_grad_works_and_inference_mode_is_refused():
    sde = sdekit.VPSDE()
    data = gaussian(sde)
    flow = sdekit.probability_flow(sde, data.score)
    x = data.sample(4, t=EPS, generator=torch.Generator().manual_seed(19))
    with torch.no_grad():
        inside = flow.log_likelihood(x).log_likelihood
    assert torch.equal(inside, flow.log_likelihood(x).log_likelihood)
    with torch.inference_mode(), pytest.raises(sdekit.InvalidParameterError, match="inference_mode"):
        flow.log_likelihood(x)


def test_detached_score_is_refused():
    sde = sdekit.VESDE()

    def score(x, t):
        with torch.no_grad():
            return -x / (sde.sigma(t)[:, None] ** 2 + 1)

    with pytest.raises(sdekit.ScoreFunctionError, match="autograd"):
        sdekit.probability_flow(sde, score).log_likelihood(torch.zeros(3, 2, dtype=F64), divergence="exact")


def test_non_finite_score_raises_solve_error():
    sde = sdekit.VPSDE()

    def score(x, t):
        return torch.where(t[:, None] > 0.5, torch.nan, -x)

    flow = sdekit.probability_flow(sde, score)
    with pytest.raises(sdekit.SolveError, match="non-finite|NaN|nan"):
        flow.log_likelihood(torch.zeros(3, 2, dtype=F64))
    res = flow.log_likelihood(torch.zeros(3, 2, dtype=F64), throw=False)
    assert not res.solution.success and bool(res.solution.failed.all())


def test_float32_and_nfe_counting():
    sde = sdekit.VPSDE()
    data = gaussian(sde)
    x = data.sample(8, t=EPS, generator=torch.Generator().manual_seed(14)).float()
    flow = sdekit.probability_flow(sde, lambda x, t: data.score(x.double(), t.double()).float())
    res = flow.log_likelihood(x)
    assert res.log_likelihood.dtype == torch.float32 and res.z.dtype == torch.float32
    assert flow.nfe == res.nfe and res.divergence == "exact"          # "auto" at D = 2
    exact, _ = exact_model_logp(data, x.double(), sde)
    assert ((res.log_likelihood.double() - exact).abs() / 2).max() < 1e-2   # float32 rounding of the solve


def test_augmented_drift_takes_shared_or_per_sample_times():
    sde = sdekit.VPSDE()
    data = gaussian(sde)
    probes = torch.ones(2, 5, 2, dtype=F64)
    aug = sdekit.AugmentedFlow(sde, data.score, data_shape=(2,), probes=probes)
    x = data.sample(5, t=0.3, generator=torch.Generator().manual_seed(15))
    y = aug.augment(x)
    assert y.shape == (5, 4)
    shared = aug.drift(torch.tensor(0.3, dtype=F64), y)
    per_sample = aug.drift(torch.full((5,), 0.3, dtype=F64), y)
    assert torch.equal(shared, per_sample)
    assert torch.allclose(shared[:, :2], sdekit.probability_flow(sde, data.score).drift(torch.tensor(0.3), x))
    # per-sample times: each row as if solved alone at its own time
    other = aug.drift(torch.linspace(0.2, 0.6, 5, dtype=F64), y)
    for i in range(5):
        one = aug.drift(torch.tensor(0.2 + 0.1 * i, dtype=F64), y[i:i + 1].expand(5, 4).contiguous())
        assert torch.allclose(one[0], other[i])


def _mlp_score(dim, seed):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, dim)).double()

    class Score(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            return self.net(torch.cat([x, t[:, None]], 1)) - x

    return Score()


def test_adjoint_gradient_matches_direct_backprop_and_finite_differences():
    sde = sdekit.VPSDE()
    score = _mlp_score(2, 0)
    flow = sdekit.probability_flow(sde, score)
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(16))
    tol = dict(rtol=1e-8, atol=1e-8, divergence="exact")

    def loss(**kw):
        return flow.log_likelihood(x, **tol, **kw).log_likelihood.mean()

    score.zero_grad()
    loss(grad=True).backward()
    direct = [p.grad.clone() for p in score.parameters()]
    score.zero_grad()
    res = flow.log_likelihood(x, **tol, adjoint=True)             # parameters taken from the nn.Module
    assert res.steps > 0 and res.nfe > res.steps and res.solution.success
    res.log_likelihood.mean().backward()
    adjoint = [p.grad.clone() for p in score.parameters()]
    scale = max(float(g.abs().max()) for g in direct)
    for a, b in zip(direct, adjoint):
        assert (a - b).abs().max() < 1e-5 * scale
    # one weight by central finite differences (the ODE solved at 1e-8, the step 1e-4: error ~1e-8)
    w = score.net[0].weight
    h = 1e-4
    with torch.no_grad():
        w[0, 0] += h
        up = float(loss())
        w[0, 0] -= 2 * h
        down = float(loss())
        w[0, 0] += h
    assert abs((up - down) / (2 * h) - float(direct[0][0, 0])) < 1e-4 * max(1.0, scale)


def test_adjoint_errors():
    sde = sdekit.VPSDE()
    flow = sdekit.probability_flow(sde, lambda x, t: -x)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(sdekit.ArgumentTypeError, match="adjoint_params"):
        flow.log_likelihood(x, adjoint=True)
    with pytest.raises(sdekit.MethodArgumentError, match="adaptive"):
        flow.log_likelihood(x, "rk4", adjoint=True, adjoint_params=())


def test_per_sample_steps_keep_each_sample_its_probe():
    """sdekit's per-sample loop drops finished samples from the batch (sync_every=1: at every iteration); each
    remaining sample must keep its own Hutchinson probe, so the result matches torchdiffeq's with the same probes."""
    sde = sdekit.VESDE()
    mix = GaussianMixture.default_2d(sde)
    x = mix.sample(24, t=EPS, generator=torch.Generator().manual_seed(17))
    x = torch.cat([x, 3 * x[:8]])                     # some samples far out in the tails: more steps
    flow = sdekit.probability_flow(sde, mix.score)
    per = flow.log_likelihood(x, "sdekit.dopri5", divergence="rademacher", seed=3, options={"sync_every": 1})
    ref = flow.log_likelihood(x, "dopri5", divergence="rademacher", seed=3, rtol=1e-8, atol=1e-8)
    stats = per.solution.stats
    assert stats["row_evaluations"] < stats["nfe_max"] * x.shape[0]      # finished samples did leave the batch
    # a wrong probe would be off by O(1) nats; rtol = 1e-5 allows ~1e-5 |log p| on the tail samples (|log p| ~ 200)
    assert ((per.log_likelihood - ref.log_likelihood).abs() / 2).max() < TOL + 1e-4 * ref.log_likelihood.abs().max()


def test_an_sde_without_a_prior_density_is_refused():
    class NoPrior(sdekit.SDE):
        def f(self, t, x):
            return -x

        def g(self, t):
            return torch.ones_like(t)

    class BadPrior(NoPrior):
        def prior_logp(self, z):
            return z.sum()                                   # one number, not one per sample

    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(sdekit.ArgumentTypeError, match="prior_logp"):
        sdekit.probability_flow(NoPrior(), lambda x, t: -x).log_likelihood(x)
    with pytest.raises(sdekit.ShapeError, match="prior_logp"):
        sdekit.probability_flow(BadPrior(), lambda x, t: -x).log_likelihood(x)


def test_augmented_flow_is_a_torchdiffeq_function():
    """The augmented process integrates with torchdiffeq.odeint directly (natural time, t a 0-dim tensor)."""
    import torchdiffeq
    sde = sdekit.VPSDE()
    data = gaussian(sde)
    x = data.sample(8, t=EPS, generator=torch.Generator().manual_seed(18))
    aug = sdekit.AugmentedFlow(sde, data.score, data_shape=(2,), t_min=EPS, t_max=sde.T)
    y = torchdiffeq.odeint(aug, aug.augment(x), torch.tensor([EPS, sde.T], dtype=F64), rtol=1e-8, atol=1e-8)[-1]
    z, delta = aug.split(y)
    exact, z_exact = exact_model_logp(data, x, sde)
    assert torch.allclose(z, z_exact, atol=1e-6)
    assert ((sde.prior_logp(z) + delta[0] - exact).abs() / 2).max() < TOL


@pytest.mark.parametrize("method", ["dopri5", "sdekit.dopri5"])
def test_images_3072_dims_against_the_closed_form(method):
    """Diagonal Gaussian data of shape (3, 32, 32): the flow map is elementwise and affine,
    z = a_T mu + sqrt(den_T / den_eps) (x - a_eps mu) with den_t = a_t^2 var + sigma_t^2, so the model density
    is exact.  The Jacobian is diagonal, so a Rademacher probe gives the divergence exactly (e_i^2 = 1): the
    error is the solver's, within 1e-3 nats/dim.  A Gaussian probe does not: its estimate is unbiased, checked
    against the Rademacher one (the same solver error) within 4 standard errors."""
    sde, shape, n = sdekit.VPSDE(), (3, 32, 32), 48
    g = torch.Generator().manual_seed(20)
    mu = 0.5 * torch.randn(shape, generator=g, dtype=F64)
    var = (0.1 + 0.3 * torch.rand(shape, generator=g, dtype=F64)) ** 2

    def den(t):
        t = torch.as_tensor(t, dtype=F64).reshape(-1, 1, 1, 1)
        return sde.alpha(t) ** 2 * var + sde.sigma(t) ** 2

    def score(x, t):
        a = sde.alpha(t).view(-1, 1, 1, 1)
        return -(x - a * mu) / (a * a * var + sde.sigma(t).view(-1, 1, 1, 1) ** 2)

    a_e = sde.alpha(torch.tensor(EPS, dtype=F64))
    a_T = sde.alpha(torch.tensor(sde.T, dtype=F64))
    x = a_e * mu + den(EPS).sqrt() * torch.randn((n,) + shape, generator=g, dtype=F64)
    z = a_T * mu + (den(sde.T) / den(EPS)).sqrt() * (x - a_e * mu)
    exact = sde.prior_logp(z) + 0.5 * (den(sde.T) / den(EPS)).log().sum()
    flow = sdekit.probability_flow(sde, score)
    rad = flow.log_likelihood(x, method, divergence="rademacher", seed=21)
    assert rad.dim == 3072 and rad.divergence == "rademacher"
    assert float((rad.log_likelihood - exact).abs().max()) / 3072 < TOL
    gau = flow.log_likelihood(x, method, divergence="gaussian", seed=22)
    diff = gau.log_likelihood - rad.log_likelihood
    assert float(diff.std()) > 0
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)
