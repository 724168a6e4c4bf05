"""torchsde's SDE methods, stepped by sdekit over an exact grid or by sdekit's adaptive controller.

torchsde integrates forward in time on 2-D states; the process supplies that view (clock ``s``,
flattened state).  sdekit drives torchsde's own step functions, so a fixed grid is followed
exactly (no interpolation at save points), steps are counted, and ``max_steps`` can stop a solve
with the state it reached.  Adaptive stepping compares one full step with two half steps on the
same Brownian path (torchsde's scheme); a rejected step refines the same path by a Brownian
bridge, so rejections do not bias the noise.
"""

import math

import torch
from torchsde._core import base_sde
from torchsde._core import methods as _ts_methods

from .._brownian import brownian_motion
from .._controller import error_ratio, next_step
from .._errors import MethodArgumentError
from .._solution import Result
from ._base import Method, Outcome, Problem


def _solver(method: Method, pb: Problem, y0: torch.Tensor, s0: float, s1: float):
    proc = pb.process
    bm = pb.noise
    if bm is None:
        steps = len(pb.grid) - 1 if pb.grid is not None else 64
        bm = brownian_motion(s0, s1, y0.shape, dtype=y0.dtype, device=y0.device, seed=pb.seed,
                             generator=pb.generator, levy_area=method.levy_area, dt=(s1 - s0) / steps)
    elif (getattr(bm, "levy_area_approximation", "none")
          not in _ts_methods.select(method.name, proc.sde_type).levy_area_approximations):
        raise MethodArgumentError(
            f"method {method.name!r} needs a Brownian motion with levy_area {method.levy_area!r}; "
            f"build it with sdekit.brownian_motion(..., levy_area={method.levy_area!r})"
        )
    if method.name == "srk" and proc.kind == "sde" and not proc.diffusion_depends_on_x(*proc._natural(s0, y0)):
        proc.noise_type = "additive"  # SRA1: 3 drift evaluations a step instead of SRI2's 10
    cls = _ts_methods.select(method=method.name, sde_type=proc.sde_type)
    solver = cls(sde=base_sde.ForwardSDE(proc), bm=bm, dt=1.0, adaptive=False, rtol=0.0, atol=0.0,
                 dt_min=0.0, options=dict(pb.options))
    return solver


def integrate(method: Method, pb: Problem) -> Outcome:
    """Integrate ``pb`` with torchsde's ``method.name`` on the process's torchsde clock."""
    proc = pb.process
    shape = pb.x0.shape
    y = pb.x0.reshape(shape[0], -1)
    s0, s1 = float(proc._t_of_s(pb.t_start)), float(proc._t_of_s(pb.t_end))
    solver = _solver(method, pb, y, s0, s1)
    extra = solver.init_extra_solver_state(_time(s0), y)
    if pb.adaptive:
        return _adaptive(method, pb, solver, y, extra, s0, s1, shape)
    return _fixed(pb, solver, y, extra, shape)


def _fixed(pb, solver, y, extra, shape):
    proc = pb.process
    s = list(proc._t_of_s(pb.grid).unbind())  # 0-dim float64 tensors, as torchsde's own loop passes
    save = _save_indices(pb.grid, pb.save_at)
    path = [pb.x0] if 0 in save else []
    n = len(s) - 1
    limit = n if pb.max_steps is None else min(n, pb.max_steps)
    for i in range(limit):
        proc.evaluator.step = i + 1
        y, extra = solver.step(s[i], s[i + 1], y, extra)
        if i + 1 in save:
            path.append(y.view(shape))
    out = Outcome(y.view(shape), float(pb.grid[limit]), path, steps=limit, rejected=0)
    if limit < n:
        out.result = Result.MAX_STEPS
        out.detail = f"stopped at t={out.t:.6g} after max_steps={pb.max_steps} of {n} grid steps"
    return out


def _time(s: float) -> torch.Tensor:
    return torch.tensor(s, dtype=torch.float64)


