r"""Forward SDEs: :math:`dx = f(t, x)\,dt + g(t, x)\,dw` on :math:`t \in [0, T]`.

:class:`SDE` is the general base: a subclass supplies only ``f`` and ``g`` and can be
reversed, turned into a probability-flow ODE and solved.  :class:`LinearSDE` is the
family :math:`dx = f(t)\,x\,dt + g(t)\,dw` of diffusion models, whose transition law
from time 0 is Gaussian, :math:`x_t \mid x_0 \sim N(\alpha(t) x_0, \sigma(t)^2 I)`.
:class:`VPSDE`, :class:`SubVPSDE` and :class:`VESDE` are the three SDEs of Song et al.
(2021) with their closed-form marginals.
"""

import math
import numbers

import numpy as np
import torch

import sdekit

from ._broadcast import batch_times, per_sample
from ._errors import ArgumentTypeError, InvalidParameterError

__all__ = ["SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE"]


def _float64(value, name):
    """``value`` as a float64 CPU tensor, with the tensor whose dtype and device the result should take."""
    like = value if isinstance(value, torch.Tensor) and value.is_floating_point() else None
    v = torch.as_tensor(value, dtype=torch.float64).detach().to(device="cpu")
    if bool(torch.isnan(v).any()):
        raise InvalidParameterError(f"{name} contains NaN")
    return v, like


def _number(value, name) -> float:
    """``value`` (a real number or a 0-dim tensor) as a Python float; anything else is refused."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {type(value).__name__} {value!r:.40}")
    return float(value)


def _like(result, like):
    return result if like is None else result.to(dtype=like.dtype, device=like.device)


def _softplus(y):
    """``log(1 + e^y)`` without overflow or cancellation, in exp and log1p: torch's CPU ``logaddexp`` rounds
    differently in the body and the tail of a tensor, so a sample's value would depend on its place in the batch."""
    return y.clamp_min(0) + torch.log1p(torch.exp(-y.abs()))


