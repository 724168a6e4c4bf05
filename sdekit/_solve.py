r"""``solve()``: one entry point for every process and every backend.

It checks the input once, resolves the method and the stepping, builds the time grid in
float64, binds the process to this solve (event shape, calculus, time domain, fresh counters),
hands a :class:`~sdekit._methods.Problem` to the method, and turns what comes back into a
:class:`~sdekit.Solution`, raising at the end unless ``throw=False``.
"""

import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Optional, Sequence, Union

import torch

from ._brownian import check_entropy
from ._errors import (ArgumentTypeError, InvalidParameterError, MethodArgumentError, SDEKitError, ShapeError,
                      SolveError, unknown_options_message)
from ._evaluator import finite_rows
from ._grid import as_grid, merge_times, step_grid
from ._methods import Problem, lookup, methods
from ._process import Process
from ._solution import STATUS, Outcome, PerSample, Result, Solution

__all__ = ["solve"]

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5
DEFAULT_MAX_STEPS_ADAPTIVE = 100_000
MAX_GRID_STEPS = 10 ** 7   # a fixed grid is built in memory (and each step evaluates the score): refuse more
#: A state of fewer numbers than this, solved on the CPU with several torch threads, gets a one-time hint to use one
#: thread (the threshold at which ``sdekit sample`` and the validation demo choose one thread themselves).
SMALL_STATE = 1 << 16
_THREADS_HINT_SHOWN = False
_DEFAULT_METHOD = {"sde": "euler", "ode": "dopri5"}


