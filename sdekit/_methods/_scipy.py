"""scipy's ``solve_ivp`` solvers (RK45, DOP853, Radau, LSODA): a float64 reference for ODEs.

The batch is one flat float64 system; sdekit steps scipy's solver objects itself, so steps are
counted, ``max_steps`` applies, and ``save_at`` times are read from each step's dense output.
Samples are independent, so the implicit solvers get a block-diagonal Jacobian pattern (Radau:
``jac_sparsity``; LSODA: bands) and estimate it with ``d`` evaluations, not ``batch * d``.  Their
Jacobian still holds ``batch * d**2`` numbers (and its factorisation several times that), so they
refuse states whose Jacobian blocks alone would pass ``JACOBIAN_BUDGET`` bytes: they are references for
small problems, not image samplers.  The solvers compute in numpy, so no autograd graph survives them:
they refuse an ``x`` that requires grad.  A step that does not advance the time, or a time that is not
finite (a NaN first step), ends the solve with ``DT_TOO_SMALL`` instead of looping.
"""

import inspect
import math

import numpy as np
import scipy.integrate
import scipy.sparse
import torch

from .._errors import MethodArgumentError
from .._solution import Outcome, Result
from ._base import Method, Problem, register

_SOLVERS = {"RK45": scipy.integrate.RK45, "DOP853": scipy.integrate.DOP853,
            "Radau": scipy.integrate.Radau, "LSODA": scipy.integrate.LSODA}
_IMPLICIT = ("Radau", "LSODA")
#: The largest Jacobian (its nonzero blocks, float64) the implicit solvers may build; Radau's peak memory
#: measured about 20 times the blocks' size (its sparse LU factorisations and their work arrays).
JACOBIAN_BUDGET = 2 ** 24


class _NonFiniteTime(Exception):
    """Raised from the right-hand side when scipy asks for it at a time that is not finite."""


def _check(method: Method, pb: Problem, n: int, d: int) -> None:
    if pb.x0.requires_grad and torch.is_grad_enabled():
        raise MethodArgumentError(f"{method.name} (scipy) computes in numpy and would drop the autograd graph; "
                                  "use a torchdiffeq method (dopri5, rk4, ...) to differentiate through the solve")
    if method.name in _IMPLICIT and n * d * d * 8 > JACOBIAN_BUDGET:
        raise MethodArgumentError(
            f"{method.name} would build a Jacobian of {n * d * d * 8 / 2 ** 20:.0f} MiB for this state (batch {n} x "
            f"d^2 = {d}^2 float64 blocks; its factorisation needs about 20 times that, and each Jacobian {d} "
            f"evaluations); it takes at most {JACOBIAN_BUDGET // 2 ** 20} MiB: use RK45, DOP853 or a torchdiffeq "
            "method, or fewer samples")


def integrate(method: Method, pb: Problem) -> Outcome:
    """Integrate ``pb`` with scipy's ``method.name`` solver, stepping it one accepted step at a time."""
    x0 = pb.x0
    shape, dtype, device = x0.shape, x0.dtype, x0.device
    drift = pb.process.drift
    n, d = shape[0], x0[0].numel()

    _check(method, pb, n, d)

    def fun(t, y):
        if not math.isfinite(t):
            raise _NonFiniteTime()
        x = torch.from_numpy(y).to(device=device, dtype=dtype).view(shape)
        tt = torch.full((n,), t, dtype=dtype, device=device)
        with torch.no_grad():
            return drift(tt, x).reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

    extra = dict(pb.options)
    if method.name == "Radau":
        extra.setdefault("jac_sparsity", scipy.sparse.block_diag([np.ones((d, d))] * n, format="csc"))
    elif method.name == "LSODA":
        extra.setdefault("lband", d - 1)
        extra.setdefault("uband", d - 1)
    if pb.dt0 is not None:
        extra["first_step"] = min(pb.dt0, abs(pb.t_end - pb.t_start))  # scipy refuses one past the end
    y0 = x0.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
    try:
        solver = _SOLVERS[method.name](fun, pb.t_start, y0, pb.t_end, rtol=pb.rtol, atol=pb.atol, **extra)
    except _NonFiniteTime:
        return Outcome(x0, float(pb.t_start), [], steps=0, result=Result.DT_TOO_SMALL,
                       detail=f"scipy {method.name} asked for the drift at a time that is not finite while choosing "
                              f"its first step; give dt= (the first step)")

    direction = 1.0 if pb.t_end > pb.t_start else -1.0
    pending = [] if pb.save_at is None else pb.save_at.tolist()
    path, steps = [], 0

    def emit(y):
        return torch.from_numpy(np.array(y)).to(device=device, dtype=dtype).view(shape)

    while pending and pending[0] == pb.t_start:
        path.append(x0)
        pending.pop(0)
    while solver.status == "running":
        if pb.max_steps is not None and steps >= pb.max_steps:
            return Outcome(emit(solver.y), float(solver.t), path, steps=steps, result=Result.MAX_STEPS,
                           detail=f"stopped at t={solver.t:.6g} after max_steps={pb.max_steps} accepted steps")
        pb.process.evaluator.step = steps + 1
        t_before, y_before = solver.t, solver.y
        try:
            message = solver.step()
        except _NonFiniteTime:
            message = "it asked for the drift at a time that is not finite (a NaN step size)"
            solver.status, solver.t, solver.y = "failed", t_before, y_before
        if solver.status != "failed" and not direction * (solver.t - t_before) > 0:
            message = f"a step no longer advances the time (step size {solver.step_size})"
            solver.status = "failed"
        if solver.status == "failed":
            return Outcome(emit(solver.y), float(solver.t), path, steps=steps, result=Result.DT_TOO_SMALL,
                           detail=f"scipy {method.name} stopped at t={solver.t:.6g}: {message}")
        steps += 1
        if pending and direction * (solver.t - pending[0]) >= 0:
            dense = solver.dense_output()
            while pending and direction * (solver.t - pending[0]) >= 0:
                t = pending.pop(0)
                path.append(emit(solver.y if t == solver.t else dense(t)))
    return Outcome(emit(solver.y), pb.t_end, path, steps=steps)


def _register():
    table = [("RK45", 5.0, "Dormand–Prince 5(4), scipy"), ("DOP853", 8.0, "Dormand–Prince 8(5,3), scipy"),
             ("Radau", 5.0, "implicit Radau IIA, order 5, scipy"),
             ("LSODA", None, "Adams/BDF with stiffness switching (variable order), scipy")]
    for name, order, text in table:
        register(Method(name=name, backend="scipy", kind="ode", order=order, stepping="adaptive",
                        integrate=integrate, description=text, error_estimate=True, options=_options(name)))


def _options(name: str) -> tuple:
    """The keyword arguments of scipy's solver ``name``, less those sdekit sets (tolerances, vectorized)."""
    params = inspect.signature(_SOLVERS[name].__init__).parameters.values()
    return tuple(sorted(p.name for p in params if p.default is not p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
                        and p.name not in ("rtol", "atol", "vectorized")))


_register()
