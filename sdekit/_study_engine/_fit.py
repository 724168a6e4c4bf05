r"""Fitted orders: the least-squares slope of log error on log step (or log NFE), with a confidence interval.

The slope is ``sdekit.validation.fit_order``'s; the interval is Student's: with ``k`` points,
residual variance :math:`s^2 = \sum r_i^2 / (k - 2)` and :math:`S_{xx} = \sum (x_i - \bar x)^2`, the
slope's standard error is :math:`s / \sqrt{S_{xx}}` and the 95% interval
:math:`\hat b \pm t_{0.975,\,k-2}\,s/\sqrt{S_{xx}}`.  It measures how well one straight line describes
the points (Monte Carlo scatter and curvature alike), so a method outside its asymptotic regime gets
a wide interval instead of a falsely sharp one.  Two points give a slope and no interval.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from scipy import stats

__all__ = ["OrderFit", "fit_slope"]


@dataclass(frozen=True)
class OrderFit:
    """A fitted order: ``slope`` with its 95% interval ``(lo, hi)``, from ``points`` points."""

    slope: float
    lo: float
    hi: float
    points: int
    se: Optional[float] = None

    def contains(self, order: float, band: float = 0.0) -> bool:
        """Whether ``order`` lies in the interval widened by ``band`` on each side."""
        return self.lo - band <= order <= self.hi + band

    def __str__(self):
        if math.isnan(self.slope):
            return "-"
        if math.isnan(self.lo):
            return f"{self.slope:.2f}"
        return f"{self.slope:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


def fit_slope(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> OrderFit:
    """Least-squares slope of ``log y`` on ``log x`` with its ``level`` confidence interval.

    Points with a non-positive or non-finite ``x`` or ``y`` are left out; fewer than two points give NaN.
    """
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, y)
           if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0]
    k = len(pts)
    nan = float("nan")
    if k < 2:
        return OrderFit(nan, nan, nan, k)
    mx = sum(p[0] for p in pts) / k
    my = sum(p[1] for p in pts) / k
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return OrderFit(nan, nan, nan, k)
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    if k == 2:
        return OrderFit(b, nan, nan, k)
    a = my - b * mx
    s2 = sum((p[1] - a - b * p[0]) ** 2 for p in pts) / (k - 2)
    se = math.sqrt(s2 / sxx)
    half = float(stats.t.ppf(0.5 + level / 2, k - 2)) * se
    return OrderFit(b, b - half, b + half, k, se)
