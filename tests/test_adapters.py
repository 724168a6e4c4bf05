"""sdekit.adapters: parameterisations, time conventions, the adapter object and the discrete DDPM tables."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.adapters import (PARAMETERISATIONS, TIME_CONVENTIONS, Adapter, DiscreteVPSDE, RectifiedFlowSDE,
                             parameterisation, time_convention)
from sdekit.validation import GaussianData, moment_residual

SDES = {
    "vp": lambda: sdekit.VPSDE(),
    "subvp": lambda: sdekit.SubVPSDE(),
    "ve": lambda: sdekit.VESDE(),
    "ve_exact": lambda: sdekit.VESDE(marginal="exact"),
    "ddpm_linear": lambda: DiscreteVPSDE.linear(),
    "ddpm_cosine": lambda: DiscreteVPSDE.cosine(),
    "rectified_flow": lambda: RectifiedFlowSDE(),
}
MEAN = [0.5, -1.0, 2.0]
COV = [[1.0, 0.3, 0.0], [0.3, 0.5, -0.1], [0.0, -0.1, 0.8]]


def _conventions(sde):
    return [c for c in TIME_CONVENTIONS if c != "index" or isinstance(sde, DiscreteVPSDE)]


def _state_of_network(pred, x_in, c):
    """Invert the parameterisation's network state (test helper: the fake network needs x itself)."""
    if pred.name == "denoiser":
        return x_in * c.alpha
    if pred.name == "edm":
        s = c.sigma / c.alpha
        return x_in * c.alpha * torch.sqrt(s * s + pred.sigma_data ** 2)
    return x_in


def exact_network(data, sde, prediction, time, **kw):
    """A network that returns, in ``prediction``'s form and on ``time``'s clock, the exact score of ``data``."""
    pred = parameterisation(prediction)
    conv = time_convention(time, sde, **kw)
    helper = Adapter(lambda x, tau: x, sde, prediction)      # for its coefficients only

    def network(x_in, tau):
        t = conv.from_network(tau)
        c = helper.coefficients(x_in, t)
        x = _state_of_network(pred, x_in, c)
        return pred.output_of_score(data.score(x, t), x, c)
    return network