class SDE:
    r"""An Itô SDE :math:`dx = f(t, x)\,dt + g(t, x)\,dw` on :math:`[0, T]`, acting on ``(batch, *event_shape)``.

    Subclasses supply :meth:`f` and :meth:`g`.  ``g`` is a diagonal (elementwise) diffusion:
    it returns a tensor of shape ``(batch,)`` (the same noise scale for every coordinate of a
    sample) or shaped like ``x``.  A diffusion that depends on ``x`` must act elementwise,
    :math:`g_i = g_i(t, x_i)`; the reverse drift then gains :math:`-\partial_i (g_i^2)`.

    **Arguments**

    - ``T``: end time of the forward process.
    - ``eps``: the time at which sampling stops (the reverse process runs ``T -> eps``);
      it keeps scores away from the singularity at ``t = 0``.
    """

    def __init__(self, T: float = 1.0, eps: float = 1e-3):
        T, eps = _number(T, "T"), _number(eps, "eps")
        if not math.isfinite(T) or T <= 0:
            raise InvalidParameterError(f"T must be a positive finite number, got {T}")
        if not (0 < eps < T):
            raise InvalidParameterError(f"eps must satisfy 0 < eps < T = {T}, got {eps}")
        self.T = T
        self.eps = eps

    def f(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Drift :math:`f(t, x)`: ``t`` of shape ``(batch,)``, result shaped like ``x``."""
        raise NotImplementedError(f"{type(self).__name__} must define f(t, x), the drift")

    def g(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Diffusion :math:`g(t, x)`: shape ``(batch,)`` or shaped like ``x``."""
        raise NotImplementedError(f"{type(self).__name__} must define g(t, x), the diffusion")

    def marginal_prob(self, x0: torch.Tensor, t):
        """Mean and standard deviation of :math:`x_t \\mid x_0`; only SDEs with a closed form have it."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form marginal; subclass LinearSDE and "
                                  "define log_alpha(t) and sigma(t), or use sdekit.validation.LinearMoments for a "
                                  "numerical one")

    def prior_sampling(self, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
        """Draw ``shape = (batch, *event_shape)`` samples from the prior :math:`p_T`."""
        raise NotImplementedError(f"{type(self).__name__} defines no prior; override prior_sampling")

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior at ``z``, one value per sample."""
        raise NotImplementedError(f"{type(self).__name__} defines no prior; override prior_logp")

    def solve(self, x0: torch.Tensor, method: str = "euler", **options):
        """Integrate the forward SDE from ``t_start = 0`` to ``t_end = T``; see :func:`sdekit.solve`."""
        return sdekit.forward(self).solve(x0, method=method, **options)

    def __repr__(self):
        return f"{type(self).__name__}(T={self.T}, eps={self.eps})"


class LinearSDE(SDE):
    r"""A linear SDE :math:`dx = f(t)\,x\,dt + g(t)\,dw` with scalar coefficients.

    Its transition law from time 0 is :math:`N(\alpha(t) x_0, \sigma(t)^2 I)` with
    :math:`\log\alpha(t) = \int_0^t f`, :math:`\sigma(t)^2 = \alpha(t)^2 \int_0^t g^2/\alpha^2`.
    Subclasses supply :meth:`drift_coef` and :meth:`diffusion_coef`; those with a closed form
    also supply :meth:`log_alpha` and :meth:`sigma`.  The samplers, grids and frames read the moments through
    :meth:`log_alpha_sigma`, :meth:`log_snr` and :meth:`t_of_log_snr`, which use the closed forms when they
    exist and otherwise solve the moment ODEs numerically (:class:`_NumericalMoments`), so they serve any
    linear SDE.  The prior is :math:`N(0, \text{prior\_std}^2 I)`.
    """

    prior_std = 1.0
    #: :math:`\sigma(0)`: the noise the data at ``t = 0`` already carries (0 for the transition law from clean data).
    initial_sigma = 0.0

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """The scalar :math:`f(t)`, elementwise in ``t``."""
        raise NotImplementedError(f"{type(self).__name__} must define drift_coef(t)")

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        """The scalar :math:`g(t)`, elementwise in ``t``."""
        raise NotImplementedError(f"{type(self).__name__} must define diffusion_coef(t)")

    def f(self, t, x):
        return per_sample(self.drift_coef(t), x) * x

    def g(self, t, x):
        return self.diffusion_coef(t)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\log \alpha(t)`, the log mean coefficient of :math:`x_t \mid x_0`, in closed form.

        A subclass with a closed form defines it (with :meth:`sigma`); without one, :meth:`log_alpha_sigma`
        integrates the moment ODEs from :meth:`drift_coef` and :meth:`diffusion_coef` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} has no closed-form log_alpha(t); "
                                  "sde.log_alpha_sigma(t) integrates it from drift_coef and diffusion_coef")

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma(t)`, the standard deviation of :math:`x_t \mid x_0`, in closed form (see :meth:`log_alpha`)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form sigma(t); "
                                  "sde.log_alpha_sigma(t) integrates it from drift_coef and diffusion_coef")

    def _has_closed_form(self) -> bool:
        """Whether the class defines both :meth:`log_alpha` and :meth:`sigma` itself."""
        cls = type(self)
        return cls.log_alpha is not LinearSDE.log_alpha and cls.sigma is not LinearSDE.sigma

    def _numerical(self) -> "_NumericalMoments":
        """The moment tables of this SDE, built on first use and rebuilt when its coefficients change."""
        moments = self.__dict__.get("_sdekit_moments")
        if moments is None or not moments.matches(self):
            moments = _NumericalMoments(self)
            self.__dict__["_sdekit_moments"] = moments
        return moments

    def log_alpha_sigma(self, t: torch.Tensor):
        r"""``(log_alpha, sigma)`` at the times ``t``: what every sampler and grid of a linear SDE needs.

        The closed forms :meth:`log_alpha` and :meth:`sigma` when the subclass defines them; otherwise the
        moment ODEs :math:`(\log\alpha)' = f`, :math:`(\sigma^2)' = 2f\sigma^2 + g^2` (from
        :meth:`drift_coef`, :meth:`diffusion_coef` and :attr:`initial_sigma`) solved by Gauss–Legendre
        quadrature in float64 (:class:`_NumericalMoments`: relative error about 1e-13 for smooth
        coefficients; one-line error when the coefficients are missing, not finite, or too rough to reach 1e-8).
        The result has ``t``'s shape, dtype and device.
        """
        if self._has_closed_form():
            try:
                return self.log_alpha(t), self.sigma(t)
            except NotImplementedError:
                pass
        return self._numerical().log_alpha_sigma(self, t)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\alpha(t) = \exp \log\alpha(t)` (closed form)."""
        return torch.exp(self.log_alpha(t))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        r"""Log signal-to-noise ratio :math:`\lambda(t) = \log\alpha(t) - \log\sigma(t)`: from the closed forms, or
        without them :math:`-\tfrac12\log(\sigma_0^2 + \int_0^t g^2/\alpha^2)` from the moment ODEs."""
        if self._has_closed_form():
            try:
                return self.log_alpha(t) - torch.log(self.sigma(t))
            except NotImplementedError:
                pass
        return self._numerical().log_snr(self, t)

    def t_of_log_snr(self, lam) -> torch.Tensor:
        r"""The time :math:`t \in [0, T]` at which :math:`\lambda(t) = ` ``lam``: the inverse of :meth:`log_snr`.

        Elementwise; the result has ``lam``'s shape, dtype and device, computed in float64.  With closed-form
        :meth:`log_alpha` and :meth:`sigma` this general version bisects :math:`[0, T]` in float64 down to
        adjacent floats (vectorised over ``lam``), for any :math:`\lambda` monotone in :math:`t`; without them it
        solves :math:`\int_0^t g^2/\alpha^2 = e^{-2\lambda} - \sigma_0^2` by safeguarded Newton steps on the
        moment tables.  ``lam`` must lie between :math:`\lambda(T)` and :math:`\lambda(0)`.
        :class:`VPSDE`, :class:`SubVPSDE` and :class:`VESDE` override it with closed forms.
        """
        lam64, like = _float64(lam, "lam")
        if not self._has_closed_form():
            return _like(self._numerical().t_of_log_snr(self, lam64), like)
        T = torch.tensor(self.T, dtype=torch.float64)
        ends = torch.stack([torch.zeros((), dtype=torch.float64), T])
        lam_0, lam_T = (float(v) for v in self.log_snr(ends))
        if math.isnan(lam_0):   # 0/0 at t = 0, where sigma = 0: lambda(0) = +inf
            lam_0 = math.inf if lam_T < math.inf else -math.inf
        if not math.isfinite(lam_T) or lam_0 == lam_T:
            raise InvalidParameterError(f"{type(self).__name__}'s log-SNR is not invertible on [0, T]: "
                                        f"lambda(0)={lam_0}, lambda(T)={lam_T}")
        decreasing = lam_0 > lam_T
        low, high = min(lam_0, lam_T), max(lam_0, lam_T)
        _check_log_snr_range(lam64, low, high, self.T)
        lo, hi = torch.zeros_like(lam64), torch.full_like(lam64, self.T)
        for _ in range(1100):   # float64 spans [0, T] in at most ~1075 halvings
            mid = 0.5 * (lo + hi)
            done = (mid <= lo) | (mid >= hi)
            if bool(done.all()):
                break
            above = self.log_snr(mid) > lam64           # lambda(mid) above the target
            right = above if decreasing else ~above      # the root lies to the right of mid
            lo = torch.where(right & ~done, mid, lo)
            hi = torch.where(~right & ~done, mid, hi)
        err_lo = (self.log_snr(lo) - lam64).abs().nan_to_num(math.inf)
        err_hi = (self.log_snr(hi) - lam64).abs().nan_to_num(math.inf)
        return _like(torch.where(err_lo <= err_hi, lo, hi), like)

    def marginal_prob(self, x0, t):
        """``(mean, std)`` of :math:`x_t \\mid x_0`: mean shaped like ``x0``, std of shape ``(batch,)``."""
        t = batch_times(t, x0)
        return per_sample(self.alpha(t), x0) * x0, self.sigma(t)

    def prior_sampling(self, shape, generator=None, dtype=None, device=None):
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return self.prior_std * z

    def prior_logp(self, z):
        n = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1)
        return -0.5 * n * math.log(2 * math.pi * self.prior_std ** 2) - 0.5 * sq / self.prior_std ** 2


def _check_log_snr_range(lam64, low, high, T, slack=0.0):
    """Refuse log-SNR values outside ``[low, high]``, each end widened by ``slack`` times its size (at least 1)."""
    low -= slack * max(1.0, abs(low)) if math.isfinite(low) else 0.0
    high += slack * max(1.0, abs(high)) if math.isfinite(high) else 0.0
    if lam64.numel() and (float(lam64.min()) < low or float(lam64.max()) > high):
        raise InvalidParameterError(f"log-SNR values must lie in [{low:.6g}, {high:.6g}] (lambda over [0, T={T}]), "
                                    f"got [{float(lam64.min()):.6g}, {float(lam64.max()):.6g}]")


_EPS64 = torch.finfo(torch.float64).eps


class _NumericalMoments:
    r"""The transition moments of a :class:`LinearSDE` without closed forms, from its coefficients alone.

    With :math:`A(t) = \log\alpha(t) = \int_0^t f` and :math:`V(t) = \int_0^t g^2 e^{-2A}` (the VE-frame variance
    added since 0), the moment ODEs give :math:`\sigma(t)^2 = e^{2A}(\sigma_0^2 + V)` and
    :math:`\lambda(t) = -\tfrac12\log(\sigma_0^2 + V)`, :math:`\sigma_0` the SDE's ``initial_sigma``.

    :math:`[0, T]` is cut into panels: ``P`` equal ones, the first of them graded towards 0 (edges at
    :math:`h 2^{-j}`, :math:`j \le 44`), so that :math:`V` keeps its relative precision as :math:`t \to 0`.  On each
    panel :math:`f` and then :math:`q = g^2 e^{-2(A - A_k)}` are sampled at 12 Gauss–Legendre nodes and held as
    their Legendre series, whose integrals from the panel's start are exact: :math:`A` and :math:`V` at any time
    are a table value plus a short series, with no call of the coefficients.  ``P`` doubles from 64 until two
    tables agree to 1e-11 at every edge of the finer one (in :math:`A`, and in :math:`2\lambda`), at most
    :data:`MAX_PANELS`; about 1e-13 relative for smooth coefficients.  Computed in float64 on the CPU; a query on
    another device costs one copy to the host and back.  The tables are rebuilt when ``T``, ``initial_sigma`` or
    the coefficients at seven probe times change.
    """

    NODES = 12
    GRADED = 44
    START_PANELS = 64
    MAX_PANELS = 1 << 15
    AGREE = 1e-11     # two successive tables agreeing this well: accept the finer one
    ROUGH = 1e-8      # still disagreeing this much at MAX_PANELS: refuse (coefficients too rough)

    def __init__(self, sde):
        self.T = float(sde.T)
        self.s0 = float(sde.initial_sigma) ** 2
        x, w = np.polynomial.legendre.leggauss(self.NODES)
        n = np.arange(self.NODES)
        legendre = np.polynomial.legendre.legvander(x, self.NODES - 1)           # (node, n): P_n(x_j)
        self.nodes = torch.from_numpy(x)
        self.inverse_odd = 1.0 / torch.arange(3, 2 * self.NODES, 2, dtype=torch.float64)        # 1/(2n + 1), n >= 1
        self.transform = torch.from_numpy(((2 * n + 1) / 2)[:, None] * (legendre * w[:, None]).T)   # values -> series
        self.probe_t = torch.linspace(0.0, self.T, 7, dtype=torch.float64)
        self.probe = self._coefficients(sde, self.probe_t)
        panels = self.START_PANELS
        table = self._table(sde, panels)
        while True:
            finer = self._table(sde, 2 * panels)
            gap = self._gap(table, finer)
            table, panels = finer, 2 * panels
            if gap <= self.AGREE:
                break
            if 2 * panels > self.MAX_PANELS:
                if gap > self.ROUGH:
                    raise InvalidParameterError(
                        f"the moments of {type(sde).__name__} do not converge (tables of {panels // 2} and {panels} "
                        f"panels differ by {gap:.2g}): drift_coef/diffusion_coef are too rough on [0, T]; define "
                        f"closed-form log_alpha(t) and sigma(t)")
                break
        self.table, self.panels = table, panels            # (edges, A, V, f_series, q_series)
        self.edges, self.V = table[0], table[2]

    def matches(self, sde) -> bool:
        """Whether the tables still describe ``sde`` (same T, initial sigma and coefficients at the probe times)."""
        if float(sde.T) != self.T or float(sde.initial_sigma) ** 2 != self.s0:
            return False
        f, g2 = self._coefficients(sde, self.probe_t)
        return torch.equal(f, self.probe[0]) and torch.equal(g2, self.probe[1])

    # -- building ------------------------------------------------------------------------------
    @staticmethod
    def _coefficients(sde, t):
        """``(f, g^2)`` at the 1-D float64 CPU times ``t``, checked."""
        name = type(sde).__name__
        try:
            f, g = sde.drift_coef(t), sde.diffusion_coef(t)
        except NotImplementedError:
            raise InvalidParameterError(
                f"{name} defines neither closed-form log_alpha(t) and sigma(t) nor drift_coef(t) and "
                f"diffusion_coef(t); define one of the two pairs") from None
        out = []
        for what, v in (("drift_coef", f), ("diffusion_coef", g)):
            v = torch.as_tensor(v).detach().to(device="cpu", dtype=torch.float64)
            if v.shape != t.shape:
                try:
                    v = v.expand(t.shape)
                except RuntimeError:
                    raise InvalidParameterError(f"{name}.{what}(t) must return a number or a tensor shaped like t "
                                                f"{tuple(t.shape)}, got shape {tuple(v.shape)}") from None
            if not bool(torch.isfinite(v).all()):
                bad = float(t[~torch.isfinite(v)][0])
                raise InvalidParameterError(f"{name}.{what}(t) is not finite at t={bad:.6g}; the moments integrate "
                                            f"it over [0, T], so define it (finite) there")
            out.append(v)
        return out[0], out[1] * out[1]

    def _edges(self, panels):
        h = self.T / panels
        graded = h * 2.0 ** -torch.arange(self.GRADED, 0, -1, dtype=torch.float64)     # h 2^-44 ... h/2
        uniform = torch.linspace(0.0, self.T, panels + 1, dtype=torch.float64)[1:]
        uniform[-1] = self.T
        return torch.cat([torch.zeros(1, dtype=torch.float64), graded, uniform])

    def _table(self, sde, panels):
        edges = self._edges(panels)
        a, width = edges[:-1], edges[1:] - edges[:-1]
        at = a[:, None] + 0.5 * width[:, None] * (self.nodes + 1)                        # (panels, J)
        f, g2 = self._coefficients(sde, at.reshape(-1))
        f_series = f.view(at.shape) @ self.transform.T                                    # (panels, J)
        dA_nodes = 0.5 * width[:, None] * self._integrals(self.nodes.expand(at.shape), f_series[:, None, :])
        q_series = (g2.view(at.shape) * torch.exp(-2 * dA_nodes)) @ self.transform.T
        zero = torch.zeros(1, dtype=torch.float64)
        A = torch.cat([zero, torch.cumsum(width * f_series[:, 0], 0)])                   # int P_0 over [-1, 1] = 2
        V = torch.cat([zero, torch.cumsum(torch.exp(-2 * A[:-1]) * width * q_series[:, 0], 0)])
        if not bool(torch.isfinite(A).all() and torch.isfinite(V).all()):
            raise InvalidParameterError(f"the moments of {type(sde).__name__} overflow on [0, T] "
                                        f"(log alpha(T) = {float(A[-1]):.4g}); check drift_coef and diffusion_coef")
        return edges, A, V, f_series, q_series

    def _gap(self, coarse, fine):
        """The largest difference of two tables at the finer one's edges: in A, and relative in s0 + V."""
        t = fine[0]
        A0, V0 = self._evaluate(coarse, t)
        A1, V1 = fine[1], fine[2]
        scale = self.s0 + V1
        pos = scale > 0
        dV = float(((V0 - V1).abs()[pos] / scale[pos]).max()) if bool(pos.any()) else 0.0
        return max(float((A0 - A1).abs().max()), dV)

    # -- the series --------------------------------------------------------------------------------
    def _legendre(self, x):
        """``P_0 .. P_J`` at ``x`` (any shape), stacked on a last axis (the three-term recurrence)."""
        p = torch.empty(x.shape + (self.NODES + 1,), dtype=torch.float64)
        p[..., 0] = 1.0
        p[..., 1] = x
        for n in range(1, self.NODES):
            p[..., n + 1] = ((2 * n + 1) / (n + 1)) * x * p[..., n] - (n / (n + 1)) * p[..., n - 1]
        return p

    def _integrals_of(self, x, p):
        r""":math:`\int_{-1}^x P_n` for ``n < J`` from ``p`` = :meth:`_legendre` at ``x``: :math:`x + 1` for
        :math:`n = 0`, :math:`(P_{n+1} - P_{n-1})/(2n + 1)` after."""
        ints = torch.empty(p.shape[:-1] + (self.NODES,), dtype=torch.float64)
        ints[..., 0] = x + 1
        ints[..., 1:] = (p[..., 2:] - p[..., :-2]) * self.inverse_odd
        return ints

    def _integrals(self, x, series):
        r""":math:`\int_{-1}^x` of the Legendre series ``series`` (``(..., J)``) at ``x`` (``(...)``)."""
        return (self._integrals_of(x, self._legendre(x)) * series).sum(-1)

    def _evaluate(self, table, u, derivative=False):
        """``(A, V)`` (and ``V'`` with ``derivative``) at the 1-D float64 CPU times ``u`` in [0, T]."""
        edges, A, V, f_series, q_series = table
        k = (torch.searchsorted(edges, u, right=True) - 1).clamp(0, edges.numel() - 2)
        a, half = edges[k], 0.5 * (edges[k + 1] - edges[k])
        x = ((u - a) / half - 1).clamp(-1.0, 1.0)
        p = self._legendre(x)
        ints = self._integrals_of(x, p)
        scale = torch.exp(-2 * A[k])
        A_u = A[k] + half * (ints * f_series[k]).sum(-1)
        V_u = V[k] + scale * half * (ints * q_series[k]).sum(-1)
        if not derivative:
            return A_u, V_u
        return A_u, V_u, scale * (p[..., :-1] * q_series[k]).sum(-1)

    # -- queries -----------------------------------------------------------------------------
    def _distinct(self, sde, t, fn):
        """``fn`` applied to the distinct values of the times ``t`` (any shape, dtype, device); results shaped like t."""
        t = t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)
        flat = t.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        slack = 1e-12 * self.T
        if flat.numel() and (float(flat.min()) < -slack or float(flat.max()) > self.T + slack):
            raise InvalidParameterError(f"{type(sde).__name__}: times must lie in [0, T={self.T}] for its moments, "
                                        f"got [{float(flat.min()):.6g}, {float(flat.max()):.6g}]")
        values, inverse = torch.unique(flat.clamp(0.0, self.T), return_inverse=True)
        dtype = t.dtype if t.is_floating_point() else torch.float64
        return [r[inverse].reshape(t.shape).to(dtype=dtype, device=t.device) for r in fn(values)]

    def log_alpha_sigma(self, sde, t):
        def fn(u):
            A, V = self._evaluate(self.table, u)
            return A, torch.exp(A) * torch.sqrt(self.s0 + V)
        return tuple(self._distinct(sde, t, fn))

    def log_snr(self, sde, t):
        return self._distinct(sde, t, lambda u: [-0.5 * torch.log(self.s0 + self._evaluate(self.table, u)[1])])[0]

    def t_of_log_snr(self, sde, lam64):
        """Float64 times, shaped like ``lam64``, at which the log-SNR is ``lam64``."""
        flat = lam64.reshape(-1)
        high = math.inf if self.s0 == 0 else -0.5 * math.log(self.s0)
        low = -0.5 * math.log(self.s0 + float(self.V[-1]))
        _check_log_snr_range(flat, low, high, self.T, slack=1e-12)   # another route to lambda rounds its ends apart
        values, inverse = torch.unique(flat, return_inverse=True)
        return self._invert(values)[inverse].reshape(lam64.shape)

    def _invert(self, lam):
        r"""Solve :math:`V(t) = e^{-2\lambda} - \sigma_0^2` per value: the bracketing panel from the table, then Newton
        steps (:math:`V' = g^2 e^{-2A}`) kept inside the bracket by bisection."""
        if lam.numel() == 0:
            return lam.clone()
        target = (torch.exp(-2 * lam) - self.s0).clamp(0.0, float(self.V[-1]))
        last = self.edges.numel() - 2
        k = (torch.searchsorted(self.V, target, right=True) - 1).clamp(0, last)
        lo, hi = self.edges[k], self.edges[k + 1]
        v_lo, v_hi = self.V[k], self.V[k + 1]
        frac = torch.where(v_hi > v_lo, (target - v_lo) / (v_hi - v_lo), torch.zeros_like(target))
        t = lo + frac.clamp(0, 1) * (hi - lo)
        done = torch.zeros_like(t, dtype=torch.bool)
        for _ in range(100):   # Newton: a few steps; bisection alone would need at most ~60 here
            _, V, dV = self._evaluate(self.table, t, derivative=True)
            resid = V - target
            lo = torch.where(resid < 0, t, lo)
            hi = torch.where(resid > 0, t, hi)
            step = resid / dV
            # converged: the Newton step is below a few ulps of t, or no float lies strictly inside the bracket
            mid = 0.5 * (lo + hi)
            done = done | (resid == 0) | (step.abs() <= 4 * _EPS64 * t.abs()) | (mid <= lo) | (mid >= hi)
            if bool(done.all()):
                break
            t_new = t - step
            outside = ~((t_new > lo) & (t_new < hi)) | ~torch.isfinite(t_new)
            t = torch.where(done, t, torch.where(outside, mid, t_new))
        return t