def solve(process: Process, x: torch.Tensor, method: Optional[str] = None, *,
          steps: Optional[int] = None, dt: Optional[float] = None,
          grid: Union[torch.Tensor, Sequence[float], None] = None,
          rtol: Optional[float] = None, atol: Optional[float] = None,
          t_start: Optional[float] = None, t_end: Optional[float] = None,
          save_at: Union[torch.Tensor, Sequence[float], None] = None,
          noise=None, generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
          max_steps: Optional[int] = None, dt_min: Optional[float] = None,
          throw: bool = True, options: Optional[dict] = None, schedule: Optional[str] = None,
          grad: bool = False, per_sample: Optional[bool] = None) -> Solution:
    r"""Integrate ``process`` from ``t_start`` to ``t_end`` starting at ``x``.

    **Arguments**

    - ``process``: a :class:`ReverseSDE`, :class:`ProbabilityFlowODE` or :class:`ForwardSDE`.
    - ``x``: the initial state, shape ``(batch, *event_shape)``; the result has its shape, dtype, device.
    - ``method``: a name from :func:`sdekit.methods` (default ``"euler"`` for SDEs, ``"dopri5"`` for ODEs).
    - Fixed steps: exactly one of ``steps`` (equal steps, or spaced by ``schedule``), ``dt`` (step size, the
      last one shortened to end exactly) or ``grid`` (a 1-D tensor of times from ``t_start`` to ``t_end``).
      For ``dpm_solver_fast`` ``steps`` is the budget of score evaluations, as in DPM-Solver's and
      k-diffusion's ``dpm_fast``: ``steps=10`` takes 4 steps (``Solution.steps``).
    - Adaptive steps: ``rtol``, ``atol`` (default ``1e-5`` each, or the method's own: ``improved_euler`` and
      ``dpm_adaptive`` take 0.05 and 0.0078 as their papers do); ``dt`` is then the first step.
      Methods that can do both (torchsde's) adapt when a tolerance is given.
    - ``t_start``, ``t_end``: default ``T`` and ``eps`` for reverse processes, ``0`` and ``T`` forward.
    - ``save_at``: times at which to keep the state (``Solution.ts``, ``Solution.path``); a fixed grid is
      refined to contain them.
    - ``noise``: a Brownian motion on the process's torchsde clock (see :func:`sdekit.brownian_motion`)
      of shape ``(batch, prod(event_shape))``, or ``generator`` (a ``torch.Generator``) or ``seed`` (an
      integer in ``[0, 2**64)``) to build one; with none, torch's global generator seeds it.
    - ``max_steps``: the most accepted steps (default 100 000 when adaptive, none when fixed).
    - ``dt_min``: the smallest step sdekit's own adaptive loop may take.
    - ``throw``: raise :class:`sdekit.SolveError` when the solve does not reach ``t_end`` with finite values
      (default); with ``False``, return the state reached, its time, the :class:`Result` code and
      ``Solution.failed``, the samples that went non-finite (the other rows are valid).
    - ``options``: a dict passed to the backend's solver.
    - ``schedule``: with ``steps=``, how the grid is spaced: ``"uniform"`` (in t), ``"logsnr"``,
      ``"karras"`` (rho = 7), ``"quadratic"``; default: the method's own (``sdekit.methods()``).
    - ``grad``: build the autograd graph of the solve, to differentiate the result (with respect to the
      score network's parameters, say).  By default the solve runs under ``torch.no_grad()`` unless ``x``
      requires grad; scipy's methods compute in numpy and refuse it.

    - ``per_sample``: with sdekit's adaptive methods (``sdekit.dopri5``, ``sdekit.bosh3``, ``improved_euler``,
      ``dpm_adaptive``), a step size, time and status per sample (``True``, their default: tolerances are then
      met per sample and finished samples leave the batch) or one step size for the batch (``False``, the
      control of torchdiffeq and torchsde).  Other methods share one step and refuse ``True``.

    The score is never handed the caller's ``x`` (the solve starts from a copy), and an exception raised
    inside the score reaches the caller unchanged.
    """
    if not isinstance(process, Process):
        raise ArgumentTypeError("solve() integrates an sdekit process (reverse(...), probability_flow(...), "
                                f"forward(...)), got {type(process).__name__}")
    _check_state(x)
    m = lookup(_DEFAULT_METHOD[process.kind] if method is None else method, process.kind)
    if m.kind == "ode" and process.kind == "sde":
        raise MethodArgumentError(f"method {m.name!r} integrates ODEs but {type(process).__name__} is an SDE; use an "
                                  f"SDE method ({', '.join(sorted({n.name for n in methods(kind='sde')}))}) or "
                                  "probability_flow(...)")
    dt = None if dt is None else _real("dt", dt, positive=True)
    dt_min = None if dt_min is None else _real("dt_min", dt_min, nonnegative=True)
    _check_arguments(x, max_steps=max_steps, options=options, throw=throw, grad=grad, seed=seed,
                     generator=generator, noise=noise)
    _check_option_names(m, options)
    if grid is not None:
        if t_start is not None or t_end is not None:
            raise InvalidParameterError("a grid fixes t_start and t_end (its first and last times); "
                                        "give the grid alone")
        grid = as_grid(_times("grid", grid), 0.0, process.sde.T)
        t_start, t_end = float(grid[0]), float(grid[-1])
    default_start, default_end = process.default_span()
    t_start = default_start if t_start is None else _real("t_start", t_start)
    t_end = default_end if t_end is None else _real("t_end", t_end)
    _check_span(process, m, t_start, t_end)
    saves = _check_save_at(save_at, t_start, t_end)

    adaptive = _resolve_stepping(m, steps, dt, grid, rtol, atol)
    _check_per_sample(m, per_sample, adaptive)
    if schedule is not None and steps is None:
        raise InvalidParameterError("schedule= spaces the grid that steps= asks for; give steps= with it")
    if adaptive:
        rtol = (m.default_rtol or DEFAULT_RTOL) if rtol is None else _real("rtol", rtol, positive=True)
        atol = (m.default_atol or DEFAULT_ATOL) if atol is None else _real("atol", atol, positive=True)
        max_steps = DEFAULT_MAX_STEPS_ADAPTIVE if max_steps is None else max_steps
        the_grid = None
    else:
        if grid is None:
            _check_grid_size(steps if steps is not None else math.ceil(abs(t_end - t_start) / dt * (1 - 1e-12)),
                             f"steps={steps!r}" if steps is not None else f"dt={dt!r}")
            grid = (m.steps_grid(process.sde, steps, t_start, t_end, schedule) if steps is not None
                    else step_grid(t_start, t_end, dt))
        the_grid = merge_times(grid, saves)
    want_grad = bool(grad) or (x.requires_grad and torch.is_grad_enabled())
    if want_grad and m.backend == "scipy":
        raise MethodArgumentError(f"{m.name} (scipy) computes in numpy and cannot keep the autograd graph; "
                                  "use a torchdiffeq method (dopri5, rk4), or pass x.detach() and grad=False")

    _hint_threads(x)
    bound = process.replace(event_shape=tuple(x.shape[1:]), sde_type=m.sde_type or process.sde_type,
                            t_min=min(t_start, t_end), t_max=max(t_start, t_end))
    evaluator = bound.evaluator
    start = time.perf_counter()
    try:
        with torch.set_grad_enabled(want_grad):
            x0 = x.clone() if want_grad else x.detach().clone()  # the score never sees the caller's tensor
            problem = Problem(process=bound, x0=x0, t_start=t_start, t_end=t_end, grid=the_grid, save_at=saves,
                              rtol=rtol if adaptive else None, atol=atol if adaptive else None,
                              dt0=float(dt) if adaptive and dt is not None else None, dt_min=dt_min,
                              max_steps=max_steps, noise=noise, generator=generator, seed=seed,
                              options=dict(options or {}), per_sample=per_sample,
                              budget=int(steps) if m.grid_steps and not adaptive and steps is not None else None)
            outcome = m.integrate(m, problem)
    except SDEKitError:
        raise
    except Exception as err:
        if err is evaluator.user_error:
            raise
        if evaluator.user_error is None:
            record = evaluator.first_non_finite()
            if record is None:
                raise
            message = f"{m.name} failed: {_non_finite_message(record, evaluator.name)}"
            if throw:
                raise SolveError(message) from err
            # throw=False: the backend gave up on the whole batch; no sample reached t_end, say so per sample
            outcome = Outcome(x.detach().clone(), float(t_start), [], steps=0, rejected=0, result=Result.NON_FINITE,
                              detail=message)
    finally:
        process.evaluator.nfe += evaluator.nfe
    if evaluator.user_error is not None:
        # The score raised and the backend turned it into something else (a result code, another
        # exception): hand the score's own exception back, with its traceback.
        raise evaluator.user_error
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    wall = time.perf_counter() - start
    return make_solution(m, outcome, x, saves, evaluator, wall, throw)


