r"""Adaptive Euler–Maruyama / stochastic Improved-Euler pair with a step size per sample (Jolicoeur-Martineau et al.
2021, "Gotta Go Fast When Generating Data with Score-Based Models", Algorithm 1), for any SDE process.

With the drift :math:`b(t, x)` and diffusion :math:`g(t, x)` of the process (a reverse SDE with any score, any
user SDE, a forward SDE), a step from :math:`t` to :math:`t' = t + \Delta t` (:math:`\Delta t < 0` for a
reverse SDE) with the Brownian increment :math:`\Delta W` is

.. math::

    x' &= x + b(t, x)\,\Delta t + g(t, x)\,\Delta W                       &\text{(Euler–Maruyama)}\\
    \tilde x &= x + b(t', x')\,\Delta t + g(t', x')\,\Delta W \\
    x'' &= \tfrac12 (x' + \tilde x)                                          &\text{(Improved Euler)}

two evaluations an attempt: the paper's pair, for additive noise (:math:`g = g(t)`: VP, sub-VP, VE, any user SDE
whose diffusion does not depend on :math:`x`).  The error ratio is the scaled RMS of :math:`x' - x''` with the mixed
tolerance :math:`\max(a, r\max(|x'|, |x'_{prev}|))`, :math:`x'_{prev}` the Euler–Maruyama state of the last accepted
step; the state advances with :math:`x''`, and the controller is the paper's :math:`h \leftarrow \theta h E^{-r}`
(:math:`\theta = 0.9`, :math:`r = 0.9`), each per sample.  Defaults as the paper's: ``rtol = 0.05``,
``atol = 0.0078`` (data scaled to [-1, 1]).  Unlike the paper, a step grows at most :math:`1 + \pi/2` times its
predecessor (``fac_max``) and the first step is Hairer's on the drift
(:func:`~sdekit._stepping._control.initial_step`; ``h_init=0.01`` is the paper's fixed one).

**A diffusion that depends on x** (diagonal noise :math:`g_i(t, x_i)`) needs more care.  An error estimate that reads
the step's own :math:`\Delta W` makes the accepted partition depend on the increments it then sums: refining where
:math:`\Delta W^2` is large lowers :math:`\sum\Delta W^2` below :math:`t` and biases the Itô sums
:math:`\sum g(x_i)\Delta W_i` (measured on geometric Brownian motion: the strong error *grows* as the tolerance
tightens).  With additive noise the Itô sum has a deterministic integrand and no such bias.  So for such an SDE the
step is Heun in the drift and Euler–Maruyama in the noise,
:math:`x'' = x + \tfrac12(b(t, x) + b(t', x + b\,\Delta t))\Delta t + g(t, x)\Delta W` (Itô, strong order 1/2),
and its error estimate is known before :math:`\Delta W` is drawn: the drift part
:math:`\tfrac12(b - b')\Delta t` and the RMS of the Euler–Maruyama noise error,
:math:`\tfrac12|g\,\partial_x g|\,|\Delta t|\sqrt2 = 2^{-3/2}|\partial_x(g^2)|\,|\Delta t|`, combined in quadrature,
with the same mixed tolerance.  The partition is then adapted to the path and the Itô solution is the limit.

**Rejected steps keep the Brownian path.**  :math:`\Delta W = W(t') - W(t)` is read from the solve's
:class:`sdekit.KeyedBrownian`: a rejected step is retried with a smaller :math:`h` on the *same* path, queried at
the new :math:`t'` (a Brownian-bridge refinement between the values already fixed), and the next step starts from
:math:`W(t')`.  The result is a sample of the SDE, not of a rejection-biased process (rejection sampling with
memory, Rackauckas & Nie 2017).  With ``options={"on_reject": "redraw"}`` each attempt draws fresh normals instead
(keyed by the sample, its time and the attempt), as the paper's implementation does; that keeps the draws that
make the error estimate small and biases the samples outward.  It exists to show the bias (docs/adaptive.md).

On an ODE process (zero diffusion, no noise) the pair is Euler / Heun.
"""

import torch

from .._broadcast import per_sample
from .._errors import InvalidParameterError
from ._control import GROWTH_LIMIT, error_ratio, initial_step, jm_controller, mixed_scale
from ._model import Coef
from ._stepper import AdaptiveStepper, check_number


