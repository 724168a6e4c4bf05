r"""Per-sample error norms and step-size control for the adaptive loop (:mod:`sdekit._stepping._adaptive`).

Every quantity is a tensor of shape ``(batch,)`` on the state's device; nothing here reads the host.

**Error norm.** A step gives two estimates :math:`y, \hat y` of the same state; its error ratio is the
scaled RMS over the entries of one sample,

.. math:: E = \sqrt{\tfrac1n \textstyle\sum_k \big((y_k - \hat y_k)/\delta_k\big)^2},

with one of two tolerance scales:

- ``"hairer"`` (Hairer, Nørsett & Wanner, II.4; torchdiffeq, scipy): :math:`\delta = a + r\max(|x|, |x'|)`,
  the states at the two ends of the step;
- ``"mixed"`` (Jolicoeur-Martineau et al. 2021, "Gotta Go Fast", Algorithm 1; DPM-Solver's ``dpm_adaptive``):
  :math:`\delta = \max(a,\ r\max(|x'|, |x'_{prev}|))`, with :math:`x'` the low-order estimate of this step
  and :math:`x'_{prev}` that of the last accepted step.

A step is accepted when :math:`E \le 1`.

**Controller.** One core for both controllers: the next step is

.. math:: h' = h\,\min\!\big(f_{max},\ \max(f_{min},\ \theta\,E_n^{-\beta_1} E_{n-1}^{\beta_2})\big),

with :math:`f_{max} = 1` after a rejection.

- :func:`pi_controller` (Gustafsson 1991; Hairer & Wanner, IV.2): :math:`\beta_1 = 0.7/k`,
  :math:`\beta_2 = 0.4/k`, :math:`k` one more than the order of the error estimate, :math:`\theta = 0.9`,
  :math:`f_{min} = 0.2`, :math:`f_{max} = 10`; :math:`\beta_2 = 0` is the I controller of torchdiffeq.
- :func:`jm_controller` (Jolicoeur-Martineau et al. 2021): :math:`h' = \theta h E^{-r}`, :math:`\theta = 0.9`,
  :math:`r = 0.9` for the reverse SDE (DPM-Solver's ``dpm_adaptive`` uses :math:`r = 1/\text{order}`), and no
  clamps: :math:`\beta_2 = 0`, :math:`f_{min} = 0`, :math:`f_{max} = \infty`.
"""

import math
from dataclasses import dataclass

import torch

from .._errors import InvalidParameterError

_TINY = 1e-10   # an error ratio of 0 (an exact step) counts as this: the step grows by the controller's largest factor


def rms(v: torch.Tensor) -> torch.Tensor:
    """The RMS of each sample's entries, float64 ``(batch,)`` (a half state is squared in float32)."""
    flat = v.reshape(v.shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return flat.pow(2).mean(1).to(torch.float64).sqrt()


def hairer_scale(atol: float, rtol: float, x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
    r""":math:`a + r\max(|x|, |x'|)`, entrywise."""
    return atol + rtol * torch.maximum(x.abs(), x_new.abs())


def mixed_scale(atol: float, rtol: float, low: torch.Tensor, low_prev: torch.Tensor) -> torch.Tensor:
    r""":math:`\max(a, r\max(|x'|, |x'_{prev}|))`, entrywise (Jolicoeur-Martineau et al. 2021)."""
    return (rtol * torch.maximum(low.abs(), low_prev.abs())).clamp_min(atol)


def error_ratio(diff: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-sample scaled RMS of ``diff / scale``; a non-finite ratio becomes ``inf`` (the step is rejected)."""
    err = rms(diff / scale)
    return torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))


@dataclass(frozen=True)
class Controller:
    r"""The step-size controller :math:`h' = h\min(f_{max}, \max(f_{min}, \theta E_n^{-\beta_1}E_{n-1}^{\beta_2}))`.

    ``propose(h, err, prev, accepted)`` takes per-sample step sizes ``h`` (positive, in the stepper's
    clock), error ratios ``err`` and the previous accepted ratios ``prev``; it returns the next step sizes.
    """

    theta: float
    beta1: float
    beta2: float
    fac_min: float
    fac_max: float

    def __post_init__(self):
        for name in ("theta", "beta1", "fac_max"):
            if not getattr(self, name) > 0:
                raise InvalidParameterError(f"controller option {name} must be positive, got {getattr(self, name)}")
        if not (0 <= self.beta2 < self.beta1 or self.beta2 == 0):
            raise InvalidParameterError(f"controller option beta2 must lie in [0, beta1={self.beta1}), "
                                        f"got {self.beta2}")
        if not 0 <= self.fac_min < 1 <= self.fac_max:
            raise InvalidParameterError(f"controller factors need 0 <= fac_min < 1 <= fac_max, got "
                                        f"{self.fac_min}, {self.fac_max}")

    def propose(self, h: torch.Tensor, err: torch.Tensor, prev: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        # exp(b log e), not e.pow(b): torch's CPU pow rounds differently in its vectorised body and its scalar
        # tail, so a sample's step would depend on its place in the batch; exp and log do not
        e = err.clamp_min(_TINY)
        factor = self.theta * torch.exp(-self.beta1 * torch.log(e))
        if self.beta2:
            factor = factor * torch.exp(self.beta2 * torch.log(prev.clamp_min(_TINY)))
        top = torch.where(accepted, torch.full_like(h, self.fac_max), torch.ones_like(h))
        factor = torch.minimum(top, factor.clamp_min(self.fac_min))
        factor = torch.where(torch.isfinite(err), factor, torch.full_like(h, max(self.fac_min, 0.1)))
        return h * factor


def pi_controller(error_order: float, safety: float = 0.9, beta1=None, beta2=None, fac_min: float = 0.2,
                  fac_max: float = 10.0) -> Controller:
    """The PI controller for an error estimate of order ``error_order`` (``k = error_order + 1``)."""
    k = error_order + 1.0
    return Controller(float(safety), 0.7 / k if beta1 is None else float(beta1),
                      0.4 / k if beta2 is None else float(beta2), float(fac_min), float(fac_max))


def jm_controller(theta: float = 0.9, r: float = 0.9, fac_max: float = math.inf) -> Controller:
    r"""Jolicoeur-Martineau et al. (2021)'s :math:`h' = \theta h E^{-r}` (no clamps unless ``fac_max`` is given)."""
    return Controller(float(theta), float(r), 0.0, 0.0, float(fac_max))