def _check_beta(beta_min, beta_max):
    beta_min, beta_max = _number(beta_min, "beta_min"), _number(beta_max, "beta_max")
    if not (math.isfinite(beta_min) and math.isfinite(beta_max)):
        raise InvalidParameterError(f"beta_min and beta_max must be finite, got {beta_min}, {beta_max}")
    if beta_min < 0:
        raise InvalidParameterError(f"beta_min must be >= 0, got {beta_min}")
    if beta_max < beta_min or beta_max <= 0:
        raise InvalidParameterError(f"beta_max must be positive and >= beta_min = {beta_min}, got {beta_max}")
    return beta_min, beta_max


class VPSDE(LinearSDE):
    r"""Variance-preserving SDE: :math:`dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dw`.

    :math:`\beta(t) = \beta_0 + t(\beta_1 - \beta_0)`,
    :math:`\log\alpha(t) = -\tfrac14 t^2(\beta_1-\beta_0) - \tfrac12 t\beta_0`,
    :math:`\sigma = \sqrt{1 - \alpha^2}` (computed as ``sqrt(-expm1(2 log_alpha))``).
    Prior :math:`N(0, I)`.  Song et al. (2021), eq. 11; the continuous DDPM.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3):
        super().__init__(T=T, eps=eps)
        self.beta_min, self.beta_max = _check_beta(beta_min, beta_max)

    def beta(self, t):
        r""":math:`\beta(t) = \beta_0 + t(\beta_1 - \beta_0)`."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion_coef(self, t):
        return torch.sqrt(self.beta(t))

    def log_alpha(self, t):
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def t_of_log_snr(self, lam):
        r"""Closed-form inverse of :meth:`log_snr` (DPM-Solver's ``NoiseScheduleVP.inverse_lambda``).

        :math:`-\log\alpha = \tfrac12\log(1 + e^{-2\lambda})`, then the root of
        :math:`\tfrac14(\beta_1-\beta_0)t^2 + \tfrac12\beta_0 t = -\log\alpha` written without cancellation.
        Computed in float64; the result has ``lam``'s shape, dtype and device.
        """
        lam64, like = _float64(lam, "lam")
        neg_log_alpha = 0.5 * _softplus(-2 * lam64)
        return _like(self._t_of_neg_log_alpha(neg_log_alpha), like)

    def _t_of_neg_log_alpha(self, L):
        """The t >= 0 with ``-log_alpha(t) = L``: ``2L / (b0/2 + sqrt(b0^2/4 + (b1 - b0) L))``."""
        b0, d = self.beta_min, self.beta_max - self.beta_min
        den = 0.5 * b0 + torch.sqrt(0.25 * b0 ** 2 + d * L)
        t = 2 * L / den
        t = torch.where(L == 0, torch.zeros_like(t), t)
        return torch.where(torch.isinf(L), torch.full_like(t, math.inf), t)

    def __repr__(self):
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, eps={self.eps})"


