r"""The Gaussian transition moments of a linear SDE, in closed form or from their ODEs.

For :math:`dx = f(t)\,x\,dt + g(t)\,dw` the law of :math:`x_t \mid x_0` is :math:`N(\alpha(t) x_0, \sigma(t)^2 I)`
where (the Fokker–Planck equation restricted to Gaussians)

.. math::

    \frac{d}{dt}\log\alpha = f(t), \qquad \frac{d}{dt}\sigma^2 = 2 f(t)\,\sigma^2 + g(t)^2,
    \qquad \alpha(0) = 1,\ \sigma(0) = 0.

:class:`LinearMoments` uses an SDE's closed forms when it has them and integrates these ODEs
otherwise; :func:`moment_residual` measures how far an SDE's closed forms are from them.
"""

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.integrate import solve_ivp

from sdekit import InvalidParameterError, LinearSDE

__all__ = ["LinearMoments", "MomentResidual", "moment_residual", "has_closed_form"]

_METHODS = ("auto", "closed_form", "ode")


def _check_linear(sde):
    if not isinstance(sde, LinearSDE):
        raise InvalidParameterError(
            f"expected an sdekit.LinearSDE (dx = f(t) x dt + g(t) dw), got {type(sde).__name__}; "
            "subclass LinearSDE with drift_coef(t) and diffusion_coef(t)"
        )


def has_closed_form(sde) -> bool:
    """Whether ``sde`` defines both ``log_alpha(t)`` and ``sigma(t)`` (neither raises ``NotImplementedError``)."""
    t = torch.full((1,), 0.5 * sde.T, dtype=torch.float64)
    try:
        sde.log_alpha(t)
        sde.sigma(t)
    except NotImplementedError:
        return False
    return True


class _ODEMoments(torch.autograd.Function):
    """Evaluate the dense ODE solution at ``t``; the derivative in ``t`` is the ODE's right-hand side."""

    @staticmethod
    def forward(ctx, t, moments):
        log_alpha, variance = moments._dense(t)
        ctx.moments = moments
        ctx.save_for_backward(t, variance)
        return log_alpha, variance

    @staticmethod
    def backward(ctx, grad_log_alpha, grad_variance):
        t, variance = ctx.saved_tensors
        f, g = ctx.moments._coefficients(t)
        return grad_log_alpha * f + grad_variance * (2 * f * variance + g * g), None


