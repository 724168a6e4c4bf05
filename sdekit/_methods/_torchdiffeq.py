"""torchdiffeq's ODE methods on the probability-flow ODE, in natural time and natural shape.

Fixed-step methods follow sdekit's grid exactly (a ``grid_constructor``); adaptive methods are
stopped exactly at ``t_end`` (``step_t``), so no step runs past the interval (torchdiffeq issue
#78), and any time its initial-step heuristic asks for outside the interval is clamped by
the process (`Process.drift`).  Accepted and rejected steps are counted through torchdiffeq's callbacks,
which also stop a solve at ``max_steps`` with the state it reached.
"""

import torch
import torchdiffeq

from .._solution import Result
from ._base import Method, Outcome, Problem


class _Stop(Exception):
    """Raised from a callback to end a solve at ``max_steps``."""


class _Func:
    """The process as a torchdiffeq function of ``(t, x)``, with step-counting callbacks when adaptive."""

    def __init__(self, process):
        self.process = process

    def __call__(self, t, x):
        return self.process.drift(_batch(t, x), x)


class _Counting(_Func):
    """Counts steps through torchdiffeq's callbacks, numbers them for error messages, stops at ``max_steps``.

    ``_next`` is the number of the step whose evaluations follow the callback: a fixed-step callback
    comes before its step, an accept callback after its step.
    """

    _next = 0

    def __init__(self, process, max_steps):
        super().__init__(process)
        self.max_steps = max_steps
        self.accepted = 0
        self.rejected = 0
        self.last = None

    def _step_begins(self, t0, y0, dt):
        # Called with the start of a step: the state after `accepted` steps.
        self.last = (float(t0), y0)
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
    return t.to(dtype=x.dtype).expand(x.shape[0]) if t.dim() == 0 else t


def integrate(method: Method, pb: Problem) -> Outcome:
    """Integrate ``pb`` with ``torchdiffeq.odeint(method=method.name)`` from ``t_start`` to ``t_end``."""
    x0 = pb.x0
    times = [pb.t_start] + ([] if pb.save_at is None else pb.save_at.tolist()) + [pb.t_end]
    times = list(dict.fromkeys(times))  # ordered, unique
    t_out = torch.tensor(times, dtype=torch.float64, device=x0.device)
    options = dict(pb.options)
    kwargs = {}
    if pb.adaptive:
        func = _AdaptiveFunc(pb.process, pb.max_steps)
        options.setdefault("step_t", torch.tensor([pb.t_end], dtype=torch.float64))
        if pb.dt0 is not None:
            options.setdefault("first_step", pb.dt0)
        kwargs = dict(rtol=pb.rtol, atol=pb.atol)
    else:
        func = _FixedFunc(pb.process, pb.max_steps)
        grid = pb.grid.to(device=x0.device)
        options["grid_constructor"] = lambda f, y0, t: grid
    pb.process.evaluator.step = 1
    try:
        ys = torchdiffeq.odeint(func, x0, t_out, method=method.name, options=options, **kwargs)
    except _Stop:
        t, x = func.last
        return Outcome(x, t, [], steps=func.accepted, rejected=func.rejected, result=Result.MAX_STEPS,
                       detail=f"stopped at t={t:.6g} after max_steps={pb.max_steps} accepted steps")
    except AssertionError as err:  # torchdiffeq's "underflow in dt" and non-finite state checks
        t, x = func.last if func.last is not None else (pb.t_start, x0)
        code = Result.NON_FINITE if "non-finite" in str(err) or "nan" in str(err) else Result.DT_TOO_SMALL
        return Outcome(x, t, [], steps=func.accepted, rejected=func.rejected,
                       result=code, detail=f"torchdiffeq stopped near t={t:.6g}: {err}")
    path = [ys[times.index(t)] for t in pb.save_at.tolist()] if pb.save_at is not None else []
    return Outcome(ys[-1], pb.t_end, path, steps=func.accepted, rejected=func.rejected)


def _register():
    from . import register
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
                        integrate=integrate, description=text))


_register()
