r"""Measured orders of convergence of every registered method, against exact solutions.

Four studies, each returning :class:`OrderResult` rows (a fitted slope of log error on log step):

- :func:`strong_order`: an SDE method on an exact-solution SDE (:mod:`._exact_sdes`), one Brownian
  path shared by every step size :math:`\Delta t = T/2^k`, error :math:`E|X_N - X(T)|` averaged over
  the batch and the coordinates.
- :func:`ode_order`: an ODE method on the probability-flow ODE of Gaussian data (:class:`GaussianFlow`),
  whose flow map is known in closed form; fixed steps for every method that can take them (see
  :func:`ode_order` for the adaptive ones).
- :func:`tolerance_study`: an adaptive ODE method at decreasing tolerances.
- :func:`weak_order`: the bias of :math:`E[x_\epsilon]` and :math:`E[x_\epsilon^2]` of a reverse-SDE
  sampler with the exact score, with a control variate that removes most Monte Carlo noise.

:func:`order_table` runs the standard plan (what the tests assert and ``docs/orders.md`` shows) and
``python -m sdekit.validation.orders`` prints it.  Solves run under ``torch.no_grad()``: torchsde
keeps the autograd graph of Milstein's derivative otherwise.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import sdekit
from sdekit import InvalidParameterError

from ._exact_sdes import ExactSDE, exact_sdes
from ._gaussian import GaussianData

__all__ = [
    "OrderResult", "GaussianFlow", "fit_order", "strong_order", "ode_order", "tolerance_study", "weak_order",
    "STRONG_PLAN", "ODE_PLAN", "ODE_EXCEPTIONS", "ODE_EXPECTED", "TOLERANCE_PLAN", "order_table", "format_table", "expected_strong_order",
]


@dataclass
class OrderResult:
    """One measured order: ``measured`` is the least-squares slope of ``log(errors)`` on ``log(h)``.

    ``declared`` is the method's registered order for this noise class (``None`` where it has none),
    ``expected`` what the study should find (equal to ``declared`` unless ``note`` says why not),
    ``h`` the step sizes (or tolerances), ``errors`` the errors, ``steps`` the step counts.
    """

    study: str
    method: str
    backend: str
    problem: str
    declared: Optional[float]
    expected: Optional[float]
    measured: float
    h: List[float]
    errors: List[float]
    steps: List[int] = field(default_factory=list)
    note: str = ""
    extra: dict = field(default_factory=dict)

    def within(self, band: float = 0.3) -> bool:
        """Whether the fitted slope lies within ``band`` of the expected order."""
        return self.expected is not None and abs(self.measured - self.expected) <= band

    def describe(self) -> str:
        pts = ", ".join(f"{h:.3g}:{e:.3g}" for h, e in zip(self.h, self.errors))
        return (f"{self.study} {self.method} ({self.backend}) on {self.problem}: fitted {self.measured:.3f}, "
                f"expected {self.expected} (declared {self.declared}); h:error = {pts}"
                + (f"; {self.note}" if self.note else ""))


def fit_order(h: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of ``log(errors)`` against ``log(h)``."""
    x = torch.log(torch.as_tensor(list(h), dtype=torch.float64))
    y = torch.log(torch.as_tensor(list(errors), dtype=torch.float64))
    if not bool(torch.isfinite(y).all()):
        return float("nan")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def _method(name: str, kind: str):
    found = [m for m in sdekit.methods() if kind in m.accepts and (m.name == name or m.qualified_name == name)]
    if not found:
        raise InvalidParameterError(f"no {kind.upper()} method called {name!r}; see sdekit.methods(kind={kind!r})")
    return found[0]


# ---------------------------------------------------------------------------------------------
# Strong orders
# ---------------------------------------------------------------------------------------------

_TRAPEZOIDAL = ("heun", "midpoint", "log_ode", "reversible_heun")

