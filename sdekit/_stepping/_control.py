r"""Error norms, the step-size controller and the first step: the one controller module of every adaptive loop
sdekit runs (its per-sample loop, and torchsde's methods stepped with one step for the batch).

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

A step is accepted when :math:`E \le 1`.  A batch that shares one step (:func:`shared_ratio`) takes the RMS of the
samples' ratios over the samples still finite.

**Controller.** One core for every controller: the next step is

.. math:: h' = h\,\min\!\big(f_{max},\ \max(f_{min},\ \theta\,E_n^{-\beta_1} E_{n-1}^{\beta_2})\big),

with :math:`f_{max} = 1` after a rejection.

- :func:`pi_controller` (Gustafsson 1991; Hairer & Wanner, IV.2): :math:`\beta_1 = 0.7/k`,
  :math:`\beta_2 = 0.4/k`, :math:`k` one more than the order of the error estimate, :math:`\theta = 0.9`,
  :math:`f_{min} = 0.2`, :math:`f_{max} = 10`; :math:`\beta_2 = 0` is the I controller of torchdiffeq.
- :func:`jm_controller` (Jolicoeur-Martineau et al. 2021): :math:`h' = \theta h E^{-r}`, :math:`\theta = 0.9`,
  :math:`r = 0.9` for the reverse SDE (DPM-Solver's ``dpm_adaptive`` uses :math:`r = 1/\text{order}`), no lower
  clamp, and growth at most :data:`GROWTH_LIMIT` a step: without it one accepted step of a smooth stretch
  grows by orders of magnitude and the next covers the rest of the span (measured: ``dpm_adaptive`` at its
  default tolerances on a 3072-D Gaussian in the VE frame took 6 evaluations for an RMS error of 0.745).

**First step.** :func:`initial_step` is Hairer, Nørsett & Wanner's (1993, II.4) starting step, per sample.
"""

import math
from dataclasses import dataclass

import torch

from .._errors import InvalidParameterError
from .._evaluator import finite_rows
from ._model import Coef

#: :math:`1 + \pi/2`: the most a step may grow by at once under Söderlind's arctangent limiter
#: :math:`1 + \arctan(f - 1)` (Söderlind & Wang 2006; k-diffusion's ``dpm_adaptive``), used as a plain bound
GROWTH_LIMIT = 1 + math.pi / 2
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


def shared_ratio(err: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """One error ratio for a batch that shares its step: the RMS of the ratios ``err`` of the samples ``ok`` (the
    others went non-finite and would stop the batch), expanded to ``(batch,)``; NaN when no sample is ok."""
    return torch.sqrt(torch.where(ok, err, 0.0).pow(2).sum() / ok.sum()).expand_as(err)


def batch_ratio(y1: torch.Tensor, y2: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """One error ratio for a batch that shares its step (torchsde's methods): the scaled RMS over every entry of two
    estimates of shape ``(batch, ...)``, Hairer's scale, as a 0-dim tensor (no host sync).

    A sample whose estimates are not finite (the evaluator records it and the solve reports it) is left out, so that
    it does not stop the others; with every sample non-finite the ratio is NaN.
    """
    r2 = ((y1 - y2) / hairer_scale(atol, rtol, y1, y2)).pow(2)
    whole = r2.mean()
    if r2.dim() == 0:
        return whole.sqrt()
    ok = finite_rows(y1) & finite_rows(y2)
    rows = r2.reshape(r2.shape[0], -1).mean(1)
    part = torch.where(ok, rows, 0.0).sum() / ok.sum()   # 0 / 0 = NaN when no sample is finite
    return torch.where(ok.all(), whole, part).sqrt()


def initial_step(f, x: torch.Tensor, t: torch.Tensor, t_end: float, f0: torch.Tensor, rtol: float, atol: float,
                 order: float) -> torch.Tensor:
    r"""Hairer, Nørsett & Wanner's (1993, II.4) first step, per sample (one evaluation of ``f``).

    With :math:`\delta = a + r|x_0|`, :math:`d_0 = \lVert x_0/\delta\rVert`, :math:`d_1 = \lVert f_0/\delta\rVert`:
    a trial :math:`h_0 = 0.01\,d_0/d_1`, an explicit Euler step to measure the second derivative
    :math:`d_2 = \lVert (f(t + h_0, x_0 + h_0 f_0) - f_0)/\delta\rVert / h_0`, and
    :math:`h = \min(100 h_0, (0.01/\max(d_1, d_2))^{1/(p+1)})` for a method of order :math:`p`; never past
    ``t_end`` (the trial point included, where torchdiffeq's can leave the interval).  ``f(t, x)`` is the
    right-hand side at per-sample times; the result is float64 ``(batch,)``, positive.
    """
    scale = atol + rtol * x.abs()
    d0, d1 = rms(x / scale), rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    span = (t_end - t).abs()
    h0 = torch.minimum(h0, span)
    direction = torch.sign(t_end - t)
    f1 = f(t + direction * h0, x + Coef(direction * h0) * f0)
    d2 = rms((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, (h0 * 1e-3).clamp_min(1e-6), (0.01 / dmax.clamp_min(1e-300)) ** (1.0 / (order + 1)))
    return torch.minimum(torch.minimum(100 * h0, h1), span)


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


def jm_controller(theta: float = 0.9, r: float = 0.9, fac_max: float = GROWTH_LIMIT) -> Controller:
    r"""Jolicoeur-Martineau et al. (2021)'s :math:`h' = \theta h E^{-r}`, growing at most ``fac_max`` a step."""
    return Controller(float(theta), float(r), 0.0, 0.0, float(fac_max))


def i_controller(order: float, fac_min: float = 0.2, fac_max: float = 5.0) -> Controller:
    r"""The I controller :math:`h' = 0.9\,h\,E^{-1/(p+1)}` of a method of order :math:`p`, within
    ``[fac_min, fac_max]`` (torchsde's adaptive stepping)."""
    return Controller(0.9, 1.0 / (order + 1.0), 0.0, float(fac_min), float(fac_max))
