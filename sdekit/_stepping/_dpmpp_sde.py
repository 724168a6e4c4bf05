r"""SDE-DPM-Solver++ (Lu et al. 2022b, sec. 5; k-diffusion's ``sample_dpmpp_2m_sde`` and ``sample_dpmpp_sde``).

Exponential integrators of the reverse SDE in the VE frame, with :math:`\lambda = -\log\tilde\sigma`,
:math:`h = \lambda' - \lambda` and noise fraction :math:`\eta` (1: the reverse SDE, 0: the probability flow):

- ``dpmpp_2m_sde``: :math:`\tilde x' = \tfrac{\tilde\sigma'}{\tilde\sigma}e^{-\eta h}\tilde x
  + (1 - e^{-(1+\eta)h})\hat x_0 + \text{(second-order correction from the previous } \hat x_0)
  + \tilde\sigma'\sqrt{1 - e^{-2\eta h}}\,z`; one evaluation a step, ``solver_type`` midpoint or heun.
- ``dpmpp_sde``: the single-step second-order form with an ancestral half step at :math:`\lambda + h/2`;
  two evaluations a step.

The normals are increments of the keyed Brownian path over the step (and the half step), normalised,
so the two draws of ``dpmpp_sde`` are correlated as the path makes them.
"""

import torch

from ._model import Coef
from ._stepper import Stepper, check_choice, check_number


def ancestral_split(s, s1, eta):
    r"""k-diffusion's ancestral step from noise ``s`` to ``s1``: :math:`(\sigma_{down}, \sigma_{up})` per sample."""
    up = torch.minimum(s1.value, eta * torch.sqrt((s1 * s1 * (s * s - s1 * s1) / (s * s)).value.clamp_min(0)))
    return Coef(torch.sqrt((s1.value * s1.value - up * up).clamp_min(0))), Coef(up)


class DPMSolverPP2MSDE(Stepper):
    name = "dpmpp_2m_sde"
    description = "SDE-DPM-Solver++(2M), multistep (Lu et al. 2022b; k-diffusion's sample_dpmpp_2m_sde)"
    kind = "sde"
    order = None
    frame = "logsnr"
    needs = "x0"
    history = 1
    schedule = "karras"
    defaults = {"eta": 1.0, "s_noise": 1.0, "solver_type": "midpoint"}

    def setup(self, eta, s_noise, solver_type):
        self.eta = check_number("eta", eta, 0.0, 1.0)
        self.s_noise = check_number("s_noise", s_noise, 0.0, 10.0)
        self.solver_type = check_choice("solver_type", solver_type, ("midpoint", "heun"))
        self.last = None   # (h, data prediction) of the previous step

    def step(self, x, t, t_next, i, n):
        model = self.model
        s, s1 = model.sigma_ve(t), model.sigma_ve(t_next)
        h = s.log() - s1.log()
        eta_h = self.eta * h
        m0 = model.data(x, t)
        c = -(-h - eta_h).expm1()
        out = s1 / s * (-eta_h).exp() * model.to_ve(x, t) + c * m0
        if self.last is not None:
            h_last, m1 = self.last
            r = h_last / h
            if self.solver_type == "midpoint":
                out = out + 0.5 * c / r * (m0 - m1)
            else:
                out = out + (c / (-h - eta_h) + 1) / r * (m0 - m1)
        if self.eta > 0:
            z = self.brownian_normal(t, t_next, x)
            out = out + s1 * (-(-2 * eta_h).expm1()).sqrt() * self.s_noise * z
        self.last = (h, m0)
        return model.from_ve(out, t_next)


class DPMSolverPPSDE(Stepper):
    name = "dpmpp_sde"
    description = "SDE-DPM-Solver++(2S), single-step with ancestral half step (k-diffusion's sample_dpmpp_sde)"
    kind = "sde"
    order = None
    frame = "logsnr"
    needs = "x0"
    schedule = "karras"
    defaults = {"eta": 1.0, "s_noise": 1.0, "r": 0.5}

    def setup(self, eta, s_noise, r):
        self.eta = check_number("eta", eta, 0.0, 1.0)
        self.s_noise = check_number("s_noise", s_noise, 0.0, 10.0)
        self.r = check_number("r", r, 1e-3, 1.0 - 1e-3)

    def step(self, x, t, t_next, i, n):
        model = self.model
        s, s1 = model.sigma_ve(t), model.sigma_ve(t_next)
        lam, lam1 = -s.log(), -s1.log()
        t_mid = model.t_of_log_snr(lam + self.r * (lam1 - lam))
        s_mid = model.sigma_ve(t_mid)
        x_ve = model.to_ve(x, t)
        m0 = model.data(x, t)
        down, up = ancestral_split(s, s_mid, self.eta)
        x_mid = down / s * x_ve + (1 - down / s) * m0 + up * self.s_noise * self.brownian_normal(t, t_mid, x)
        m_mid = model.data(model.from_ve(x_mid, t_mid), t_mid)
        w = 1 / (2 * self.r)
        down, up = ancestral_split(s, s1, self.eta)
        out = down / s * x_ve + (1 - down / s) * ((1 - w) * m0 + w * m_mid)
        out = out + up * self.s_noise * self.brownian_normal(t, t_next, x)
        return model.from_ve(out, t_next)