#: (method, problem) -> (expected order, why) where the order to expect is not the declared one.
#: Each raises it; none lowers it.  docs/orders.md explains them.
#:
#: - heun, midpoint, log_ode, reversible_heun on "additive": a W_t-only solution makes drift and
#:   diffusion commute (L1 f = L0 g), the int int dW ds term of the Itô–Taylor expansion vanishes,
#:   and these trapezoidal schemes measure order 2.  On "additive-tv" they show their order 1.
#: - srk on both additive problems: the drift is linear in x, so L1 L1 f = 0 and the first term
#:   SRA1 misses is O(h^2).  Every additive SDE with a closed-form solution has a linear drift, so
#:   SRA1's order 1.5 cannot be isolated with an exact solution.
STRONG_EXCEPTIONS: Dict[Tuple[str, str], Tuple[float, str]] = {}
for _m in _TRAPEZOIDAL:
    STRONG_EXCEPTIONS[(_m, "additive")] = (2.0, "f, g commute: no int int dW ds term")
for _p in ("additive", "additive-tv"):
    STRONG_EXCEPTIONS[("srk", _p)] = (2.0, "linear drift: SRA1 error O(h^2)")


def expected_strong_order(method, problem_name: str, sde: ExactSDE) -> Tuple[Optional[float], Optional[float], str]:
    """``(declared, expected, note)`` for an SDE method on a named exact-solution problem."""
    declared = method.order_additive if sde.noise == "additive" else method.order
    expected, note = STRONG_EXCEPTIONS.get((method.name, problem_name), (declared, ""))
    return declared, expected, note


def strong_order(method: str, problem="gbm", ks: Sequence[int] = range(4, 9), batch: int = 2000,
                 seed: int = 0, dtype=torch.float64) -> OrderResult:
    r"""Strong order of an SDE ``method`` on an exact-solution ``problem``.

    **Arguments**

    - ``method``: an SDE method name (``sdekit.methods(kind="sde")``).
    - ``problem``: a name from :func:`exact_sdes` or an :class:`ExactSDE`.
    - ``ks``: step sizes :math:`\Delta t = T/2^k`.
    - ``batch``: independent paths; ``seed``: the Brownian motion's seed; ``dtype``: float64 by default.

    One Brownian motion over :math:`[0, T]` (with the method's Lévy-area approximation, or space-time
    where the exact solution needs :math:`\int_0^T W_s ds`) drives every solve, so the errors at
    different step sizes share their path and differ by discretisation only.
    """
    m = _method(method, "sde")
    name = problem if isinstance(problem, str) else type(problem).__name__
    sde = exact_sdes()[problem] if isinstance(problem, str) else problem
    x0 = sde.initial_state(batch, dtype=dtype)
    levy = m.levy_area
    if sde.needs_time_integral and levy == "none":
        levy = "space-time"
    bm = sdekit.brownian_motion(0.0, sde.T, x0.shape, dtype=dtype, seed=seed, levy_area=levy)
    if sde.needs_time_integral:
        w, u = bm(0.0, sde.T, return_U=True)
    else:
        w, u = bm(0.0, sde.T), None
    exact = sde.exact(x0, sde.T, w, u)
    hs, errors, steps = [], [], []
    for k in ks:
        n = 2 ** int(k)
        with torch.no_grad():
            x = sde.solve(x0, method=m.name, steps=n, noise=bm).x
        hs.append(sde.T / n)
        errors.append(float((x - exact).abs().mean()))
        steps.append(n)
    declared, expected, note = expected_strong_order(m, name, sde)
    return OrderResult("strong", m.name, m.backend, name, declared, expected, fit_order(hs, errors), hs, errors,
                       steps, note)


# ---------------------------------------------------------------------------------------------
# ODE orders
# ---------------------------------------------------------------------------------------------

