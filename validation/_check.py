r"""``check_sde``: is a user's SDE consistent with itself, and do its reverse processes return the data?

Four checks, each skipped (and said so) where the SDE lacks what it needs:

1. **marginals vs drift and diffusion**: for a :class:`sdekit.LinearSDE` with closed forms, the moment
   ODEs :math:`(\log\alpha)' = f`, :math:`(\sigma^2)' = 2f\sigma^2 + g^2` (:func:`moment_residual`); for any
   other SDE with ``marginal_prob``, a Monte Carlo check: the forward SDE simulated from fixed
   :math:`x_0` against ``marginal_prob``'s mean and std, within standard errors.
2. **prior vs marginal at T**: the prior's mean and variance against those of :math:`p_T` for unit
   Gaussian data (linear SDEs: closed form; others: simulation).
3. **reverse SDE** and 4. **probability-flow ODE**, driven by the exact score of Gaussian data
   :math:`N(\mu, \Sigma)` (linear SDEs only): started from exact samples of :math:`p_T`, they must return
   :math:`p_\epsilon` within Monte Carlo standard errors.
"""

import math
from dataclasses import dataclass, field
from typing import List

import torch

import sdekit
from sdekit import SDEKitError

from ._gaussian import GaussianData
from ._metrics import mean_cov_error
from ._moments import LinearMoments, has_closed_form, moment_residual

__all__ = ["check_sde", "SDECheckReport", "SDECheckError"]

_DATA_MEAN = [0.5, -1.0]
_DATA_COV = [[1.0, 0.3], [0.3, 0.5]]


