r"""DPM-Solver-12 and DPM-Solver-23 with a step size per sample (Lu et al. 2022, "DPM-Solver", sec. 3.4 and
Algorithm 4; the reference's ``dpm_solver_adaptive``).

Exponential integrators of the probability flow of a :class:`sdekit.LinearSDE` in the log-SNR
:math:`\lambda = \log\alpha - \log\sigma`, with the noise prediction :math:`\hat\varepsilon = -\sigma s`.  An attempt
from :math:`\lambda_s` to :math:`\lambda_t = \lambda_s + h` computes a lower- and a higher-order solution that
share their model evaluations:

- ``order=2`` (DPM-Solver-12): DPM-Solver-1 (DDIM),
  :math:`x_1 = \tfrac{\alpha_t}{\alpha_s}x - \sigma_t(e^h - 1)\hat\varepsilon_s`, against DPM-Solver-2 with
  :math:`r_1 = \tfrac12`; 2 evaluations an attempt.
- ``order=3`` (DPM-Solver-23, the default): DPM-Solver-2 with :math:`r_1 = \tfrac13` against DPM-Solver-3 with
  :math:`r_1 = \tfrac13, r_2 = \tfrac23`; 3 evaluations an attempt.

The higher-order solution advances the state.  The error ratio is the scaled RMS of the difference with the mixed
tolerance :math:`\max(a, r\max(|x_{low}|, |x_{low,prev}|))` and the controller
:math:`h \leftarrow \theta h E^{-1/\text{order}}` (:math:`\theta = 0.9`), both per sample here (the reference takes
the largest error over the batch and one step for all).  Defaults as the reference's: ``rtol = 0.05``,
``atol = 0.0078``, a first step of :math:`h = 0.05` in :math:`\lambda` (DPM-Solver's own first step).  Unlike the
reference, a step grows at most :math:`1 + \pi/2` times its predecessor (``fac_max``; the bound of k-diffusion's
arctangent limiter): without it, on smooth stretches the step grows so fast that one step covers the rest of the
span and the error at default tolerances is tens of times k-diffusion's (``benchmarks/adaptive.py``).
"""

import torch

from ._control import GROWTH_LIMIT, error_ratio, jm_controller, mixed_scale
from ._dpm_solver import dpm_solver_step
from ._stepper import AdaptiveStepper, check_number


class DPMSolverAdaptive(AdaptiveStepper):
    name = "dpm_adaptive"
    description = "DPM-Solver-12/23, per-sample steps in log-SNR (Lu et al. 2022, dpm_solver_adaptive)"
    kind = "ode"
    order = 3.0
    error_order = 2.0
    evals = 3
    frame = "logsnr"
    needs = "eps"
    clock = "logsnr"
    default_rtol = 0.05
    default_atol = 0.0078
    defaults = {"order": 3, "theta": 0.9, "h_init": 0.05, "fac_max": GROWTH_LIMIT}

    def setup(self, order, theta, h_init, fac_max):
        self.solver_order = int(check_number("order", order, 2, 3, integer=True))   # 2: DPM-Solver-12, 3: -23
        self.theta = check_number("theta", theta, 1e-3, 1.0)
        self.h_init = check_number("h_init", h_init, 1e-9, 100.0)
        self.fac_max = check_number("fac_max", fac_max, 1.0)

    def controller(self):
        return jm_controller(self.theta, 1.0 / self.solver_order, self.fac_max)

    def to_clock(self, t):
        return self.model.log_snr(t).value

    def from_clock(self, u):
        return self.model.t_of_log_snr(u)

    def start(self, x, t):
        return {"prev": x}

    def initial_step(self, x, t, t_end, carry):
        left = (self.model.log_snr(torch.full_like(t, t_end)) - self.model.log_snr(t)).abs().value
        return torch.minimum(torch.full_like(t, self.h_init), left)

    def attempt(self, x, t, t_next, carry, attempt):
        low, high = dpm_solver_step(self.model, x, t, t_next, self.solver_order, lower=True)
        err = error_ratio(high - low, mixed_scale(self.atol, self.rtol, low, carry["prev"]))
        return high, err, {"prev": low}
