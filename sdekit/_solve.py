r"""``solve()``: one entry point for every process and every backend.

It checks the input once, resolves the method and the stepping, builds the time grid in
float64, binds the process to this solve (event shape, calculus, time domain, fresh counters),
hands a :class:`~sdekit._methods.Problem` to the method, and turns what comes back into a
:class:`~sdekit.Solution`, raising at the end unless ``throw=False``.
"""

import math
import time
from typing import Optional, Sequence, Union

import torch

from ._errors import ArgumentTypeError, InvalidParameterError, MethodArgumentError, ShapeError, SolveError
from ._grid import as_grid, merge_times, schedule_grid, step_grid
from ._methods import Problem, lookup
from ._process import Process
from ._solution import Result, Solution

__all__ = ["solve"]

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5
DEFAULT_MAX_STEPS_ADAPTIVE = 100_000
_DEFAULT_METHOD = {"sde": "euler", "ode": "dopri5"}


def solve(process: Process, x: torch.Tensor, method: Optional[str] = None, *,
          steps: Optional[int] = None, dt: Optional[float] = None,
          grid: Union[torch.Tensor, Sequence[float], None] = None,
          rtol: Optional[float] = None, atol: Optional[float] = None,
          t_start: Optional[float] = None, t_end: Optional[float] = None,
          save_at: Union[torch.Tensor, Sequence[float], None] = None,
          noise=None, generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
          max_steps: Optional[int] = None, dt_min: Optional[float] = None,
          throw: bool = True, options: Optional[dict] = None, schedule: Optional[str] = None) -> Solution:
    r"""Integrate ``process`` from ``t_start`` to ``t_end`` starting at ``x``.

    **Arguments**

    - ``process``: a :class:`ReverseSDE`, :class:`ProbabilityFlowODE` or :class:`ForwardSDE`.
    - ``x``: the initial state, shape ``(batch, *event_shape)``; the result has its shape, dtype, device.
    - ``method``: a name from :func:`sdekit.methods` (default ``"euler"`` for SDEs, ``"dopri5"`` for ODEs).
    - Fixed steps: exactly one of ``steps`` (equal steps), ``dt`` (step size, the last one shortened to
      end exactly) or ``grid`` (a 1-D tensor of times from ``t_start`` to ``t_end``).
    - Adaptive steps: ``rtol``, ``atol`` (default ``1e-5`` each); ``dt`` is then the first step.
      Methods that can do both (torchsde's) adapt when a tolerance is given.
    - ``t_start``, ``t_end``: default ``T`` and ``eps`` for reverse processes, ``0`` and ``T`` forward.
    - ``save_at``: times at which to keep the state (``Solution.ts``, ``Solution.path``); a fixed grid is
      refined to contain them.
    - ``noise``: a Brownian motion on the process's torchsde clock (see :func:`sdekit.brownian_motion`),
      or ``generator``/``seed`` to build one; with none, torch's global generator seeds it.
    - ``max_steps``: the most accepted steps (default 100 000 when adaptive, none when fixed).
    - ``dt_min``: the smallest step sdekit's own adaptive loop may take.
    - ``throw``: raise :class:`sdekit.SolveError` when the solve does not reach ``t_end`` (default);
      with ``False``, return the state and time reached and the :class:`Result` code.
    - ``options``: passed to the backend's solver.
    - ``schedule``: with ``steps=``, how the grid is spaced: ``"uniform"`` (in t), ``"logsnr"``,
      ``"karras"`` (rho = 7), ``"quadratic"``; default: the method's own (``sdekit.methods()``).
    """
    if not isinstance(process, Process):
        raise ArgumentTypeError("solve() integrates an sdekit process (reverse(...), probability_flow(...), "
                                f"forward(...)), got {type(process).__name__}")
    _check_state(x)
    m = lookup(_DEFAULT_METHOD[process.kind] if method is None else method, process.kind)
    if m.kind == "ode" and process.kind == "sde":
        raise MethodArgumentError(
            f"method {m.name!r} integrates ODEs but {type(process).__name__} is an SDE; "
            f"use an SDE method ({', '.join(n for n in _names('sde'))}) or probability_flow(...)"
        )
    if grid is not None:
        if t_start is not None or t_end is not None:
            raise InvalidParameterError("a grid fixes t_start and t_end (its first and last times); "
                                        "give the grid alone")
        grid = as_grid(grid, 0.0, process.sde.T)
        t_start, t_end = float(grid[0]), float(grid[-1])
    default_start, default_end = process.default_span()
    t_start = default_start if t_start is None else float(t_start)
    t_end = default_end if t_end is None else float(t_end)
    _check_span(process, m, t_start, t_end)
    saves = _check_save_at(save_at, t_start, t_end)

    adaptive = _resolve_stepping(m, steps, dt, grid, rtol, atol)
    if schedule is not None and steps is None:
        raise InvalidParameterError("schedule= spaces the grid that steps= asks for; give steps= with it")
    if adaptive:
        rtol = DEFAULT_RTOL if rtol is None else _positive("rtol", rtol)
        atol = DEFAULT_ATOL if atol is None else _positive("atol", atol)
        max_steps = DEFAULT_MAX_STEPS_ADAPTIVE if max_steps is None else max_steps
        the_grid = None
    else:
        if grid is None:
            grid = (schedule_grid(process.sde, schedule or m.schedule, steps, t_start, t_end) if steps is not None
                    else step_grid(t_start, t_end, dt))
        the_grid = merge_times(grid, saves)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise InvalidParameterError(f"max_steps must be a positive integer, got {max_steps!r}")
    if seed is not None and generator is not None:
        raise InvalidParameterError("give seed or generator, not both")

    bound = process.replace(event_shape=tuple(x.shape[1:]), sde_type=m.sde_type or process.sde_type,
                            t_min=min(t_start, t_end), t_max=max(t_start, t_end))
    problem = Problem(process=bound, x0=x, t_start=t_start, t_end=t_end, grid=the_grid, save_at=saves,
                      rtol=rtol if adaptive else None, atol=atol if adaptive else None,
                      dt0=float(dt) if adaptive and dt is not None else None, dt_min=dt_min,
                      max_steps=max_steps, noise=noise, generator=generator, seed=seed,
                      options=dict(options or {}))

    start = time.perf_counter()
    try:
        outcome = m.integrate(m, problem)
    except Exception:
        record = bound.evaluator.first_non_finite()
        if record is None:
            raise
        raise SolveError(_non_finite_message(record)) from None
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    wall = time.perf_counter() - start

    result, detail, t_reached = outcome.result, outcome.detail, outcome.t
    record = bound.evaluator.first_non_finite()
    if record is not None:
        result, detail, t_reached = Result.NON_FINITE, _non_finite_message(record), record.time
    elif result is Result.SUCCESS and not bool(torch.isfinite(outcome.x).all()):
        result, detail = Result.NON_FINITE, "the final state is not finite although every score was: " \
                                            + Result.NON_FINITE.message
    solution = Solution(
        x=outcome.x, t=t_reached, nfe=bound.evaluator.nfe, method=m.name, backend=m.backend, wall_time=wall,
        steps=outcome.steps, rejected=outcome.rejected,
        ts=None if saves is None else saves[:len(outcome.path)],
        path=torch.stack(outcome.path) if outcome.path else None,
        result=result, detail=detail,
    )
    if throw and result is not Result.SUCCESS:
        raise SolveError(f"{m.name} did not finish: {detail or result.message}", solution)
    return solution


