r"""Single-step DPM-Solvers (Lu et al. 2022, "DPM-Solver", Algorithms 1 and 2; Lu et al. 2022b, "DPM-Solver++").

Exponential integrators of the probability flow in log-SNR :math:`\lambda`: the linear part is solved
exactly and the model's prediction is expanded in :math:`\lambda` over the step
:math:`h = \lambda(t') - \lambda(t)`, with intermediate points :math:`\lambda + r h` mapped back to time
by ``sde.t_of_log_snr``.

- ``dpm_solver_2`` (noise prediction, :math:`r_1 = \tfrac12`): 2 evaluations a step, order 2.
- ``dpm_solver_3`` (noise prediction, :math:`r_1 = \tfrac13, r_2 = \tfrac23`): 3 evaluations, order 3.
- ``dpmpp_2s`` (data prediction, DPM-Solver++(2S), :math:`r = \tfrac12`): 2 evaluations, order 2.
- ``dpm_solver_fast`` (DPM-Solver-fast, Lu et al. 2022, sec. 3.4): ``steps=`` is a budget of :math:`N`
  evaluations, spent on :math:`K = \lfloor N/3\rfloor + 1` steps, every one DPM-Solver-3 except the last
  ones: orders :math:`(3, \dots, 3, 2, 1)` when :math:`3 \mid N`, else :math:`(3, \dots, 3, N \bmod 3)`, so
  that exactly :math:`N` evaluations are made.  The schedule (log-SNR by default) spaces the :math:`K` steps.
"""

import torch

from ._model import Coef
from ._stepper import Stepper


class _SingleStep(Stepper):
    kind = "ode"
    frame = "logsnr"
    schedule = "logsnr"
    defaults = {}


def _safe(h):
    """``h`` with zeros (a finished sample's zero-length step, discarded) replaced by 1, to divide by."""
    return Coef(torch.where(h.value == 0, torch.ones_like(h.value), h.value))


def dpm_solver_step(model, x, t, t_next, order, lower=False):
    r"""One noise-prediction DPM-Solver step of ``order`` 1 (DDIM), 2 (:math:`r_1 = \tfrac12`) or 3
    (:math:`r_1 = \tfrac13, r_2 = \tfrac23`) from per-sample times ``t`` to ``t_next``: ``order`` evaluations.

    With ``lower=True`` it returns ``(lower, x')``, where ``lower`` is the step of one order less that the same
    evaluations give (DPM-Solver-1 for order 2, DPM-Solver-2 with :math:`r_1 = \tfrac13` for order 3): the pair
    whose difference is DPM-Solver-12/23's error estimate.  A zero-length step (a finished sample's) stays finite.
    """
    alpha, sigma, lam, alpha1, sigma1, lam1 = model.ends(t, t_next)
    h = lam1 - lam
    phi = h.expm1()
    e0 = model.eps(x, t)
    first = alpha1 / alpha * x - sigma1 * phi * e0                               # DPM-Solver-1
    if order == 1:
        return (first, first) if lower else first
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    s1, alpha_s1, sigma_s1 = model.at_log_snr(lam + r1 * h)
    u1 = alpha_s1 / alpha * x - sigma_s1 * (r1 * h).expm1() * e0
    d1 = model.eps(u1, s1) - e0
    if order == 2 or lower:
        second = first - sigma1 * phi / (2 * r1) * d1                             # DPM-Solver-2 with this r1
    if order == 2:
        return (first, second) if lower else second
    r2 = 2.0 / 3.0
    s2, alpha_s2, sigma_s2 = model.at_log_snr(lam + r2 * h)
    phi2 = (r2 * h).expm1()
    u2 = alpha_s2 / alpha * x - sigma_s2 * phi2 * e0 - sigma_s2 * (r2 / r1) * (phi2 / _safe(r2 * h) - 1) * d1
    d2 = model.eps(u2, s2) - e0
    third = first - sigma1 / r2 * (phi / _safe(h) - 1) * d2                      # DPM-Solver-3
    return (second, third) if lower else third


class DPMSolver2(_SingleStep):
    name = "dpm_solver_2"
    description = "DPM-Solver-2, noise prediction (Lu et al. 2022, Algorithm 1, r1 = 1/2)"
    order = 2.0
    needs = "eps"

    def step(self, x, t, t_next, i, n):
        return dpm_solver_step(self.model, x, t, t_next, 2)


class DPMSolver3(_SingleStep):
    name = "dpm_solver_3"
    description = "DPM-Solver-3, noise prediction (Lu et al. 2022, Algorithm 2, r1 = 1/3, r2 = 2/3)"
    order = 3.0
    needs = "eps"

    def step(self, x, t, t_next, i, n):
        return dpm_solver_step(self.model, x, t, t_next, 3)


def fast_orders(evaluations: int) -> list:
    """DPM-Solver-fast's step orders for a budget of ``evaluations`` (Lu et al. 2022, sec. 3.4); they sum to it."""
    k = evaluations // 3 + 1
    if evaluations % 3 == 0:
        return [3] * (k - 2) + [2, 1]
    return [3] * (k - 1) + [evaluations % 3]


class DPMSolverFast(_SingleStep):
    r"""DPM-Solver-fast: ``steps=N`` counts evaluations, spent as DPM-Solver-3 steps with lower-order last ones.

    Given ``grid=`` or ``dt=`` instead (no budget), or with ``save_at`` times inserted into the grid, the steps
    before the budget's last ones are third order: :math:`3(K - 1)` evaluations plus the tail's.
    """

    name = "dpm_solver_fast"
    description = ("DPM-Solver-fast: steps= is the evaluation budget, DPM-Solver-3 steps with 2nd/1st-order "
                   "last ones (Lu et al. 2022, sec. 3.4)")
    order = 3.0
    notes = "steps= counts evaluations"
    needs = "eps"

    @staticmethod
    def grid_steps(steps: int) -> int:
        """The number of grid steps a budget of ``steps`` evaluations takes."""
        return steps // 3 + 1

    def setup(self):
        self.tail = [p for p in fast_orders(self.budget) if p < 3] if self.budget else []

    def step(self, x, t, t_next, i, n):
        last = n - len(self.tail)
        return dpm_solver_step(self.model, x, t, t_next, 3 if i < last else self.tail[i - last])


class DPMSolverPP2S(_SingleStep):
    name = "dpmpp_2s"
    description = "DPM-Solver++(2S), data prediction (Lu et al. 2022b, Algorithm 1, r = 1/2)"
    order = 2.0
    needs = "x0"

    def step(self, x, t, t_next, i, n):
        r = 0.5
        alpha, sigma, lam, alpha1, sigma1, lam1 = self.model.ends(t, t_next)
        h = lam1 - lam
        s, alpha_s, sigma_s = self.model.at_log_snr(lam + r * h)
        m0 = self.model.data(x, t)
        u = sigma_s / sigma * x - alpha_s * (-r * h).expm1() * m0
        ms = self.model.data(u, s)
        w = 1.0 / (2 * r)
        return sigma1 / sigma * x - alpha1 * (-h).expm1() * ((1 - w) * m0 + w * ms)
