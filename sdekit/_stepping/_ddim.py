r"""DDIM (Song et al. 2021a, "Denoising diffusion implicit models"), any LinearSDE, with eta; = DPM-Solver-1.

With :math:`h = \lambda(t') - \lambda(t)` and the data prediction :math:`\hat x_0` at :math:`(x, t)`:

.. math::

    x' = \alpha'\hat x_0 + \sqrt{\sigma'^2 - c^2}\,\hat\varepsilon + c\,z,\qquad
    c = \eta\,\sigma'\sqrt{1 - e^{-2h}},\qquad \hat\varepsilon = (x - \alpha\hat x_0)/\sigma .

:math:`\eta = 0` is the exact solution of the probability flow with :math:`\hat x_0` frozen over the step,
:math:`x' = (\sigma'/\sigma)x - \alpha'(e^{-h} - 1)\hat x_0` (Lu et al. 2022, DPM-Solver-1); :math:`\eta = 1`
is the posterior :math:`q(x_{t'} \mid x_t, \hat x_0)`, DDPM's ancestral step with variance
:math:`\tilde\beta` for VP, and k-diffusion's ``euler_ancestral`` in the VE frame.  The normal ``z`` is
fresh at each step, one keyed draw (:meth:`sdekit.KeyedBrownian.step_normal`), as k-diffusion's ``randn``.
"""

from .._errors import InvalidParameterError
from ._stepper import Stepper, check_number


class DDIM(Stepper):
    name = "ddim"
    description = "DDIM / DPM-Solver-1 with eta (Song et al. 2021a; Lu et al. 2022); eta=1 is DDPM's ancestral step"
    kind = "sde"
    deterministic_on_ode = True
    order = 1.0
    weak_order = 1.0
    frame = "logsnr"
    needs = "x0"
    schedule = "uniform"
    defaults = {"eta": None, "s_noise": 1.0}

    def setup(self, eta, s_noise):
        on_ode = self.brownian is None
        if eta is None:
            eta = 0.0 if on_ode else 1.0
        self.eta = check_number("eta", eta, 0.0, 1.0)
        self.s_noise = check_number("s_noise", s_noise, 0.0, 10.0)
        if on_ode and self.eta > 0:
            raise InvalidParameterError(f"{self.name} with eta={eta} adds noise: integrate sdekit.reverse(...) "
                                        "with it, or use eta=0 on the probability flow")

    def step(self, x, t, t_next, i, n):
        alpha, sigma, lam, alpha1, sigma1, lam1 = self.model.ends(t, t_next)
        h = lam1 - lam
        x0 = self.model.data(x, t)
        if self.eta == 0:
            return sigma1 / sigma * x - alpha1 * (-h).expm1() * x0
        c = self.eta * sigma1 * (-(-2 * h).expm1()).sqrt()
        eps = (x - alpha * x0) / sigma
        z = self.fresh_normal(t, t_next, x)
        return alpha1 * x0 + (sigma1 * sigma1 - c * c).clamp_min(0).sqrt() * eps + c * self.s_noise * z


class EulerAncestral(DDIM):
    name = "euler_ancestral"
    description = "Euler ancestral in sigma (k-diffusion); the DDIM eta step in the VE frame, eta=1 by default"
    kind = "sde"
    deterministic_on_ode = False
    frame = "sigma"
    schedule = "karras"
    defaults = {"eta": 1.0, "s_noise": 1.0}
