"""Strong orders of every torchsde method on the exact-solution SDEs, one Brownian path shared by all step sizes.

Each test fits log E|X_N - X(T)| against log dt for dt = T/2^k and asserts the slope within ±0.3 of
the order to expect: the method's declared order for the problem's noise (``order`` for diagonal,
``order_additive`` for additive), except where :data:`STRONG_EXCEPTIONS` documents a higher one
(commutative noise, W_t-only solutions, linear drift).  No exception lowers an order.
"""

import pytest

import sdekit
from sdekit.validation import exact_sdes
from sdekit.validation.orders import STRONG_EXCEPTIONS, STRONG_PLAN, strong_order


def _id(case):
    return f"{case[0]}-{case[1]}"


@pytest.mark.parametrize("method,problem", STRONG_PLAN, ids=[_id(c) for c in STRONG_PLAN])
def test_strong_order(method, problem):
    r = strong_order(method, problem, ks=range(4, 9), batch=2000, seed=0)
    assert min(r.errors) > 1e-10, f"errors reach the rounding floor: {r.describe()}"
    assert r.measured >= r.declared - 0.3, f"below the declared order: {r.describe()}"
    assert r.within(0.3), r.describe()


@pytest.mark.slow
@pytest.mark.parametrize("method,problem", STRONG_PLAN, ids=[_id(c) for c in STRONG_PLAN])
def test_strong_order_long(method, problem):
    """dt = 1/16 .. 1/1024 with 4000 paths and another path: the same band."""
    r = strong_order(method, problem, ks=range(4, 11), batch=4000, seed=1)
    assert r.measured >= r.declared - 0.3, r.describe()
    assert r.within(0.3), r.describe()


def test_plan_covers_every_sde_method_on_every_problem():
    """Every SDE method that integrates a general SDE (it needs the process's drift) is measured on every problem.
    The diffusion samplers (needs "score", "x0" or "eps") step a LinearSDE's reverse process in its own frame and
    cannot run on these exact-solution SDEs, which are not linear.  Adaptive-only methods (improved_euler) take no
    fixed steps: their strong convergence is fitted against NFE in tests/test_adaptive_sde.py."""
    names = {m.name for m in sdekit.methods(kind="sde") if m.needs == "drift" and m.stepping != "adaptive"}
    assert names == {m for m, _ in STRONG_PLAN}
    assert {p for _, p in STRONG_PLAN} == set(exact_sdes())
    assert {exact_sdes()[p].noise for _, p in STRONG_PLAN} == {"diagonal", "additive"}


def test_exceptions_only_raise_the_expected_order():
    methods = {m.name: m for m in sdekit.methods(kind="sde")}
    problems = exact_sdes()
    for (method, problem), (expected, why) in STRONG_EXCEPTIONS.items():
        m, sde = methods[method], problems[problem]
        declared = m.order_additive if sde.noise == "additive" else m.order
        assert expected > declared and why


def test_the_band_tells_orders_apart():
    """Euler–Maruyama on GBM (order 0.5) is outside ±0.3 of order 1: the test can fail."""
    r = strong_order("euler", "gbm", ks=range(4, 9), batch=500)
    assert abs(r.measured - 1.0) > 0.3