class LinearMoments:
    r"""Mean coefficient :math:`\alpha(t)` and std :math:`\sigma(t)` of any :class:`sdekit.LinearSDE`.

    With closed forms (``sde.log_alpha`` and ``sde.sigma`` defined) they are used as they are.
    Otherwise the moment ODEs :math:`(\log\alpha)' = f`, :math:`(\sigma^2)' = 2f\sigma^2 + g^2`,
    :math:`\log\alpha(0) = 0`, :math:`\sigma(0) =` ``sde.initial_sigma`` (0 unless the SDE declares its
    data blurred at :math:`t = 0`, as :class:`sdekit.VESDE`'s reference marginal does) are integrated once on :math:`[0, T]` in float64 by
    scipy's DOP853 (``rtol=1e-12``, ``atol=1e-14``) and read from its dense output; their derivative in
    ``t`` (autograd) is the ODE's right-hand side.

    **Arguments**

    - ``sde``: an :class:`sdekit.LinearSDE`.
    - ``method``: ``"auto"`` (closed forms when the SDE has them), ``"closed_form"`` or ``"ode"`` (integrate
      even when closed forms exist: a check of those closed forms).
    - ``rtol``, ``atol``: tolerances of the ODE solve.

    Every function takes a tensor ``t`` of any shape and returns a tensor of its shape, dtype and device;
    a python number gives a 0-dim float64 tensor.
    """

    def __init__(self, sde, method: str = "auto", rtol: float = 1e-12, atol: float = 1e-14):
        _check_linear(sde)
        if method not in _METHODS:
            raise InvalidParameterError(f"method must be one of {_METHODS}, got {method!r}")
        self.sde = sde
        closed = has_closed_form(sde)
        if method == "closed_form" and not closed:
            raise InvalidParameterError(
                f"{type(sde).__name__} has no closed-form log_alpha/sigma; use method='ode' or 'auto'"
            )
        self.closed_form = closed if method == "auto" else method == "closed_form"
        self.rtol, self.atol = float(rtol), float(atol)
        self._solution = None if self.closed_form else self._integrate()

    # -- the ODE route ----------------------------------------------------------------------
    def _coefficients(self, t: torch.Tensor):
        t = t.detach()
        f = torch.as_tensor(self.sde.drift_coef(t), dtype=t.dtype, device=t.device)
        g = torch.as_tensor(self.sde.diffusion_coef(t), dtype=t.dtype, device=t.device)
        return f.expand(t.shape), g.expand(t.shape)

    def _integrate(self):
        sde = self.sde

        def rhs(s, y):
            f, g = self._coefficients(torch.tensor([s], dtype=torch.float64))
            f, g = float(f[0]), float(g[0])
            return [f, 2.0 * f * y[1] + g * g]

        f0, g0 = rhs(0.0, [0.0, 0.0])
        if not (math.isfinite(f0) and math.isfinite(g0)):
            raise InvalidParameterError(
                f"{type(sde).__name__}: drift_coef/diffusion_coef are not finite at t = 0; "
                "the moment ODEs start there, so define them on the closed interval [0, T]"
            )
        v0 = float(getattr(sde, "initial_sigma", 0.0)) ** 2   # data already blurred at t = 0 (VE reference)
        sol = solve_ivp(rhs, (0.0, sde.T), [0.0, v0], method="DOP853", rtol=self.rtol, atol=self.atol,
                        dense_output=True)
        if not sol.success:
            raise InvalidParameterError(
                f"the moment ODEs of {type(sde).__name__} failed on [0, {sde.T}] ({sol.message}); "
                "check that drift_coef and diffusion_coef are finite and smooth there"
            )
        return sol

    def _dense(self, t: torch.Tensor):
        tn = t.detach().cpu().to(torch.float64).reshape(-1).numpy()
        slack = 1e-12 * self.sde.T
        if tn.size and (tn.min() < -slack or tn.max() > self.sde.T + slack):
            raise InvalidParameterError(
                f"times must lie in [0, T = {self.sde.T}], got [{tn.min():.6g}, {tn.max():.6g}]"
            )
        y = self._solution.sol(np.clip(tn, 0.0, self.sde.T)).reshape(2, -1)
        y[1] = np.maximum(y[1], 0.0)
        out = torch.from_numpy(np.ascontiguousarray(y)).to(dtype=t.dtype, device=t.device)
        return out[0].reshape(t.shape), out[1].reshape(t.shape)

    # -- public ---------------------------------------------------------------------------
    @staticmethod
    def _as_time(t) -> torch.Tensor:
        return t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)

    def log_alpha(self, t) -> torch.Tensor:
        r""":math:`\log\alpha(t) = \int_0^t f`."""
        t = self._as_time(t)
        if self.closed_form:
            return torch.as_tensor(self.sde.log_alpha(t), dtype=t.dtype, device=t.device).expand(t.shape)
        return _ODEMoments.apply(t, self)[0]

    def variance(self, t) -> torch.Tensor:
        r""":math:`\sigma(t)^2 = \alpha(t)^2 \int_0^t g^2 / \alpha^2`."""
        t = self._as_time(t)
        if self.closed_form:
            return self.sigma(t) ** 2
        return _ODEMoments.apply(t, self)[1]

    def sigma(self, t) -> torch.Tensor:
        r""":math:`\sigma(t)`, the standard deviation of :math:`x_t \mid x_0`."""
        t = self._as_time(t)
        if self.closed_form:
            return torch.as_tensor(self.sde.sigma(t), dtype=t.dtype, device=t.device).expand(t.shape)
        return self.variance(t).sqrt()

    def alpha(self, t) -> torch.Tensor:
        r""":math:`\alpha(t) = \exp\log\alpha(t)`, the mean coefficient of :math:`x_t \mid x_0`."""
        return torch.exp(self.log_alpha(t))

    def __repr__(self):
        how = "closed form" if self.closed_form else "moment ODEs"
        return f"LinearMoments({self.sde!r}, {how})"


@dataclass(frozen=True)
class MomentResidual:
    r"""How far closed-form moments are from the moment ODEs, on a grid of times.

    - ``t``: the times (float64).
    - ``log_alpha``: :math:`|(\log\alpha)' - f| / \text{scale}` at each time.
    - ``variance``: :math:`|(\sigma^2)' - (2f\sigma^2 + g^2)| / \text{scale}` at each time.
    - ``initial_log_alpha``: :math:`|\log\alpha(0)|`.
    - ``initial_sigma``: :math:`|\sigma(0) - \sigma_0| / \sigma(T)` with :math:`\sigma_0` the SDE's declared
      ``initial_sigma`` (a subclass that switches to the reference VE convention
      :math:`\sigma = \sigma_{min}(\sigma_{max}/\sigma_{min})^t` without declaring it fails here, not in the ODE).

    Each scale is :math:`\max(|\text{lhs}|, |\text{rhs}|)` plus ``1e-12`` of its largest value on the grid,
    so the residuals are relative errors.  ``derivative`` says how :math:`d/dt` was taken: ``"autograd"``,
    ``"finite_difference"`` or ``"mixed"`` (autograd where the closed form is visible to it).
    """

    t: torch.Tensor
    log_alpha: torch.Tensor
    variance: torch.Tensor
    initial_log_alpha: float
    initial_sigma: float
    derivative: str

    @property
    def max(self) -> float:
        """The largest of all the residuals."""
        return max(float(self.log_alpha.max()), float(self.variance.max()),
                   self.initial_log_alpha, self.initial_sigma)

    def ok(self, tol: float = 1e-6) -> bool:
        """Whether every residual is at most ``tol``."""
        return self.max <= tol