def _names(kind):
    from ._methods import methods
    return sorted({m.name for m in methods(kind=kind)})


def _check_state(x):
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError("the initial state must be a torch.Tensor of shape (batch, *event_shape), "
                                f"got {type(x).__name__}")
    if not x.is_floating_point():
        raise ShapeError(f"the initial state must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ShapeError(f"the initial state must have shape (batch, *event_shape) with batch >= 1, "
                         f"got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ShapeError("the initial state contains NaN or inf; check how it was drawn")


def _check_span(process, m, t_start, t_end):
    T = process.sde.T
    for name, t in (("t_start", t_start), ("t_end", t_end)):
        if not math.isfinite(t) or t < 0 or t > T:
            raise InvalidParameterError(f"{name}={t} lies outside [0, T={T}]")
    if t_start == t_end:
        raise InvalidParameterError(f"t_start and t_end are both {t_start}; nothing to integrate")
    upwards = t_end > t_start
    if process.kind == "sde" and upwards != process.runs_forward:
        raise InvalidParameterError("a forward SDE runs from 0 up to T: give t_start < t_end" if process.runs_forward
                                    else "a reverse-time SDE runs from T down to eps: give t_start > t_end")
    if m.backend == "torchsde" and process.kind == "ode" and upwards:
        raise MethodArgumentError("torchsde methods run the probability-flow ODE only from T down; "
                                  "use an ODE method such as dopri5 to integrate upwards")
    if not process.runs_forward and min(t_start, t_end) <= 0:
        raise InvalidParameterError("the score is singular at t = 0: keep t_end > 0 (the default is sde.eps)")


def _check_save_at(save_at, t_start, t_end):
    if save_at is None:
        return None
    s = torch.as_tensor(save_at, dtype=torch.float64).detach().to(device="cpu").flatten()  # lists: never via float32
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    if s.numel() == 0:
        raise InvalidParameterError("save_at is empty; leave it out or give the times to keep")
    if not torch.isfinite(s).all() or s.min() < lo or s.max() > hi:
        raise InvalidParameterError(f"save_at times must lie in [{lo}, {hi}], between t_start and t_end")
    ordered = s.sort(descending=t_end < t_start).values
    if ordered.unique().numel() != ordered.numel():
        raise InvalidParameterError("save_at has repeated times; give each time once")
    return ordered


def _positive(name, v):
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        raise InvalidParameterError(f"{name} must be a positive number, got {v}")
    return v


def _resolve_stepping(m, steps, dt, grid, rtol, atol) -> bool:
    fixed_given = [n for n, v in (("steps", steps), ("grid", grid)) if v is not None]
    tol_given = [n for n, v in (("rtol", rtol), ("atol", atol)) if v is not None]
    if m.stepping == "fixed":
        if tol_given:
            raise MethodArgumentError(f"{m.name} takes fixed steps: {' and '.join(tol_given)} do not apply; "
                                      f"give steps=, dt= or grid=, or choose an adaptive method")
        if len(fixed_given) + (dt is not None) != 1:
            raise MethodArgumentError(f"{m.name} takes fixed steps: give exactly one of steps=, dt= or grid=")
        return False
    if m.stepping == "adaptive":
        if fixed_given:
            raise MethodArgumentError(f"{m.name} adapts its step: {' and '.join(fixed_given)} do not apply; "
                                      f"give rtol=/atol= (dt= sets the first step), or choose a fixed-step method")
        return True
    if tol_given:
        if fixed_given:
            raise MethodArgumentError(f"give either rtol=/atol= (adaptive) or {' / '.join(fixed_given)} "
                                      f"(fixed steps) to {m.name}, not both")
        return True
    if len(fixed_given) + (dt is not None) != 1:
        raise MethodArgumentError(f"{m.name} needs its stepping: exactly one of steps=, dt= or grid= for fixed "
                                  f"steps, or rtol=/atol= for adaptive steps")
    return False


def _non_finite_message(record) -> str:
    shown = ", ".join(str(i) for i in record.samples[:8]) + (", ..." if len(record.samples) > 8 else "")
    step = "" if record.step is None else f"step {record.step}, "
    return (f"score_fn returned non-finite values first at t={record.time:.6g} ({step}score evaluation "
            f"{record.evaluation}) for samples [{shown}]: {Result.NON_FINITE.message}")
