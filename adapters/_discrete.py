r"""A discrete table of :math:`\bar\alpha_n` (DDPM's training schedule) as a :class:`sdekit.LinearSDE`.

Timestep :math:`n \in \{0, \dots, N-1\}` sits at :math:`t_n = (n + 1)/N`, and :math:`\log\alpha(t)` is
piecewise linear in :math:`t` through the points :math:`(0, 0)` and :math:`(t_n, \tfrac12\log\bar\alpha_n)`,
as in DPM-Solver's ``NoiseScheduleVP('discrete')`` (Lu et al. 2022), with the point :math:`\bar\alpha = 1`
at :math:`t = 0` (diffusers' ``set_alpha_to_one``).  The process is variance preserving,
:math:`\sigma = \sqrt{1 - \alpha^2}`, so :math:`\beta(t) = -2\,d\log\alpha/dt` is piecewise constant.
"""

import math

import torch

from sdekit import InvalidParameterError, LinearSDE, ShapeError

__all__ = ["DiscreteVPSDE"]


def _table(values, name):
    if isinstance(values, torch.Tensor):
        v = values.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            v = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidParameterError(f"{name} must be a 1-D sequence of numbers, got {type(values).__name__}")
    if v.dim() != 1 or v.numel() < 2:
        raise ShapeError(f"{name} must be 1-D with at least 2 entries, got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise InvalidParameterError(f"{name} must be finite")
    return v


class DiscreteVPSDE(LinearSDE):
    r"""The VP process of a table :math:`\bar\alpha_0 > \dots > \bar\alpha_{N-1}` in :math:`(0, 1)`.

    **Arguments**

    - ``alphas_cumprod``: :math:`\bar\alpha_n = \prod_{i \le n}(1 - \beta_i)`, shape ``(N,)``, strictly decreasing.
    - ``eps``: where sampling stops; default :math:`t_0 = 1/N`, the first trained timestep.
    - ``quantise``: the default for adapters on this SDE: hand a network the nearest trained timestep
      (an integer) instead of the fractional index :math:`tN - 1`.

    ``T = 1``.  :meth:`index` and :meth:`time` convert between the two clocks, :meth:`snap` rounds times
    to the table, and ``log_alpha``, ``sigma`` and ``t_of_log_snr`` are closed forms (the last inverts the
    piecewise-linear :math:`\log\alpha` exactly).  Build the usual tables with :meth:`linear`,
    :meth:`scaled_linear`, :meth:`cosine` or :meth:`from_betas`.
    """

    def __init__(self, alphas_cumprod, eps=None, quantise: bool = False):
        ac = _table(alphas_cumprod, "alphas_cumprod")
        n = ac.numel()
        if not (bool((ac > 0).all()) and bool((ac < 1).all())):
            raise InvalidParameterError("alphas_cumprod must lie strictly between 0 and 1 (a zero-terminal-SNR "
                                        "schedule has no Gaussian prior: clip its last entry above 0)")
        if not bool((ac[1:] < ac[:-1]).all()):
            raise InvalidParameterError("alphas_cumprod must be strictly decreasing (every beta_n > 0)")
        super().__init__(T=1.0, eps=1.0 / n if eps is None else eps)
        if not isinstance(quantise, bool):
            raise InvalidParameterError(f"quantise must be True or False, got {quantise!r}")
        self.alphas_cumprod, self.n, self.quantise = ac, n, quantise
        self._knots = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * ac.log()])   # log alpha at t = k/N

    # -- the usual tables ---------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas, **kwargs):
        r"""From :math:`\beta_n`: :math:`\bar\alpha_n = \prod_{i \le n}(1 - \beta_i)`."""
        b = _table(betas, "betas")
        if not (bool((b > 0).all()) and bool((b < 1).all())):
            raise InvalidParameterError("betas must lie strictly between 0 and 1")
        return cls(torch.cumprod(1 - b, 0), **kwargs)

    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kwargs):
        r"""DDPM's linear schedule (Ho et al. 2020): :math:`\beta_n` = ``linspace(beta_start, beta_end, n)``."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, int(n), dtype=torch.float64), **kwargs)

    @classmethod
    def scaled_linear(cls, n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, **kwargs):
        r"""Stable Diffusion's schedule: :math:`\sqrt{\beta_n}` linear from ``sqrt(beta_start)`` to
        ``sqrt(beta_end)``."""
        return cls.from_betas(torch.linspace(beta_start ** 0.5, beta_end ** 0.5, int(n), dtype=torch.float64) ** 2,
                              **kwargs)

    @classmethod
    def cosine(cls, n: int = 1000, s: float = 0.008, max_beta: float = 0.999, **kwargs):
        r"""The cosine schedule (Nichol & Dhariwal 2021): :math:`\beta_n = \min(1 - \bar a((n+1)/N)/\bar a(n/N),`
        ``max_beta``), :math:`\bar a(u) = \cos^2(\tfrac{\pi}{2}(u + s)/(1 + s))` (diffusers' ``squaredcos_cap_v2``)."""
        u = torch.arange(int(n) + 1, dtype=torch.float64) / int(n)
        abar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        return cls.from_betas((1 - abar[1:] / abar[:-1]).clamp(max=max_beta), **kwargs)

    # -- the two clocks -----------------------------------------------------------------------
    def index(self, t):
        r"""The fractional timestep :math:`tN - 1` of time ``t`` (``t_n = (n+1)/N`` maps to ``n``)."""
        return t * self.n - 1

    def time(self, index):
        r"""The time :math:`(n + 1)/N` of timestep ``index`` (integer or fractional), the inverse of :meth:`index`."""
        return (index + 1) / self.n

    def snap(self, t):
        """``t`` moved to the time of the nearest timestep of the table (clamped to ``0 ... N-1``)."""
        return self.time(torch.round(self.index(t)).clamp(0, self.n - 1))

    # -- the LinearSDE ------------------------------------------------------------------------
    def _segment(self, t):
        u = t * self.n
        k = torch.floor(u).clamp(0, self.n - 1)
        knots = self._knots.to(device=t.device, dtype=t.dtype)
        k_long = k.long()
        return u - k, knots[k_long], knots[k_long + 1]

    def log_alpha(self, t):
        frac, lo, hi = self._segment(t)
        return lo + frac * (hi - lo)

    def drift_coef(self, t):
        _, lo, hi = self._segment(t)
        return (hi - lo) * self.n

    def diffusion_coef(self, t):
        return torch.sqrt(-2 * self.drift_coef(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def t_of_log_snr(self, lam):
        r"""The exact inverse of :meth:`log_snr`: :math:`\log\alpha = -\tfrac12\log(1 + e^{-2\lambda})`, then the
        segment of the piecewise-linear :math:`\log\alpha` that holds it.  Computed in float64; the result has
        ``lam``'s shape, dtype and device."""
        like = lam if isinstance(lam, torch.Tensor) and lam.is_floating_point() else None
        lam64 = torch.as_tensor(lam, dtype=torch.float64).detach().cpu()
        target = -0.5 * torch.logaddexp(torch.zeros_like(lam64), -2 * lam64)
        neg = -self._knots                                            # increasing in t
        k = (torch.searchsorted(neg, -target.contiguous(), right=True) - 1).clamp(0, self.n - 1)
        lo, hi = self._knots[k], self._knots[k + 1]
        t = (k + (target - lo) / (hi - lo)) / self.n
        return t if like is None else t.to(dtype=like.dtype, device=like.device)

    def __repr__(self):
        return f"DiscreteVPSDE(N={self.n}, eps={self.eps}, quantise={self.quantise})"