def _relative(lhs, rhs):
    scale = torch.maximum(lhs.abs(), rhs.abs())
    floor = 1e-12 * float(scale.max()) + 1e-300
    return (lhs - rhs).abs() / (scale + floor)


def _derivative(fn, t, how):
    """``(d fn / dt, how it was taken)``; autograd falls back to central differences for an output
    that autograd cannot see (computed outside torch, or constant in ``t``)."""
    if how == "autograd":
        tr = t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            y = fn(tr)
            if isinstance(y, torch.Tensor) and y.requires_grad:
                (d,) = torch.autograd.grad(y.sum(), tr, allow_unused=True)
                return (torch.zeros_like(t) if d is None else d), "autograd"
    h = 1e-6 * t.abs().clamp_min(1e-3)
    return (fn(t + h) - fn(t - h)) / (2 * h), "finite_difference"


def moment_residual(sde, t: Optional[torch.Tensor] = None, derivative: str = "auto") -> MomentResidual:
    r"""Check an SDE's closed-form :math:`\log\alpha(t)`, :math:`\sigma(t)` against its moment ODEs.

    The closed forms are right iff :math:`(\log\alpha)' = f`, :math:`(\sigma^2)' = 2f\sigma^2 + g^2`,
    :math:`\log\alpha(0) = 0` and :math:`\sigma(0) = 0`.  Derivatives are taken in float64 by autograd,
    falling back to central differences (relative step ``1e-6``) for a closed form that autograd cannot
    see (``derivative="auto"``), or by central differences only (``"finite_difference"``).

    **Arguments**

    - ``sde``: an :class:`sdekit.LinearSDE` with closed forms.
    - ``t``: times in :math:`(0, T]`; default 101 points log-spaced over ``[eps, T]``.
    - ``derivative``: ``"auto"`` or ``"finite_difference"``.
    """
    _check_linear(sde)
    if not has_closed_form(sde):
        raise InvalidParameterError(
            f"{type(sde).__name__} has no closed-form log_alpha/sigma to check; "
            "LinearMoments integrates its moment ODEs instead"
        )
    if derivative not in ("auto", "finite_difference"):
        raise InvalidParameterError(f"derivative must be 'auto' or 'finite_difference', got {derivative!r}")
    if t is None:
        t = torch.logspace(math.log10(sde.eps), math.log10(sde.T), 101, dtype=torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64).detach().reshape(-1)
    if not ((t > 0).all() and (t <= sde.T).all()):
        raise InvalidParameterError(f"residual times must lie in (0, T = {sde.T}]")

    def variance(s):
        return sde.sigma(s) ** 2

    how = "finite_difference" if derivative == "finite_difference" else "autograd"
    d_log_alpha, how_log_alpha = _derivative(sde.log_alpha, t, how)
    d_variance, how_variance = _derivative(variance, t, how)
    how = how_log_alpha if how_log_alpha == how_variance else "mixed"
    f = torch.as_tensor(sde.drift_coef(t), dtype=torch.float64).expand(t.shape)
    g = torch.as_tensor(sde.diffusion_coef(t), dtype=torch.float64).expand(t.shape)
    var = variance(t)
    zero = torch.zeros(1, dtype=torch.float64)
    end = torch.full((1,), sde.T, dtype=torch.float64)
    sigma_T = float(sde.sigma(end)[0])
    return MomentResidual(
        t=t,
        log_alpha=_relative(d_log_alpha, f),
        variance=_relative(d_variance, 2 * f * var + g * g),
        initial_log_alpha=abs(float(sde.log_alpha(zero)[0])),
        initial_sigma=abs(float(sde.sigma(zero)[0]) - float(getattr(sde, "initial_sigma", 0.0)))
        / max(abs(sigma_T), 1e-300),
        derivative=how,
    )