def _hint_threads(x):
    """Warn once per process when a small state (under :data:`SMALL_STATE` numbers) is solved on the CPU with more
    than one torch thread: the README's example ran 16x slower so (240.7 s against 14.7 s on two busy cores).

    sdekit never changes torch's thread count; this only tells the user who has not set it.  Silence it with
    ``torch.set_num_threads(1)`` (or ``OMP_NUM_THREADS=1``), or with ``warnings.filterwarnings`` on its message.
    """
    global _THREADS_HINT_SHOWN
    if _THREADS_HINT_SHOWN or x.device.type != "cpu" or x.numel() >= SMALL_STATE:
        return
    threads = torch.get_num_threads()
    if threads <= 1:
        return
    _THREADS_HINT_SHOWN = True
    warnings.warn(f"sdekit: solving a small state ({x.numel()} numbers) on the CPU with {threads} torch threads, which "
                  f"is often many times slower than one (16x on the README's example): call torch.set_num_threads(1) "
                  f"before solving small states on the CPU (this is said once per process)", UserWarning,
                  stacklevel=_caller_level())


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning raised in the calling function at the first frame outside sdekit."""
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level


def make_solution(m, outcome, x, saves, evaluator, wall, throw) -> Solution:
    """Turn what a method reached into a :class:`Solution` (in x's dtype, ``t`` the time of ``x``); raise if asked."""
    result, detail = outcome.result, outcome.detail
    x_out = outcome.x.to(dtype=x.dtype)
    record = evaluator.first_non_finite()
    failed = ~finite_rows(x_out)
    if record is not None:
        failed = failed | record.failed
        result = Result.NON_FINITE
        detail = "; ".join(d for d in (_non_finite_message(record, evaluator.name), outcome.detail) if d)
    elif bool(failed.any()):
        result = Result.NON_FINITE
        detail = "; ".join(d for d in (
            f"the state went non-finite although every {evaluator.name} value was finite: the method or the "
            "SDE's f or g failed (check them, or take smaller steps)", outcome.detail) if d)
    if bool(failed.any()):
        rows = failed.nonzero().flatten().tolist()
        detail += f"; samples {_show(rows)} failed ({len(rows)} of {len(failed)}), the others are finite at " \
                  f"t={outcome.t:.6g}"
    solution = Solution(
        x=x_out, t=outcome.t, nfe=evaluator.nfe, method=m.name, backend=m.backend, wall_time=wall,
        steps=outcome.steps, rejected=outcome.rejected,
        ts=None if saves is None else saves[:len(outcome.path)],
        path=torch.stack(outcome.path).to(dtype=x.dtype) if outcome.path else None,
        result=result, detail=detail, failed=failed, stats=dict(outcome.stats),
        per_sample=_per_sample(outcome, evaluator, failed),
    )
    if throw and result is not Result.SUCCESS:
        said = "; ".join(d for d in (detail, "" if result.message in detail else result.message) if d)
        raise SolveError(f"{m.name} did not finish: {said}", solution)
    return solution


def _per_sample(outcome, evaluator, failed) -> PerSample:
    """Each sample's counts and status: the method's own, or the shared ones repeated over the batch."""
    n, dev = failed.shape[0], failed.device
    got = outcome.per_sample
    if got is None:
        code = STATUS.index(outcome.result) if outcome.result in STATUS else 0
        shared = {"nfe": evaluator.nfe, "steps": outcome.steps, "rejected": outcome.rejected}
        got = {k: None if v is None else torch.full((n,), int(v), dtype=torch.int64, device=dev)
               for k, v in shared.items()}
        got["status"] = torch.full((n,), code, dtype=torch.int8, device=dev)
        got["t"] = torch.full((n,), float(outcome.t), dtype=torch.float64, device=dev)
    status = torch.where(failed, STATUS.index(Result.NON_FINITE), got["status"].to(dev)).to(torch.int8)
    return PerSample(nfe=got["nfe"], status=status, t=got["t"], steps=got.get("steps"), rejected=got.get("rejected"))


def _check_per_sample(m, per_sample, adaptive):
    if per_sample is None:
        return
    if not isinstance(per_sample, bool):
        raise ArgumentTypeError(f"per_sample must be True or False, got {type(per_sample).__name__} "
                                f"{per_sample!r:.40}")
    if not adaptive:
        raise MethodArgumentError("per_sample= chooses between per-sample and shared adaptive step sizes; "
                                  "give rtol=/atol= with an adaptive sdekit method, or leave it out")
    if per_sample and m.backend != "sdekit":
        raise MethodArgumentError(f"{m.qualified_name} takes one step size for the whole batch; for a step size "
                                  f"per sample use an sdekit adaptive method (sdekit.dopri5, sdekit.bosh3, "
                                  f"improved_euler, dpm_adaptive)")


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
    s = _times("save_at", save_at).flatten()
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    if s.numel() == 0:
        raise InvalidParameterError("save_at is empty; leave it out or give the times to keep")
    if not torch.isfinite(s).all() or s.min() < lo or s.max() > hi:
        raise InvalidParameterError(f"save_at times must lie in [{lo}, {hi}], between t_start and t_end")
    ordered = s.sort(descending=t_end < t_start).values
    if ordered.unique().numel() != ordered.numel():
        raise InvalidParameterError("save_at has repeated times; give each time once")
    return ordered


def _real(name, v, *, positive=False, nonnegative=False) -> float:
    """``v`` (a real number or a one-element tensor) as a float; refused if not a number, NaN, or out of range."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype.is_complex:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {type(v).__name__} {v!r:.40}")
    v = float(v)
    if positive and not (v > 0 and math.isfinite(v)):
        raise InvalidParameterError(f"{name} must be a positive finite number, got {v}")
    if nonnegative and not (v >= 0 and math.isfinite(v)):
        raise InvalidParameterError(f"{name} must be a finite number >= 0, got {v}")
    if math.isnan(v):
        raise InvalidParameterError(f"{name} is NaN; give a number")
    return v


def _times(name, value) -> torch.Tensor:
    """A user's times (a tensor or a sequence of numbers) as a float64 CPU tensor, or an ArgumentTypeError."""
    if not isinstance(value, (str, bytes, Mapping, set)):
        try:
            # dtype=float64 here, not only in .to(): a list of floats would otherwise pass through float32
            return torch.as_tensor(value, dtype=torch.float64).detach().to(device="cpu")
        except (TypeError, ValueError, RuntimeError):
            pass
    raise ArgumentTypeError(f"{name} must be a 1-D tensor or a sequence of times, got {type(value).__name__} "
                            f"{value!r:.40}")


def _check_grid_size(n, what):
    if isinstance(n, numbers.Real) and not isinstance(n, bool) and n > MAX_GRID_STEPS:
        raise InvalidParameterError(f"{what} asks for a grid of {n:.4g} steps, more than the {MAX_GRID_STEPS:.0e} "
                                    "a fixed-step solve takes (each step is kept in memory and calls the score); "
                                    "take fewer steps, a larger dt, or an adaptive method")


def _check_arguments(x, *, max_steps, options, throw, grad, seed, generator, noise):
    """Type and range checks of the arguments that need nothing but themselves and the state."""
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral)
                                  or max_steps < 1):
        raise InvalidParameterError(f"max_steps must be a positive integer, got {max_steps!r:.40}")
    if options is not None and not isinstance(options, Mapping):
        raise ArgumentTypeError(f"options must be a dict of the backend's solver options, got {type(options).__name__}")
    for name, flag in (("throw", throw), ("grad", grad)):
        if not isinstance(flag, bool):
            raise ArgumentTypeError(f"{name} must be True or False, got {type(flag).__name__} {flag!r:.40}")
    check_entropy(seed, generator)
    if noise is None:
        return
    if seed is not None or generator is not None:
        raise InvalidParameterError("noise= fixes the Brownian path, so seed= and generator= would be ignored; "
                                    "give noise= or a seed/generator, not both")
    if getattr(noise, "keyed", False) is True:   # sdekit's keyed noise: queried per sample, any batch
        return
    if isinstance(noise, torch.Tensor) or not callable(noise):
        raise ArgumentTypeError(f"noise must be a Brownian motion called as noise(ta, tb) (build one with "
                                f"sdekit.brownian_motion), got {type(noise).__name__}")
    shape = getattr(noise, "shape", None)
    expected = (x.shape[0], x[0].numel())
    if shape is not None and tuple(shape) != expected:
        raise ShapeError(f"noise has shape {tuple(shape)} but this state needs {expected} (batch, flattened "
                         f"event); build it with sdekit.brownian_motion(t0, t1, {expected})")


