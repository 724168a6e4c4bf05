"""Property tests of the solvers: every registered method (pytest parametrizes over ``sdekit.methods()``,
so methods added later are included), Hypothesis drawing the problem, sizes and seeds.

- Fixed-step solvers treat batch members independently: solving a batch gives, member by member,
  what solving each member alone gives (ODE methods and the torchsde methods on the probability-flow
  ODE, whose noise is zero).  Adaptive methods share one step size across the batch, so for them
  this does not hold and is not claimed.
- The event shape is only a view: a state of shape (batch, 2, 3) and its flattening (batch, 6) give
  the same result with an elementwise score, for every method, fixed or adaptive.
- dtype and device follow the input (float32 and float64), for every method.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdekit
from sdekit.validation.orders import TOLERANCE_PLAN, GaussianFlow

# Each method gets a fifth of the profile's examples (5 under the default "ci" profile, 200 under "thorough").
SETTINGS = settings(deadline=None, max_examples=max(3, settings().max_examples // 5),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

METHODS = sorted(sdekit.methods(), key=lambda m: m.qualified_name)
#: Largest global error / (tol (1 + max|x|)) of each adaptive ODE method (TOLERANCE_PLAN; 10 where not listed).
_TOLERANCE_RATIO = {name: ratio for name, _, _, _, ratio in TOLERANCE_PLAN}
FIXED = [m for m in METHODS if m.stepping != "adaptive"]


def _params(methods, needs_flow=False):
    """One pytest parameter per method; a method that cannot take the process a test needs is skipped, saying why."""
    out = []
    for m in methods:
        marks = []
        if needs_flow and "ode" not in m.accepts:
            marks = [pytest.mark.skip(reason=f"{m.qualified_name} integrates only the reverse SDE, whose Brownian "
                                             "path is drawn for the whole batch: a member alone gets other noise")]
        out.append(pytest.param(m, marks=marks, id=m.qualified_name))
    return out


def _sde(name):
    return {"VP": sdekit.VPSDE(), "subVP": sdekit.SubVPSDE(), "VE": sdekit.VESDE(sigma_max=10.0)}[name]


def _case(sde_name, seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(6, generator=g, dtype=torch.float64)
    var = 0.2 + 2 * torch.rand(6, generator=g, dtype=torch.float64)
    sde = _sde(sde_name)
    return GaussianFlow(sde_name, sde, mean, var, sde.T, sde.eps)


def _stepping(m, steps):
    """``steps`` fixed steps, or a tolerance: 1e-4 for an ODE pair, 1e-2 for an SDE pair (strong order 1/2)."""
    if m.stepping != "adaptive":
        return dict(steps=steps)
    tol = 1e-2 if m.kind == "sde" else 1e-4
    return dict(rtol=tol, atol=tol)


def _process(m, case):
    """The probability flow for methods that take it, else the reverse SDE."""
    return case.ode() if "ode" in m.accepts else sdekit.reverse(case.sde, case.score)


@pytest.mark.parametrize("m", _params(FIXED, needs_flow=True))
@SETTINGS
@given(sde_name=st.sampled_from(["VP", "subVP", "VE"]), batch=st.integers(2, 5), steps=st.integers(1, 12),
       seed=st.integers(0, 2 ** 16))
def test_fixed_step_batch_members_are_independent(m, sde_name, batch, steps, seed):
    case = _case(sde_name, seed)
    x = case.sample(batch, case.t_start, seed=seed)
    together = case.ode().solve(x, method=m.qualified_name, steps=steps, seed=seed).x
    for i in range(batch):
        alone = case.ode().solve(x[i:i + 1], method=m.qualified_name, steps=steps, seed=seed).x
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", _params(METHODS))
@SETTINGS
@given(sde_name=st.sampled_from(["VP", "subVP", "VE"]), batch=st.integers(1, 4), steps=st.integers(1, 10),
       seed=st.integers(0, 2 ** 16))
def test_event_shape_is_only_a_view(m, sde_name, batch, steps, seed):
    case = _case(sde_name, seed)
    x = case.sample(batch, case.t_start, seed=seed)
    kw = _stepping(m, steps)
    process = _process(m, case)
    flat = process.solve(x, method=m.qualified_name, seed=seed, **kw)
    shaped = process.solve(x.reshape(batch, 2, 3), method=m.qualified_name, seed=seed, **kw)
    assert shaped.x.shape == (batch, 2, 3)
    torch.testing.assert_close(shaped.x.reshape(batch, 6), flat.x, rtol=1e-12, atol=1e-12)
    assert shaped.steps == flat.steps and shaped.nfe == flat.nfe


@pytest.mark.parametrize("m", _params(METHODS))
@SETTINGS
@given(dtype=st.sampled_from([torch.float32, torch.float64]), sde_name=st.sampled_from(["VP", "VE"]),
       seed=st.integers(0, 2 ** 16))
def test_dtype_and_device_follow_the_input(m, dtype, sde_name, seed):
    case = _case(sde_name, seed)
    x = case.sample(3, case.t_start, seed=seed, dtype=dtype)
    kw = _stepping(m, 8)
    is_sde = m.kind == "sde"
    process = sdekit.reverse(case.sde, case.score) if is_sde else case.ode()
    sol = process.solve(x, method=m.qualified_name, seed=seed, **kw)
    assert sol.x.dtype == dtype and sol.x.device == x.device and sol.x.shape == x.shape
    assert bool(torch.isfinite(sol.x).all())
    if not is_sde:
        # On the deterministic flow, float32 and float64 agree to float32 accuracy with fixed steps.  Adaptive steps
        # differ between the two (their error estimates differ by rounding), so each is only as close to the exact
        # flow as its tolerance promises: within twice the tolerance study's bound of each other.
        ref = process.solve(x.to(torch.float64), method=m.qualified_name, seed=seed, **kw).x
        scale = 1 + float(ref.abs().max())
        bound = 2 * _TOLERANCE_RATIO.get(m.qualified_name, 10.0) * kw["rtol"] if "rtol" in kw else 1e-3
        assert float((sol.x.to(torch.float64) - ref).abs().max()) < bound * scale
