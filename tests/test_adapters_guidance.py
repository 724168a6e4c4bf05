"""sdekit.adapters guidance: classifier guidance, classifier-free guidance and imputation, on exact problems."""

import pytest
import torch

import sdekit
from sdekit.adapters import (Adapter, ClassifierFreeGuidance, Imputation, classifier_free_guidance,
                             classifier_guidance)
from sdekit.validation import GaussianData, GaussianMixture, mean_cov_error, mode_masses



def _points(sde, n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(n, generator=g, dtype=torch.float64)
    return 4 * torch.randn(n, 2, generator=g, dtype=torch.float64), t


@pytest.mark.parametrize("sde", [sdekit.VPSDE(), sdekit.VESDE()], ids=["vp", "ve"])
def test_classifier_guidance_with_the_exact_posterior_is_the_component_score(sde):
    mix = GaussianMixture.default_2d(sde)
    x, t = _points(sde)
    for k in range(mix.n_components):
        guided = classifier_guidance(mix.score, mix.log_posterior, label=k, scale=1.0)
        torch.testing.assert_close(guided(x, t), mix.components[k].score(x, t), rtol=1e-9, atol=1e-9)
    labels = torch.arange(x.shape[0]) % 3
    guided = classifier_guidance(mix.score, mix.log_posterior, label=labels)
    expect = torch.stack([mix.components[int(k)].score(x[i:i + 1], t[i:i + 1])[0] for i, k in enumerate(labels)])
    torch.testing.assert_close(guided(x, t), expect, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_classifier_guided_sampling_reproduces_the_chosen_component(k):
    sde = sdekit.VPSDE()
    mix = GaussianMixture.default_2d(sde)
    n = 4000
    x_T = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    guided = classifier_guidance(mix.score, mix.log_posterior, label=k)
    x = sdekit.probability_flow(sde, guided).solve(x_T, method="dpmpp_2m", steps=50).x
    masses = mode_masses(x, mix)
    # every sample in the chosen mode: the other modes' mass is below what one misplaced sample would add
    assert float(masses.masses[k]) > 1 - 1 / n, masses
    mean, cov = mix.components[k].marginal(sde.eps)
    err = mean_cov_error(x, mean, cov)
    assert err.within(4), err


def test_classifier_guidance_checks_its_classifier_and_scale():
    sde = sdekit.VPSDE()
    mix = GaussianMixture.default_2d(sde)
    x, t = _points(sde, 8)
    with pytest.raises(sdekit.ShapeError, match=r"must return logits of shape \(8, number of classes\)"):
        classifier_guidance(mix.score, lambda x, t: mix.log_posterior(x, t)[:, 0], 0)(x, t)
    with pytest.raises(sdekit.InvalidParameterError, match="label must lie in 0..2"):
        classifier_guidance(mix.score, mix.log_posterior, 5)(x, t)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(sdekit.InvalidParameterError, match="finite"):
            classifier_guidance(mix.score, mix.log_posterior, 0, scale=bad)
    with pytest.raises(sdekit.ArgumentTypeError):
        classifier_guidance(mix.score, mix.log_posterior, 0.5)


def test_classifier_free_guidance_is_the_formula():
    sde = sdekit.VESDE()
    mix = GaussianMixture.default_2d(sde)
    cond, uncond = mix.components[1].score, mix.score
    x, t = _points(sde, seed=4)
    assert torch.equal(classifier_free_guidance(cond, uncond, 1.0)(x, t), cond(x, t))
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0)(x, t), uncond(x, t), rtol=1e-12, atol=1e-12)
    for w in (0.5, 3.0, -1.0):
        su, sc = uncond(x, t), cond(x, t)
        torch.testing.assert_close(classifier_free_guidance(cond, uncond, w)(x, t), su + w * (sc - su),
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(sdekit.InvalidParameterError, match="finite"):
        classifier_free_guidance(cond, uncond, float("nan"))


class _LabelNet(torch.nn.Module):
    """A conditional 'network': an eps prediction that depends on a class label (-1 is the null label)."""

    def __init__(self):
        super().__init__()
        self.calls, self.batches = 0, []
        self.emb = torch.tensor([[0.0, 0.0], [1.0, -2.0], [-0.5, 0.7]], dtype=torch.float64)

    def forward(self, x, tau, label):
        self.calls += 1
        self.batches.append(x.shape[0])
        return 0.3 * x * tau[:, None] + self.emb[label + 1].to(x.dtype)


def test_classifier_free_guidance_batches_one_network_call_counted_as_two():
    sde = sdekit.VPSDE()
    net = _LabelNet()
    a = Adapter(net, sde, "eps")
    cond, uncond = a.with_inputs(label=torch.tensor(1)), a.with_inputs(label=torch.tensor(-1))
    guided = ClassifierFreeGuidance(cond, uncond, 2.5)
    assert guided.batched and guided.nfe_per_call == 2 and guided.sde is sde
    x, t = _points(sde, 16, seed=5)
    net.calls = 0
    out = guided(x, t)
    assert net.calls == 1 and net.batches[-1] == 32
    su, sc = uncond(x, t), cond(x, t)
    torch.testing.assert_close(out, su + 2.5 * (sc - su), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(guided.noise(x, t), uncond.noise(x, t) + 2.5 * (cond.noise(x, t) - uncond.noise(x, t)))
    torch.testing.assert_close(guided.data(x, t), uncond.data(x, t) + 2.5 * (cond.data(x, t) - uncond.data(x, t)))
    sol = sdekit.probability_flow(sde, guided).solve(x.float(), method="ddim", steps=7)
    assert sol.nfe == 14
    # per-sample labels batch as well
    per = ClassifierFreeGuidance(a.with_inputs(label=torch.arange(16) % 2), a.with_inputs(label=torch.tensor([-1])),
                                 1.0)
    torch.testing.assert_close(per(x, t), a.with_inputs(label=torch.arange(16) % 2)(x, t), rtol=1e-12, atol=1e-12)
    with pytest.raises(sdekit.InvalidParameterError, match="same keys"):
        ClassifierFreeGuidance(cond, a, 2.0)(x, t)


def test_guidance_stacks():
    sde = sdekit.VPSDE()
    mix = GaussianMixture.default_2d(sde)
    x, t = _points(sde, seed=6)
    inner = classifier_free_guidance(mix.components[0].score, mix.score, 1.0)
    stacked = classifier_guidance(inner, mix.log_posterior, label=0, scale=0.0)
    torch.testing.assert_close(stacked(x, t), mix.components[0].score(x, t), rtol=1e-12, atol=1e-12)
    assert stacked.nfe_per_call == 2


# -- imputation --------------------------------------------------------------------------------

def test_imputation_replaces_known_coordinates_by_their_keyed_forward_marginal():
    sde = sdekit.VPSDE()
    y = torch.tensor([1.5, 0.0], dtype=torch.float64)
    mask = torch.tensor([True, False])
    hook = Imputation(sde, y, mask)
    seen = []

    def recording(x, t, noise):
        out = hook(x, t, noise)
        z = noise.normal(t.to(torch.float64), tag=hook.tag)[:, 0]
        expect = sde.alpha(t) * 1.5 + sde.sigma(t) * z
        torch.testing.assert_close(out[:, 0], expect.to(x.dtype), rtol=0, atol=0)
        assert torch.equal(out[:, 1], x[:, 1])
        seen.append(float(t[0]))
        return out
    data = GaussianData([0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]], sde)
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = sdekit.reverse(sde, data.score).solve(x_T, method="euler_ancestral", steps=10, seed=3,
                                                options=dict(hook=recording))
    assert len(seen) == 11 and seen[0] == sde.T
    # keyed: a sample is the same in any batch
    part = sdekit.reverse(sde, data.score).solve(x_T[10:20], method="euler_ancestral", steps=10,
                                                 noise=sdekit.KeyedBrownian(sde.eps, sde.T, (10, 2), seed=3,
                                                                            index=torch.arange(10, 20),
                                                                            dtype=torch.float64),
                                                 options=dict(hook=hook))
    torch.testing.assert_close(part.x, sol.x[10:20], rtol=1e-12, atol=1e-12)
    assert torch.equal(hook.finish(sol.x)[:, 0], torch.full((64,), 1.5, dtype=torch.float64))


def test_imputation_takes_any_event_shape():
    sde = sdekit.VESDE()
    shape = (3, 2, 4, 4)
    known = torch.randn(shape[1:], generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(shape[1:], dtype=torch.bool)
    mask[:, :2] = True                                          # the top half of every image is known
    hook = Imputation(sde, known, mask)
    noise = sdekit.KeyedBrownian(sde.eps, sde.T, shape, seed=0, dtype=torch.float32)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((3,), 0.5, dtype=torch.float64)
    out = hook(x, t, noise)
    z = noise.normal(t, tag=hook.tag)
    expect = known + float(sde.sigma(t[:1])) * z
    assert torch.equal(out[:, mask], expect[:, mask]) and torch.equal(out[:, ~mask], x[:, ~mask])
    assert torch.equal(hook.finish(out)[:, mask], known.expand(shape)[:, mask])


def test_imputation_checks_its_inputs():
    sde = sdekit.VPSDE()
    with pytest.raises(sdekit.ArgumentTypeError, match="boolean"):
        Imputation(sde, torch.zeros(2), torch.tensor([1, 0]))
    with pytest.raises(sdekit.ShapeError):
        Imputation(sde, torch.zeros(3), torch.tensor([True, False]))


def _replacement_limit(sde, cov, y, t_end):
    r"""Mean and variance of x2 at ``t_end`` under imputation of x1 = y on the probability flow, as h -> 0.

    The known coordinate's fresh noise averages out of the drift, so x2 follows the flow with x1 = alpha y:
    dx2/dt = f x2 + g^2 (P21 alpha y + P22 x2) / 2, P = (alpha^2 Sigma + sigma^2 I)^-1, from the prior N(0, 1)
    at T; the map is affine, and its mean and variance solve two linear ODEs (integrated here by scipy).
    """
    from scipy.integrate import solve_ivp
    cov = torch.as_tensor(cov, dtype=torch.float64)

    def rhs(t, z):
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = sde.alpha(tt)[0], sde.sigma(tt)[0]
        f, g2 = sde.drift_coef(tt)[0], sde.diffusion_coef(tt)[0] ** 2
        P = torch.linalg.inv(a * a * cov + s * s * torch.eye(2, dtype=torch.float64))
        m, v = z
        return [float(f * m + 0.5 * g2 * (P[1, 0] * a * y + P[1, 1] * m)), float(2 * (f + 0.5 * g2 * P[1, 1]) * v)]
    sol = solve_ivp(rhs, (sde.T, t_end), [0.0, 1.0], method="DOP853", rtol=1e-11, atol=1e-12)
    return sol.y[0, -1], sol.y[1, -1]


def test_imputation_converges_to_the_replacement_methods_limit_not_the_exact_conditional():
    sde, rho, y, n = sdekit.VPSDE(), 0.8, 1.0, 4000
    cov = [[1.0, rho], [rho, 1.0]]
    data = GaussianData([0.0, 0.0], cov, sde)
    hook = Imputation(sde, torch.tensor([y, 0.0], dtype=torch.float64), torch.tensor([True, False]))
    x_T = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moments = []
    for steps in (50, 100):
        x2 = sdekit.probability_flow(sde, data.score).solve(x_T, method="dpmpp_2m", steps=steps, seed=1,
                                                            options=dict(hook=hook)).x[:, 1]
        moments.append((float(x2.mean()), float(x2.var())))
    (m1, v1), (m2, v2) = moments
    m_lim, v_lim = _replacement_limit(sde, cov, y, sde.eps)
    se_m, se_v = (v_lim / n) ** 0.5, v_lim * (2 / (n - 1)) ** 0.5
    # Monte Carlo error (4 standard errors) plus the discretisation error, estimated by halving the step
    assert abs(m2 - m_lim) <= 4 * se_m + abs(m1 - m2), (m2, m_lim)
    assert abs(v2 - v_lim) <= 4 * se_v + abs(v1 - v2), (v2, v_lim)
    # the replacement method (Song et al. 2021) is not exact: the conditional N(rho y, 1 - rho^2) is far away
    assert abs(m2 - rho * y) > 10 * se_m and abs(v2 - (1 - rho ** 2)) > 10 * se_v
