r"""Distribution metrics with honest error bars.

Every metric between samples is itself a random variable.  Moment errors come with their Monte Carlo
standard errors; distances come with a *floor*, the same distance measured between independent exact
sample sets of the same size over several seeds (on a 2-D mixture the sliced W2 between two exact sets
of 20 000 varies by a factor of two from seed to seed, so one pair is never enough); mode masses of a
mixture come with binomial standard errors.  Each result has ``within(k)`` for tests to assert on.
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from sdekit import InvalidParameterError, ShapeError

from ._linalg import as_float64, psd_sqrt, spd_eigh

__all__ = [
    "MeanCovError", "Floor", "Distance", "ModeMasses",
    "mean_cov_error", "gaussian_w2", "fitted_gaussian_w2", "sliced_wasserstein", "energy_distance",
    "monte_carlo_floor", "mode_masses",
]


def _samples(x, name="samples") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() < 2 or x.shape[0] < 2:
        raise ShapeError(f"{name} must have shape (n, *event_shape) with n >= 2, got {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def _mean_cov(mean, cov, d):
    mean, cov = as_float64(mean, "mean").reshape(-1), as_float64(cov, "cov")
    if mean.shape != (d,) or cov.shape != (d, d):
        raise ShapeError(f"mean and cov must have shapes ({d},) and ({d}, {d}) to match the samples, "
                         f"got {tuple(mean.shape)} and {tuple(cov.shape)}")
    spd_eigh(cov, "cov", semidefinite=True)
    return mean, 0.5 * (cov + cov.T)


# -- moments --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanCovError:
    r"""Sample mean and covariance against a reference, entry by entry, with standard errors.

    ``mean_error`` = :math:`\bar x - \mu` (shape ``(d,)``), ``cov_error`` = :math:`S - \Sigma` (``(d, d)``,
    :math:`S` with the :math:`n - 1` denominator); ``mean_se`` and ``cov_se`` their Monte Carlo standard errors.
    """

    n: int
    mean_error: torch.Tensor
    mean_se: torch.Tensor
    cov_error: torch.Tensor
    cov_se: torch.Tensor
    standard_errors: str

    @property
    def mean_z(self) -> torch.Tensor:
        """``mean_error / mean_se``."""
        return self.mean_error / self.mean_se.clamp_min(1e-300)

    @property
    def cov_z(self) -> torch.Tensor:
        """``cov_error / cov_se``."""
        return self.cov_error / self.cov_se.clamp_min(1e-300)

    @property
    def max_z(self) -> float:
        """The largest :math:`|z|` over the mean and the upper triangle of the covariance."""
        iu = torch.triu_indices(*self.cov_error.shape)
        return max(float(self.mean_z.abs().max()), float(self.cov_z[iu[0], iu[1]].abs().max()))

    @property
    def value(self) -> float:
        """:math:`\\|\\bar x - \\mu\\|_2 + \\|S - \\Sigma\\|_F`, a single number for reports."""
        return float(self.mean_error.norm() + self.cov_error.norm())

    def within(self, k: float = 4.0) -> bool:
        """Whether every entry is within ``k`` standard errors (``d + d(d+1)/2`` comparisons: keep ``k`` >= 4)."""
        return self.max_z <= k


def mean_cov_error(samples: torch.Tensor, mean, cov, standard_errors: str = "gaussian") -> MeanCovError:
    r"""Compare the sample mean and covariance of ``samples`` (shape ``(n, d)``) with ``mean`` and ``cov``.

    Standard errors, ``"gaussian"`` (exact for Gaussian samples, from the reference):
    :math:`\operatorname{se}(\bar x_i) = \sqrt{\Sigma_{ii}/n}`,
    :math:`\operatorname{se}(S_{ij}) = \sqrt{(\Sigma_{ij}^2 + \Sigma_{ii}\Sigma_{jj})/(n-1)}`;
    ``"empirical"`` (any distribution with four moments, e.g. a mixture):
    :math:`\sqrt{S_{ii}/n}` and :math:`\sqrt{\widehat{\operatorname{Var}}[(x_i-\bar x_i)(x_j-\bar x_j)]/n}`.
    """
    x = _samples(samples)
    n, d = x.shape
    mean, cov = _mean_cov(mean, cov, d)
    m = x.mean(0)
    c = x - m
    S = (c.T @ c) / (n - 1)
    if standard_errors == "gaussian":
        mean_se = (torch.diagonal(cov) / n).sqrt()
        diag = torch.diagonal(cov)
        cov_se = ((cov ** 2 + diag[:, None] * diag[None, :]) / (n - 1)).sqrt()
    elif standard_errors == "empirical":
        mean_se = (torch.diagonal(S).cpu() / n).sqrt()
        second = (c * c).T @ (c * c) / n                      # mean of (c_i c_j)^2
        Sb = (c.T @ c) / n
        cov_se = ((second - Sb ** 2).clamp_min(0.0).cpu() / n).sqrt()
    else:
        raise InvalidParameterError(f"standard_errors must be 'gaussian' or 'empirical', got {standard_errors!r}")
    return MeanCovError(n=n, mean_error=m.cpu() - mean, mean_se=mean_se, cov_error=S.cpu() - cov,
                        cov_se=cov_se, standard_errors=standard_errors)


# -- floors and distances -------------------------------------------------------------------
@dataclass(frozen=True)
class Floor:
    """A metric measured between ``repeats`` pairs of independent exact sample sets of size ``n``.

    ``values`` holds each pair's value; ``mean``, ``std`` (``repeats - 1`` denominator), ``min``, ``max``
    summarise them.  A correct sampler's distance to an exact set is distributed like ``values``.
    """

    values: Tuple[float, ...]
    n: int

    @property
    def repeats(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        if len(self.values) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)


@dataclass(frozen=True)
class Distance:
    """A distance between two distributions, with the Monte Carlo floor it should be read against.

    ``value`` is the measured distance; ``floor`` (a :class:`Floor`, optional) the same distance between exact
    sets of the same size.  ``ratio`` = ``value / floor.mean``.
    """

    name: str
    value: float
    floor: Optional[Floor] = None

    def _need_floor(self):
        if self.floor is None:
            raise InvalidParameterError(
                f"{self.name} has no floor; pass floor=monte_carlo_floor(...) (or repeats=) when computing it"
            )
        return self.floor

    @property
    def ratio(self) -> float:
        """``value / floor.mean``: about 1 for a correct sampler."""
        return self.value / max(self._need_floor().mean, 1e-300)

    def threshold(self, k: float = 3.0) -> float:
        """``floor.mean + k * floor.std``."""
        f = self._need_floor()
        return f.mean + k * f.std

    def within(self, k: float = 3.0) -> bool:
        """Whether ``value <= floor.mean + k * floor.std``.  With few repeats the std is itself noisy:
        use ``k >= 4`` or ``repeats >= 10`` in tests."""
        return self.value <= self.threshold(k)


def monte_carlo_floor(metric: Callable, sampler: Callable, n: int, repeats: int = 5, seed: int = 0,
                      two_sample: bool = True) -> Floor:
    r"""The floor of ``metric`` at sample size ``n``: its value between independent exact sample sets.

    **Arguments**

    - ``metric``: ``metric(x, y)`` (``two_sample=True``) or ``metric(x)`` (a one-sample metric against a fixed
      reference, e.g. ``lambda x: fitted_gaussian_w2(x, mean, cov)``); a float or a :class:`Distance`.
    - ``sampler``: ``sampler(n, generator)`` returning ``n`` exact samples, e.g.
      ``lambda n, g: mixture.sample(n, generator=g)``.
    - ``n``: the sample size the floor is for (the floor falls like :math:`n^{-1/2}`).
    - ``repeats``: independent pairs (seeds ``seed, seed + 1, ...``); several, never one.
    """
    if int(repeats) < 1 or int(n) < 2:
        raise InvalidParameterError(f"need repeats >= 1 and n >= 2, got repeats={repeats}, n={n}")
    values = []
    for r in range(int(repeats)):
        g = torch.Generator().manual_seed((int(seed) + r) % 2 ** 64)
        x = sampler(int(n), g)
        v = metric(x, sampler(int(n), g)) if two_sample else metric(x)
        values.append(float(v.value if isinstance(v, Distance) else v))
    return Floor(values=tuple(values), n=int(n))


def gaussian_w2(mean1, cov1, mean2, cov2) -> float:
    r"""The closed-form 2-Wasserstein distance between :math:`N(m_1, C_1)` and :math:`N(m_2, C_2)`.

    .. math::

        W_2^2 = \|m_1 - m_2\|^2 + \operatorname{tr}\big(C_1 + C_2 - 2(C_2^{1/2} C_1 C_2^{1/2})^{1/2}\big),

    in float64 with eigendecomposition-based symmetric square roots.  Covariances may be semi-definite.
    Returns :math:`W_2` (not squared); rounding leaves about ``1e-8`` for identical inputs.
    """
    m1 = as_float64(mean1, "mean1").reshape(-1)
    d = m1.shape[0]
    m1, c1 = _mean_cov(m1, cov1, d)
    m2, c2 = _mean_cov(mean2, cov2, d)
    r2 = psd_sqrt(c2)
    cross = torch.linalg.eigvalsh(0.5 * (r2 @ c1 @ r2 + (r2 @ c1 @ r2).T)).clamp_min(0.0).sqrt().sum()
    w2sq = (m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross
    return math.sqrt(max(float(w2sq), 0.0))


def fitted_gaussian_w2(samples: torch.Tensor, mean, cov, repeats: int = 5, seed: int = 0) -> Distance:
    r""":math:`W_2` between the Gaussian fitted to ``samples`` (sample mean and covariance) and :math:`N(\mu, \Sigma)`.

    Even exact samples give a positive value (the fit's own error, :math:`O(n^{-1/2})`): the floor is the same
    quantity for ``repeats`` sets of ``n`` exact draws from :math:`N(\mu, \Sigma)` (``repeats=0``: no floor).
    """
    x = _samples(samples)
    n, d = x.shape
    mean, cov = _mean_cov(mean, cov, d)

    def fit(z):
        m = z.mean(0)
        c = z - m
        return gaussian_w2(m.cpu(), (c.T @ c).cpu() / (z.shape[0] - 1), mean, cov)

    floor = None
    if repeats:
        root = psd_sqrt(cov)
        floor = monte_carlo_floor(fit, lambda k, g: mean + torch.randn(k, d, generator=g, dtype=torch.float64) @ root,
                                  n, repeats=repeats, seed=seed, two_sample=False)
    return Distance("fitted_gaussian_w2", fit(x), floor)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       generator: Optional[torch.Generator] = None, floor: Optional[Floor] = None,
                       p: int = 2) -> Distance:
    r"""Sliced :math:`p`-Wasserstein distance between the empirical measures of ``x`` (n, d) and ``y`` (m, d).

    .. math::

        SW_p = \Big(\frac1L\sum_{l=1}^L W_p^p(\theta_l^\top x, \theta_l^\top y)\Big)^{1/p},

    with :math:`L` = ``n_projections`` directions uniform on the sphere (drawn from ``generator``; a fixed
    seed 0 when none, so the metric is deterministic) and each 1-D :math:`W_p` exact between the two
    empirical quantile functions (any ``n`` and ``m``).  Computed in float64 on ``x``'s device.
    ``floor``: a :class:`Floor` from :func:`monte_carlo_floor` to attach.
    """
    x, y = _samples(x, "x"), _samples(y, "y").to(x.device)
    if x.shape[1] != y.shape[1]:
        raise ShapeError(f"x and y must have the same event size, got {x.shape[1]} and {y.shape[1]}")
    g = torch.Generator().manual_seed(0) if generator is None else generator
    theta = torch.randn(int(n_projections), x.shape[1], generator=g, dtype=torch.float64, device=g.device)
    theta = (theta / theta.norm(dim=1, keepdim=True)).to(x.device)
    px, _ = torch.sort(x @ theta.T, dim=0)
    py, _ = torch.sort(y @ theta.T, dim=0)
    n, m = px.shape[0], py.shape[0]
    if n == m:
        per = (px - py).abs().pow(p).mean(0)
    else:
        levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                            torch.arange(1, m + 1, dtype=torch.float64) / m]).unique().to(x.device)
        widths = torch.diff(levels, prepend=levels.new_zeros(1))
        mids = levels - 0.5 * widths
        ix = (mids * n).floor().long().clamp(0, n - 1)
        iy = (mids * m).floor().long().clamp(0, m - 1)
        per = (widths[:, None] * (px[ix] - py[iy]).abs().pow(p)).sum(0)
    return Distance(f"sliced_w{p}", float(per.mean() ** (1.0 / p)), floor)


def _mean_pairwise(a, b, chunk):
    total = a.new_zeros(())
    for i in range(0, a.shape[0], chunk):
        total = total + torch.cdist(a[i:i + chunk], b).sum()
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: torch.Tensor, y: torch.Tensor, floor: Optional[Floor] = None, chunk: int = 2048) -> Distance:
    r"""Energy distance between the empirical measures of ``x`` (n, d) and ``y`` (m, d).

    .. math::

        D = \big(2\,\mathbb{E}\|X - Y\| - \mathbb{E}\|X - X'\| - \mathbb{E}\|Y - Y'\|\big)^{1/2},

    expectations over all pairs (a V-statistic, so :math:`D \ge 0` and it is a metric between the two
    empirical measures; for exact samples it falls like :math:`n^{-1/2}`).  Pairwise distances are
    summed in chunks of ``chunk`` rows, on ``x``'s device, in float64.
    """
    x, y = _samples(x, "x"), _samples(y, "y").to(x.device)
    if x.shape[1] != y.shape[1]:
        raise ShapeError(f"x and y must have the same event size, got {x.shape[1]} and {y.shape[1]}")
    d2 = 2 * _mean_pairwise(x, y, chunk) - _mean_pairwise(x, x, chunk) - _mean_pairwise(y, y, chunk)
    return Distance("energy_distance", math.sqrt(max(float(d2), 0.0)), floor)


# -- mixtures -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModeMasses:
    r"""Mass of each mixture component read through the exact posterior, against the weights.

    ``masses`` = :math:`\frac1n\sum_i \pi_k(x_i, t)`; ``se`` = :math:`\sqrt{w_k(1 - w_k)/n}`, the binomial
    standard error under exact sampling (an upper bound, since :math:`\pi_k \in [0, 1]` has
    :math:`\operatorname{Var}\pi_k \le w_k(1 - w_k)`); ``se_empirical`` = the sample std of
    :math:`\pi_k(x_i, t)` over :math:`\sqrt n`.
    """

    n: int
    masses: torch.Tensor
    weights: torch.Tensor
    se: torch.Tensor
    se_empirical: torch.Tensor

    @property
    def z(self) -> torch.Tensor:
        """``(masses - weights) / se``."""
        return (self.masses - self.weights) / self.se

    @property
    def max_z(self) -> float:
        return float(self.z.abs().max())

    @property
    def total_variation(self) -> float:
        r""":math:`\tfrac12\sum_k |m_k - w_k|`."""
        return 0.5 * float((self.masses - self.weights).abs().sum())

    @property
    def value(self) -> float:
        """The total variation, a single number for reports."""
        return self.total_variation

    def within(self, k: float = 4.0) -> bool:
        """Whether every component's mass is within ``k`` binomial standard errors of its weight."""
        return self.max_z <= k


def mode_masses(samples: torch.Tensor, mixture, t=None, chunk: int = 65536) -> ModeMasses:
    r"""Component masses of ``samples`` (shape ``(n, d)``) under ``mixture``'s exact posterior at time ``t``.

    ``t`` defaults to ``mixture.sde.eps``, where samplers stop.  An order of magnitude sharper than
    distances at catching mass drifting between modes, the commonest sampler fault.
    """
    x = samples.detach() if isinstance(samples, torch.Tensor) else torch.as_tensor(samples)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ShapeError(f"samples must have shape (n, {mixture.dim}) with n >= 2, got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    t = mixture.sde.eps if t is None else t
    post = torch.cat([mixture.posterior(x[i:i + chunk], t).to(torch.float64).cpu()
                      for i in range(0, x.shape[0], chunk)])
    n = post.shape[0]
    w = mixture.weights.clone()
    return ModeMasses(n=n, masses=post.mean(0), weights=w, se=(w * (1 - w) / n).sqrt(),
                      se_empirical=post.std(0) / math.sqrt(n))