class GaussianFlow:
    r"""The probability-flow ODE of data :math:`N(\mu, \operatorname{diag}(S))` under a linear SDE, solved exactly.

    A :class:`GaussianData` with a diagonal covariance, flattened to its ``d`` coordinates: the score and
    the flow map (:meth:`GaussianData.flow_map`, coordinatewise here,
    :math:`x_s = \alpha_s\mu + \sqrt{v_s / v_t}\,(x_t - \alpha_t\mu)` with :math:`v_t = \alpha_t^2 S + \sigma_t^2`)
    take any event shape with ``d`` elements.

    **Arguments**

    - ``name``: a label for tables.
    - ``sde``: an :class:`sdekit.LinearSDE`.
    - ``mean``, ``var``: :math:`\mu` and :math:`S`, length ``d`` (``S`` not all 1, or the flow is trivial).
    - ``t_start``, ``t_end``: the interval integrated (from ``t_start`` down to ``t_end``).
    """

    def __init__(self, name: str, sde, mean, var, t_start: float, t_end: float):
        self.name, self.sde = name, sde
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.var = torch.as_tensor(var, dtype=torch.float64)
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.data = GaussianData(self.mean, torch.diag(self.var), sde)

    def _av(self, t, like):
        r""":math:`\alpha_t` (shape ``(n, 1)``), :math:`v_t = \alpha_t^2 S + \sigma_t^2` (``(n, d)``) and :math:`\mu`, in
        ``like``'s dtype: the moments the weak-order study reads (``t`` a number or ``n`` times)."""
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        t = t.expand(like.shape[0]) if t.dim() == 0 else t.reshape(-1)
        a = self.data.moments.alpha(t).reshape(-1, 1)
        s = self.data.moments.sigma(t).reshape(-1, 1)
        mu, var = self.mean.to(like), self.var.to(like)
        return a, a * a * var + s * s, mu

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact score of :math:`p_t`; any event shape with ``d`` elements."""
        return self.data.score(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    def flow_map(self, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
        """The exact flow from time ``t`` to time ``s`` (:meth:`GaussianData.flow_map`)."""
        return self.data.flow_map(x.reshape(x.shape[0], -1), t, s).reshape(x.shape)

    def sample(self, n: int, t: float, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
        """``n`` exact samples of :math:`p_t`, shape ``(n, d)``: the mean plus the marginal std times standard normals."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.mean.numel(), generator=g, dtype=torch.float64)
        mean, cov = self.data.marginal(float(t))
        return (mean + torch.sqrt(torch.diagonal(cov)) * z).to(dtype)

    def ode(self):
        """The :class:`sdekit.ProbabilityFlowODE` with the exact score."""
        return sdekit.probability_flow(self.sde, self.score)

    def __repr__(self):
        return f"GaussianFlow({self.name!r}, t: {self.t_start} -> {self.t_end})"


def gaussian_flows() -> Dict[str, GaussianFlow]:
    r"""The two standard ODE problems: VP (defaults, :math:`t: 1 \to 10^{-3}`) and VE
    (:math:`\sigma_{max} = 10`, :math:`t: 1 \to 10^{-5}`)."""
    mean, var = (1.0, -0.5, 2.0), (0.5, 2.0, 0.25)
    return {
        "VP": GaussianFlow("VP", sdekit.VPSDE(), mean, var, 1.0, 1e-3),
        "VE": GaussianFlow("VE", sdekit.VESDE(sigma_min=0.01, sigma_max=10.0), mean, var, 1.0, 1e-5),
    }


def _tableau(name):
    # torchdiffeq's own Butcher tableaux (private modules; the same objects its adaptive solvers step with)
    from torchdiffeq._impl.adaptive_heun import _ADAPTIVE_HEUN_TABLEAU
    from torchdiffeq._impl.bosh3 import _BOGACKI_SHAMPINE_TABLEAU
    from torchdiffeq._impl.dopri5 import _DORMAND_PRINCE_SHAMPINE_TABLEAU
    from torchdiffeq._impl.dopri8 import _DOPRI8_TABLEAU
    from torchdiffeq._impl.fehlberg2 import _FEHLBERG2_TABLEAU
    return {"dopri5": _DORMAND_PRINCE_SHAMPINE_TABLEAU, "dopri8": _DOPRI8_TABLEAU, "bosh3": _BOGACKI_SHAMPINE_TABLEAU,
            "fehlberg2": _FEHLBERG2_TABLEAU, "adaptive_heun": _ADAPTIVE_HEUN_TABLEAU}[name]


def _rk_fixed(ode, x, grid, tableau):
    """Fixed steps of an explicit Runge–Kutta tableau (torchdiffeq's ``alpha``, ``beta``, ``c_sol``)."""
    alpha = [float(a) for a in tableau.alpha]
    beta = [[float(b) for b in row] for row in tableau.beta]
    c = [float(w) for w in tableau.c_sol]
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        k = [ode(torch.tensor(t0, dtype=torch.float64), x)]
        for a_i, row in zip(alpha, beta):
            xi = x + h * sum(b * kj for b, kj in zip(row, k) if b != 0)
            k.append(ode(torch.tensor(t0 + a_i * h, dtype=torch.float64), xi))
        x = x + h * sum(w * kj for w, kj in zip(c, k) if w != 0)
    return x


