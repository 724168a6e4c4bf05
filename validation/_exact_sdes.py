r"""SDEs with exact strong solutions, for measuring strong orders of convergence.

Each class is an :class:`sdekit.SDE` (Itô, elementwise noise) with one more method,
:meth:`ExactSDE.exact`, the solution :math:`X_t` as a function of the initial state
:math:`X_0`, the time :math:`t` and the value :math:`W_t` of the driving Brownian motion, so
that one Brownian motion shared by solves with different step sizes gives a strong-error study
without a reference solve.

What a solution in terms of :math:`W_t` alone allows, honestly:

- **Diagonal noise** (:math:`g_i` depends on :math:`x_i`): the *reducible* SDEs of
  Kloeden & Platen (1992), §4.4, :math:`X_t = h(t, W_t)` with :math:`h` invertible in its second
  argument: :class:`GeometricBrownianMotion`, :class:`ArctanSDE`, :class:`SinhSDE`.  Each acts
  coordinatewise, so each coordinate has its own scalar noise; with one coordinate the noise is
  scalar, and with several it is diagonal (commutative), the case torchsde calls ``diagonal``.
- **Additive noise** (:math:`g = g(t)`): a solution that is a function of :math:`(t, W_t)` and has a
  diffusion independent of :math:`x` is affine in :math:`W_t`, :math:`X_t = A(t) + B(t) W_t + C(t) X_0`,
  so its drift is affine in :math:`x` with time-dependent coefficients.  The Ornstein–Uhlenbeck
  process :math:`dX = -\theta X\,dt + b\,dW` is *not* of this kind: its solution
  :math:`e^{-\theta t}X_0 + b\int_0^t e^{-\theta(t-s)}dW_s` needs the whole path (and with
  :math:`\theta = 0` it is Brownian motion, which every consistent method solves exactly, so it
  measures nothing).  :class:`AdditiveSDE` is the standard additive-noise test problem of
  Kloeden & Platen and Rößler (2010), whose drift is linear but time-dependent and which no
  consistent method solves exactly.

A solution in terms of :math:`W_t` alone has a price: it is the image of :math:`dY = dW` under a
change of variables, so its drift and diffusion *commute* and the iterated integral
:math:`\int\!\!\int dW\,ds` drops out of the Itô–Taylor expansion.  Methods that would need that
integral (the space-time Lévy area) are then not fully exercised, and trapezoidal methods can look
better than they are.  Two problems therefore break commutativity with a noise coefficient linear in
time: ``GeometricBrownianMotion(rho=...)`` and ``AdditiveSDE(gamma=...)``.  Their solutions need one
more functional of the path, :math:`U_t = \int_0^t W_s\,ds` (``needs_time_integral``), which
torchsde's Brownian motion returns exactly when built with a space-time Lévy area:
``bm = sdekit.brownian_motion(0, T, shape, levy_area="space-time")`` and
``W, U = bm(0.0, T, return_U=True)``.

All problems are Itô SDEs.  sdekit hands a Stratonovich method the converted drift
:math:`f - \tfrac12 g\,\partial_x g` automatically, so the same :meth:`exact` serves every method.

References: P. E. Kloeden, E. Platen, *Numerical Solution of Stochastic Differential Equations*,
Springer 1992, §4.4; A. Rößler, *Runge–Kutta methods for the strong approximation of solutions of
stochastic differential equations*, SIAM J. Numer. Anal. 48 (2010); C. Rackauckas, Q. Nie,
*Adaptive methods for stochastic differential equations via natural embeddings and rejection
sampling with memory*, Discrete Contin. Dyn. Syst. B 22 (2017).
"""

import math
from typing import Optional, Sequence, Union

import torch

from sdekit import SDE, InvalidParameterError

__all__ = ["ExactSDE", "GeometricBrownianMotion", "AdditiveSDE", "ArctanSDE", "SinhSDE", "exact_sdes"]

Coef = Union[float, Sequence[float], torch.Tensor]


def _coef(c: Coef) -> torch.Tensor:
    return torch.as_tensor(c, dtype=torch.float64).flatten()


