"""reverse() and probability_flow(): drift formulas, what score_fn receives, the torchsde dialect."""

import pytest
import torch

import sdekit

pytestmark = pytest.mark.usefixtures("single_thread")

SDES = [sdekit.VPSDE, sdekit.SubVPSDE, sdekit.VESDE]
SDE_IDS = ["VP", "subVP", "VE"]


def _score(x, t):
    """An arbitrary nonlinear 'score' that depends on t and x."""
    tt = t.reshape((-1,) + (1,) * (x.dim() - 1))
    return torch.tanh(x) * (1 + tt) - x * tt ** 2


@pytest.mark.parametrize("make", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("event_shape", [(2,), (3, 4, 4), (5, 2)])
def test_reverse_and_flow_drifts(make, event_shape):
    sde = make()
    g = torch.Generator().manual_seed(0)
    x = torch.randn((4,) + event_shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.1, 0.01], dtype=torch.float64)
    view = (4,) + (1,) * len(event_shape)
    f = sde.drift_coef(t).reshape(view) * x
    g2 = sde.diffusion_coef(t).reshape(view) ** 2
    s = _score(x, t)
    rev = sdekit.reverse(sde, _score)
    pf = sdekit.probability_flow(sde, _score)
    torch.testing.assert_close(rev.drift(t, x), f - g2 * s, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(pf.drift(t, x), f - 0.5 * g2 * s, rtol=1e-13, atol=1e-13)
    assert rev.kind == "sde" and pf.kind == "ode"
    # the probability-flow ODE is a torchdiffeq function ode(t, x), t a scalar
    torch.testing.assert_close(pf(torch.tensor(0.5, dtype=torch.float64), x),
                               pf.drift(torch.full((4,), 0.5, dtype=torch.float64), x), rtol=0, atol=0)
    # diffusions: g for the reverse SDE, zeros of x's shape for the flow
    torch.testing.assert_close(rev.diffusion(t, x).reshape(-1), sde.diffusion_coef(t), rtol=0, atol=0)
    d = pf.diffusion(t, x)
    assert d.shape == x.shape and torch.count_nonzero(d) == 0


@pytest.mark.parametrize("make", SDES, ids=SDE_IDS)
def test_torchsde_dialect(make):
    """On the clock s = T - t with a flat state: f = -(f - g^2 score)(T - s), g = g(T - s)."""
    sde = make()
    event = (3, 2)
    rev = sdekit.reverse(sde, _score, event_shape=event)
    pf = sdekit.probability_flow(sde, _score, event_shape=event)
    x = torch.randn((5,) + event, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = x.reshape(5, -1)
    s = torch.tensor(0.3, dtype=torch.float64)
    t = torch.full((5,), sde.T - 0.3, dtype=torch.float64)
    fy = rev.f(s, y)
    assert fy.shape == y.shape
    torch.testing.assert_close(fy, -rev.drift(t, x).reshape(5, -1), rtol=0, atol=0)
    gy = rev.g(s, y)
    assert gy.shape == y.shape
    torch.testing.assert_close(gy, sde.diffusion_coef(t)[:, None].expand(5, 6), rtol=0, atol=0)
    v = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(rev.g_prod(s, y, v), gy * v, rtol=0, atol=0)
    torch.testing.assert_close(pf.f(s, y), -pf.drift(t, x).reshape(5, -1), rtol=0, atol=0)
    assert torch.count_nonzero(pf.g(s, y)) == 0
    # the additive-noise twin materialises the diagonal matrix
    add = rev.replace(noise_type="additive")
    torch.testing.assert_close(add.g(s, y), torch.diag_embed(gy), rtol=0, atol=0)
    # as_stratonovich with g independent of x changes nothing in the drift
    strat = rev.as_stratonovich()
    assert strat.sde_type == "stratonovich" and strat.as_ito().sde_type == "ito"
    torch.testing.assert_close(strat.f(s, y), fy, rtol=0, atol=0)


@pytest.mark.parametrize("event_shape", [(2,), (3, 4, 4), (5, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method,kind,kw", [
    ("euler", "sde", dict(steps=5)), ("srk", "sde", dict(steps=3)), ("heun", "sde", dict(steps=3)),
    ("euler", "sde", dict(rtol=1e-2, atol=1e-2)),
    ("rk4", "ode", dict(steps=3)), ("dopri5", "ode", dict(rtol=1e-4, atol=1e-4)),
    ("RK45", "ode", dict(rtol=1e-4, atol=1e-4)),
], ids=["euler", "srk", "heun", "euler-adaptive", "rk4", "dopri5", "RK45"])
def test_score_fn_receives_natural_shape_and_batch_times(recorder, event_shape, dtype, method, kind, kw):
    sde = sdekit.VPSDE()
    rec = recorder(_score)
    make = sdekit.reverse if kind == "sde" else sdekit.probability_flow
    x = sde.prior_sampling((4,) + event_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    sol = make(sde, rec).solve(x, method=method, seed=0, **kw) if kind == "sde" else \
        make(sde, rec).solve(x, method=method, **kw)
    assert rec.calls > 0
    assert rec.x_shapes == {x.shape}
    assert rec.t_shapes == {(4,)}
    assert rec.t_dtypes == {dtype} and rec.x_dtypes == {dtype}
    assert rec.t_devices == {x.device}
    # one time per call, shared by the batch (these methods step the whole batch together)
    assert rec.t_shared
    assert sol.x.shape == x.shape and sol.x.dtype == dtype


def test_process_rejects_bad_construction():
    with pytest.raises(TypeError):
        sdekit.reverse(object(), _score)
    with pytest.raises(TypeError):
        sdekit.reverse(sdekit.VPSDE(), "not callable")
    with pytest.raises(ValueError):
        sdekit.reverse(sdekit.VPSDE(), _score, sde_type="levy")
    with pytest.raises(ValueError):
        sdekit.reverse(sdekit.VPSDE(), _score).replace(noise_type="general")


def test_replace_gives_fresh_counters():
    sde = sdekit.VPSDE()
    rev = sdekit.reverse(sde, _score)
    x = sde.prior_sampling((3, 2), dtype=torch.float64)
    rev.drift(torch.full((3,), 0.5, dtype=torch.float64), x)
    assert rev.nfe == 1
    assert rev.replace(sde_type="stratonovich").nfe == 0
    # solve() counts on its own bound copy, and adds its count to the process it was given
    sol = rev.solve(x, method="euler", steps=4, seed=0)
    assert sol.nfe == 4 and rev.nfe == 1 + 4
