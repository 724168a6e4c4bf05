"""ODE orders on the Gaussian probability-flow ODE (exact flow map), and tolerance proportionality.

Problems (``sdekit.validation.orders.gaussian_flows()``): data N(mu, diag(S)), mu = (1, -0.5, 2),
S = (0.5, 2, 0.25); VP with the default schedule from t = 1 to 1e-3, VE with sigma_min = 0.01,
sigma_max = 10 from t = 1 to 1e-5.  Step counts per method are chosen inside the asymptotic regime
and above the float64 floor (``ODE_PLAN``).
"""

import pytest
import torch
from torchdiffeq._impl.rk_common import _ButcherTableau

import sdekit
from sdekit.validation.orders import ODE_EXCEPTIONS, ODE_PLAN, TOLERANCE_PLAN, gaussian_flows, ode_order, tolerance_study
from sdekit.validation._orders import _rk_fixed


@pytest.mark.parametrize("method,problem,steps,options", [(m, p, s, o[0] if o else None) for m, p, s, *o in ODE_PLAN],
                         ids=[f"{m}-{p}" + ("-" + "-".join(map(str, o[0].values())) if o else "")
                              for m, p, _, *o in ODE_PLAN])
def test_ode_order(method, problem, steps, options):
    r = ode_order(method, problem, steps=steps, options=options)
    assert min(r.errors) > 1e-13, f"errors reach the rounding floor: {r.describe()}"
    assert r.steps == list(steps), f"the method did not take exactly the fixed steps: {r.describe()}"
    assert r.within(0.3), r.describe()


@pytest.mark.parametrize("method,problem,tols,slope,ratio", TOLERANCE_PLAN,
                         ids=[f"{c[0]}-{c[1]}" for c in TOLERANCE_PLAN])
def test_error_follows_tolerance(method, problem, tols, slope, ratio):
    r = tolerance_study(method, problem, tols=tols, expected=slope)
    assert all(a > b for a, b in zip(r.errors, r.errors[1:])), f"error not decreasing with tol: {r.describe()}"
    assert r.extra["ratio"] <= ratio, f"error {r.extra['ratio']:.3g} x tol: {r.describe()}"
    assert r.within(0.3), r.describe()


def test_plans_cover_every_ode_method():
    ode = {m.qualified_name: m for m in sdekit.methods(kind="ode")}
    ode.update({m.qualified_name: m for m in sdekit.methods(kind="sde") if m.backend == "sdekit" and m.order})
    in_order_plan = {m for m, *_ in ODE_PLAN}
    in_tol_plan = {m for m, *_ in TOLERANCE_PLAN}
    for name, m in ode.items():
        if m.stepping == "fixed":
            assert name in in_order_plan or name in ODE_EXCEPTIONS, name
        else:
            assert name in in_tol_plan
            assert name in in_order_plan or name in ODE_EXCEPTIONS, name
    assert in_order_plan | in_tol_plan <= set(ode)
    assert set(ODE_EXCEPTIONS) <= set(ode) and not set(ODE_EXCEPTIONS) & in_order_plan


def test_tableau_stepper_matches_sdekit_midpoint():
    """The fixed-step tableau loop used for torchdiffeq's adaptive methods reproduces torchdiffeq's midpoint."""
    case = gaussian_flows()["VP"]
    x = case.sample(7, case.t_start, seed=3)
    midpoint = _ButcherTableau(alpha=torch.tensor([0.5], dtype=torch.float64),
                               beta=[torch.tensor([0.5], dtype=torch.float64)],
                               c_sol=torch.tensor([0.0, 1.0], dtype=torch.float64),
                               c_error=torch.tensor([0.0, 0.0], dtype=torch.float64))
    grid = torch.linspace(case.t_start, case.t_end, 11, dtype=torch.float64)
    ours = _rk_fixed(case.ode(), x, grid.tolist(), midpoint)
    ref = case.ode().solve(x, method="torchdiffeq.midpoint", grid=grid).x
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["VP", "VE"])
def test_flow_map_is_the_flow(name):
    """The closed-form map composes, is the identity at s = t, and its s-derivative is the ODE's drift."""
    case = gaussian_flows()[name]
    x = case.sample(9, 0.7, seed=1)
    torch.testing.assert_close(case.flow_map(x, 0.7, 0.7), x)
    torch.testing.assert_close(case.flow_map(case.flow_map(x, 0.7, 0.4), 0.4, 0.1), case.flow_map(x, 0.7, 0.1))
    s, h = 0.4, 1e-5
    deriv = (case.flow_map(x, 0.7, s + h) - case.flow_map(x, 0.7, s - h)) / (2 * h)
    y = case.flow_map(x, 0.7, s)
    drift = case.ode().drift(torch.full((9,), s, dtype=torch.float64), y)
    torch.testing.assert_close(deriv, drift, rtol=1e-6, atol=1e-6)
