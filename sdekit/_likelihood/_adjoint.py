r"""Gradients of a likelihood by the adjoint method: torchdiffeq's ``odeint_adjoint`` on the augmented flow.

The adjoint state :math:`a(t) = \partial L/\partial y(t)` solves :math:`da/dt = -a^\top\partial_y F` backwards
from ``T`` with :math:`dL/d\theta = \int a^\top \partial_\theta F\,dt` (Chen et al. 2018), so the memory does
not grow with the number of steps.  The divergence is built with ``create_graph`` in the backward pass,
so its parameter derivatives are exact for the probes drawn.
"""

import time

import torch
import torchdiffeq

from .._errors import ArgumentTypeError, MethodArgumentError
from .._solution import Outcome, Result, Solution
from .._solve import make_solution

__all__ = ["adjoint_solve"]


class _Counting:
    """The augmented flow as torchdiffeq's function, counting the forward solve's accepted and rejected steps."""

    def __init__(self, flow):
        self.flow = flow
        self.accepted = self.rejected = 0

    def __call__(self, t, y):
        return self.flow(t, y)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def _parameters(flow, adjoint_params):
    if adjoint_params is None:
        params = getattr(flow.fn, "score_fn", flow.fn)
        if not callable(getattr(params, "parameters", None)):
            raise ArgumentTypeError("adjoint=True differentiates with respect to parameters: pass "
                                    "adjoint_params=model.parameters() (score_fn is not a torch.nn.Module)")
        adjoint_params = params.parameters()
    params = tuple(adjoint_params)
    if not all(isinstance(p, torch.Tensor) for p in params):
        raise ArgumentTypeError("adjoint_params must be tensors (the score network's parameters)")
    return params


def adjoint_solve(aug, y0, m, t_start, t_end, rtol, atol, adjoint_params, throw, max_steps=None,
                  options=None, **unused) -> Solution:
    """Integrate the augmented flow ``aug`` from ``t_start`` to ``t_end`` with ``odeint_adjoint``; ``m`` is the
    looked-up :class:`Method` (``check_method``'s)."""
    if unused:
        raise MethodArgumentError(f"adjoint=True takes rtol, atol, max_steps and options, not "
                                  f"{', '.join(sorted(unused))}")
    if m.backend != "torchdiffeq" or m.stepping != "adaptive":
        raise MethodArgumentError(f"adjoint=True runs torchdiffeq's odeint_adjoint with an adaptive method "
                                  f"(dopri5, bosh3, dopri8, ...), got {m.qualified_name}")
    params = _parameters(aug, adjoint_params)
    bound = aug.replace(event_shape=(y0.shape[1],), t_min=min(t_start, t_end), t_max=max(t_start, t_end))
    opts = dict(options or {})
    if max_steps is not None:
        opts["max_num_steps"] = int(max_steps)
    t = torch.tensor([t_start, t_end], dtype=torch.float64, device=y0.device)
    func = _Counting(bound)
    start = time.perf_counter()
    try:
        y = torchdiffeq.odeint_adjoint(func, y0, t, rtol=rtol, atol=atol, method=m.name, options=opts or None,
                                       adjoint_params=params)[-1]
        outcome = Outcome(y, t_end, steps=func.accepted, rejected=func.rejected)
    except AssertionError as err:  # torchdiffeq's "underflow in dt" or max_num_steps
        if bound.evaluator.user_error is not None:
            raise bound.evaluator.user_error
        outcome = Outcome(y0, t_start, steps=func.accepted, rejected=func.rejected, result=Result.DT_TOO_SMALL,
                          detail=f"torchdiffeq stopped: {err}")
    if y0.is_cuda:
        torch.cuda.synchronize(y0.device)
    # the flow freezes a sample whose field went non-finite (so that the others finish) and the evaluator records
    # it: make_solution marks those samples failed although their rows stayed finite, as for any solve
    return make_solution(m, outcome, y0, None, bound.evaluator, time.perf_counter() - start, throw)
