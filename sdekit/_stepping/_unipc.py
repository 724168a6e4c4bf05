r"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework"), data prediction, B(h) variants.

A multistep predictor UniP-p and the corrector UniC, which reuses the model evaluation at the new point
(the one the next step needs anyway), so a step costs one evaluation and raises the order by one.
With :math:`h = \lambda' - \lambda_0`, :math:`r_k = (\lambda_{-k} - \lambda_0)/h`,
:math:`D_k = (m_{-k} - m_0)/r_k` and :math:`\hat h = -h`:

.. math::

    x' = \frac{\sigma'}{\sigma_0}x - \alpha'(e^{\hat h} - 1)m_0 - \alpha' B(h)\sum_k \rho_k D_k ,

the :math:`\rho` solving :math:`R\rho = b` with :math:`R_{jk} = r_k^{j-1}` and
:math:`b_j = j!\,\varphi_{j+1}(\hat h)\,\hat h / B(h)`; ``variant="bh2"`` takes :math:`B(h) = e^{\hat h} - 1`,
``"bh1"`` :math:`B(h) = \hat h`.  The last step is not corrected (its evaluation would not be used).
"""

import torch

from ._dpmpp_multistep import step_orders
from ._model import Coef
from ._stepper import Stepper, check_bool, check_choice, check_number


class UniPC(Stepper):
    name = "unipc"
    description = "UniPC-p with UniC corrector, B(h) variants bh1/bh2 (Zhao et al. 2023)"
    kind = "ode"
    order = 3.0
    frame = "logsnr"
    needs = "x0"
    history = 2
    schedule = "logsnr"
    defaults = {"order": 3, "variant": "bh2", "lower_order_final": True}

    def setup(self, order, variant, lower_order_final):
        self.max_order = check_number("order", order, 1, 3, integer=True)
        self.variant = check_choice("variant", variant, ("bh1", "bh2"))
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.past = []       # (log-SNR, data prediction) of earlier points, newest last
        self.current = None  # the model's prediction at the current point, from the last corrector

    orders = None   # each step's order, from plan(grid); a stepper stepped by hand warms up only

    def plan(self, grid):
        self.orders = step_orders(self.model.log_snr(grid).value, self.max_order, self.lower_order_final)

    def step(self, x, t, t_next, i, n):
        model = self.model
        alpha, sigma, lam, alpha1, sigma1, lam1 = model.ends(t, t_next)
        h = lam1 - lam
        m0 = self.current if self.current is not None else model.data(x, t)
        p = self.orders[i] if self.orders else min(self.max_order, i + 1)   # this step's order
        hh = -h
        phi1 = hh.expm1()
        b_h = hh if self.variant == "bh1" else phi1
        rks, diffs = [], []
        for lam_k, m_k in reversed(self.past[-(p - 1):] if p > 1 else []):
            rk = (lam_k - lam) / h
            rks.append(rk.value)
            diffs.append((m_k - m0) / rk)
        rks.append(torch.ones_like(h.value))
        rows, b = [], []
        h_phi_k, factorial = phi1 / hh - 1, 1
        for j in range(1, p + 1):
            rows.append(torch.stack(rks, dim=-1) ** (j - 1))
            b.append((h_phi_k * factorial / b_h).value)
            factorial *= j + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R, b = torch.stack(rows, dim=-2), torch.stack(b, dim=-1)          # (batch, p, p), (batch, p)
        base = sigma1 / sigma * x - alpha1 * phi1 * m0
        out = base
        if diffs:
            rho_p = torch.full_like(h.value, 0.5)[:, None] if p == 2 else torch.linalg.solve(R[:, :-1, :-1], b[:, :-1])
            out = base - alpha1 * b_h * sum(Coef(rho_p[:, k]) * d for k, d in enumerate(diffs))
        self.past = (self.past + [(lam, m0)])[-self.history:]
        if i == n - 1:
            self.current = None
            return out
        m1 = model.data(out, t_next)
        rho_c = torch.full_like(h.value, 0.5)[:, None] if p == 1 else torch.linalg.solve(R, b)
        corr = Coef(rho_c[:, -1]) * (m1 - m0)
        for k, d in enumerate(diffs):
            corr = corr + Coef(rho_c[:, k]) * d
        self.current = m1
        return base - alpha1 * b_h * corr
