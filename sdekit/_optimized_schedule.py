r"""Time grids optimized for one model and one sampler: :func:`optimize_schedule`, :class:`OptimizedSchedule`.

A fixed-step sampler's error at a few steps depends as much on where its steps fall as on the sampler itself.
Given a probability flow (an SDE and its score, or a trained network), a deterministic fixed-step method, a
number of steps :math:`K` and calibration states :math:`x_T`, :func:`optimize_schedule` returns the grid
:math:`T = t_0 > t_1 > \dots > t_K = \epsilon` that minimises the sampler's root-mean-square error against a
fine reference solve from the same :math:`x_T`,

.. math::

    \min_{t_1, \dots, t_{K-1}} \; \mathrm{RMS}\big(\Phi_{t_{0:K}}(x_T) - \Phi^{\mathrm{ref}}_{T \to \epsilon}(x_T)\big),

where :math:`\Phi_{t_{0:K}}` is the real :func:`sdekit.solve` of the method on that grid.  Two stages:

1. **Dynamic programming over a candidate grid** (Pei et al. 2025, "Optimal stepsize for diffusion sampling";
   Chen et al. 2024, GITS): :math:`M + 1` candidate times, equally spaced in the method's natural variable
   (log-SNR :math:`\lambda = \log\alpha - \log\sigma` for samplers that step in log-SNR or in the noise level, t
   for those that step in t), and the reference trajectory at every candidate.  :math:`D[k][j]` is the smallest
   error, against the reference at candidate :math:`j`, of a student that reaches :math:`j` in :math:`k` steps;
   each student keeps its own state (not the teacher's), and a transition :math:`i \to j` is one step of the
   method itself, ``solve(x, grid=[t_i, t_j])``.  Each candidate step runs once for all :math:`k` at once, on
   at most :data:`DP_ROWS` of the calibration states.
2. **Polish of the real objective**: from each of the two best of the dynamic-programming grid and the stock
   schedules (the method's own, uniform, log-SNR, Karras), a coordinate pattern search moves each interior point, in the
   same variable, a fraction of the gap to its neighbour, keeps any move that lowers the end-to-end error of
   the full solve, and halves the fraction when no move helps.  Because it measures the real solve, it holds
   for multistep methods (whose history and final-order rules a one-step transition cannot see) as for
   single-step ones.

The result is never worse than the stock schedule on the calibration states (the stock grid is one of the
starting points).  Its cost (score calls, per-sample evaluations, seconds) is reported on the result, which
saves to and loads from a small JSON file that names the SDE, the method, its options, the steps and a
fingerprint of the model, and refuses to load for another.
"""

import hashlib
import json
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ._errors import ArgumentTypeError, InvalidParameterError, MethodArgumentError, ScoreFunctionError, ShapeError
from ._grid import SCHEDULES, schedule_grid, strictly_monotone
from ._methods import lookup
from ._process import Process
from ._sde import LinearSDE

__all__ = ["optimize_schedule", "OptimizedSchedule", "load_schedule", "FORMAT"]

#: The ``format`` field of a saved schedule file.
FORMAT = "sdekit.optimized_schedule/1"
#: Memory the dynamic programme may hold in students' states (bytes); larger problems use fewer of the
#: calibration states for it (the polish always uses all of them).
DP_MEMORY = 256 * 2 ** 20
#: Calibration states the dynamic programme uses at most (it gives the polish a start; the polish uses all).
DP_ROWS = 1024
#: The starting grids the pattern search polishes (the best ones, each with the whole ``polish`` budget).
POLISH_STARTS = 2
#: Relative tolerance of the model fingerprint's probe values when a schedule is loaded.
PROBE_RTOL = 1e-3


