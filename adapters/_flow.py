r"""The straight-line interpolation of flow matching and rectified flow as a :class:`sdekit.LinearSDE`.

:math:`x_t = (1 - t)x_0 + t\varepsilon` (Liu et al. 2022; Lipman et al. 2022; Stable Diffusion 3's
flow-matching schedule): :math:`\alpha = 1 - t`, :math:`\sigma = t`, so :math:`f = -1/(1 - t)` and
:math:`g^2 = d\sigma^2/dt - 2f\sigma^2 = 2t/(1 - t)`; :math:`\lambda = \log((1 - t)/t)` and
:math:`t(\lambda) = 1/(1 + e^{\lambda})`.  A velocity network :math:`u \approx \varepsilon - x_0` is
``Adapter(net, RectifiedFlowSDE(), "flow")``.
"""

import torch

from sdekit import InvalidParameterError, LinearSDE

__all__ = ["RectifiedFlowSDE"]


class RectifiedFlowSDE(LinearSDE):
    r"""The linear interpolation :math:`x_t = (1 - t)x_0 + t\varepsilon` on :math:`[0, T]`, ``T < 1``.

    At :math:`t = 1` the data is gone (:math:`\alpha = 0`, :math:`\lambda = -\infty`), where no sampler can
    start; ``T`` (default 0.999) stops short of it, and the prior is :math:`N(0, T^2 I)`, which neglects
    :math:`(1 - T)x_0`.
    """

    def __init__(self, T: float = 0.999, eps: float = 1e-3):
        super().__init__(T=T, eps=eps)
        if not self.T < 1:
            raise InvalidParameterError(f"T must be below 1, where alpha = 1 - t vanishes; got {self.T}")
        self.prior_std = self.T

    def drift_coef(self, t):
        return -1 / (1 - t)

    def diffusion_coef(self, t):
        return torch.sqrt(2 * t / (1 - t))

    def log_alpha(self, t):
        return torch.log1p(-t)

    def sigma(self, t):
        return t

    def t_of_log_snr(self, lam):
        r""":math:`t = 1/(1 + e^{\lambda})`, in float64; the result has ``lam``'s shape, dtype and device."""
        like = lam if isinstance(lam, torch.Tensor) and lam.is_floating_point() else None
        t = torch.sigmoid(-torch.as_tensor(lam, dtype=torch.float64))
        return t if like is None else t.to(dtype=like.dtype, device=like.device)

    def __repr__(self):
        return f"RectifiedFlowSDE(T={self.T}, eps={self.eps})"