def _check_option_names(m, options):
    """Refuse option names the method does not take, before anything runs: a close match for a misspelt one, and
    every option it takes (sdekit's loop options ``denoise``, ``hook``, ``sync_every`` included)."""
    if not options or m.options is None:
        return
    unknown = sorted((k for k in options if k not in m.options), key=str)
    if unknown:
        who = m.name if m.backend == "sdekit" else f"{m.name} ({m.backend})"
        raise MethodArgumentError(unknown_options_message(who, unknown, m.options, m.renamed_options))


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


def _show(rows) -> str:
    return "[" + ", ".join(str(i) for i in rows[:8]) + (", ...]" if len(rows) > 8 else "]")


def _non_finite_message(record, name="score_fn") -> str:
    step = "" if record.step is None else f"step {record.step}, "
    where = f"({step}evaluation {record.evaluation}) for samples {_show(record.samples)}"
    if record.cause == "time":
        return (f"the method asked for the drift at t=nan {where}: its step size "
                f"went non-finite, a failure of the method, not of {name}; use float32 or float64, a smaller first "
                "step (dt=), or a fixed-step method")
    if record.cause == "state":
        return (f"the state handed to {name} was already non-finite first at t={record.time:.6g} {where}: the "
                f"method or the SDE's f or g made it so, not {name}; take smaller steps or check f and g there")
    return (f"{name} returned non-finite values first at t={record.time:.6g} ({step}score evaluation "
            f"{record.evaluation}) for samples {_show(record.samples)}: {Result.NON_FINITE.message}")