class SubVPSDE(VPSDE):
    r"""Sub-VP SDE: :math:`dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)(1 - e^{-2\int_0^t\beta})}\,dw`.

    Same :math:`\alpha` as :class:`VPSDE`; :math:`\sigma = 1 - \alpha^2` (its variance is
    :math:`(1-\alpha^2)^2`, below the VP one).  Prior :math:`N(0, I)`.  Song et al. (2021), eq. 29.
    Near :math:`t = 0`, :math:`\sigma \approx \beta_0 t`: keep ``eps`` well above zero.
    """

    def diffusion_coef(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_alpha(t)))

    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))

    def t_of_log_snr(self, lam):
        r"""Closed-form inverse of :meth:`log_snr`.

        :math:`e^{-\lambda} = (1-\alpha^2)/\alpha` gives :math:`-\log\alpha = \operatorname{asinh}(e^{-\lambda}/2)`
        (for :math:`\lambda < 0` as :math:`-\lambda + \log(1 + x/(\sqrt{1/4 + x} + 1/2))`, :math:`x = e^{2\lambda}`,
        which cannot overflow), then the VP quadratic.  Computed in float64; the result has ``lam``'s shape,
        dtype and device.
        """
        lam64, like = _float64(lam, "lam")
        neg = lam64 < 0
        x = torch.exp(2 * torch.where(neg, lam64, torch.zeros_like(lam64)))
        small = -lam64 + torch.log1p(x / (torch.sqrt(0.25 + x) + 0.5))
        large = torch.asinh(0.5 * torch.exp(-torch.where(neg, torch.zeros_like(lam64), lam64)))
        return _like(self._t_of_neg_log_alpha(torch.where(neg, small, large)), like)


