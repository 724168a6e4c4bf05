r"""``check_sde``: is a user's SDE consistent with itself, and do its reverse processes return the data?

It checks what a training loop and a sampler call: the public ``f``, ``g``, ``marginal_prob``,
``prior_sampling`` and ``prior_logp``, as the SDE (or a subclass) defines them, never a library
internal.  An SDE is *linear* when its public ``f`` is :math:`f(t)\,x` and its ``g`` is :math:`g(t)`
(probed numerically, whatever class it is); its truth is then the moment ODEs
:math:`(\log\alpha)' = f`, :math:`(\sigma^2)' = 2f\sigma^2 + g^2` integrated from those coefficients
(:class:`LinearMoments` with ``method="ode"``).  Four checks, each skipped (and said so) where the SDE
lacks what it needs:

1. **marginals**: a linear SDE's ``marginal_prob`` against the moment ODEs (deterministic), or, without
   ``marginal_prob``, an Euler simulation against them; a non-linear SDE's ``marginal_prob`` against an
   Euler simulation from a fixed :math:`x_0`, within standard errors.
2. **prior**: ``prior_sampling``'s std against that of :math:`p_T` for unit Gaussian data (moment ODEs, or
   simulation), and ``prior_logp`` against ``prior_sampling``: it integrates to one and its mean over the
   prior's samples is the prior's negative entropy (both by importance sampling, within standard errors).
3. **reverse SDE** and 4. **probability-flow ODE**, driven by the exact score of Gaussian data
   :math:`N(\mu, \Sigma)` (linear SDEs): started from exact samples of :math:`p_T`, they must return
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
from ._moments import LinearMoments

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

    - ``sde``: any :class:`sdekit.SDE`; the exact-score checks need ``f`` linear in ``x`` and ``g``
      independent of ``x`` (a :class:`sdekit.LinearSDE`, or any SDE that is one numerically).
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
    linear = _as_linear(sde)
    moments = None if linear is None else LinearMoments(linear, method="ode")
    report.rows.append(_marginals(sde, moments, n, steps, k, gen))
    report.rows.append(_prior(sde, moments, n, steps, k, prior_tol, gen))
    data = None if moments is None else GaussianData(_DATA_MEAN, _DATA_COV, linear, moments=moments)
    for name, make, method, opts in (("reverse SDE returns the data", sdekit.reverse, "euler", dict(steps=steps)),
                                     ("probability flow returns the data", sdekit.probability_flow, "dopri5",
                                      dict(rtol=1e-7, atol=1e-7))):
        if data is None:
            report.rows.append(CheckRow(name, "skip", note="needs f = f(t) x and g = g(t), whose exact score is known"))
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


class _Linearised(sdekit.LinearSDE):
    """The coefficients :math:`f(t)` and :math:`g(t)` of a user's SDE read through its public ``f`` and ``g``."""

    def __init__(self, sde):
        super().__init__(T=sde.T, eps=sde.eps)
        self.user = sde
        self.initial_sigma = float(getattr(sde, "initial_sigma", 0.0))
        self._process = sdekit.forward(sde)   # its diffusion() reads g(t, x) or g(t), checked

    def drift_coef(self, t):
        return self.user.f(t, torch.ones(t.shape[0], 1, dtype=t.dtype))[:, 0]

    def diffusion_coef(self, t):
        x = torch.ones(t.shape[0], 1, dtype=t.dtype)
        return self._process.diffusion(t, x).reshape(t.shape[0], -1)[:, 0]

    def __repr__(self):
        return repr(self.user)


def _as_linear(sde):
    """``sde`` as a LinearSDE if its public f is f(t) x and its g is g(t) (checked at random points), else None."""
    gen = torch.Generator().manual_seed(12345)
    t = sde.eps + (sde.T - sde.eps) * torch.rand(9, generator=gen, dtype=torch.float64)
    x = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    lin = _Linearised(sde)
    try:
        a, g = lin.drift_coef(t), lin.diffusion_coef(t)
        f_x = sde.f(t, x)
        g_x = lin._process.diffusion(t, 3 * x + 1)
    except NotImplementedError:
        return None
    close = torch.allclose(f_x, a[:, None] * x, rtol=1e-9, atol=1e-12 * float(f_x.abs().max()))
    if g_x.dim() > 1:
        close = close and torch.allclose(g_x, g_x[:, :1].expand_as(g_x), rtol=1e-12, atol=0)
        g_x = g_x[:, 0]
    close = close and torch.allclose(g_x, g, rtol=1e-12, atol=0)
    return lin if close and bool(torch.isfinite(a).all() and torch.isfinite(g).all()) else None


def _simulate(sde, x0, t_end, steps, gen):
    return sde.solve(x0, method="euler", steps=steps, t_end=t_end, generator=gen).x


def _marginal_prob(sde, x0, t):
    """``sde.marginal_prob`` at one time for every row of ``x0``: mean (n, d) and std (n, d); None if undefined."""
    try:
        mean, std = sde.marginal_prob(x0, torch.full((x0.shape[0],), t, dtype=torch.float64))
    except NotImplementedError:
        return None
    std = torch.as_tensor(std, dtype=torch.float64)
    std = std.reshape(x0.shape[0], -1) if std.dim() > 0 and std.shape[0] == x0.shape[0] else std.reshape(1, -1)
    return torch.as_tensor(mean, dtype=torch.float64), std.expand_as(x0)