def _points(sde, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(n, generator=g, dtype=torch.float64)
    x = 3 * torch.randn(n, 3, generator=g, dtype=torch.float64) * sde.sigma(t)[:, None].clamp_min(1)
    return x, t


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("prediction", PARAMETERISATIONS)
def test_exact_network_gives_back_the_exact_score_for_every_time_convention(name, prediction):
    sde = SDES[name]()
    data = GaussianData(MEAN, COV, sde)
    x, t = _points(sde)
    s = data.score(x, t)
    sigma, alpha = sde.sigma(t)[:, None], sde.alpha(t)[:, None]
    for time in _conventions(sde):
        a = Adapter(exact_network(data, sde, prediction, time), sde, prediction, time)
        scale = s.abs().max()
        torch.testing.assert_close(a(x, t), s, rtol=1e-9, atol=1e-9 * float(scale), msg=f"{prediction}/{time}")
        torch.testing.assert_close(a.data(x, t), (x + sigma ** 2 * s) / alpha, rtol=1e-9,
                                   atol=1e-9 * float((x / alpha).abs().max()), msg=f"{prediction}/{time}")
        torch.testing.assert_close(a.noise(x, t), -sigma * s, rtol=1e-9, atol=1e-9, msg=f"{prediction}/{time}")


@pytest.mark.parametrize("prediction", PARAMETERISATIONS)
def test_parameterisations_invert_both_ways(prediction):
    sde = sdekit.VPSDE()
    pred = parameterisation(prediction)
    x, t = _points(sde, seed=1)
    c = Adapter(lambda x, tau: x, sde, prediction).coefficients(x, t)
    out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(pred.output_of_score(pred.score(out, x, c), x, c), out, rtol=1e-10, atol=1e-10)
    s = pred.score(out, x, c)
    torch.testing.assert_close(pred.data(out, x, c), (x + c.sigma ** 2 * s) / c.alpha, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pred.noise(out, x, c), -c.sigma * s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", SDES)
def test_time_conventions_invert_both_ways(name):
    sde = SDES[name]()
    t = torch.linspace(sde.eps, sde.T, 257, dtype=torch.float64)
    for time in _conventions(sde):
        conv = time_convention(time, sde)
        tau = conv.to_network(t)
        torch.testing.assert_close(conv.from_network(tau), t, rtol=1e-12, atol=1e-13, msg=time)
        torch.testing.assert_close(conv.to_network(conv.from_network(tau)), tau, rtol=1e-12, atol=1e-12, msg=time)


def test_time_conventions_are_the_documented_formulas():
    sde = sdekit.VPSDE()
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=torch.float64)
    s = sde.sigma(t) / sde.alpha(t)
    torch.testing.assert_close(time_convention("t", sde).to_network(t), t)
    torch.testing.assert_close(time_convention("scaled", sde).to_network(t), 999 * t)
    torch.testing.assert_close(time_convention("scaled", sde, scale=1000).to_network(t), 1000 * t)
    torch.testing.assert_close(time_convention("sigma", sde).to_network(t), s)
    torch.testing.assert_close(time_convention("log_sigma", sde).to_network(t), s.log())
    torch.testing.assert_close(time_convention("c_noise", sde).to_network(t), 0.25 * s.log())
    ve = sdekit.VESDE()
    torch.testing.assert_close(time_convention("sigma", ve).to_network(t), ve.noise_level(t))


def test_index_convention_quantises_to_the_table():
    sde = DiscreteVPSDE.linear(1000)
    t = torch.tensor([0.001, 0.0014, 0.0016, 0.5004, 1.0], dtype=torch.float64)
    torch.testing.assert_close(time_convention("index", sde).to_network(t), t * 1000 - 1)
    q = time_convention("index", sde, quantise=True)
    assert q.to_network(t).tolist() == [0.0, 0.0, 1.0, 499.0, 999.0]
    torch.testing.assert_close(q.from_network(q.to_network(t)), sde.snap(t))
    assert time_convention("index", DiscreteVPSDE.linear(10, quantise=True)).quantise


# -- the discrete tables -----------------------------------------------------------------------

def _ddpm_linear(n):
    betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def _cosine(n, s=0.008):
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2     # noqa: E731
    betas = torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_discrete_sde_reproduces_its_table(kind):
    n = 1000
    table = _ddpm_linear(n) if kind == "linear" else _cosine(n)
    sde = getattr(DiscreteVPSDE, kind)(n)
    idx = torch.arange(n, dtype=torch.float64)
    t = sde.time(idx)
    torch.testing.assert_close(sde.alpha(t) ** 2, table, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.sigma(t) ** 2, 1 - table, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(sde.index(t), idx, rtol=0, atol=1e-9)
    assert sde.eps == 1 / n and sde.T == 1.0
    assert float(sde.log_alpha(torch.zeros((), dtype=torch.float64))) == 0.0     # alpha_bar = 1 at t = 0
    # log alpha is linear between the table's points
    mid = sde.time(idx[:-1] + 0.5)
    torch.testing.assert_close(sde.log_alpha(mid), 0.25 * (table[:-1].log() + table[1:].log()), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_discrete_sde_log_snr_inverse_is_exact_both_ways(kind):
    sde = getattr(DiscreteVPSDE, kind)(1000)
    t = torch.cat([sde.time(torch.arange(1000, dtype=torch.float64)),
                   torch.linspace(1e-4, 1.0, 1001, dtype=torch.float64)])
    lam = sde.log_snr(t)
    torch.testing.assert_close(sde.t_of_log_snr(lam), t, rtol=1e-10, atol=1e-13)
    lam2 = torch.linspace(float(lam.min()), float(lam.max()), 999, dtype=torch.float64)
    torch.testing.assert_close(sde.log_snr(sde.t_of_log_snr(lam2)), lam2, rtol=1e-10, atol=1e-10)
    assert sde.t_of_log_snr(lam.float()).dtype == torch.float32


def test_discrete_sde_coefficients_solve_its_moment_equations():
    sde = DiscreteVPSDE.linear(50)
    t = (torch.arange(50, dtype=torch.float64) + 0.37) / 50              # off the kinks
    res = moment_residual(sde, t)
    assert res.ok, res


def test_discrete_sde_refuses_bad_tables():
    with pytest.raises(sdekit.InvalidParameterError, match="strictly decreasing"):
        DiscreteVPSDE([0.9, 0.95, 0.5])
    with pytest.raises(sdekit.InvalidParameterError, match="between 0 and 1"):
        DiscreteVPSDE([0.9, 0.5, 0.0])
    with pytest.raises(sdekit.ShapeError):
        DiscreteVPSDE([[0.9, 0.5]])
    with pytest.raises(sdekit.InvalidParameterError):
        DiscreteVPSDE.from_betas([0.1, 1.5])


# -- the adapter in use ------------------------------------------------------------------------

def test_adapter_samples_like_the_exact_score():
    sde = DiscreteVPSDE.linear(1000)
    data = GaussianData(MEAN, COV, sde)
    a = Adapter(exact_network(data, sde, "eps", "index"), sde, "eps", "index")
    x_T = sde.prior_sampling((256, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for method in ("ddim", "dpmpp_2m"):
        ref = sdekit.probability_flow(sde, data.score).solve(x_T, method=method, steps=20)
        got = sdekit.probability_flow(sde, a).solve(x_T, method=method, steps=20)
        torch.testing.assert_close(got.x, ref.x, rtol=1e-9, atol=1e-9)
        assert got.nfe == ref.nfe == 20


def test_adapter_runs_under_the_callers_grad_mode():
    net = torch.nn.Linear(3, 3).double()
    a = Adapter(lambda x, tau: net(x), sdekit.VPSDE(), "eps")
    x, t = torch.randn(4, 3, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        assert a(x, t).grad_fn is None
    with torch.enable_grad():
        assert a(x, t).grad_fn is not None
    sol = sdekit.probability_flow(sdekit.VPSDE(), a).solve(x, method="ddim", steps=3)
    assert sol.x.grad_fn is None


def test_adapter_follows_dtype_and_passes_inputs():
    seen = {}

    def net(x, tau, label=None):
        seen["tau"], seen["label"] = tau, label
        return torch.zeros_like(x)
    a = Adapter(net, sdekit.VESDE(), "x0", "sigma", inputs={"label": 3})
    x = torch.ones(2, 3, dtype=torch.float32)
    out = a(x, torch.tensor([0.5, 0.5]))
    assert out.dtype == torch.float32 and seen["tau"].dtype == torch.float32 and seen["label"] == 3
    a.with_inputs(label=7)(x, 0.5)
    assert seen["label"] == 7 and a.inputs == {"label": 3}
    x16 = x.to(torch.bfloat16)
    a(x16, 0.5)
    assert seen["tau"].dtype == torch.float32


def test_adapter_errors_name_the_fix():
    sde = sdekit.VPSDE()
    x = torch.zeros(4, 3)
    with pytest.raises(sdekit.ScoreFunctionError, match=r"returned shape \(4, 6\)"):
        Adapter(lambda x, tau: torch.zeros(4, 6), sde)(x, 0.5)
    with pytest.raises(sdekit.ScoreFunctionError, match="must return a tensor"):
        Adapter(lambda x, tau: "oops", sde)(x, 0.5)
    with pytest.raises(sdekit.InvalidParameterError, match="unknown prediction 'noise'"):
        Adapter(lambda x, tau: x, sde, "noise")
    with pytest.raises(sdekit.InvalidParameterError, match="unknown time convention 'timestep'"):
        Adapter(lambda x, tau: x, sde, "eps", "timestep")
    with pytest.raises(sdekit.InvalidParameterError, match="DiscreteVPSDE"):
        Adapter(lambda x, tau: x, sde, "eps", "index")
    with pytest.raises(sdekit.InvalidParameterError, match="sigma_data"):
        Adapter(lambda x, tau: x, sde, "edm", sigma_data=float("nan"))
    with pytest.raises(sdekit.ArgumentTypeError, match="LinearSDE"):
        Adapter(lambda x, tau: x, "vp")
    table = DiscreteVPSDE.linear(100)
    a = Adapter(lambda x, tau: x, table, "eps", "index", quantise=True)
    with pytest.raises(sdekit.InvalidParameterError, match="outside the table 0..99"):
        a(x, torch.full((4,), 1e-3))


def test_rectified_flow_sde_is_the_straight_line_and_solves_its_moment_equations():
    sde = RectifiedFlowSDE()
    t = torch.linspace(sde.eps, sde.T, 101, dtype=torch.float64)
    torch.testing.assert_close(sde.alpha(t), 1 - t, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.sigma(t), t)
    assert moment_residual(sde, t).ok
    data = GaussianData(MEAN, COV, sde)
    x, tt = _points(sde, seed=3)
    # the velocity of the straight line is u = eps - x0: a network returning it gives the score back

    def velocity(x_in, tau):
        s = data.score(x_in, tau)
        x0 = (x_in + tau[:, None] ** 2 * s) / (1 - tau[:, None])
        return -tau[:, None] * s - x0
    torch.testing.assert_close(Adapter(velocity, sde, "flow")(x, tt), data.score(x, tt), rtol=1e-9, atol=1e-9)
    with pytest.raises(sdekit.InvalidParameterError, match="below 1"):
        RectifiedFlowSDE(T=1.0)


# -- properties over random tables and outputs ---------------------------------------------------

@given(betas=st.lists(st.floats(1e-5, 0.3), min_size=2, max_size=60), u=st.floats(0.0, 1.0))
def test_any_table_round_trips_between_t_index_sigma_and_log_snr(betas, u):
    sde = DiscreteVPSDE.from_betas(betas)
    t = torch.tensor([sde.eps + u * (1 - sde.eps)], dtype=torch.float64)
    torch.testing.assert_close(sde.t_of_log_snr(sde.log_snr(t)), t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sde.time(sde.index(t)), t, rtol=1e-14, atol=0)
    sigma = time_convention("sigma", sde)
    torch.testing.assert_close(sigma.from_network(sigma.to_network(t)), t, rtol=1e-9, atol=1e-12)
    n = torch.arange(len(betas), dtype=torch.float64)
    torch.testing.assert_close(sde.alpha(sde.time(n)) ** 2, sde.alphas_cumprod, rtol=1e-12, atol=0)


@given(prediction=st.sampled_from(sorted(PARAMETERISATIONS)), seed=st.integers(0, 2 ** 16),
       sde_name=st.sampled_from(sorted(SDES)))
def test_every_parameterisation_inverts_on_every_sde(prediction, seed, sde_name):
    sde = SDES[sde_name]()
    pred = parameterisation(prediction)
    x, t = _points(sde, n=8, seed=seed)
    c = Adapter(lambda x, tau: x, sde, prediction).coefficients(x, t)
    s = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = pred.output_of_score(s, x, c)
    torch.testing.assert_close(pred.score(out, x, c), s, rtol=1e-8, atol=1e-8)
