r"""iPNDM (Zhang & Chen 2023, "DEIS"): the improved pseudo linear multistep method, in sigma, with a lower-order start.

In the VE frame, :math:`\tilde x = x/\alpha` and :math:`\tilde\sigma = \sigma/\alpha`, the probability flow is
:math:`d\tilde x/d\tilde\sigma = \hat\varepsilon(x, t)`.  A step is explicit Adams–Bashforth with the coefficients
of equal steps, whatever the grid:

.. math::

    \tilde x' = \tilde x + (\tilde\sigma' - \tilde\sigma)\sum_{j<p} b_{p,j}\,\hat\varepsilon_{-j},\qquad
    b_1 = (1),\ b_2 = \tfrac12(3, -1),\ b_3 = \tfrac1{12}(23, -16, 5),\ b_4 = \tfrac1{24}(55, -59, 37, -9),

with :math:`p = \min(\text{order}, i + 1)` at step :math:`i` (PNDM starts with Runge–Kutta steps; iPNDM with
these lower orders, one evaluation a step throughout).  ``order=1`` is DDIM.  Equal-step coefficients on the
non-uniform noise-level grids of diffusion sampling, and the Euler first step, leave a global order of 2
(measured in docs/orders.md); the method is built for few steps, where it is among the most accurate (the
samplers benchmark).  Lagrange coefficients for the actual steps are ``lms``.
"""

from ._stepper import Stepper, check_number

_ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class IPNDM(Stepper):
    name = "ipndm"
    description = ("iPNDM: Adams–Bashforth in sigma with equal-step coefficients and a lower-order start "
                   "(Zhang & Chen 2023)")
    kind = "ode"
    order = 2.0
    frame = "sigma"
    needs = "eps"
    history = 3
    schedule = "karras"
    defaults = {"order": 4}

    def setup(self, order):
        self.max_order = check_number("order", order, 1, 4, integer=True)
        self.past = []   # noise predictions, newest first

    def step(self, x, t, t_next, i, n):
        model = self.model
        self.past = ([model.eps(x, t)] + self.past)[:self.max_order]
        coefs = _ADAMS_BASHFORTH[len(self.past)]
        slope = coefs[0] * self.past[0]
        for c, e in zip(coefs[1:], self.past[1:]):
            slope = slope.add(e, alpha=c)
        ds = model.sigma_ve(t_next) - model.sigma_ve(t)
        return model.from_ve(model.to_ve(x, t) + ds * slope, t_next)