def _save_indices(grid, save_at):
    if save_at is None:
        return set()
    where = {float(t): i for i, t in enumerate(grid.tolist())}
    return {where[float(t)] for t in save_at.tolist()}


def _adaptive(method, pb, solver, y, extra, s0, s1, shape):
    proc = pb.process
    saved = {float(proc._t_of_s(t)) for t in pb.save_at.tolist()} if pb.save_at is not None else set()
    stops = sorted(s for s in saved | {s1} if s > s0)
    path = [pb.x0] if s0 in saved else []
    span = s1 - s0
    h = pb.dt0 if pb.dt0 is not None else span / 64
    dt_min = pb.dt_min if pb.dt_min is not None else 1e-12 * span
    order = method.order_additive or method.order
    s, steps, rejected = s0, 0, 0
    for target in stops:
        while s < target:
            if pb.max_steps is not None and steps >= pb.max_steps:
                return _stopped(proc, y, s, shape, path, steps, rejected, Result.MAX_STEPS,
                                f"max_steps={pb.max_steps} accepted steps")
            s_next = target if s + h >= target - 1e-10 * span else s + h
            proc.evaluator.step = steps + 1
            a, b, mid = _time(s), _time(s_next), _time(0.5 * (s + s_next))
            y_full, _ = solver.step(a, b, y, extra)
            y_mid, e_mid = solver.step(a, mid, y, extra)
            y_two, e_two = solver.step(mid, b, y_mid, e_mid)
            err = float(error_ratio(y_full, y_two, pb.rtol, pb.atol))  # the one host sync of a step
            if not math.isfinite(err):
                return _stopped(proc, y, s, shape, path, steps, rejected, Result.NON_FINITE,
                                "a non-finite error estimate")
            accepted = err <= 1.0
            h = next_step(s_next - s, err, order, accepted)
            if accepted:
                s, y, extra = s_next, y_two, e_two
                steps += 1
            else:
                rejected += 1
                if h < dt_min:
                    return _stopped(proc, y, s, shape, path, steps, rejected, Result.DT_TOO_SMALL,
                                    f"step size {h:.3g} below dt_min={dt_min:.3g}")
        if target in saved:
            path.append(y.view(shape))
    return Outcome(y.view(shape), float(pb.t_end), path, steps=steps, rejected=rejected)


def _stopped(proc, y, s, shape, path, steps, rejected, result, why):
    t = float(proc._t_of_s(s))
    return Outcome(y.view(shape), t, path, steps=steps, rejected=rejected, result=result,
                   detail=f"stopped at t={t:.6g} after {steps} steps: {why}")


def _register():
    from . import register
    table = [
        # name, stepping calculus, levy area, strong order (diagonal), strong order (additive), weak order
        ("euler", "ito", "none", 0.5, 1.0, 1.0, "Euler–Maruyama"),
        ("milstein", "ito", "none", 1.0, 1.0, 1.0, "Milstein (Itô form; derivative-based)"),
        ("srk", "ito", "space-time", 1.5, 1.5, 1.5, "stochastic Runge–Kutta, Rößler (2010) SRI2/SRA1"),
        ("heun", "stratonovich", "none", 1.0, 1.0, 1.0, "stochastic Heun"),
        ("midpoint", "stratonovich", "none", 1.0, 1.0, 1.0, "stochastic midpoint"),
        ("reversible_heun", "stratonovich", "none", 0.5, 1.0, 1.0, "reversible Heun, Kidger et al. (2021)"),
        ("log_ode", "stratonovich", "foster", 1.0, 1.0, 1.0, "log-ODE midpoint with Lévy area"),
        ("euler_heun", "stratonovich", "none", 1.0, 1.0, 1.0, "Euler–Heun"),
    ]
    for name, calculus, levy, strong, additive, weak, text in table:
        register(Method(name=name, backend="torchsde", kind="sde", order=strong, order_additive=additive,
                         weak_order=weak, stepping="either", sde_type=calculus, levy_area=levy,
                         integrate=integrate, description=text))


_register()
