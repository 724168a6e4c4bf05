r"""EDM's samplers (Karras et al. 2022, "Elucidating the design space of diffusion-based generative models").

They step the probability flow in the VE frame, :math:`d\tilde x/d\tilde\sigma = (\tilde x - \hat x_0)/\tilde\sigma`
with :math:`\tilde x = x/\alpha`, :math:`\tilde\sigma = \sigma/\alpha`, on a Karras grid by default.

- ``edm_heun`` (Algorithm 1): Heun's method in :math:`\tilde\sigma`, 2 evaluations a step.  EDM's Euler last
  step to :math:`\sigma = 0` is ``options={"denoise": True}`` (Euler to zero noise is :math:`\hat x_0`).
- ``edm_stochastic`` (Algorithm 2): before each Heun step the noise is raised from :math:`\tilde\sigma` to
  :math:`\hat\sigma = \tilde\sigma(1 + \gamma)`, :math:`\gamma = \min(S_{churn}/N, \sqrt2 - 1)` where
  :math:`S_{min} \le \tilde\sigma \le S_{max}`, by adding :math:`\sqrt{\hat\sigma^2 - \tilde\sigma^2}\,S_{noise}\,z`;
  :math:`\hat\sigma` is capped at :math:`\tilde\sigma(T)` so the model is never asked beyond ``T``.
"""

import math

import torch

from ._model import Coef
from ._stepper import Stepper, check_number


class EDMHeun(Stepper):
    name = "edm_heun"
    description = "Heun in sigma, EDM (Karras et al. 2022, Algorithm 1); Euler last step via denoise"
    kind = "ode"
    order = 2.0
    frame = "sigma"
    needs = "x0"
    schedule = "karras"
    defaults = {}

    def heun(self, x_ve, s, t, s1, t1):
        """One Heun step in the VE frame from ``(x_ve, s)`` at ``t`` to noise ``s1`` at ``t1``; the natural state."""
        model = self.model
        d = (x_ve - model.data(model.from_ve(x_ve, t), t)) / s
        x_euler = x_ve + (s1 - s) * d
        d1 = (x_euler - model.data(model.from_ve(x_euler, t1), t1)) / s1
        return model.from_ve(x_ve + 0.5 * (s1 - s) * (d + d1), t1)

    def step(self, x, t, t_next, i, n):
        model = self.model
        return self.heun(model.to_ve(x, t), model.sigma_ve(t), t, model.sigma_ve(t_next), t_next)


class EDMStochastic(EDMHeun):
    name = "edm_stochastic"
    description = "EDM's stochastic sampler: churn then Heun in sigma (Karras et al. 2022, Algorithm 2)"
    kind = "sde"
    order = None
    defaults = {"s_churn": 40.0, "s_min": 0.0, "s_max": math.inf, "s_noise": 1.0}

    def setup(self, s_churn, s_min, s_max, s_noise):
        self.s_churn = check_number("s_churn", s_churn, 0.0)
        self.s_min = check_number("s_min", s_min, 0.0)
        self.s_max = check_number("s_max", s_max, self.s_min)
        self.s_noise = check_number("s_noise", s_noise, 0.0, 10.0)

    def step(self, x, t, t_next, i, n):
        model = self.model
        s, s1 = model.sigma_ve(t), model.sigma_ve(t_next)
        inside = (s.value >= self.s_min) & (s.value <= self.s_max)
        gamma = Coef(inside.double()) * min(self.s_churn / n, math.sqrt(2) - 1)
        s_top = model.sigma_ve(torch.full_like(t, model.sde.T))
        s_hat = Coef(torch.minimum((s * (1 + gamma)).value, s_top.value))
        t_hat = torch.where(s_hat.value > s.value, model.t_of_sigma_ve(s_hat).clamp(max=model.sde.T), t)
        z = self.fresh_normal(t, t_next, x)
        x_ve = model.to_ve(x, t) + (s_hat * s_hat - s * s).clamp_min(0).sqrt() * self.s_noise * z
        return self.heun(x_ve, s_hat, t_hat, s1, t_next)
