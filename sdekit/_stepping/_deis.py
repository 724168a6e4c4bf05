r"""DEIS (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator"), the
:math:`\rho`AB form in log :math:`\rho` (diffusers' ``DEISMultistepScheduler``, ``solver_type="logrho"``).

In the VE frame, :math:`\tilde x = x/\alpha` and :math:`\rho = \tilde\sigma = \sigma/\alpha`, the probability flow is
:math:`d\tilde x/d\rho = \hat\varepsilon`: the linear part is exact.  DEIS keeps the last :math:`p` noise predictions,
interpolates them by the polynomial :math:`P` in :math:`v = \log\rho - \log\rho_0` through their nodes :math:`v_k`, and
integrates it exactly over the step:

.. math::

    \tilde x' = \tilde x + \sum_{j<p} c_j\,\hat\varepsilon_{-j},\qquad
    c_j = \int_{\rho_0}^{\rho'} \ell_j(\log\rho - \log\rho_0)\,d\rho = \rho_0 \sum_m (V^{-1})_{mj}\,I_m(h),\quad
    I_m(h) = \int_0^h v^m e^v\,dv,

with :math:`V_{km} = v_k^m`, :math:`h = \log(\rho'/\rho_0)`, and :math:`I_m` in closed form (a Taylor series for
:math:`|h| < 1/2`, where the closed form cancels).  The orders follow the grid's steps in log-SNR as the other
multistep samplers' do (``sdekit._stepping._dpmpp_multistep.step_orders``; ``lower_order_final``, default, lowers
the last steps after a long final jump, the last one to order 2: the noise prediction is integrated against
:math:`d\rho`, which weights the start of a long final step, so a first-order last step gives away more than
it saves, measured on diffusers' Karras grids).  ``order=1`` is DDIM.
"""

import math

import torch

from ._dpmpp_multistep import step_orders
from ._model import Coef
from ._stepper import Stepper, check_bool, check_number

_SERIES_BELOW = 0.5
_SERIES_TERMS = 17      # |h| < 1/2: the next term is below 1e-18 of the first


def exp_moments(h: torch.Tensor, p: int) -> torch.Tensor:
    r""":math:`I_m(h) = \int_0^h v^m e^v\,dv` for :math:`m < p`, per sample: shape ``(batch, p)`` (float64).

    Closed form :math:`e^h \sum_{k \le m} (-1)^k \frac{m!}{(m-k)!} h^{m-k} - (-1)^m m!`; for :math:`|h| < 1/2`, where
    it cancels, the series :math:`h^{m+1} \sum_k \frac{h^k}{k!\,(m+k+1)}`.
    """
    hc = h.unsqueeze(-1)
    k = torch.arange(_SERIES_TERMS, dtype=h.dtype, device=h.device)
    terms = hc ** k / torch.exp(torch.lgamma(k + 1))                                  # h^k / k!, (batch, K)
    m = torch.arange(p, dtype=h.dtype, device=h.device)
    series = hc ** (m + 1) * (terms @ (1 / (m + k.unsqueeze(-1) + 1)))               # (batch, p)
    closed = []
    for mm in range(p):
        poly = sum((-1) ** j * float(math.factorial(mm) // math.factorial(mm - j)) * h ** (mm - j)
                   for j in range(mm + 1))
        closed.append(torch.exp(h) * poly - (-1) ** mm * math.factorial(mm))
    return torch.where(hc.abs() < _SERIES_BELOW, series, torch.stack(closed, -1))


class DEIS(Stepper):
    name = "deis"
    description = ("DEIS, rhoAB in log rho: the noise predictions' polynomial in log sigma integrated exactly "
                   "(Zhang & Chen 2023)")
    kind = "ode"
    order = 2.0      # third-order steps after a first-order start: global order 2 as h -> 0
    notes = "order-3 steps after a first-order start"
    frame = "sigma"
    needs = "eps"
    history = 2
    schedule = "logsnr"
    defaults = {"order": 3, "lower_order_final": True}

    def setup(self, order, lower_order_final):
        self.max_order = check_number("order", order, 1, 3, integer=True)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.past = []   # (log rho, noise prediction), newest first

    orders = None   # each step's order, from plan(grid); a stepper stepped by hand warms up only

    def plan(self, grid):
        self.orders = step_orders(self.model.log_snr(grid).value, self.max_order, self.lower_order_final,
                                  last_order=2)

    def step(self, x, t, t_next, i, n):
        model = self.model
        rho, rho1 = model.sigma_ve(t).value, model.sigma_ve(t_next).value
        log_rho = torch.log(rho)
        self.past = ([(log_rho, model.eps(x, t))] + self.past)[:self.history + 1]
        p = min(self.orders[i] if self.orders else self.max_order, len(self.past))   # this step's order
        nodes = torch.stack([lr - log_rho for lr, _ in self.past[:p]], -1)            # (batch, p), v_0 = 0
        vandermonde = nodes.unsqueeze(-1) ** torch.arange(p, dtype=nodes.dtype, device=nodes.device)
        moments = exp_moments(torch.log(rho1 / rho), p)                                  # (batch, p)
        c = rho.unsqueeze(-1) * torch.linalg.solve(vandermonde.transpose(-1, -2), moments)   # V^T c = I
        y = model.to_ve(x, t)
        for j, (_, e) in enumerate(self.past[:p]):
            y = y + Coef(c[:, j]) * e
        return model.from_ve(y, t_next)
