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

The first steps use the orders the history allows; with ``lower_order_final`` (default) grids of fewer
than 10 steps also lower the order of the last steps.  DPM-Solver's warm-up (``warmup="multistep"``,
default) takes a first-order first step, whose local error :math:`O(h^2)` limits the third-order method's
global order to 2 as :math:`h \to 0` (measured 2.0 on the exact VE Gaussian flow, where the first steps
dominate); ``warmup="singlestep"`` takes the first step with DPM-Solver++(2S) instead, one more evaluation
in all, and the method then converges at order 3 (4 on the VP Gaussian flow, which it happens to
integrate one order better).
"""

import torch

from ._frame import ps
from ._stepper import Stepper, check_bool, check_choice

LOWER_ORDER_BELOW = 10


def step_order(order: int, i: int, n: int, lower_order_final: bool) -> int:
    """The order of step ``i`` of ``n``: warm-up from 1, and lowered at the end of short grids."""
    p = min(order, i + 1)
    if lower_order_final and n < LOWER_ORDER_BELOW:
        p = min(p, n - i)
    return p


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

    def step(self, x, t, t_next, i, n):
        f = self.frame
        alpha, sigma, lam, alpha1, sigma1, lam1 = f.ends(t, t_next)
        h = lam1 - lam
        m0 = f.data(x, t)
        p = step_order(self.history + 1, i, n, self.lower_order_final)    # the update's order (not the declared one)
        phi1 = torch.expm1(-h)
        decay, gain = ps(sigma1 / sigma, x) * x, ps(alpha1 * phi1, x)
        if i == 0 and self.warmup == "singlestep" and n > 1:
            s, alpha_s, sigma_s = f.at_log_snr(lam + 0.5 * h)   # DPM-Solver++(2S), r = 1/2: the midpoint's x0
            u = ps(sigma_s / sigma, x) * x - ps(alpha_s * torch.expm1(-0.5 * h), x) * m0
            out = torch.addcmul(decay, gain, f.data(u, s), value=-1)
        elif p == 2:                                             # m0 + (m0 - m1)/(2 r), r = (lam - lam_1)/h
            lam_1, m1 = self.past[-1]
            out = torch.addcmul(decay, gain, torch.lerp(m1, m0, ps(1 + 0.5 * h / (lam - lam_1), x)), value=-1)
        else:
            out = torch.addcmul(decay, gain, m0, value=-1)
        if p == 3:
            (lam_2, m2), (lam_1, m1) = self.past[-2], self.past[-1]
            r0, r1 = (lam - lam_1) / h, (lam_1 - lam_2) / h
            d1_0 = ps(1 / r0, x) * (m0 - m1)
            d1_1 = ps(1 / r1, x) * (m1 - m2)
            d1 = d1_0 + ps(r0 / (r0 + r1), x) * (d1_0 - d1_1)
            d2 = ps(1 / (r0 + r1), x) * (d1_0 - d1_1)
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            out = out + ps(alpha1 * phi2, x) * d1 - ps(2 * alpha1 * phi3, x) * d2
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