class SDECheckError(SDEKitError, ValueError):
    """Raised by :func:`check_sde` when a check fails; ``.report`` holds the whole report."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


@dataclass
class CheckRow:
    """One check: its name, ``"pass"``, ``"FAIL"`` or ``"skip"``, what was measured against what, and a note."""
    name: str
    status: str
    measured: str = ""
    tolerance: str = ""
    note: str = ""


@dataclass
class SDECheckReport:
    """The outcome of :func:`check_sde`: one :class:`CheckRow` per check; ``ok`` when none failed."""
    sde: str
    rows: List[CheckRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != "FAIL" for r in self.rows)

    @property
    def failures(self) -> List[CheckRow]:
        return [r for r in self.rows if r.status == "FAIL"]

    def __str__(self):
        head = ("check", "status", "measured", "tolerance", "note")
        rows = [(r.name, r.status, r.measured, r.tolerance, r.note) for r in self.rows]
        widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
        lines = [f"check_sde({self.sde})"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
        return "\n".join(lines)


def check_sde(sde: sdekit.SDE, *, n: int = 4000, steps: int = 500, k: float = 5.0, prior_tol: float = 0.05,
              seed: int = 0, raise_on_failure: bool = True) -> SDECheckReport:
    r"""Check ``sde`` against itself and against the truth; return a readable :class:`SDECheckReport`.

    **Arguments**

    - ``sde``: any :class:`sdekit.SDE`; the exact-score checks need a :class:`sdekit.LinearSDE`.
    - ``n``: Monte Carlo sample size; ``steps``: Euler steps for simulations and the reverse SDE.
    - ``k``: how many standard errors a Monte Carlo comparison may be off (several comparisons are made).
    - ``prior_tol``: relative tolerance of the prior's std against :math:`p_T`'s, and of the leftover
      signal :math:`|\alpha(T)|\,\|\mu\|` against the prior std.
    - ``raise_on_failure``: raise :class:`SDECheckError` (with the report) if any check fails.
    """
    if not isinstance(sde, sdekit.SDE):
        raise sdekit.ArgumentTypeError(f"check_sde expects an sdekit.SDE, got {type(sde).__name__}")
    report = SDECheckReport(repr(sde))
    gen = torch.Generator().manual_seed(seed)
    linear = isinstance(sde, sdekit.LinearSDE)
    report.rows.append(_marginals(sde, linear, n, steps, k, gen))
    report.rows.append(_prior(sde, linear, n, steps, k, prior_tol, gen))
    data = GaussianData(_DATA_MEAN, _DATA_COV, sde, moments=LinearMoments(sde)) if linear else None
    for name, make, method, opts in (("reverse SDE returns the data", sdekit.reverse, "euler", dict(steps=steps)),
                                     ("probability flow returns the data", sdekit.probability_flow, "dopri5",
                                      dict(rtol=1e-7, atol=1e-7))):
        if data is None:
            report.rows.append(CheckRow(name, "skip", note="needs a LinearSDE, whose exact score is known"))
            continue
        x_T = data.sample(n, t=sde.T, generator=gen)
        sol = make(sde, data.score).solve(x_T, method=method, generator=gen, **opts)
        mean, cov = data.marginal(sde.eps)
        err = mean_cov_error(sol.x, mean, cov)
        report.rows.append(CheckRow(name, "pass" if err.within(k) else "FAIL", f"max |z| = {err.max_z:.2f}",
                                    f"{k:g} SE", f"{method}, {sol.nfe} NFE, n={n}, at t=eps={sde.eps:g}"))
    if raise_on_failure and not report.ok:
        names = ", ".join(r.name for r in report.failures)
        raise SDECheckError(f"check_sde failed: {names}\n{report}", report)
    return report


def _simulate(sde, x0, t_end, steps, gen):
    return sde.solve(x0, method="euler", steps=steps, t_end=t_end, generator=gen).x


def _marginals(sde, linear, n, steps, k, gen):
    name = "marginals solve the moment ODEs" if linear else "marginal_prob matches simulation"
    if linear:
        if not has_closed_form(sde):
            return CheckRow(name, "skip", note="no closed form: LinearMoments integrates the moment ODEs")
        res = moment_residual(sde)
        return CheckRow(name, "pass" if res.ok(1e-6) else "FAIL", f"max rel. residual {res.max:.2e}", "1e-06",
                        f"{res.derivative} derivatives on {res.t.numel()} times")
    x0 = torch.tensor(_DATA_MEAN, dtype=torch.float64).expand(n, 2).contiguous()
    try:
        mean, std = sde.marginal_prob(x0[:1], torch.tensor([sde.T], dtype=torch.float64))
    except NotImplementedError:
        return CheckRow(name, "skip", note="the SDE has no marginal_prob")
    worst = 0.0
    for t in (0.5 * sde.T, sde.T):
        xt = _simulate(sde, x0, t, steps, gen)
        mean, std = sde.marginal_prob(x0[:1], torch.tensor([t], dtype=torch.float64))
        sd = torch.as_tensor(std, dtype=torch.float64).reshape(-1)[0]
        se_mean, se_var = sd / math.sqrt(n), sd ** 2 * math.sqrt(2.0 / (n - 1))
        z_mean = ((xt.mean(0) - mean[0]).abs() / se_mean).max()
        z_var = ((xt.var(0) - sd ** 2).abs() / se_var).max()
        worst = max(worst, float(z_mean), float(z_var))
    return CheckRow(name, "pass" if worst <= k else "FAIL", f"max |z| = {worst:.2f}", f"{k:g} SE",
                    f"Euler, {steps} steps, n={n}, from a fixed x0")


def _prior(sde, linear, n, steps, k, prior_tol, gen):
    name = "prior matches the marginal at T"
    try:
        z = sde.prior_sampling((n, 2), generator=gen, dtype=torch.float64)
        logp = sde.prior_logp(z)
    except NotImplementedError:
        return CheckRow(name, "skip", note="the SDE defines no prior")
    if logp.shape != (n,) or not torch.isfinite(logp).all():
        return CheckRow(name, "FAIL", note=f"prior_logp must give one finite value per sample, got {tuple(logp.shape)}")
    if linear:
        moments = LinearMoments(sde)
        T = torch.tensor([sde.T], dtype=torch.float64)
        a, s = float(moments.alpha(T)), float(moments.sigma(T))
        prior_std = float(z.std())
        se = prior_std / math.sqrt(2 * (z.numel() - 1))
        exact_std = math.sqrt(a * a + s * s)  # unit-variance data
        rel = abs(prior_std - exact_std) / exact_std
        signal = abs(a) * math.hypot(*_DATA_MEAN) / exact_std
        ok = rel <= prior_tol + k * se / exact_std and signal <= prior_tol
        return CheckRow(name, "pass" if ok else "FAIL", f"std rel. err {rel:.2e}, leftover signal {signal:.2e}",
                        f"{prior_tol:g}", "unit-variance data; prior std sampled")
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    xT = _simulate(sde, x0, sde.T, steps, gen)
    err = mean_cov_error(z, xT.mean(0), torch.cov(xT.T), standard_errors="empirical")
    z_two = err.max_z / math.sqrt(2)  # both sides are samples: the standard errors add
    return CheckRow(name, "pass" if z_two <= k else "FAIL", f"max |z| = {z_two:.2f}", f"{k:g} SE",
                    f"simulated p_T from N(0, I) data, Euler {steps} steps, n={n}")