def ode_order(method: str, problem="VE", steps: Sequence[int] = (16, 32, 64, 128), batch: int = 100,
              seed: int = 0, options: Optional[dict] = None) -> OrderResult:
    r"""Order of an ODE ``method`` on a :class:`GaussianFlow` with ``N`` equal steps, error the largest
    :math:`|x_N - x(t_{end})|` over the batch.

    How the fixed steps are taken:

    - torchdiffeq's fixed-step methods (euler, midpoint, rk4): ``solve(..., steps=N)``.
    - torchdiffeq's adaptive methods (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun) cannot take fixed
      steps through torchdiffeq, so their own Butcher tableaux (from ``torchdiffeq._impl``) are stepped here
      with the solution weights they propagate, on the same :class:`sdekit.ProbabilityFlowODE`.
    - scipy's RK45, DOP853 and Radau: ``solve(..., rtol=atol=1e6, dt=h, options=dict(max_step=h))``, so
      every step is accepted and capped at ``h``: fixed steps through sdekit and scipy themselves.
    - LSODA changes its order as it goes: it has none to measure (use :func:`tolerance_study`).
    - sdekit's samplers: ``solve(..., steps=N, options=options)`` on their default schedules
      (``dpm_solver_fast``: ``N`` is its budget of evaluations, and the count checked is its NFE).
    """
    m = _method(method, "ode")
    case = gaussian_flows()[problem] if isinstance(problem, str) else problem
    x = case.sample(batch, case.t_start, seed=seed)
    exact = case.flow_map(x, case.t_start, case.t_end)
    span = case.t_start - case.t_end
    hs, errors, counts = [], [], []
    note = ""
    for n in steps:
        h = span / n
        with torch.no_grad():
            if m.stepping == "fixed":
                sol = case.ode().solve(x, method=m.qualified_name, steps=n, t_start=case.t_start, t_end=case.t_end,
                                       options=options)
                out, taken = sol.x, int(sol.nfe) if m.grid_steps else sol.steps   # steps= a budget: NFE
                note = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
            elif m.backend == "torchdiffeq":
                grid = torch.linspace(case.t_start, case.t_end, n + 1, dtype=torch.float64).tolist()
                out, taken = _rk_fixed(case.ode(), x, grid, _tableau(m.name)), n
                note = "fixed steps of torchdiffeq's tableau"
            elif m.backend == "scipy" and m.name != "LSODA":
                cap = h * (1 + 1e-9)  # so that rounding never leaves a sliver of a last step
                sol = case.ode().solve(x, method=m.qualified_name, rtol=1e6, atol=1e6, dt=h, t_start=case.t_start,
                                       t_end=case.t_end, options=dict(max_step=cap))
                out, taken = sol.x, sol.steps
                note = "fixed steps via max_step"
            else:
                raise InvalidParameterError(f"{m.name} has no fixed-step order to measure; use tolerance_study")
        hs.append(h)
        errors.append(float((out - exact).abs().max()))
        counts.append(int(taken))
    expected, why = ODE_EXPECTED.get((m.qualified_name, case.name), (m.order, ""))
    note = "; ".join(n for n in (note, why) if n)
    return OrderResult("ode", m.name, m.backend, case.name, m.order, expected, fit_order(hs, errors), hs, errors,
                       counts, note)


def tolerance_study(method: str, problem="VE", tols: Sequence[float] = (1e-3, 1e-5, 1e-7), batch: int = 100,
                    seed: int = 0, expected: float = 1.0) -> OrderResult:
    r"""Error of an adaptive ODE ``method`` at ``rtol = atol = tol``; ``measured`` is the slope of log error
    on log tol (``expected``: 1 for tolerance proportionality), ``extra["ratio"]`` the largest
    error / (tol (1 + max|x|)).
    """
    m = _method(method, "ode")
    case = gaussian_flows()[problem] if isinstance(problem, str) else problem
    x = case.sample(batch, case.t_start, seed=seed)
    exact = case.flow_map(x, case.t_start, case.t_end)
    scale = 1.0 + float(exact.abs().max())
    errors, counts = [], []
    for tol in tols:
        with torch.no_grad():
            sol = case.ode().solve(x, method=m.qualified_name, rtol=tol, atol=tol, t_start=case.t_start,
                                   t_end=case.t_end)
        errors.append(float((sol.x - exact).abs().max()))
        counts.append(int(sol.steps))
    ratio = max(e / (t * scale) for e, t in zip(errors, tols))
    return OrderResult("tolerance", m.name, m.backend, case.name, None, expected, fit_order(tols, errors), list(tols),
                       errors, counts, extra=dict(ratio=ratio))