class VESDE(LinearSDE):
    r"""Variance-exploding SDE: :math:`dx = \sigma_r(t)\sqrt{2\ln(\sigma_{max}/\sigma_{min})}\,dw`.

    :math:`\sigma_r(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^{t/T}` is the reference noise level
    (:meth:`noise_level`).  Two conventions for the marginal, both exact solutions of the same SDE:

    - ``marginal="reference"`` (default, score_sde's and k-diffusion's): :math:`\sigma(t) = \sigma_r(t)`,
      the data at :math:`t = 0` taken as already blurred by :math:`N(0, \sigma_{min}^2 I)`
      (:attr:`initial_sigma` :math:`= \sigma_{min}`).  Networks trained by those code bases are
      conditioned on this :math:`\sigma`, and the samplers' data prediction
      :math:`\hat x_0 = x + \sigma^2\nabla\log p_t` needs the :math:`\sigma` the model was trained at.
    - ``marginal="exact"``: the transition law from clean data at :math:`t = 0`,
      :math:`\sigma(t)^2 = \sigma_r(t)^2 - \sigma_{min}^2`, computed as
      :math:`\sigma_{min}\sqrt{\mathrm{expm1}(2t\ln(\sigma_{max}/\sigma_{min})/T)}`.

    The two differ by 8x at ``t = eps`` (0.0013 against 0.01 with the defaults) and agree to
    :math:`10^{-4}` relative beyond :math:`\sigma_r = 100\sigma_{min}`.  :math:`\alpha = 1`.
    Prior :math:`N(0, \sigma_{max}^2 I)` as in the reference.  Song et al. (2021), eq. 9.
    """

    _MARGINALS = ("reference", "exact")

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, eps: float = 1e-5,
                 marginal: str = "reference"):
        super().__init__(T=T, eps=eps)
        sigma_min, sigma_max = _number(sigma_min, "sigma_min"), _number(sigma_max, "sigma_max")
        if not (0 < sigma_min < sigma_max < math.inf):
            raise InvalidParameterError(f"VESDE needs 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, "
                                        f"sigma_max={sigma_max}")
        if marginal not in self._MARGINALS:
            raise InvalidParameterError(f"VESDE marginal must be 'reference' (sigma = sigma_r(t), score_sde) or "
                                        f"'exact' (sqrt(sigma_r^2 - sigma_min^2)), got {marginal!r}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.marginal = marginal
        self.initial_sigma = sigma_min if marginal == "reference" else 0.0
        self._log_ratio = math.log(sigma_max / sigma_min)
        self.prior_std = sigma_max

    def noise_level(self, t):
        r"""The reference's :math:`\sigma_r(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^{t/T}`."""
        return self.sigma_min * torch.exp(t * (self._log_ratio / self.T))

    def drift_coef(self, t):
        return torch.zeros_like(t)

    def diffusion_coef(self, t):
        return self.noise_level(t) * math.sqrt(2 * self._log_ratio / self.T)

    def log_alpha(self, t):
        return torch.zeros_like(t)

    def sigma(self, t):
        if self.marginal == "reference":
            return self.noise_level(t)
        return self.sigma_min * torch.sqrt(torch.expm1(2 * t * (self._log_ratio / self.T)))

    def t_of_log_snr(self, lam):
        r"""Closed-form inverse of :meth:`log_snr`, computed in float64; the result has ``lam``'s shape, dtype, device.

        Reference marginal: :math:`t = -T(\lambda + \ln\sigma_{min})/\ln(\sigma_{max}/\sigma_{min})`.
        Exact marginal: :math:`t = T\log(1 + (e^{-\lambda}/\sigma_{min})^2) / (2\ln(\sigma_{max}/\sigma_{min}))`,
        as a softplus, which neither overflows nor cancels.
        """
        lam64, like = _float64(lam, "lam")
        y = -2 * lam64 - 2 * math.log(self.sigma_min)
        return _like((y if self.marginal == "reference" else _softplus(y)) * (self.T / (2 * self._log_ratio)), like)

    def __repr__(self):
        return (f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}, eps={self.eps}, "
                f"marginal={self.marginal!r})")