def _marginals(sde, moments, n, steps, k, gen):
    x0 = torch.tensor(_DATA_MEAN, dtype=torch.float64).expand(n, 2).contiguous()
    has_marginal = _marginal_prob(sde, x0[:1], sde.T) is not None
    if moments is not None and has_marginal:
        return _marginal_prob_vs_odes(sde, moments, x0[:1])
    if moments is None and not has_marginal:
        return CheckRow("marginal_prob matches simulation", "skip",
                        note="no marginal_prob, and f, g are not linear: nothing exact to compare with")
    name = "marginal_prob matches simulation" if has_marginal else "simulation matches the moment ODEs"
    worst = 0.0
    for t in (0.5 * sde.T, sde.T):
        xt = _simulate(sde, x0, t, steps, gen)
        if has_marginal:
            mean, sd = _marginal_prob(sde, x0[:1], t)
            mean, sd = mean[0], sd[0]
        else:
            tt = torch.tensor([t], dtype=torch.float64)
            mean, sd = float(moments.alpha(tt)) * x0[0], float(moments.sigma(tt)) * torch.ones(2, dtype=torch.float64)
        se_mean, se_var = sd / math.sqrt(n), sd ** 2 * math.sqrt(2.0 / (n - 1))
        z_mean = ((xt.mean(0) - mean).abs() / se_mean).max()
        z_var = ((xt.var(0) - sd ** 2).abs() / se_var).max()
        worst = max(worst, float(z_mean), float(z_var))
    return CheckRow(name, "pass" if worst <= k else "FAIL", f"max |z| = {worst:.2f}", f"{k:g} SE",
                    f"Euler, {steps} steps, n={n}, from a fixed x0")


def _marginal_prob_vs_odes(sde, moments, x0, tol=1e-6):
    """marginal_prob's mean and std against the moment ODEs of f and g, at 9 times in [eps, T]."""
    worst = 0.0
    for t in torch.linspace(sde.eps, sde.T, 9, dtype=torch.float64).tolist():
        mean, std = _marginal_prob(sde, x0, t)
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = float(moments.alpha(tt)), float(moments.sigma(tt))
        worst = max(worst, float(((mean - a * x0).abs() / (a * x0).abs()).max()), float(((std - s) / s).abs().max()))
    return CheckRow("marginal_prob solves the moment ODEs", "pass" if worst <= tol else "FAIL",
                    f"max rel. error {worst:.2e}", f"{tol:g}", "mean and std at 9 times in [eps, T]")


def _prior(sde, moments, n, steps, k, prior_tol, gen):
    name = "prior matches the marginal at T"
    try:
        z = sde.prior_sampling((n, 2), generator=gen, dtype=torch.float64)
    except NotImplementedError:
        return CheckRow(name, "skip", note="the SDE defines no prior_sampling")
    logp = _prior_logp(sde, z, n, k, gen)
    if isinstance(logp, CheckRow):
        return logp
    if moments is not None:
        T = torch.tensor([sde.T], dtype=torch.float64)
        a, s = float(moments.alpha(T)), float(moments.sigma(T))
        prior_std = float(z.std())
        se = prior_std / math.sqrt(2 * (z.numel() - 1))
        exact_std = math.sqrt(a * a + s * s)  # unit-variance data
        rel = abs(prior_std - exact_std) / exact_std
        signal = abs(a) * math.hypot(*_DATA_MEAN) / exact_std
        ok = rel <= prior_tol + k * se / exact_std and signal <= prior_tol and logp[0]
        return CheckRow(name, "pass" if ok else "FAIL",
                        f"std rel. err {rel:.2e}, leftover signal {signal:.2e}; {logp[1]}",
                        f"{prior_tol:g}; {k:g} SE", "unit-variance data; prior std sampled" + logp[2])
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    xT = _simulate(sde, x0, sde.T, steps, gen)
    err = mean_cov_error(z, xT.mean(0), torch.cov(xT.T), standard_errors="empirical")
    z_two = err.max_z / math.sqrt(2)  # both sides are samples: the standard errors add
    return CheckRow(name, "pass" if z_two <= k and logp[0] else "FAIL", f"max |z| = {z_two:.2f}; {logp[1]}",
                    f"{k:g} SE", f"simulated p_T from N(0, I) data, Euler {steps} steps, n={n}" + logp[2])


def _prior_logp(sde, z, n, k, gen):
    r"""prior_logp against prior_sampling's samples ``z``: ``(ok, measured, note)``, or a FAIL row.

    With a proposal :math:`q = N(\hat m, (2\hat s)^2 I)` wider than the prior and :math:`w = e^{\log p}/q` on
    draws from q, :math:`E_q[w] = 1` (the density is normalised) and :math:`E_q[w \log p] = E_p[\log p]`,
    which the prior's own samples estimate too (the density is the one sampled from).
    """
    try:
        logp = sde.prior_logp(z)
    except NotImplementedError:
        return True, "no prior_logp", ""
    if not isinstance(logp, torch.Tensor) or logp.shape != (n,) or not torch.isfinite(logp).all():
        shape = tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__
        return CheckRow("prior matches the marginal at T", "FAIL",
                        note=f"prior_logp must give one finite value per sample, got {shape}")
    m, s = z.mean(0), 2 * float(z.std())
    y = m + s * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    log_q = -0.5 * ((y - m) / s).pow(2).sum(1) - 2 * math.log(s) - math.log(2 * math.pi)
    lp = sde.prior_logp(y).to(torch.float64)
    w = torch.exp(lp - log_q)
    z_norm = abs(float(w.mean()) - 1) / (float(w.std()) / math.sqrt(n))
    cross = w * lp
    diff = float(cross.mean()) - float(logp.mean())
    se = math.sqrt(float(cross.var()) / n + float(logp.var()) / n)
    z_ent = abs(diff) / se
    worst = max(z_norm, z_ent)
    return (worst <= k, f"prior_logp |z| = {worst:.2f}",
            "; prior_logp by importance sampling")