# ---------------------------------------------------------------------------------------------
# Weak order of a reverse-SDE sampler
# ---------------------------------------------------------------------------------------------

def _euler_moments(case: GaussianFlow, n: int):
    r"""Exact mean and second moment of Euler–Maruyama on the reverse SDE of ``case`` with ``n`` steps.

    The scheme is linear with a Gaussian start, so its iterates are Gaussian with
    :math:`m' = (1 + hA)m + hB`, :math:`P' = (1 + hA)^2 P + hg^2`, where the reverse drift on the
    clock :math:`s = T - t` is :math:`Ay + B`, :math:`A = -(f + g^2/v)`, :math:`B = g^2\alpha\mu/v`.
    """
    sde = case.sde
    ts = torch.linspace(case.t_start, case.t_end, n + 1, dtype=torch.float64)
    a = case.data.moments.alpha(ts).reshape(-1, 1)
    v, mu = a * a * case.var + case.data.moments.sigma(ts).reshape(-1, 1) ** 2, case.mean
    m, p = a[0] * mu, v[0]
    for i in range(n):
        h = float(ts[i] - ts[i + 1])
        t = ts[i:i + 1]
        g2 = sde.diffusion_coef(t) ** 2
        big_a = -(sde.drift_coef(t) + g2 / v[i])
        big_b = g2 * a[i] * mu / v[i]
        m = (1 + h * big_a) * m + h * big_b
        p = (1 + h * big_a) ** 2 * p + h * g2
    return m, m * m + p


def weak_order(method: str = "euler", problem="VP-weak", steps: Sequence[int] = (8, 16, 32, 64), batch: int = 4000,
               reference_steps: int = 256, seed: int = 0) -> List[OrderResult]:
    r"""Weak order of a reverse-SDE ``method`` with the exact score of Gaussian data.

    The sampler starts from exact samples of :math:`p_T` and runs to :math:`\epsilon`; the exact law
    there is :math:`N(\alpha_\epsilon\mu, v_\epsilon)`.  The bias of :math:`E[\varphi(x_\epsilon)]` for
    :math:`\varphi(x) = x` and :math:`x^2` (each coordinate) is estimated as the mean of
    :math:`\varphi(x_N) - \varphi(Y)`, where :math:`Y` is the *exact* reverse process on a grid of
    ``reference_steps`` steps driven by the same Brownian path and the same :math:`x_T`: the linear
    reverse SDE's exact transition is
    :math:`Y' = \psi Y + (\alpha'\mu - \psi\alpha\mu) + \sqrt{(v' - \psi^2 v)/\Delta s}\,\Delta W` with
    :math:`\psi = (v'/v)(\alpha/\alpha')` (the homogeneous part integrates in closed form because
    :math:`f + g^2/v = \dot v/v - f`).  :math:`Y` has exactly the law of the reverse process, so the
    estimator is unbiased; being coupled to :math:`x_N` path by path, its variance is the strong error's,
    not the sample's.

    Returns one :class:`OrderResult` per moment and coordinate (``problem`` names them); each carries
    ``extra["stderr"]`` (standard errors of the biases) and, for Euler–Maruyama, ``extra["analytic"]``
    (the exact biases of the scheme from its moment recursion).
    """
    m = _method(method, "sde")
    case = _weak_case() if problem == "VP-weak" else problem
    sde = case.sde
    T, eps = case.t_start, case.t_end
    d = case.mean.numel()
    g = torch.Generator().manual_seed(seed)
    a_T, v_T, mu = case._av(T, torch.zeros(1, d, dtype=torch.float64))
    x_T = a_T * mu + torch.sqrt(v_T) * torch.randn(batch, d, generator=g, dtype=torch.float64)
    bm = sdekit.brownian_motion(0.0, T - eps, (batch, d), dtype=torch.float64, seed=seed + 1, levy_area=m.levy_area)

    ts = torch.linspace(T, eps, reference_steps + 1, dtype=torch.float64)
    a, v, _ = case._av(ts, ts.reshape(-1, 1))
    y = x_T.clone()
    for k in range(reference_steps):
        psi = v[k + 1] * a[k] / (v[k] * a[k + 1])
        q = v[k + 1] - psi ** 2 * v[k]
        s0, s1 = T - float(ts[k]), T - float(ts[k + 1])
        y = psi * y + (a[k + 1] - psi * a[k]) * mu + torch.sqrt(q / (s1 - s0)) * bm(s0, s1)

    process = sdekit.reverse(sde, case.score)
    hs, biases, stderrs, analytic = [], [], [], []
    for n in steps:
        with torch.no_grad():
            x = process.solve(x_T, method=m.name, steps=n, noise=bm).x
        diffs = torch.cat([x - y, x * x - y * y], dim=1)
        hs.append((T - eps) / n)
        biases.append(diffs.mean(0))
        stderrs.append(diffs.std(0) / math.sqrt(batch))
        if m.name == "euler":
            m1, m2 = _euler_moments(case, n)
            a_e, v_e, _ = case._av(eps, torch.zeros(1, d, dtype=torch.float64))
            ex1 = (a_e * mu)[0]
            analytic.append(torch.cat([m1 - ex1, m2 - (ex1 * ex1 + v_e[0])]))
    rows = []
    for j in range(2 * d):
        moment = "E[x]" if j < d else "E[x^2]"
        errs = [abs(float(b[j])) for b in biases]
        extra = dict(bias=[float(b[j]) for b in biases], stderr=[float(s[j]) for s in stderrs])
        if analytic:
            extra["analytic"] = [float(b[j]) for b in analytic]
        rows.append(OrderResult("weak", m.name, m.backend, f"{case.name} {moment}[{j % d}]", m.weak_order,
                                m.weak_order, fit_order(hs, errs), hs, errs, list(steps), extra=extra))
    return rows


