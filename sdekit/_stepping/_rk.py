r"""Embedded explicit Runge–Kutta pairs with a step size per sample: ``bosh3`` and ``dopri5``.

They integrate any ODE process through its drift alone, :math:`dx/dt = b(t, x)` with ``process.drift(t, x)`` at
per-sample times ``t`` of shape ``(batch,)``: a probability-flow ODE with any score, any user SDE's flow, or an
augmented ODE (a state and its log-density change).  A step of size :math:`h` (per sample, signed) is

.. math:: k_i = b\big(t + c_i h,\ x + h\textstyle\sum_{j<i} a_{ij}k_j\big),\quad
          x' = x + h\textstyle\sum_i b_i k_i,\quad e = h\textstyle\sum_i (b_i - \hat b_i)k_i,

with the error ratio :math:`\lVert e/(a + r\max(|x|, |x'|))\rVert_{RMS}` per sample and the PI controller of
:mod:`sdekit._stepping._control`.  Both pairs are first-same-as-last: the last stage is the first of the next
step, so an accepted step costs ``stages - 1`` evaluations.  The first step size is Hairer's (Hairer, Nørsett &
Wanner 1993, II.4; :func:`~sdekit._stepping._control.initial_step`), per sample: one evaluation more; a step grows
at most 10-fold (``fac_max``, Hairer's DOPRI5 default).

- ``bosh3``: Bogacki & Shampine (1989), order 3 with an embedded order-2 estimate; 3 evaluations a step.
- ``dopri5``: Dormand & Prince (1980), order 5 with an embedded order-4 estimate; 6 evaluations a step.

As diffrax's tableaux, each tableau checks its own consistency when built: rows of :math:`a` sum to
:math:`c`, the weights to 1, the error weights to 0.
"""

from fractions import Fraction as F

from .._errors import InvalidParameterError
from ._control import error_ratio, hairer_scale, initial_step, pi_controller
from ._model import Coef
from ._stepper import AdaptiveStepper, check_number


class Tableau:
    """A checked Butcher tableau ``(c, a, b, b_low)`` of an embedded pair (exact fractions, used as floats)."""

    def __init__(self, c, a, b, b_low):
        s = len(c)
        if not (len(a) == s - 1 and len(b) == s and len(b_low) == s
                and all(len(row) == i + 1 for i, row in enumerate(a))):
            raise InvalidParameterError(f"a tableau of {s} stages needs a with rows of 1..{s - 1} entries and "
                                        f"b, b_low of {s}")
        if c[0] != 0 or any(sum(row) != ci for row, ci in zip(a, c[1:])):
            raise InvalidParameterError("tableau rows of a must sum to c (and c[0] = 0)")
        if sum(b) != 1 or sum(b_low) != 1:
            raise InvalidParameterError("tableau weights b and b_low must each sum to 1")
        self.c = [float(v) for v in c]
        self.a = [[float(v) for v in row] for row in a]
        self.b = [float(v) for v in b]
        self.e = [float(hi - lo) for hi, lo in zip(b, b_low)]
        # first same as last: the last stage is evaluated at the new state
        self.fsal = c[-1] == 1 and list(a[-1]) == list(b[:-1]) and b[-1] == 0
        self.stages = s


def _combine(weights, ks):
    """``sum w_i k_i`` over the nonzero weights."""
    out = None
    for w, k in zip(weights, ks):
        if w != 0:
            out = w * k if out is None else out + w * k
    return out


class RungeKuttaPair(AdaptiveStepper):
    """An embedded pair, stepped per sample; a subclass gives ``tableau``, ``order`` and ``error_order``."""

    kind = "ode"
    frame = "t"
    needs = "drift"
    tableau: Tableau = None
    defaults = {"safety": 0.9, "beta1": None, "beta2": None, "fac_min": 0.2, "fac_max": 10.0}

    def setup(self, safety, beta1, beta2, fac_min, fac_max):
        self.safety = check_number("safety", safety, 1e-3, 1.0)
        self.beta1 = None if beta1 is None else check_number("beta1", beta1, 1e-3, 2.0)
        self.beta2 = None if beta2 is None else check_number("beta2", beta2, 0.0, 2.0)
        self.fac_min = check_number("fac_min", fac_min, 0.0, 0.999)
        self.fac_max = check_number("fac_max", fac_max, 1.0, 1e3)

    def controller(self):
        return pi_controller(self.error_order, self.safety, self.beta1, self.beta2, self.fac_min, self.fac_max)

    def _f(self, t, x):
        return self.process.drift(t, x)

    def start(self, x, t):
        return {"k": self._f(t, x)}

    def initial_step(self, x, t, t_end, carry):
        return initial_step(self._f, x, t, t_end, carry["k"], self.rtol, self.atol, self.order)

    def attempt(self, x, t, t_next, carry, attempt):
        tab = self.tableau
        h = t_next - t
        hx = Coef(h)
        ks = [carry["k"]]
        x_new = None
        for i in range(1, tab.stages):
            xi = x + hx * _combine(tab.a[i - 1], ks)
            ti = t_next if tab.c[i] == 1 else t + tab.c[i] * h
            if tab.fsal and i == tab.stages - 1:
                x_new = xi
            ks.append(self._f(ti, xi))
        if x_new is None:
            x_new = x + hx * _combine(tab.b, ks)
            k_new = self._f(t_next, x_new)
        else:
            k_new = ks[-1]
        err = error_ratio(hx * _combine(tab.e, ks), hairer_scale(self.atol, self.rtol, x, x_new))
        return x_new, err, {"k": k_new}


class Bosh3(RungeKuttaPair):
    name = "bosh3"
    description = "Bogacki-Shampine 3(2) pair, a step size per sample (Bogacki & Shampine 1989)"
    order = 3.0
    error_order = 2.0
    evals = 3
    tableau = Tableau(c=[F(0), F(1, 2), F(3, 4), F(1)],
                      a=[[F(1, 2)], [F(0), F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]],
                      b=[F(2, 9), F(1, 3), F(4, 9), F(0)],
                      b_low=[F(7, 24), F(1, 4), F(1, 3), F(1, 8)])


class Dopri5(RungeKuttaPair):
    name = "dopri5"
    description = "Dormand-Prince 5(4) pair, a step size per sample (Dormand & Prince 1980)"
    order = 5.0
    error_order = 4.0
    evals = 6
    tableau = Tableau(
        c=[F(0), F(1, 5), F(3, 10), F(4, 5), F(8, 9), F(1), F(1)],
        a=[[F(1, 5)],
           [F(3, 40), F(9, 40)],
           [F(44, 45), F(-56, 15), F(32, 9)],
           [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
           [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
           [F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)]],
        b=[F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), F(0)],
        b_low=[F(5179, 57600), F(0), F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40)])
