r"""Restart sampling (Xu et al. 2023, "Restart sampling for improving generative processes"; k-diffusion's
``sample_restart``): EDM's Heun steps on the probability flow, and at one grid point a restart.

In the VE frame (:math:`\tilde x = x/\alpha`, :math:`\tilde\sigma = \sigma/\alpha`) the main walk takes Heun steps
(:class:`EDMHeun`).  At the first grid point whose noise level is at most ``sigma_min``, say :math:`\tilde\sigma_r`,
it restarts ``restarts`` times: the forward process's noise raises the level to ``sigma_max``,
:math:`\tilde x \leftarrow \tilde x + S_{noise}\sqrt{\tilde\sigma_{max}^2 - \tilde\sigma_r^2}\,z_k`, and
``restart_steps - 1`` Heun steps on a Karras grid (:math:`\rho = 7`) bring it back to :math:`\tilde\sigma_r`.  The
contraction of the flow over the restart interval shrinks the errors made before it, while the added noise
keeps the marginals.  :math:`z_k` are fresh keyed normals (``KeyedBrownian.normal`` at the restart time, tag
:math:`k`): sample i's restarts are the same in any batch.  NFE: :math:`2N + 2K(M - 1)` for :math:`N` steps,
:math:`K` restarts of :math:`M` points.  ``sigma_max`` is capped at the level where the walk starts (the model
is never asked above it); with no grid point at or below ``sigma_min`` (or ``restarts=0``) it is ``edm_heun``.

The defaults are the paper's CIFAR-10 configuration (its Table 3: :math:`M = 3` points, :math:`K = 2`
restarts, interval :math:`[0.06, 0.30]`): 8 evaluations on top of the walk, so ``steps=6`` costs 20 and
``steps=21`` 50, the budgets people use.  k-diffusion's larger ``{0.1: [10, 2, 2]}`` (36 more evaluations) is
``sigma_min=0.1, sigma_max=2, restart_steps=10``.
"""

import torch

from ._edm import EDMHeun
from ._model import Coef
from ._stepper import check_number


class Restart(EDMHeun):
    name = "restart"
    description = "Restart sampling: Heun in sigma with restarts of a noise interval (Xu et al. 2023)"
    kind = "sde"
    order = None
    defaults = {"sigma_min": 0.06, "sigma_max": 0.3, "restart_steps": 3, "restarts": 2, "s_noise": 1.0}

    def setup(self, sigma_min, sigma_max, restart_steps, restarts, s_noise):
        self.sigma_min = check_number("sigma_min", sigma_min, 0.0)
        self.sigma_max = check_number("sigma_max", sigma_max, self.sigma_min)
        self.restart_steps = check_number("restart_steps", restart_steps, 2, 10 ** 4, integer=True)
        self.restarts = check_number("restarts", restarts, 0, 10 ** 3, integer=True)
        self.s_noise = check_number("s_noise", s_noise, 0.0, 10.0)
        self.at = None   # the index of the grid point where the restarts happen

    def plan(self, grid):
        levels = self.model.sigma_ve(grid).value.tolist()   # sigma / alpha, closed-form or numerical moments
        self.top, self.t_top = max(levels), float(grid[levels.index(max(levels))])   # the walk's highest level
        below = [k for k in range(1, len(levels)) if levels[k] <= self.sigma_min and levels[k] < levels[k - 1]]
        ok = below and self.restarts > 0 and levels[below[0]] < min(self.sigma_max, self.top)
        self.at = below[0] if ok else None   # no restart where sigma_max (capped at the start) is not above it

    def step(self, x, t, t_next, i, n):
        x = super().step(x, t, t_next, i, n)
        if i + 1 == self.at:
            x = self._restart(x, t_next)
        return x

    def _restart(self, x, t_r):
        model = self.model
        s_r = model.sigma_ve(t_r).value
        s_max = torch.full_like(s_r, min(self.sigma_max, self.top))
        t_max = model.t_of_sigma_ve(s_max) if self.sigma_max < self.top else torch.full_like(t_r, self.t_top)
        # the restart interval's Karras levels, per sample, from s_max down to s_r
        u = torch.linspace(0, 1, self.restart_steps, dtype=torch.float64, device=s_r.device)
        rho = 7.0
        lo, hi = s_r.unsqueeze(1) ** (1 / rho), s_max.unsqueeze(1) ** (1 / rho)
        levels = (hi + u * (lo - hi)) ** rho                                    # (batch, restart_steps)
        levels[:, 0], levels[:, -1] = s_max, s_r
        times = [t_max] + [model.t_of_sigma_ve(levels[:, k]) for k in range(1, self.restart_steps - 1)]
        times.append(t_r)
        jump = Coef(torch.sqrt((s_max * s_max - s_r * s_r).clamp_min(0)) * self.s_noise)
        for k in range(self.restarts):
            z = self.brownian.normal(t_r, tag=k).to(x.dtype)
            x_ve = model.to_ve(x, t_r) + jump * z
            for j in range(1, self.restart_steps):
                x = self.heun(x_ve, Coef(levels[:, j - 1]), times[j - 1], Coef(levels[:, j]), times[j])
                x_ve = model.to_ve(x, times[j])
        return x