def _weak_case() -> GaussianFlow:
    return GaussianFlow("reverse VP", sdekit.VPSDE(), (1.0, -2.0), (0.5, 2.0), 1.0, 1e-3)


# ---------------------------------------------------------------------------------------------
# The standard plan, its table
# ---------------------------------------------------------------------------------------------

_SDE_METHODS = ("euler", "milstein", "srk", "heun", "midpoint", "reversible_heun", "log_ode", "euler_heun")
_STRONG_PROBLEMS = ("gbm", "gbm-tv", "additive", "additive-tv", "arctan", "sinh")

#: (method, problem): every torchsde method on every exact-solution problem, dt = 1/16 .. 1/256.
STRONG_PLAN = [(m, p) for p in _STRONG_PROBLEMS for m in _SDE_METHODS]

#: (qualified method, problem, step counts): chosen where each method is asymptotic and above the float64 floor.
ODE_PLAN = [
    ("torchdiffeq.euler", "VP", (64, 128, 256, 512)),
    ("torchdiffeq.euler", "VE", (64, 128, 256, 512)),
    ("torchdiffeq.midpoint", "VP", (16, 32, 64, 128, 256)),
    ("torchdiffeq.midpoint", "VE", (16, 32, 64, 128, 256)),
    ("torchdiffeq.rk4", "VP", (8, 16, 32, 64, 128)),
    ("torchdiffeq.rk4", "VE", (8, 16, 32, 64, 128)),
    ("torchdiffeq.adaptive_heun", "VP", (16, 32, 64, 128, 256)),
    ("torchdiffeq.adaptive_heun", "VE", (16, 32, 64, 128, 256)),
    ("torchdiffeq.fehlberg2", "VP", (16, 32, 64, 128, 256)),
    ("torchdiffeq.fehlberg2", "VE", (16, 32, 64, 128, 256)),
    ("torchdiffeq.bosh3", "VP", (16, 32, 64, 128, 256)),
    ("torchdiffeq.bosh3", "VE", (16, 32, 64, 128, 256)),
    ("torchdiffeq.dopri5", "VE", (16, 32, 64, 128)),
    ("torchdiffeq.dopri8", "VE", (12, 16, 24, 32)),
    ("scipy.RK45", "VE", (16, 32, 64, 128)),
    ("scipy.DOP853", "VE", (12, 16, 24, 32)),
    ("scipy.Radau", "VP", (16, 32, 64, 128)),
    ("scipy.Radau", "VE", (16, 32, 64, 128)),
    # sdekit's samplers, each on its own default schedule (log-SNR, or Karras for edm_heun)
    ("sdekit.dpm_solver_2", "VP", (16, 32, 64, 128)),
    ("sdekit.dpm_solver_2", "VE", (16, 32, 64, 128)),
    ("sdekit.dpm_solver_3", "VP", (16, 32, 64, 128)),
    ("sdekit.dpm_solver_3", "VE", (16, 32, 64, 128)),
    # dpm_solver_fast: steps= is the evaluation budget (16 to 128 steps; 3K+2 ends with a second-order step,
    # 3K+1 with a first-order one, whose O(h^2) local error is negligible at the end of the log-SNR grid)
    ("sdekit.dpm_solver_fast", "VP", (50, 98, 194, 386)),
    ("sdekit.dpm_solver_fast", "VE", (49, 97, 193, 385)),
    ("sdekit.dpmpp_2s", "VP", (16, 32, 64, 128)),
    ("sdekit.dpmpp_2s", "VE", (16, 32, 64, 128)),
    ("sdekit.dpmpp_2m", "VP", (16, 32, 64, 128)),
    ("sdekit.dpmpp_2m", "VE", (16, 32, 64, 128)),
    ("sdekit.edm_heun", "VP", (16, 32, 64, 128)),
    ("sdekit.edm_heun", "VE", (16, 32, 64, 128)),
    ("sdekit.ddim", "VP", (16, 32, 64, 128)),
    ("sdekit.ddim", "VE", (16, 32, 64, 128)),
    # ipndm: equal-step Adams-Bashforth coefficients on the non-uniform Karras grid and an Euler first step: order 2
    ("sdekit.ipndm", "VP", (16, 32, 64, 128)),
    ("sdekit.ipndm", "VE", (16, 32, 64, 128)),
    # deis: order 2 (its default, order 3, starts with an Euler step: measured 3.7 on VP, 2.3 on VE, tending to 2)
    ("sdekit.deis", "VP", (16, 32, 64, 128, 256), dict(order=2)),
    ("sdekit.deis", "VE", (16, 32, 64, 128, 256), dict(order=2)),
    ("sdekit.dpmpp_3m", "VP", (16, 32, 64, 128), dict(warmup="singlestep")),
    ("sdekit.dpmpp_3m", "VE", (32, 64, 128, 256, 512), dict(warmup="singlestep")),
    ("sdekit.unipc", "VP", (16, 32, 64, 128, 256), dict(order=2)),
    ("sdekit.unipc", "VE", (16, 32, 64, 128, 256), dict(order=2)),
]

