"""torchdiffeq's ODE methods on the probability-flow ODE, in natural time and natural shape.

Fixed-step methods follow sdekit's grid exactly (a ``grid_constructor``); adaptive methods are
stopped exactly at ``t_end`` (``step_t``), so no step runs past the interval (torchdiffeq issue
#78), and any time its initial-step heuristic asks for outside the interval is clamped by
the process (`Process.drift`).  Accepted and rejected steps are counted through torchdiffeq's callbacks,
which also stop a solve at ``max_steps`` with the state it reached.

With ``save_at`` the solve runs from one save time to the next (each a call of ``odeint`` that ends
exactly there, the next starting with the last accepted step size), so the states saved before a
failure are kept.  For an adaptive method that costs one evaluation per save time (the first stage of
the next segment) and lands a step on each save time.  A float16 or bfloat16 state starts with a first
step of 1/64 of the span: torchdiffeq's first-step heuristic overflows in half precision.  An exception
raised by the process (the score) passes through unchanged; only torchdiffeq's own assertions become
result codes.
"""

import inspect

import torch
import torchdiffeq
from torchdiffeq._impl.odeint import SOLVERS

from .._solution import Outcome, Result
from ._base import Method, Problem, register

#: Options that sdekit sets itself from solve()'s arguments (steps=, dt=, grid=, rtol=, atol=).
_OWN = {"grid_constructor", "step_size", "dtype", "rtol", "atol"}


class _Stop(Exception):
    """Raised from a callback to end a solve at ``max_steps``."""


class _Func:
    """The process as a torchdiffeq function of ``(t, x)``; remembers an exception raised inside it."""

    def __init__(self, process):
        self.process = process
        self.error = None

    def __call__(self, t, x):
        try:
            return self.process.drift(_batch(t, x), x)
        except Exception as err:
            self.error = err
            raise


class _Counting(_Func):
    """Counts steps through torchdiffeq's callbacks, numbers them for error messages, stops at ``max_steps``.

    ``_next`` is the number of the step whose evaluations follow the callback: a fixed-step callback
    comes before its step, an accept callback after its step.  ``last`` is the latest state known
    with its time: a step's start, or a segment's start; ``dt`` the last accepted step.
    """

    _next = 0

    def __init__(self, process, max_steps):
        super().__init__(process)
        self.max_steps = max_steps
        self.accepted = 0
        self.rejected = 0
        self.last = None
        self.dt = None

    def _step_begins(self, t0, y0, dt):
        # Called with the start of a step: the state after `accepted` steps.
        # detached: with a graph (a score with parameters), t0 and dt require grad, and float() of them warns
        self.last = (float(t0.detach()), y0)
        self.dt = abs(float(dt.detach()))
        if self.max_steps is not None and self.accepted >= self.max_steps:
            raise _Stop()
        self.accepted += 1
        self.process.evaluator.step = self.accepted + self._next


class _FixedFunc(_Counting):
    callback_step = _Counting._step_begins


class _AdaptiveFunc(_Counting):
    _next = 1
    callback_accept_step = _Counting._step_begins

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def _batch(t, x):
    # Times in x's dtype, but never below float32 (a half-precision clock cannot tell 1000 steps apart).
    t = t.to(dtype=torch.promote_types(x.dtype, torch.float32))
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def integrate(method: Method, pb: Problem) -> Outcome:
    """Integrate ``pb`` with ``torchdiffeq.odeint(method=method.name)`` from ``t_start`` to ``t_end``."""
    x0 = pb.x0
    saves = [] if pb.save_at is None else pb.save_at.tolist()
    stops = list(dict.fromkeys([pb.t_start] + saves + [pb.t_end]))  # ordered, unique
    path = [x0] if pb.t_start in saves else []
    options = dict(pb.options)
    kwargs = {}
    if pb.adaptive:
        func = _AdaptiveFunc(pb.process, pb.max_steps)
        first = pb.dt0 if pb.dt0 is not None else options.pop("first_step", None)
        user_steps = torch.as_tensor(options.pop("step_t", []), dtype=torch.float64).flatten().tolist()
        if first is None and x0.dtype in (torch.float16, torch.bfloat16):
            first = abs(pb.t_end - pb.t_start) / 64
        kwargs = dict(rtol=pb.rtol, atol=pb.atol)
    else:
        func = _FixedFunc(pb.process, pb.max_steps)
        grid = pb.grid.to(device=x0.device)
        where = {float(t): i for i, t in enumerate(pb.grid.tolist())}
    pb.process.evaluator.step = 1
    x = x0
    for a, b in zip(stops, stops[1:]):
        func.last = (a, x)
        if pb.adaptive:
            options["step_t"] = torch.tensor(sorted(set(user_steps) | {b}), dtype=torch.float64)
            if first is not None:
                options["first_step"] = first
        else:
            piece = grid[where[a]:where[b] + 1]
            options["grid_constructor"] = lambda f, y0, t, piece=piece: piece
        t_out = torch.tensor([a, b], dtype=torch.float64, device=x0.device)
        try:
            x = torchdiffeq.odeint(func, x, t_out, method=method.name, options=options, **kwargs)[-1]
        except _Stop:
            t, x = func.last
            return Outcome(x, t, path, steps=func.accepted, rejected=func.rejected, result=Result.MAX_STEPS,
                           detail=f"stopped at t={t:.6g} after max_steps={pb.max_steps} accepted steps")
        except AssertionError as err:  # torchdiffeq's "underflow in dt" and non-finite state checks
            if err is func.error:
                raise  # the user's own assertion, inside the score
            t, x = func.last
            code = Result.NON_FINITE if "non-finite" in str(err) or "nan" in str(err) else Result.DT_TOO_SMALL
            return Outcome(x, t, path, steps=func.accepted, rejected=func.rejected,
                           result=code, detail=f"torchdiffeq stopped near t={t:.6g}: {err}")
        if pb.adaptive and func.dt is not None:
            first = func.dt  # the next segment starts with the last accepted step
        if b in saves:
            path.append(x)
    return Outcome(x, pb.t_end, path, steps=func.accepted, rejected=func.rejected)


def _options(name: str) -> tuple:
    """The options torchdiffeq's solver ``name`` takes, less those sdekit sets from solve()'s arguments."""
    names = set()
    for cls in SOLVERS[name].__mro__:
        if "__init__" in vars(cls):
            names |= {p.name for p in inspect.signature(cls.__init__).parameters.values()
                      if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)}
    if "step_t" in names:
        names.add("norm")  # odeint's error norm, read by the adaptive solvers
    return tuple(sorted(names - _OWN))


def _register():
    table = [
        ("dopri5", 5, "adaptive", "Dormand–Prince 5(4)"),
        ("dopri8", 8, "adaptive", "Dormand–Prince 8(7)"),
        ("bosh3", 3, "adaptive", "Bogacki–Shampine 3(2)"),
        ("fehlberg2", 2, "adaptive", "Runge–Kutta–Fehlberg 2(1)"),
        ("adaptive_heun", 2, "adaptive", "Heun–Euler 2(1)"),
        ("euler", 1, "fixed", "explicit Euler"),
        ("midpoint", 2, "fixed", "explicit midpoint"),
        ("rk4", 4, "fixed", "classical Runge–Kutta (3/8 rule)"),
    ]
    for name, order, stepping, text in table:
        register(Method(name=name, backend="torchdiffeq", kind="ode", order=float(order), stepping=stepping,
                        integrate=integrate, description=text, error_estimate=stepping == "adaptive",
                        options=_options(name)))


_register()
