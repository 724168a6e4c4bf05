"""Weak order of Euler–Maruyama on the reverse VP-SDE of Gaussian data with the exact score.

Data N((1, -2), diag(0.5, 2)), the default VP schedule, x_T drawn exactly from p_T, N = 8 .. 64 steps
to eps = 1e-3.  The biases of E[x] and E[x^2] are estimated with the exact reverse process on a fine
grid, driven by the same Brownian path, as a control variate (``weak_order``): unbiased, with the
variance of the strong error instead of the sample's.  Without it the standard error of a mean over
4000 samples (about 0.02) would exceed the bias at N = 64.
"""

import pytest
import torch

from sdekit.validation._orders import _euler_moments, _weak_case
from sdekit.validation.orders import fit_order, weak_order


def _check(rows, k=4.5):
    assert len(rows) == 4
    for r in rows:
        assert r.within(0.3), r.describe()
        # sdekit's Euler–Maruyama reproduces the scheme's own bias (its exact moment recursion)
        for b, se, exact in zip(r.extra["bias"], r.extra["stderr"], r.extra["analytic"]):
            assert abs(b - exact) <= k * se, \
                f"bias {b:.4g} +- {se:.2g}, the scheme's exact bias {exact:.4g}: {r.describe()}"


def test_weak_order_euler():
    _check(weak_order("euler", steps=(8, 16, 32, 64), batch=4000, reference_steps=256, seed=0))


@pytest.mark.slow
def test_weak_order_euler_long():
    _check(weak_order("euler", steps=(8, 16, 32, 64, 128), batch=40000, reference_steps=1024, seed=1))


def test_exact_scheme_bias_is_first_order():
    """The bias from the scheme's exact moment recursion (no sampling) has slope 1 too."""
    case = _weak_case()
    a, v, mu = case._av(case.t_end, torch.zeros(1, 2, dtype=torch.float64))
    ex1, ex2 = (a * mu)[0], (a * mu)[0] ** 2 + v[0]
    steps = (8, 16, 32, 64, 128)
    hs = [(case.t_start - case.t_end) / n for n in steps]
    first, second = zip(*(_euler_moments(case, n) for n in steps))
    for j in range(2):
        assert abs(fit_order(hs, [abs(float(m[j] - ex1[j])) for m in first]) - 1) < 0.1
        assert abs(fit_order(hs, [abs(float(m[j] - ex2[j])) for m in second]) - 1) < 0.1