class ImprovedEuler(AdaptiveStepper):
    name = "improved_euler"
    description = ("Euler-Maruyama / Improved-Euler pair, per-sample steps, Brownian path kept on rejection "
                   "(Jolicoeur-Martineau et al. 2021)")
    kind = "sde"
    order = 2.0            # Heun on an ODE
    weak_order = 1.0
    strong_order = 0.5     # diagonal noise
    order_additive = 1.0   # additive noise (VP, sub-VP, VE)
    deterministic_on_ode = True
    evals = 2
    frame = "t"
    needs = "drift"
    default_rtol = 0.05
    default_atol = 0.0078
    defaults = {"theta": 0.9, "r": 0.9, "h_init": None, "fac_max": GROWTH_LIMIT, "on_reject": "keep"}
    renamed_options = {"noise": "on_reject"}

    def setup(self, theta, r, h_init, fac_max, on_reject):
        self.theta = check_number("theta", theta, 1e-3, 1.0)
        self.r = check_number("r", r, 1e-3, 2.0)
        self.h_init = None if h_init is None else check_number("h_init", h_init, 1e-12)
        self.fac_max = check_number("fac_max", fac_max, 1.0)
        if on_reject not in ("keep", "redraw"):
            raise InvalidParameterError(f"option on_reject must be 'keep' (the Brownian path is refined on rejection) "
                                        f"or 'redraw' (fresh noise per attempt, biased), got {on_reject!r}")
        self.redraw = on_reject == "redraw"

    def controller(self):
        return jm_controller(self.theta, self.r, self.fac_max)

    def start(self, x, t):
        self.multiplicative = self.brownian is not None and self.process.diffusion_depends_on_x(t.to(x.dtype), x)
        carry = {"prev": x}
        if self.brownian is not None and not self.redraw:
            carry["w"] = self.brownian.value(t).to(x.dtype)
        return carry

    def initial_step(self, x, t, t_end, carry):
        if self.h_init is not None:
            return torch.minimum(torch.full_like(t, self.h_init), (t_end - t).abs())
        return initial_step(self.process.drift, x, t, t_end, self.process.drift(t, x), self.rtol, self.atol,
                            self.error_order)

    def attempt(self, x, t, t_next, carry, attempt):
        proc = self.process
        dt = Coef(t_next - t).like(x)
        carry_next = {}
        dw = None
        if self.brownian is not None:
            if self.redraw:
                # keyed by (t, iteration): tags wrap after 2**21 iterations, which could only meet the same t again
                dw = self.brownian.normal(t, tag=attempt % 2 ** 21).to(x.dtype) * Coef(t_next - t).abs().sqrt()
            else:
                w_next = self.brownian.value(t_next).to(x.dtype)
                dw = w_next - carry["w"]
                carry_next["w"] = w_next
        b0 = proc.drift(t, x)
        if dw is not None and self.multiplicative:
            return self._adapted(x, t, t_next, dt, dw, b0, carry, carry_next)
        x1 = x + b0 * dt
        if dw is not None:
            g0 = self._diffusion(t, x)
            x1 = x1 + g0 * dw
        b1 = proc.drift(t_next, x1)
        x_new = x + (0.5 * (b0 + b1)) * dt
        diff = (0.5 * (b0 - b1)) * dt          # x' - x''
        if dw is not None:
            g1 = self._diffusion(t_next, x1)
            x_new = x_new + (0.5 * (g0 + g1)) * dw
            diff = diff + (0.5 * (g0 - g1)) * dw
        err = error_ratio(diff, mixed_scale(self.atol, self.rtol, x1, carry["prev"]))
        carry_next["prev"] = x1
        return x_new, err, carry_next

    def _adapted(self, x, t, t_next, dt, dw, b0, carry, carry_next):
        r"""The step for a diffusion that depends on :math:`x`, with an error estimate that does not read
        :math:`\Delta W` (see the module's docstring)."""
        proc = self.process
        x1 = x + b0 * dt
        b1 = proc.drift(t_next, x1)
        g0 = self._diffusion(t, x)
        x_new = x + (0.5 * (b0 + b1)) * dt + g0 * dw
        # E|g g' (dW^2 - dt)/2|^2 = (g g')^2 dt^2 / 2, and g g' = d(g^2)/dx / 2
        noise_err = (2 ** -1.5) * proc._g_squared_divergence(t.to(x.dtype), x) * dt.abs()
        diff = torch.sqrt(((0.5 * (b0 - b1)) * dt) ** 2 + noise_err ** 2)
        err = error_ratio(diff, mixed_scale(self.atol, self.rtol, x1, carry["prev"]))
        carry_next["prev"] = x1
        return x_new, err, carry_next

    def _diffusion(self, t, x):
        """:math:`g(t, x)` shaped to multiply a state (the process's coefficient sees times in x's dtype)."""
        return per_sample(self.process.diffusion(t.to(x.dtype), x), x)