#: (method, problem) -> (expected order, why) where the study finds more than the declared order.
ODE_EXPECTED = {
    ("sdekit.dpmpp_3m", "VP"): (4.0, "warmup='singlestep', superconvergent on the VP Gaussian flow on its log-SNR "
                                     "grid: 4.0 from 16 to 2048 steps (on VE it is 3)"),
    ("sdekit.dpmpp_3m", "VE"): (3.0, "warmup='singlestep': a second-order first step (the default's first-order one "
                                     "caps it at its declared 2)"),
}

#: ODE methods with no row in ODE_PLAN, and why.
ODE_EXCEPTIONS = {
    "sdekit.lms": "declared order 2: Adams-Bashforth 4 steps after k-diffusion's start (Euler, then AB2, AB3), "
                  "which caps the asymptotic order at 2; at 16-128 steps it measures 3.4-3.8 on VP, and on VE a "
                  "slope falling from 3.1 to 2.4 as the steps grow; its asymptotic slope is fitted in "
                  "tests/orders/test_declared_orders.py",
    "scipy.LSODA": "varies its order as it goes: none to fit (tolerance plan only)",
    "sdekit.dopri5": "adaptive only (a step per sample): no fixed steps through solve(); its tableau's fixed-step "
                     "order is fitted in tests/test_adaptive_per_sample.py (5 +- 0.3, steps equal to torchdiffeq's)",
    "sdekit.bosh3": "adaptive only (a step per sample): no fixed steps through solve(); its tableau's fixed-step "
                    "order is fitted in tests/test_adaptive_per_sample.py (3 +- 0.3)",
    "sdekit.dpm_adaptive": "adaptive only; its two solutions are dpm_solver_2 and dpm_solver_3, whose fixed-step "
                           "orders are in the plan",
    "sdekit.improved_euler": "adaptive only; on an ODE it is Heun with an Euler error estimate (tolerance plan); its "
                             "strong orders are fitted against NFE in tests/test_adaptive_sde.py",
}