def _times(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` (number, 0-dim or ``(batch,)``) viewed to broadcast against ``x`` of shape ``(batch, *event)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))


class ExactSDE(SDE):
    r"""An Itô SDE on :math:`[0, T]` whose strong solution is known given :math:`W_t`.

    Subclasses define :meth:`f`, :meth:`g` and :meth:`exact`, and set

    - ``noise``: ``"diagonal"`` (:math:`g` depends on :math:`x`, elementwise) or ``"additive"``
      (:math:`g` depends on :math:`t` only).  The strong order to expect from a method is its
      ``order`` for the first and its ``order_additive`` for the second.
    - ``dim``: the event size ``d`` the coefficients are written for (``None``: any shape).

    The state has shape ``(batch, d)``; :meth:`initial_state` gives a standard one.
    """

    noise = "diagonal"
    dim = None
    needs_time_integral = False

    def exact(self, x0: torch.Tensor, t, w_t: torch.Tensor, u_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""The solution :math:`X_t` given :math:`X_0 =` ``x0``, :math:`W_t =` ``w_t`` and, for the problems
        with ``needs_time_integral``, :math:`U_t = \int_0^t W_s\,ds =` ``u_t`` (each shaped like ``x0``)."""
        raise NotImplementedError

    def _need(self, u_t):
        if u_t is None:
            raise InvalidParameterError(f"{self!r} needs u_t = int_0^t W_s ds as well as W_t: build the Brownian motion "
                             "with levy_area='space-time' (or 'foster') and read bm(0, t, return_U=True)")
        return u_t

    def initial_state(self, batch: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """A deterministic initial state of shape ``(batch, d)``: ``x0`` repeated."""
        x0 = self.x0.to(dtype=dtype, device=device)
        return x0.expand(batch, x0.numel()).clone()

    def _c(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return c.to(dtype=x.dtype, device=x.device)


class GeometricBrownianMotion(ExactSDE):
    r"""Geometric Brownian motion, one per coordinate, with a volatility linear in time:

    .. math:: dX = \mu X\,dt + (\sigma + \rho t) X\,dW, \qquad
        X_t = X_0 \exp\Big(\mu t - \tfrac12\int_0^t (\sigma + \rho s)^2 ds
        + \sigma W_t + \rho\Big(t W_t - \int_0^t W_s\,ds\Big)\Big),

    with :math:`\int_0^t(\sigma+\rho s)^2 ds = \sigma^2 t + \sigma\rho t^2 + \rho^2 t^3/3`
    (:math:`\int_0^t s\,dW_s = tW_t - \int_0^t W_s ds` by parts).  Diagonal (multiplicative) noise;
    with ``d > 1`` and different :math:`\mu_i, \sigma_i` the coordinates differ in growth and noise.

    With ``rho = 0`` (the default) this is the classical GBM, Kloeden & Platen (1992), §4.4,
    whose solution needs :math:`W_t` only.  Its drift and diffusion then commute (it is the image of
    :math:`dY = dW` under a change of variables), so the double integral :math:`\int\int dW\,ds`
    drops out of every Itô–Taylor expansion.  ``rho != 0`` breaks that: the solution then also needs
    the time integral :math:`\int_0^t W_s ds` of the path (``needs_time_integral``), which torchsde's
    Brownian motion provides when built with ``levy_area="space-time"`` or ``"foster"``
    (``bm(0, t, return_U=True)``); it is the problem on which an order-1.5 scheme must actually
    use the space-time Lévy area.

    **Arguments**

    - ``mu``, ``sigma``, ``rho``: numbers or sequences of length ``d`` (broadcast to each other).
    - ``x0``: the standard initial state (default 1 in each coordinate).
    - ``T``: the end time.
    """

    noise = "diagonal"

    def __init__(self, mu: Coef = (0.5, 1.0, -0.5), sigma: Coef = (0.5, 1.0, 0.8), rho: Coef = 0.0,
                 x0: Coef = 1.0, T: float = 1.0):
        super().__init__(T=T, eps=1e-3 * T)
        mu, sigma, rho = torch.broadcast_tensors(_coef(mu), _coef(sigma), _coef(rho))
        self.mu, self.sigma, self.rho = mu.clone(), sigma.clone(), rho.clone()
        self.dim = self.mu.numel()
        self.x0 = _coef(x0).expand(self.dim).clone()
        self.needs_time_integral = bool((self.rho != 0).any())

    def f(self, t, x):
        return self._c(self.mu, x) * x

    def g(self, t, x):
        return (self._c(self.sigma, x) + self._c(self.rho, x) * _times(t, x)) * x

    def exact(self, x0, t, w_t, u_t=None):
        mu, sigma, rho = self._c(self.mu, x0), self._c(self.sigma, x0), self._c(self.rho, x0)
        tt = _times(t, x0)
        log = (mu - 0.5 * sigma ** 2) * tt - 0.5 * sigma * rho * tt ** 2 - rho ** 2 * tt ** 3 / 6 + sigma * w_t
        if self.needs_time_integral:
            log = log + rho * (tt * w_t - self._need(u_t))
        return x0 * torch.exp(log)

    def __repr__(self):
        return (f"GeometricBrownianMotion(mu={self.mu.tolist()}, sigma={self.sigma.tolist()}, "
                f"rho={self.rho.tolist()}, T={self.T})")


class AdditiveSDE(ExactSDE):
    r"""The additive-noise test problem of Kloeden & Platen and Rößler, one per coordinate, with an
    optional noise term linear in time:

    .. math:: dX = \Big(\frac{\beta}{\sqrt{1+t}} - \frac{X}{2(1+t)}\Big)dt
        + \frac{\alpha\beta + \gamma t}{\sqrt{1+t}}\,dW,
        \qquad X_t = \frac{X_0 + \beta\,(t + \alpha W_t) + \gamma\,(t W_t - \int_0^t W_s\,ds)}{\sqrt{1+t}}.

    (Check: :math:`Y = \sqrt{1+t}\,X` satisfies :math:`dY = \beta\,dt + (\alpha\beta + \gamma t)\,dW`,
    and :math:`\int_0^t s\,dW_s = tW_t - \int_0^t W_s ds`.)  The noise is additive and
    time-dependent and the drift depends on :math:`x`, so no consistent method is exact.

    With ``gamma = 0`` (the default) it is the problem of Rößler (2010) and DifferentialEquations.jl's
    ``prob_sde_additive`` (which use :math:`\alpha = 0.1`, :math:`\beta = 0.05`; the defaults here are
    larger so that errors stand well above rounding); its solution needs :math:`W_t` only.  Like every
    additive problem whose solution is a function of :math:`(t, W_t)`, its drift and diffusion then
    commute, :math:`L^1 f = L^0 g` (:math:`g\,\partial_x f = \partial_t g + f\partial_x g`), so the
    term :math:`(L^1 f - L^0 g)\int\int dW\,ds` of the Itô–Taylor expansion vanishes and the
    trapezoidal-type Stratonovich methods (heun, midpoint, log_ode, reversible_heun) reach strong
    order 2 on it, above their additive-noise order 1.  ``gamma != 0`` gives
    :math:`L^0 g - L^1 f = \gamma/\sqrt{1+t} \ne 0`: every method then shows its generic
    additive-noise order (Euler–Maruyama 1, the Stratonovich methods 1, SRA1 1.5), and the solution
    also needs :math:`\int_0^t W_s ds` (``needs_time_integral``; torchsde's ``bm(0, t, return_U=True)``
    with ``levy_area="space-time"`` or ``"foster"``).

    **Arguments**

    - ``alpha``, ``beta``, ``gamma``: numbers or sequences of length ``d``.
    - ``x0``: the standard initial state (default 1).
    - ``T``: the end time.
    """

    noise = "additive"

    def __init__(self, alpha: Coef = (1.0, 0.5), beta: Coef = (1.0, 2.0), gamma: Coef = 0.0, x0: Coef = 1.0,
                 T: float = 1.0):
        super().__init__(T=T, eps=1e-3 * T)
        alpha, beta, gamma = torch.broadcast_tensors(_coef(alpha), _coef(beta), _coef(gamma))
        self.alpha, self.beta, self.gamma = alpha.clone(), beta.clone(), gamma.clone()
        self.dim = self.alpha.numel()
        self.x0 = _coef(x0).expand(self.dim).clone()
        self.needs_time_integral = bool((self.gamma != 0).any())

    def f(self, t, x):
        tt = _times(t, x)
        return self._c(self.beta, x) / torch.sqrt(1 + tt) - x / (2 * (1 + tt))

    def g(self, t, x):
        tt = _times(t, x)
        scale = self._c(self.alpha * self.beta, x) + self._c(self.gamma, x) * tt
        return (scale / torch.sqrt(1 + tt)).expand(x.shape)

    def exact(self, x0, t, w_t, u_t=None):
        tt = _times(t, x0)
        beta, alpha = self._c(self.beta, x0), self._c(self.alpha, x0)
        y = x0 + beta * (tt + alpha * w_t)
        if self.needs_time_integral:
            y = y + self._c(self.gamma, x0) * (tt * w_t - self._need(u_t))
        return y / torch.sqrt(1 + tt)

    def __repr__(self):
        return (f"AdditiveSDE(alpha={self.alpha.tolist()}, beta={self.beta.tolist()}, "
                f"gamma={self.gamma.tolist()}, T={self.T})")


class ArctanSDE(ExactSDE):
    r"""The scalar-noise "wave" SDE of Rackauckas & Nie (2017), coordinatewise:

    .. math:: dX = -a^2 \sin X \cos^3 X\,dt + a\cos^2 X\,dW, \qquad X_t = \arctan(a W_t + \tan X_0).

    (Check: :math:`Y = \tan X` satisfies :math:`dY = a\,dW`.)  The paper uses :math:`a = 1/10`;
    a larger ``a`` makes the nonlinearity matter more over ``[0, T]``.  Needs :math:`|X_0| < \pi/2`.

    **Arguments**

    - ``a``: the noise scale (number or sequence of length ``d``).
    - ``x0``: the standard initial state (default 0.5), inside :math:`(-\pi/2, \pi/2)`.
    - ``T``: the end time.
    """

    noise = "diagonal"

    def __init__(self, a: Coef = 0.1, x0: Coef = 0.5, T: float = 1.0):
        super().__init__(T=T, eps=1e-3 * T)
        a, x0 = torch.broadcast_tensors(_coef(a), _coef(x0))
        if not bool((x0.abs() < math.pi / 2).all()):
            raise InvalidParameterError(f"ArctanSDE needs |x0| < pi/2, got {x0.tolist()}")
        self.a, self.x0 = a.clone(), x0.clone()
        self.dim = self.a.numel()

    def f(self, t, x):
        a = self._c(self.a, x)
        return -a ** 2 * torch.sin(x) * torch.cos(x) ** 3

    def g(self, t, x):
        return self._c(self.a, x) * torch.cos(x) ** 2

    def exact(self, x0, t, w_t, u_t=None):
        return torch.atan(self._c(self.a, x0) * w_t + torch.tan(x0))

    def __repr__(self):
        return f"ArctanSDE(a={self.a.tolist()}, T={self.T})"


class SinhSDE(ExactSDE):
    r"""A reducible SDE with a nonlinear, unbounded diffusion, coordinatewise:

    .. math:: dX = \tfrac12 c^2 X\,dt + c\sqrt{1 + X^2}\,dW, \qquad X_t = \sinh(c W_t + \operatorname{arsinh} X_0).

    (Check: :math:`Y = \operatorname{arsinh} X` satisfies :math:`dY = c\,dW`.)  Kloeden & Platen (1992), §4.4.

    **Arguments**

    - ``c``: the noise scale (number or sequence of length ``d``).
    - ``x0``: the standard initial state (default 0.5).
    - ``T``: the end time.
    """

    noise = "diagonal"

    def __init__(self, c: Coef = (0.5, 1.0), x0: Coef = 0.5, T: float = 1.0):
        super().__init__(T=T, eps=1e-3 * T)
        c, x0 = torch.broadcast_tensors(_coef(c), _coef(x0))
        self.c, self.x0 = c.clone(), x0.clone()
        self.dim = self.c.numel()

    def f(self, t, x):
        return 0.5 * self._c(self.c, x) ** 2 * x

    def g(self, t, x):
        return self._c(self.c, x) * torch.sqrt(1 + x * x)

    def exact(self, x0, t, w_t, u_t=None):
        return torch.sinh(self._c(self.c, x0) * w_t + torch.asinh(x0))

    def __repr__(self):
        return f"SinhSDE(c={self.c.tolist()}, T={self.T})"


def exact_sdes() -> dict:
    """The standard exact-solution problems by name: those of the order tests and of
    ``python -m sdekit.validation.orders``."""
    return {
        "gbm": GeometricBrownianMotion(),
        "gbm-tv": GeometricBrownianMotion(rho=(0.5, -1.0, 1.0)),
        "additive": AdditiveSDE(),
        "additive-tv": AdditiveSDE(gamma=(2.0, -1.0)),
        "arctan": ArctanSDE(a=1.0, x0=0.5),
        "sinh": SinhSDE(),
    }
