r"""Multistep DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++", Algorithm 2 and its third-order form).

Data prediction :math:`\hat x_0`, one model evaluation a step, the earlier predictions kept.  With
:math:`h = \lambda' - \lambda_0`, :math:`h_k = \lambda_{-k+1} - \lambda_{-k}` and :math:`r_k = h_k/h`,

.. math::

    x' = \frac{\sigma'}{\sigma_0}x - \alpha'\varphi_1 m_0 + \alpha'\varphi_2 D_1 - 2\alpha'\varphi_3 D_2,\qquad
    \varphi_1 = e^{-h} - 1,\ \varphi_2 = \varphi_1/h + 1,\ \varphi_3 = \varphi_2/h - \tfrac12,

where :math:`D_1 \approx h\,m'` and :math:`D_2 = (D_{1,0} - D_{1,1})/(r_0 + r_1) \approx \tfrac12 h^2 m''` are the
divided differences of the predictions in :math:`\lambda` (the exact integral of the quadratic through the
last three predictions).  DPM-Solver's reference code (and k-diffusion's ``dpmpp_3m_sde``) weights
:math:`D_2` by :math:`\varphi_3` rather than :math:`2\varphi_3`, which leaves an :math:`O(h^3)` local error:
measured global order 2.1–2.3 instead of 3.  The second-order method uses
:math:`x' = \tfrac{\sigma'}{\sigma_0}x - \alpha'\varphi_1(m_0 + \tfrac{1}{2r_1}(m_0 - m_{-1}))`.

The orders follow the grid's steps in log-SNR (:func:`step_orders`): the first steps use the orders the history
allows, a step much longer than the span of the predictions it would extrapolate uses fewer of them, and with
``lower_order_final`` (default; without it the orders only warm up) a grid whose last step is long in log-SNR
ends with falling orders.
DPM-Solver's warm-up (``warmup="multistep"``, default) takes a first-order first step, whose local error
:math:`O(h^2)` limits the third-order method's global order to 2 as :math:`h \to 0` (measured 2.0 on the exact
VE Gaussian flow, where the first steps dominate); ``warmup="singlestep"`` takes the first step with DPM-
Solver++(2S) instead, one more evaluation in all, and the method then converges at order 3 (4 on the VP Gaussian
flow, which it happens to integrate one order better).
"""

from typing import List

from ._stepper import Stepper, check_bool, check_choice

#: A step uses the predictions behind it only while it is at most ``REACH`` times as long, in log-SNR, as the span
#: of the nodes it would use: a polynomial extrapolated far beyond its nodes amplifies their differences.
REACH = 2.0
#: A last step longer than this in log-SNR ends the grid with falling orders (DPM-Solver's ``lower_order_final``).
LONG_LAST_STEP = 1.5


def step_orders(log_snr, order: int, lower_order_final: bool, last_order: int = 1) -> List[int]:
    r"""The order of each step of a multistep method on a grid with log-SNR values :math:`\lambda_0, \dots, \lambda_n`.

    Without ``lower_order_final`` the orders only warm up, :math:`\min(\text{order}, k + 1)` (a fixed-order
    multistep method, as k-diffusion's).  With it (the default of every multistep sampler), with
    :math:`h_k = |\lambda_{k+1} - \lambda_k|`:

    - step :math:`k` takes the largest order :math:`p \le \min(\text{order}, k + 1)` whose nodes
      :math:`\lambda_k, \dots, \lambda_{k-p+1}` span at least :math:`h_k / \text{REACH}`, so that no step
      extrapolates the model's predictions far beyond the points they came from (after a sudden jump, or a
      first long step);
    - when the last step is longer than ``LONG_LAST_STEP``, step :math:`k` of :math:`n` also takes at most
      order :math:`n - k + \text{last\_order} - 1` (the last step ``last_order``): near the data the prediction
      :math:`\hat x_0(\lambda)` levels off (its change goes as :math:`e^{-2\lambda}`), and a polynomial
      carried over a long final jump overshoots it.

    The rule reads only the step sizes, so every grid gets it: uniform in t, diffusers' spacings (whose last step
    on a VP model jumps from :math:`\lambda \approx 1` to 4.6 at 10 steps), Karras, log-SNR, hand-made.  Its
    constants were chosen on diffusers' linspace, leading, trailing and Karras spacings and sdekit's four
    schedules at 5–20 steps (``benchmarks/diffusers_grids.py``, docs/grids.md).
    """
    lam = [float(v) for v in log_snr]
    n = len(lam) - 1
    h = [abs(lam[k + 1] - lam[k]) for k in range(n)]
    orders = []
    for k in range(n):
        p = min(order, k + 1)
        while lower_order_final and p > 1 and h[k] > REACH * abs(lam[k] - lam[k - p + 1]):
            p -= 1
        orders.append(p)
    if lower_order_final and n > 0 and h[-1] > LONG_LAST_STEP:
        orders = [min(p, n - k + last_order - 1) for k, p in enumerate(orders)]
    return orders


class _DPMSolverPPMultistep(Stepper):
    kind = "ode"
    frame = "logsnr"
    needs = "x0"
    schedule = "logsnr"
    defaults = {"lower_order_final": True, "warmup": "multistep"}

    def setup(self, lower_order_final, warmup):
        self.warmup = check_choice("warmup", warmup, ("multistep", "singlestep"))
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.past = []   # (log-SNR, data prediction), newest last

    orders = None   # each step's order, from plan(grid); a stepper stepped by hand warms up only

    def plan(self, grid):
        self.orders = step_orders(self.model.log_snr(grid).value, self.history + 1, self.lower_order_final)

    def step(self, x, t, t_next, i, n):
        model = self.model
        alpha, sigma, lam, alpha1, sigma1, lam1 = model.ends(t, t_next)
        h = lam1 - lam
        m0 = model.data(x, t)
        p = self.orders[i] if self.orders else min(self.history + 1, i + 1)   # this step's order
        phi1 = (-h).expm1()
        m = m0                                                   # the prediction integrated over the step
        if i == 0 and self.warmup == "singlestep" and n > 1:
            s, alpha_s, sigma_s = model.at_log_snr(lam + 0.5 * h)   # DPM-Solver++(2S), r = 1/2: the midpoint's x0
            m = model.data(sigma_s / sigma * x - alpha_s * (-0.5 * h).expm1() * m0, s)
        elif p == 2:                                             # m0 + (m0 - m1)/(2 r), r = (lam - lam_1)/h
            lam_1, m1 = self.past[-1]
            m = m0 + 0.5 * h / (lam - lam_1) * (m0 - m1)
        out = sigma1 / sigma * x - alpha1 * phi1 * m
        if p == 3:
            (lam_2, m2), (lam_1, m1) = self.past[-2], self.past[-1]
            r0, r1 = (lam - lam_1) / h, (lam_1 - lam_2) / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            out = out + alpha1 * phi2 * d1 - 2 * alpha1 * phi3 * d2
        self.past = (self.past + [(lam, m0)])[-self.history:]
        return out


class DPMSolverPP2M(_DPMSolverPPMultistep):
    name = "dpmpp_2m"
    description = "DPM-Solver++(2M), multistep data prediction (Lu et al. 2022b, Algorithm 2)"
    order = 2.0
    history = 1


class DPMSolverPP3M(_DPMSolverPPMultistep):
    name = "dpmpp_3m"
    description = "DPM-Solver++(3M), third-order multistep data prediction (Lu et al. 2022b)"
    order = 2.0      # the first-order first step of the default warm-up caps it
    notes = "order 3 with warmup='singlestep'"
    history = 2