#: (qualified method, problem, tolerances, expected slope of log error on log tol, largest
#: error / (tol (1 + max|x|)) allowed).  A method of order p whose error estimate is locally
#: O(h^(q+1)) takes h ~ tol^(1/(q+1)) and ends with an error ~ tol^(p/(q+1)): 1 for the embedded
#: pairs used with local extrapolation, 5/4 for scipy's Radau (order 5, third-order error estimate).
TOLERANCE_PLAN = [
    ("torchdiffeq.dopri5", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    ("torchdiffeq.dopri8", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    ("torchdiffeq.bosh3", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    # torchdiffeq's fehlberg2 propagates Fehlberg's second-order solution but estimates its error
    # as h (f(t+h) - f(t)) / 512, far below the actual local error: the global error sits about
    # 250 times above the tolerance (still proportional to it).
    ("torchdiffeq.fehlberg2", "VE", (1e-3, 1e-5, 1e-7), 1.0, 1000.0),
    ("torchdiffeq.adaptive_heun", "VE", (1e-2, 1e-3, 1e-4, 1e-5), 1.0, 10.0),
    ("scipy.RK45", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    ("scipy.DOP853", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    ("scipy.Radau", "VE", (1e-3, 1e-5, 1e-7), 1.25, 10.0),
    ("scipy.LSODA", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    # sdekit's per-sample adaptive methods (measured slopes 1.00, 0.96, 1.17, 0.79; ratios 0.05, 1.2, 2.5, 0.5)
    ("sdekit.dopri5", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    ("sdekit.bosh3", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    ("sdekit.dpm_adaptive", "VE", (1e-3, 1e-5, 1e-7), 1.0, 10.0),
    ("sdekit.improved_euler", "VE", (1e-2, 1e-3, 1e-4, 1e-5), 1.0, 10.0),
]


def order_table(full: bool = False, parts: Sequence[str] = ("strong", "ode", "tolerance", "weak"),
                progress=None) -> List[OrderResult]:
    """Run the standard plan; ``full`` uses the larger settings of the slow tests (more paths, more steps)."""
    rows: List[OrderResult] = []

    def add(r):
        rows.append(r)
        if progress is not None:
            progress(r)

    if "strong" in parts:
        ks, batch = (range(4, 11), 4000) if full else (range(4, 9), 2000)
        for method, problem in STRONG_PLAN:
            add(strong_order(method, problem, ks=ks, batch=batch))
    if "ode" in parts:
        for method, problem, steps, *options in ODE_PLAN:
            add(ode_order(method, problem, steps=steps, options=options[0] if options else None))
    if "tolerance" in parts:
        for method, problem, tols, slope, _ in TOLERANCE_PLAN:
            add(tolerance_study(method, problem, tols=tols, expected=slope))
    if "weak" in parts:
        if full:
            for r in weak_order("euler", steps=(8, 16, 32, 64, 128), batch=40000, reference_steps=1024):
                add(r)
        else:
            for r in weak_order("euler"):
                add(r)
    return rows


def _fmt(v):
    return "-" if v is None else f"{v:g}"


def format_table(rows: Sequence[OrderResult]) -> str:
    """A Markdown table: study, method, backend, problem, declared, expected, measured, steps, errors."""
    head = ["study", "method", "backend", "problem", "declared", "expected", "measured", "h (or tol)",
            "error range", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if r.study == "tolerance":
            hr = f"tol {r.h[0]:.0e}..{r.h[-1]:.0e}"
            note = f"err <= {r.extra['ratio']:.2g} tol(1+max|x|); steps {r.steps[0]}..{r.steps[-1]}"
        else:
            hr = f"{r.h[0]:.3g}..{r.h[-1]:.3g}"
            note = r.note
        mark = "" if r.within() else " **(outside ±0.3)**"
        lines.append("| " + " | ".join([
            r.study, r.method, r.backend, r.problem, _fmt(r.declared), _fmt(r.expected), f"{r.measured:.2f}{mark}",
            hr, f"{max(r.errors):.1e}..{min(r.errors):.1e}", note]) + " |")
    return "\n".join(lines)