def _resolve_method(name):
    """The registered deterministic fixed-step method called ``name`` (short or ``backend.name``)."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"method must be a method name such as 'dpmpp_2m', got {type(name).__name__}")
    m = lookup(name, "ode")                  # solve()'s own lookup, with its suggestions for a misspelt name
    if "ode" not in m.accepts:
        raise MethodArgumentError(f"{m.qualified_name} is a stochastic sampler; optimize_schedule tunes deterministic "
                                  f"fixed-step methods of the probability flow, such as dpmpp_2m, unipc or ddim")
    if m.stepping == "adaptive":
        raise MethodArgumentError(f"{m.qualified_name} chooses its own steps (adaptive); optimize_schedule tunes "
                                  f"fixed-step methods such as dpmpp_2m, unipc, deis or ipndm")
    if m.name == "dpm_solver_fast":
        raise MethodArgumentError("dpm_solver_fast's steps= is an evaluation budget whose last steps lower their "
                                  "order, which a grid= cannot say; optimize dpm_solver_3 (all third-order steps) "
                                  "or dpm_solver_2 instead")
    return m


def _positive_int(value, what, example):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidParameterError(f"{what} must be a positive integer, got {value!r}; e.g. {what}={example}")
    return int(value)


class _Variable:
    """The variable a grid is searched in: log-SNR for a LinearSDE and a method stepping in log-SNR or sigma,
    else time itself; with its map back to times."""

    def __init__(self, sde, frame, t_start, t_end):
        self.sde = sde
        self.log_snr = isinstance(sde, LinearSDE) and frame in ("logsnr", "sigma")
        self.t_start, self.t_end = float(t_start), float(t_end)
        ends = self.of_times(torch.tensor([self.t_start, self.t_end], dtype=torch.float64))
        self.u_start, self.u_end = float(ends[0]), float(ends[1])
        self.name = "log-SNR" if self.log_snr else "t"
        if not (math.isfinite(self.u_start) and math.isfinite(self.u_end)) or self.u_start == self.u_end:
            raise InvalidParameterError(f"the {self.name} at the ends {t_start} and {t_end} is {self.u_start} and "
                                        f"{self.u_end}: it must be finite and differ; keep both ends where sigma > 0")

    def of_times(self, t):
        return self.sde.log_snr(t).to(torch.float64) if self.log_snr else t.to(torch.float64)

    def times(self, u_interior: torch.Tensor) -> torch.Tensor:
        """The grid ``t_start, t(u_1), ..., t(u_{K-1}), t_end``, float64 on the CPU."""
        inner = u_interior.to(torch.float64)
        if self.log_snr and inner.numel():
            inner = self.sde.t_of_log_snr(inner).to(dtype=torch.float64, device="cpu")
        lo, hi = sorted((self.t_start, self.t_end))
        inner = inner.cpu().clamp(lo, hi)
        return torch.cat([torch.tensor([self.t_start], dtype=torch.float64), inner,
                          torch.tensor([self.t_end], dtype=torch.float64)])

    def uniform(self, n: int) -> torch.Tensor:
        """``n + 1`` values from ``u_start`` to ``u_end``, equally spaced, endpoints exact."""
        u = self.u_start + (self.u_end - self.u_start) * torch.arange(n + 1, dtype=torch.float64) / n
        u[0], u[-1] = self.u_start, self.u_end
        return u


@dataclass
class OptimizedSchedule:
    r"""A grid optimized by :func:`optimize_schedule`, with what it was made for and what it cost.

    Pass :attr:`grid` as ``solve(..., grid=schedule.grid)``.

    **Fields**

    - ``grid``: float64 CPU tensor of ``steps + 1`` times, strictly monotone, from ``t_start`` to ``t_end``.
    - ``method``, ``options``, ``steps``: the sampler (registered name) and its options, the number of steps.
    - ``t_start``, ``t_end``: the span.
    - ``calibration``: the number of calibration states; ``error``: the RMS error (over all entries) of the
      solve on ``grid`` from them against the reference; ``stock_error``: the same on the method's own schedule
      (``stock_schedule``); ``start``: the starting point the polish kept (``"dp"`` or a schedule's name).
    - ``candidates``: the points of the dynamic programme's candidate grid; ``variable``: ``"log-SNR"`` or ``"t"``.
    - ``score_calls``: calls of the score (each on a batch); ``evaluations``: per-sample score evaluations in all
      (the reference's included); ``seconds``: wall time.
    - ``sde``: the SDE's description; ``model``: the model's fingerprint (a file's sha256, a name, and the score
      at fixed probe points); ``event_shape``, ``dtype``: of the calibration states.
    """

    grid: torch.Tensor
    method: str
    options: dict
    steps: int
    t_start: float
    t_end: float
    calibration: int
    error: float
    stock_error: float
    stock_schedule: str
    start: str
    candidates: int
    variable: str
    score_calls: int
    evaluations: int
    seconds: float
    sde: str
    model: dict = field(default_factory=dict)
    event_shape: tuple = ()
    dtype: str = "float64"
    reference: dict = field(default_factory=dict)

    @property
    def improvement(self) -> float:
        """``stock_error / error`` on the calibration states (at least 1)."""
        return self.stock_error / self.error if self.error > 0 else math.inf

    def __repr__(self):
        return (f"OptimizedSchedule(method={self.method!r}, steps={self.steps}, calibration={self.calibration}, "
                f"error={self.error:.4g} (stock {self.stock_schedule}: {self.stock_error:.4g}, "
                f"{self.improvement:.2f}x), score_calls={self.score_calls}, seconds={self.seconds:.1f})")

    # -- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON-able record of the file: the grid as exact float64 numbers, and every field."""
        return {"format": FORMAT, **self.__dict__, "grid": [float(t) for t in self.grid.tolist()],
                "event_shape": list(self.event_shape)}

    def save(self, path) -> str:
        """Write the schedule to ``path`` (JSON; the grid's float64 values round-trip exactly); returns the path.

        The file is written whole and renamed into place, so a reader never sees half of one.
        """
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1, sort_keys=True, default=jsonable)
            fh.write("\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path, process=None, method: Optional[str] = None, steps: Optional[int] = None,
             options: Optional[dict] = None, model=None, device="cpu") -> "OptimizedSchedule":
        """Read a schedule saved by :meth:`save` and check it against what it is about to be used with.

        - ``process``: the probability flow it will solve: its SDE must be the one the grid was made for and its
          score must give the saved probe values (relative tolerance :data:`PROBE_RTOL`);
        - ``method``, ``steps``, ``options``: must equal the saved ones where given;
        - ``model``: the model file (its sha256 must match a saved one) or the name given when it was made;
        - ``device``: where the score runs for the probe (the model's device; default the CPU).

        A mismatch raises :class:`sdekit.InvalidParameterError` in one line naming what differs.
        """
        path = os.fspath(path)
        try:
            with open(path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise InvalidParameterError(f"no schedule file {path!r}; make one with sdekit.optimize_schedule(...)"
                                        f".save(path)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidParameterError(f"{path} is not a schedule file ({err}); make one with "
                                        f"sdekit.optimize_schedule(...).save(path)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidParameterError(f"{path} is not a schedule file of this version (format "
                                        f"{data.get('format') if isinstance(data, dict) else None!r}, expected "
                                        f"{FORMAT!r}); optimize the schedule again")
        data = {k: v for k, v in data.items() if k != "format"}
        try:
            data["grid"] = torch.tensor(data["grid"], dtype=torch.float64)
            data["event_shape"] = tuple(data["event_shape"])
            out = cls(**data)
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidParameterError(f"{path} is a damaged schedule file ({err}); optimize the schedule "
                                        f"again") from None
        if out.grid.dim() != 1 or out.grid.numel() != out.steps + 1 or not strictly_monotone(out.grid):
            raise InvalidParameterError(f"{path} holds no valid grid of {out.steps} steps; optimize the schedule "
                                        f"again")
        out.check(process=process, method=method, steps=steps, options=options, model=model, where=path,
                  device=device)
        return out

    def check(self, process=None, method=None, steps=None, options=None, model=None, where="this schedule",
              device="cpu"):
        """Refuse (one line, :class:`sdekit.InvalidParameterError`) a use this grid was not made for."""
        fix = "optimize a grid for it with sdekit.optimize_schedule"
        if method is not None:
            m = _resolve_method(method)
            if m.qualified_name != self.method:
                raise InvalidParameterError(f"{where} was made for {self.method}, not {m.qualified_name}; {fix}")
        if steps is not None and steps != self.steps:
            raise InvalidParameterError(f"{where} has {self.steps} steps, not {steps}; {fix}")
        if options is not None and jsonable(dict(options)) != jsonable(self.options):
            raise InvalidParameterError(f"{where} was made with options {self.options}, not {dict(options)}; {fix}")
        if model is not None:
            given = _model_identity(model)
            for key in ("sha256", "name"):
                if key in given and self.model.get(key) != given[key]:
                    saved = self.model.get(key, "none")
                    raise InvalidParameterError(f"{where} was made for the model with {key} {saved}, not "
                                                f"{given[key]}; {fix}")
        if process is not None:
            if repr(process.sde) != self.sde:
                raise InvalidParameterError(f"{where} was made for {self.sde}, not {process.sde!r}; {fix}")
            lo, hi = sorted((self.t_start, self.t_end))
            if lo < process.t_min - 1e-12 or hi > process.t_max + 1e-12:
                raise InvalidParameterError(f"{where} spans [{lo}, {hi}], outside the process's [{process.t_min}, "
                                            f"{process.t_max}]; {fix}")
            probe = self.model.get("probe")
            if probe is not None:
                dtype = getattr(torch, self.dtype)
                now = _probe(process, self.event_shape, dtype, self.t_start, self.t_end, device)
                scale = max(1e-30, max(abs(v) for v in probe["values"]))
                worst = max(abs(a - b) for a, b in zip(now["values"], probe["values"])) / scale
                if len(now["values"]) != len(probe["values"]) or worst > PROBE_RTOL:
                    raise InvalidParameterError(f"{where} was made for another score (its outputs at the probe "
                                                f"points differ by {worst:.2g} relative); {fix}")
        return self


#: Read a saved schedule and check it against the process, method, steps, options and model it is used with
#: (:meth:`OptimizedSchedule.load`, whose docstring it has: a mismatch is refused in one line).
load_schedule = OptimizedSchedule.load


def jsonable(v):
    """``v`` as JSON's types: dicts with sorted string keys, lists for tuples, ``repr`` for anything else."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (str, bool, int, float)) or v is None:
        return v
    return repr(v)


def _model_identity(model) -> dict:
    """``{"sha256": ..., "file": ...}`` for a path to a file, ``{"name": ...}`` for any other string."""
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        h = hashlib.sha256()
        with open(model, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return {"sha256": h.hexdigest(), "file": os.path.basename(os.fspath(model))}
    if isinstance(model, str):
        return {"name": model}
    raise ArgumentTypeError(f"model must be the path of the model's file or a name (a string), got "
                            f"{type(model).__name__}")


def _probe(process, event_shape, dtype, t_start, t_end, device="cpu") -> dict:
    """The score at fixed probe points (two states, three times, on ``device``): its first 8 coordinates and its
    norm each."""
    g = torch.Generator().manual_seed(20261207)
    x = torch.randn((2,) + tuple(event_shape), generator=g, dtype=torch.float64)
    values = []
    mid = 0.5 * (t_start + t_end)
    for t in (t_start, mid, t_end):
        tt = torch.full((2,), float(t), dtype=torch.float64)
        scale = torch.ones(())
        sde = process.sde
        if hasattr(sde, "log_alpha_sigma"):
            la, s = sde.log_alpha_sigma(tt[:1])
            scale = torch.sqrt(torch.exp(2 * la) + s * s).reshape(())
        xs = (x * scale).to(dtype=dtype, device=device)
        with torch.no_grad():
            out = process.fn(xs, tt.to(dtype=dtype, device=device)).detach().to(device="cpu", dtype=torch.float64)
        flat = out.reshape(2, -1)
        values += flat[:, :8].reshape(-1).tolist() + flat.norm(dim=1).tolist()
    return {"values": values, "times": [t_start, mid, t_end]}


def _check_states(process, x_T):
    if not isinstance(x_T, torch.Tensor):
        raise ArgumentTypeError(f"x_T must be a tensor of calibration states (batch, *event_shape), got "
                                f"{type(x_T).__name__}")
    if not x_T.is_floating_point() or x_T.is_complex():
        raise ArgumentTypeError(f"x_T must be a floating-point tensor, got {x_T.dtype}")
    if x_T.dim() < 2 or x_T.shape[0] < 1:
        raise ShapeError(f"x_T must have shape (batch, *event_shape) with batch >= 1, got {tuple(x_T.shape)}; "
                         f"e.g. sde.prior_sampling((256, 2))")
    shape = process.event_shape
    if shape is not None and tuple(x_T.shape[1:]) != tuple(shape):
        raise ShapeError(f"x_T has event shape {tuple(x_T.shape[1:])} but the process's is {tuple(shape)}; "
                         f"give states of shape (batch, {', '.join(map(str, shape))})")
    if not bool(torch.isfinite(x_T).all()):
        raise InvalidParameterError("x_T contains NaN or inf; give finite calibration states")


def optimize_schedule(process, method: str, steps: int, x_T: torch.Tensor, *, options: Optional[dict] = None,
                      t_start: Optional[float] = None, t_end: Optional[float] = None,
                      candidates: Optional[int] = None, polish: Optional[int] = None,
                      reference_method: str = "dopri5", reference_tol: float = 1e-9,
                      model=None, dp: bool = True) -> OptimizedSchedule:
    r"""The grid of ``steps`` steps on which ``method`` best reproduces the flow from the calibration states ``x_T``.

    Minimises :math:`\mathrm{RMS}(\Phi_{\mathrm{grid}}(x_T) - \Phi^{\mathrm{ref}}(x_T))` over the interior
    times, by dynamic programming over a candidate grid with the method's own steps (Pei et al. 2025, "Optimal
    stepsize for diffusion sampling"; Chen et al. 2024, GITS), then a pattern search on the real end-to-end
    error of ``solve(grid=...)``.  The module's docstring has the algorithm; docs/optimized_schedules.md its cost
    and when it helps.

    **Arguments**

    - ``process``: a probability flow, ``sdekit.probability_flow(sde, score)``, of any :class:`sdekit.LinearSDE`
      (VP, sub-VP, VE, an adapter's frame, your own) or any SDE; any score, a trained network included.
    - ``method``: a deterministic fixed-step method of ``sdekit.methods()`` (``dpmpp_2m``, ``unipc``, ``deis``,
      ``ipndm``, ``ddim``, ``edm_heun``, ``dpm_solver_2``, ``euler``, ...).
    - ``steps``: the number of steps of the grid (a positive integer).
    - ``x_T``: calibration states at ``t_start``, shape ``(batch, *event_shape)``: the states the sampler will
      start from, drawn apart from any states it is tested on.  Their dtype and device are the solves'.
    - ``options``: the method's options (``solve(options=...)``); the grid is optimized for them.
    - ``t_start``, ``t_end``: the span (default the process's, ``T`` down to ``eps``).
    - ``candidates``: points ``M`` of the candidate grid (default ``4 * steps``, from 16 to 64).
    - ``polish``: the most end-to-end solves of the pattern search from each of its two starts (default
      ``25 * steps``; ``0``: none).
    - ``reference_method``, ``reference_tol``: the fine reference solve (default torchdiffeq's ``dopri5`` at
      ``rtol = atol = 1e-9``), made once, with its states kept at every candidate time.
    - ``model``: the model's file (its sha256 is recorded) or a name, for the saved file's checks.
    - ``dp``: run the dynamic programme (default); ``False`` polishes the best stock schedule only.

    Returns an :class:`OptimizedSchedule`: ``.grid`` (float64, ``steps + 1`` times, ``t_start`` to ``t_end``),
    its calibration error beside the stock schedule's, its cost, and ``.save(path)``.
    """
    started = time.perf_counter()
    if not isinstance(process, Process):
        raise ArgumentTypeError(f"process must be sdekit.probability_flow(sde, score), got {type(process).__name__}")
    m = _resolve_method(method)
    if process.kind != "ode":
        raise MethodArgumentError(f"{type(process).__name__} is stochastic; optimize_schedule tunes the "
                                  f"probability flow: pass sdekit.probability_flow(sde, score)")
    steps = _positive_int(steps, "steps", 10)
    _check_states(process, x_T)
    if options is not None and not isinstance(options, dict):
        raise ArgumentTypeError(f"options must be a dict of the method's options, got {type(options).__name__}")
    options = dict(options or {})
    if isinstance(reference_tol, bool) or not isinstance(reference_tol, numbers.Real) or not 0 < reference_tol < 1:
        raise InvalidParameterError(f"reference_tol must be a small positive number such as 1e-9, got "
                                    f"{reference_tol!r}")
    d_start, d_end = process.default_span()
    t_start = float(d_start if t_start is None else t_start)
    t_end = float(d_end if t_end is None else t_end)
    M = _positive_int(candidates, "candidates", 40) if candidates is not None else min(64, max(16, 4 * steps))
    M = max(M, steps)
    polish = 25 * steps if polish is None else polish
    if isinstance(polish, bool) or not isinstance(polish, numbers.Integral) or polish < 0:
        raise InvalidParameterError(f"polish must be a number of solves >= 0, got {polish!r}")
    var = _Variable(process.sde, m.frame, t_start, t_end)
    cost = {"evaluations": 0}
    batch = x_T.shape[0]
    calls_before = process.nfe

    def run(x, grid):
        sol = process.solve(x, method=m.qualified_name, grid=grid, options=options or None, throw=False)
        cost["evaluations"] += int(sol.nfe) * x.shape[0]
        return sol

    with torch.no_grad():
        # -- the reference, at every candidate time ------------------------------------------------
        u_cand = var.uniform(M)
        t_cand = var.times(u_cand[1:-1])
        if not strictly_monotone(t_cand):
            raise InvalidParameterError(f"{M} candidate steps do not fit in [{t_end}, {t_start}] in float64; "
                                        f"give fewer candidates")
        ref = process.solve(x_T, method=reference_method, rtol=reference_tol, atol=reference_tol, save_at=t_cand,
                            t_start=t_start, t_end=t_end, throw=False)
        cost["evaluations"] += int(ref.nfe) * batch
        if not ref.success or ref.path is None or not bool(torch.isfinite(ref.path).all()):
            raise ScoreFunctionError(f"the reference solve ({reference_method}) from x_T did not finish with finite "
                                     f"values ({ref.result.name}: {ref.detail or 'non-finite'}); check that the "
                                     f"score returns finite values on [{t_end}, {t_start}]")
        teacher = ref.path                       # (M + 1, batch, ...), in the order of t_cand
        target = teacher[-1]
        scale = float(target.pow(2).mean().sqrt()) or 1.0

        def error(grid):
            """RMS error, over all entries, of the solve on ``grid`` from the calibration states."""
            if not strictly_monotone(grid):
                return math.inf
            sol = run(x_T, grid)
            if not sol.success or not bool(torch.isfinite(sol.x).all()):
                return math.inf
            return float((sol.x - target).pow(2).mean().sqrt())

        # -- stock schedules --------------------------------------------------------------------
        stock_name = m.schedule if m.schedule in SCHEDULES else "uniform"
        starts = {}
        names = [stock_name] + [s for s in ("uniform", "logsnr", "karras")
                                if s != stock_name and isinstance(process.sde, LinearSDE)]
        for name in names:
            try:
                g = schedule_grid(process.sde, name, steps, t_start, t_end)
            except InvalidParameterError:
                continue
            starts[name] = (g, error(g))
        stock_error = starts[stock_name][1]
        if not math.isfinite(stock_error):
            raise ScoreFunctionError(f"{m.qualified_name} on its own {stock_name} grid of {steps} steps gave "
                                     f"non-finite values from x_T; check the score (it must return finite "
                                     f"values) and x_T")

        # -- dynamic programme over the candidates ------------------------------------------------
        if dp and steps > 1:
            dp_grid = _dynamic_programme(run, x_T, teacher, t_cand, steps)
            if dp_grid is not None:
                starts["dp"] = (dp_grid, error(dp_grid))
        order = sorted(starts, key=lambda k: starts[k][1])
        start = order[0]
        grid, best = starts[start]

        # -- polish: pattern search on the end-to-end error, from the two best starts -------------------------
        if steps > 1 and polish > 0 and math.isfinite(best):
            for name in order[:POLISH_STARTS]:
                if not math.isfinite(starts[name][1]):
                    continue
                g, e = _polish(error, var, *starts[name], polish, tol=1e-9 * scale)
                if e < best:
                    start, grid, best = name, g, e

    calls = process.nfe - calls_before
    fingerprint = _probe(process, tuple(x_T.shape[1:]), x_T.dtype, t_start, t_end, x_T.device)
    calls += 3
    ident = _model_identity(model) if model is not None else {}
    return OptimizedSchedule(
        grid=grid.clone(), method=m.qualified_name, options=jsonable(options), steps=steps, t_start=t_start,
        t_end=t_end, calibration=batch, error=best, stock_error=stock_error, stock_schedule=stock_name, start=start,
        candidates=M, variable=var.name, score_calls=int(calls), evaluations=int(cost["evaluations"]),
        seconds=time.perf_counter() - started, sde=repr(process.sde), model=dict(ident, probe=fingerprint),
        event_shape=tuple(x_T.shape[1:]), dtype=str(x_T.dtype).replace("torch.", ""),
        reference={"method": reference_method, "tol": float(reference_tol)})


def _dynamic_programme(run, x_T, teacher, t_cand, K):
    r"""OSS's dynamic programme: ``D[k][j]``, the least error at candidate ``j`` after ``k`` of the method's steps,
    each student carrying its own state; returns the grid of the best ``K``-step path to the end, or ``None``."""
    M = t_cand.numel() - 1
    per = x_T[0].numel() * x_T.element_size()
    rows = min(x_T.shape[0], max(4, min(DP_ROWS, DP_MEMORY // max(1, per * K * (M + 1)))))
    x0 = x_T[:rows]
    ref = teacher[:, :rows]
    best = torch.full((K + 1, M + 1), math.inf, dtype=torch.float64)
    parent = torch.full((K + 1, M + 1), -1, dtype=torch.long)
    state = {(0, 0): x0}
    best[0, 0] = 0.0
    for i in range(M):                           # sources in order: every path into i is final by now
        ks = [k for k in range(1, K + 1) if (k - 1, i) in state]
        if not ks:
            continue
        for j in range(i + 1, M + 1):
            # the k-th step lands on j; then K - k steps remain for M - j candidates, and only step K ends
            use = [k for k in ks if (k == K) == (j == M) and M - j >= K - k]
            if not use:
                continue
            xs = torch.cat([state[(k - 1, i)] for k in use])
            sol = run(xs, t_cand[[i, j]])
            if not sol.success:
                continue
            out = sol.x.reshape(len(use), rows, *x0.shape[1:])
            err = (out - ref[j].unsqueeze(0)).pow(2).reshape(len(use), -1).mean(1).to(torch.float64).cpu()
            for n, k in enumerate(use):
                e = float(err[n])
                if math.isfinite(e) and e < best[k, j]:
                    best[k, j], parent[k, j] = e, i
                    state[(k, j)] = out[n]
        for k in ks:                             # students at i are no longer needed
            state.pop((k - 1, i), None)
    if parent[K, M] < 0:
        return None
    path, j = [M], M
    for k in range(K, 0, -1):
        j = int(parent[k, j])
        path.append(j)
    return t_cand[list(reversed(path))].clone()


def _polish(error, var, grid, best, budget, tol):
    """Coordinate pattern search on the interior points in ``var``'s variable: move a point a fraction of the gap
    to a neighbour, keep a move that lowers ``error``, halve the fraction when none does."""
    u = var.of_times(grid).clone()
    u[0], u[-1] = var.u_start, var.u_end
    K = u.numel() - 1
    frac, used = 0.5, 0
    while frac > 1 / 256 and used < budget:
        improved = False
        for k in range(1, K):
            for side in (1, -1):
                if used >= budget:
                    break
                cand = u.clone()
                cand[k] = u[k] + frac * (u[k + side] - u[k])
                g = var.times(cand[1:-1])
                e = error(g)
                used += 1
                if e < best - tol:
                    u, grid, best, improved = cand, g, e, True
                    break
        if not improved:
            frac /= 2
    return grid, best
