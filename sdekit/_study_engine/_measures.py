r"""Error measures of one row against its references: the pathwise error, weak errors, the verdict.

- :func:`pathwise_error`: the mean over samples of the mean absolute difference from the reference on
  the same Brownian path (the strong error of SDE rows, the ODE error of flow rows), with its standard error.
- :func:`weak_error`: :math:`|E\varphi(x) - E\varphi(y)|`, coupled with the pathwise reference where there is one.
- :func:`verdict`: a row's reading of the problem's distributional measures (:data:`VERDICT_RULE`).
"""

import math

import torch

from ._problem import Measure, mean_with_se

__all__ = ["pathwise_error", "weak_error", "verdict", "VERDICT_RULE"]


def pathwise_error(x: torch.Tensor, ref: torch.Tensor) -> Measure:
    """Mean over samples of the mean absolute difference over coordinates, with its standard error."""
    return mean_with_se((x - ref).abs().reshape(x.shape[0], -1).mean(1))


def weak_error(phi, x, ref, exact) -> Measure:
    r""":math:`|E\varphi(x) - E\varphi(y)|`: coupled with a pathwise reference ``ref`` (the mean of
    :math:`\varphi(x_i) - \varphi(y_i)`, whose variance is the strong error's), else against independent
    exact samples (standard error :math:`\sqrt{s_x^2/n + s_y^2/m}`); NaN with neither."""
    fx = phi(x).to(torch.float64).reshape(-1)
    if ref is not None:
        m = mean_with_se(fx - phi(ref).to(torch.float64).reshape(-1))
        return Measure(abs(m.value), m.se)
    if exact is not None:
        fy = phi(exact).to(torch.float64).reshape(-1)
        se = math.sqrt(float(fx.var()) / fx.numel() + float(fy.var()) / fy.numel())
        return Measure(abs(float(fx.mean() - fy.mean())), se)
    return Measure(float("nan"))


#: How a row's verdict is read.
VERDICT_RULE = ("ok: every distributional measure passes its own test (a distance within its Monte Carlo floor's "
                "mean + 3 std, masses and moments within 3 standard errors); CHECK: one does not; failed: the "
                "solve did not reach t_end; '-': the problem has no distributional reference")


def verdict(record, measures) -> str:
    """``"failed"``, ``"ok"``, ``"CHECK"`` or ``"-"`` for a row, by :data:`VERDICT_RULE`."""
    if record["result"] != "SUCCESS":
        return "failed"
    oks = [m.ok for m in measures.values() if m.ok is not None]
    if not oks:
        return "-"
    return "ok" if all(oks) else "CHECK"
