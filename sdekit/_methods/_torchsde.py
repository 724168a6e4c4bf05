r"""torchsde's SDE methods, stepped by sdekit over an exact grid or by sdekit's adaptive controller.

torchsde integrates forward in time on 2-D states; the process supplies that view (clock ``s``,
flattened state).  sdekit drives torchsde's own step functions: on a fixed grid through the stepping
layer's grid walk (:func:`sdekit._stepping._driver.walk`, the fixed grid of sdekit's own samplers), so the grid is
followed exactly (no interpolation at save points), steps are counted, and ``max_steps`` can stop a solve
with the state it reached, written once for both.  Adaptive stepping compares one full step with two half steps on the
same Brownian path (torchsde's scheme); a rejected step refines the same path by a Brownian
bridge, so rejections do not bias the noise.  The step size comes from the controller of sdekit's own adaptive
loop (:mod:`sdekit._stepping._control`: :math:`h' = 0.9\,h\,E^{-1/(p+1)}` within ``[0.2, 5]``), with one error for
the batch.

The Brownian path is fixed by the seed and the span alone.  Methods that need no Lévy area (euler,
milstein, heun, midpoint, euler_heun, reversible_heun) read sdekit's keyed path by default
(:class:`sdekit.KeyedBrownian` of ``seed=`` or of an integer drawn from ``generator=``, over the span in
natural time, a path per sample), so ``save_at``, a save time off the grid, a finer grid or a rejected
adaptive step query the same path, and sample ``i`` does not depend on its batch; a query costs
``depth + 1`` keyed draws.  srk and log_ode need a Lévy area, which the keyed path does not carry: they
get torchsde's ``BrownianInterval`` (:func:`sdekit.brownian_motion`), built from a step hint (the span
over the grid's step count *without* the save times, as a power of two; adaptive solves use 64).  Its
tree splits at midpoints only, so save times on the grid leave every sample unchanged, but a query
splits the leaf it lands in, so a save time *off* the grid draws the rest of that leaf differently.

On a failure the state returned is the one its time says: a fixed-step solve runs to the end of its
grid (each step is independent per sample, and checking the state every step would cost a host
synchronisation), so the rows that stayed finite are samples at ``t_end`` and the others are
non-finite; an adaptive solve stops at the last accepted step, whose state is finite.
"""

import math
import os
import sys
import warnings

import torch
from torchsde._core import base_sde
from torchsde._core import methods as _ts_methods

from .._brownian import brownian_motion
from .._errors import InvalidParameterError, MethodArgumentError, ShapeError
from .._solution import Outcome, Result
from .._stepping._control import batch_ratio, i_controller
from .._stepping._driver import walk
from .._stepping._paths import check_depth, keyed_path
from ._base import Method, Problem, register


#: The shortest span, relative to the clock's magnitude, that the Brownian tree and the steps resolve.
_MIN_SPAN = 2.0 ** -30


def _solver(method: Method, pb: Problem, y0: torch.Tensor, s0: float, s1: float):
    proc = pb.process
    if not s1 - s0 >= _MIN_SPAN * max(1.0, abs(s0), abs(s1)):
        raise InvalidParameterError(
            f"the span from t_start={pb.t_start!r} to t_end={pb.t_end!r} is too short for torchsde's steps and "
            f"Brownian motion ({s1 - s0:.3g}); give a span of at least {_MIN_SPAN * max(1.0, abs(s1)):.3g}")
    bm = pb.noise
    if bm is None and method.levy_area == "none":
        bm = keyed_path(pb, pb.x0)   # natural time, a path per sample
    if bm is None:
        bm = brownian_motion(s0, s1, y0.shape, dtype=y0.dtype, device=y0.device, seed=pb.seed,
                             generator=pb.generator, levy_area=method.levy_area, dt=(s1 - s0) / _tree_steps(pb))
    elif getattr(bm, "keyed", False) is True:
        check_depth(bm, pb)
        bm = _KeyedOnClock(method, proc, bm, y0)
    else:
        _check_noise(method, proc, bm, y0, s0, s1)
    t0, x0 = proc._natural(s0, y0)
    if method.name == "srk" and proc.kind == "sde" and not proc.diffusion_depends_on_x(t0.to(x0.dtype), x0):
        proc.noise_type = "additive"  # SRA1: 3 drift evaluations a step instead of SRI2's 10
    cls = _ts_methods.select(method=method.name, sde_type=proc.sde_type)
    solver = cls(sde=base_sde.ForwardSDE(proc), bm=bm, dt=1.0, adaptive=False, rtol=0.0, atol=0.0,
                 dt_min=0.0, options=dict(pb.options))
    return solver


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside sdekit (the user's call)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level, frame = 2, sys._getframe(2)  # 1: the function that warns
    while frame is not None and frame.f_code.co_filename.startswith(package):
        level, frame = level + 1, frame.f_back
    return level


def _tree_steps(pb) -> int:
    """The step count the Brownian tree is built for: the grid's, less its save times, as a power of two."""
    if pb.grid is None:
        return 64
    inner = 0 if pb.save_at is None else sum(t not in (pb.t_start, pb.t_end) for t in pb.save_at.tolist())
    return 2 ** math.ceil(math.log2(max(len(pb.grid) - 1 - inner, 1)))


def _check_noise(method, proc, bm, y0, s0, s1):
    """Refuse a user's Brownian motion that lacks the Lévy area, the dtype or the span this solve needs."""
    if (getattr(bm, "levy_area_approximation", "none")
            not in _ts_methods.select(method.name, proc.sde_type).levy_area_approximations):
        raise MethodArgumentError(
            f"method {method.name!r} needs a Brownian motion with levy_area {method.levy_area!r}; "
            f"build it with sdekit.brownian_motion(..., levy_area={method.levy_area!r})"
        )
    dtype = getattr(bm, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype != y0.dtype:
        raise ShapeError(f"the noise has dtype {dtype} but the state {y0.dtype}, which would change the result's "
                         f"dtype; build it with sdekit.brownian_motion(..., dtype={y0.dtype})")
    span = _span_of(bm)
    if span is not None and not (span[0] <= s0 and s1 <= span[1]):
        raise InvalidParameterError(
            f"the noise covers [{span[0]:.6g}, {span[1]:.6g}] on the torchsde clock but this solve needs "
            f"[{s0:.6g}, {s1:.6g}] (past its end it would stand still); build it with "
            f"sdekit.brownian_motion({s0!r}, {s1!r}, ...)")


class _KeyedOnClock:
    """sdekit's keyed noise (``KeyedBrownian``: natural time, a path per sample) read by torchsde on its clock.

    Its values depend on the seed, the sample index and the time alone, so a save time off the grid or a
    finer grid queries the same path.  It carries no Lévy area (srk and log_ode refuse it).
    """

    levy_area_approximation = "none"

    def __init__(self, method, proc, kb, y0):
        if method.levy_area != "none":
            raise MethodArgumentError(f"{method.name} needs a Brownian motion with levy_area {method.levy_area!r}, "
                                      "which keyed noise does not carry; use sdekit.brownian_motion or another method")
        if tuple(kb.shape[:1]) != (y0.shape[0],) or math.prod(kb.shape[1:]) != y0.shape[1]:
            raise ShapeError(f"the keyed noise has shape {tuple(kb.shape)} but the state {tuple(y0.shape)} "
                             "(batch, flattened event)")
        lo, hi = proc.t_min, proc.t_max
        if not kb.covers(lo, hi):
            raise InvalidParameterError(f"the keyed noise covers [{kb.t0:.6g}, {kb.t1:.6g}] but this solve needs "
                                        f"[{lo:.6g}, {hi:.6g}]; build it over the solve's span")
        self.kb, self.proc, self.dtype = kb, proc, y0.dtype
        self.batch = y0.shape[0]
        self._recent = []   # (clock time, value) of the last three queries: an adaptive attempt reads a, mid, b

    def _value(self, s) -> torch.Tensor:
        s = float(s)
        for seen, w in self._recent:
            if seen == s:
                return w
        t = torch.full((self.batch,), float(self.proc._t_of_s(s)), dtype=torch.float64, device=self.kb.device)
        w = self.kb.value(t).reshape(self.batch, -1)
        self._recent = [(s, w)] + self._recent[:2]
        return w

    def __call__(self, ta, tb, return_U=False, return_A=False):
        w_a = self._value(ta)
        return (self._value(tb) - w_a).to(self.dtype)


def _span_of(bm):
    """The clock interval a torchsde Brownian motion covers, or ``None`` when it does not say."""
    for obj in (bm, getattr(bm, "_interval", None)):
        for lo, hi in (("_start", "_end"), ("t0", "t1")):
            a, b = getattr(obj, lo, None), getattr(obj, hi, None)
            if isinstance(a, (int, float, torch.Tensor)) and isinstance(b, (int, float, torch.Tensor)):
                return float(a), float(b)
    return None


def integrate(method: Method, pb: Problem) -> Outcome:
    """Integrate ``pb`` with torchsde's ``method.name`` on the process's torchsde clock."""
    proc = pb.process
    if method.name == "reversible_heun" and proc.kind == "sde" and not proc.runs_forward:
        warnings.warn("reversible_heun is not dissipative: on a reverse-time diffusion SDE its samples are wrong "
                      "at ordinary step counts (mode masses off by many standard errors); use heun, srk or euler",
                      UserWarning, stacklevel=_caller_level())
    shape = pb.x0.shape
    y = pb.x0.reshape(shape[0], -1)
    s0, s1 = float(proc._t_of_s(pb.t_start)), float(proc._t_of_s(pb.t_end))
    solver = _solver(method, pb, y, s0, s1)
    extra = solver.init_extra_solver_state(_time(s0), y)
    if pb.adaptive:
        return _adaptive(method, pb, solver, y, extra, s0, s1, shape)
    return walk(_TorchsdeStep(solver, proc, pb.grid, extra), pb)


class _TorchsdeStep:
    """One step of torchsde's step function on the process's clock, for the stepping layer's grid walk.

    The state is flattened to torchsde's ``(batch, d)`` and back; the clock times are the grid's, computed at
    once as torchsde's own loop computes them; the solver's extra state (milstein, srk) is carried here.
    """

    def __init__(self, solver, proc, grid, extra):
        self.solver, self.extra = solver, extra
        self.s = list(proc._t_of_s(grid).unbind())  # 0-dim float64 tensors, as torchsde's own loop passes

    def step(self, x, t, t_next, i, n):
        y, self.extra = self.solver.step(self.s[i], self.s[i + 1], x.reshape(x.shape[0], -1), self.extra)
        return y.view(x.shape)


def _time(s: float) -> torch.Tensor:
    return torch.tensor(s, dtype=torch.float64)


def _adaptive(method, pb, solver, y, extra, s0, s1, shape):
    proc = pb.process
    saved = {float(proc._t_of_s(t)) for t in pb.save_at.tolist()} if pb.save_at is not None else set()
    stops = sorted(s for s in saved | {s1} if s > s0)
    path = [pb.x0] if s0 in saved else []
    span = s1 - s0
    dt_min = pb.dt_min if pb.dt_min is not None else 1e-12 * span
    h = pb.dt0 if pb.dt0 is not None else span / 64
    if not (h > 0 and math.isfinite(h)):
        raise InvalidParameterError(f"the first step dt must be a positive finite number, got {h}")
    h = max(h, dt_min)  # a first step below the smallest step allowed starts at the smallest
    controller = i_controller(method.order_additive or method.order)
    s, steps, rejected = s0, 0, 0
    for target in stops:
        while s < target:
            if pb.max_steps is not None and steps >= pb.max_steps:
                return _stopped(proc, y, s, shape, path, steps, rejected, Result.MAX_STEPS,
                                f"max_steps={pb.max_steps} accepted steps")
            s_next = target if s + h >= target - 1e-10 * span else s + h
            if not s_next > s:  # the step no longer advances the clock: never loop on it
                return _stopped(proc, y, s, shape, path, steps, rejected, Result.DT_TOO_SMALL,
                                f"a step of {h:.3g} no longer advances the time")
            proc.evaluator.step = steps + 1
            a, b, mid = _time(s), _time(s_next), _time(0.5 * (s + s_next))
            y_full, _ = solver.step(a, b, y, extra)
            y_mid, e_mid = solver.step(a, mid, y, extra)
            y_two, e_two = solver.step(mid, b, y_mid, e_mid)
            # one error for the batch, the samples that went non-finite left out (the evaluator reports them)
            err = batch_ratio(y_full, y_two, pb.rtol, pb.atol).view(1)
            e = float(err)   # the one host sync of a step
            if not math.isfinite(e):
                return _stopped(proc, y, s, shape, path, steps, rejected, Result.NON_FINITE,
                                "a non-finite error estimate")
            accepted = e <= 1.0
            h = float(controller.propose(_time(s_next - s).view(1), err, err, torch.tensor([accepted])))
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
    # Weak orders: declared where sdekit measures them (validation.orders.weak_order on the reverse VP SDE,
    # tested); None where the bias on that problem falls below the Monte Carlo floor at the step counts that
    # fit an order (the second-order schemes), so no order could be checked.
    table = [
        # name, calculus, levy area, strong order (diagonal), strong order (additive), weak order, description
        ("euler", "ito", "none", 0.5, 1.0, 1.0, "Euler–Maruyama"),
        ("milstein", "ito", "none", 1.0, 1.0, 1.0, "Milstein (Itô form; derivative-based)"),
        ("srk", "ito", "space-time", 1.5, 1.5, None, "stochastic Runge–Kutta, Rößler (2010) SRI2/SRA1"),
        ("heun", "stratonovich", "none", 1.0, 1.0, None, "stochastic Heun"),
        ("midpoint", "stratonovich", "none", 1.0, 1.0, None, "stochastic midpoint"),
        ("reversible_heun", "stratonovich", "none", 1.0, 1.0, None,
         "reversible Heun, Kidger et al. (2021); not dissipative: wrong samples on reverse-time diffusion SDEs "
         "at ordinary step counts (sdekit warns), use heun or srk there"),
        ("log_ode", "stratonovich", "foster", 1.0, 1.0, None, "log-ODE midpoint with Lévy area"),
        ("euler_heun", "stratonovich", "none", 1.0, 1.0, 1.0, "Euler–Heun"),
    ]
    options = {"milstein": ("grad_free",)}  # torchsde's step functions read no other option
    for name, calculus, levy, strong, additive, weak, text in table:
        register(Method(name=name, backend="torchsde", kind="sde", order=strong, order_additive=additive,
                        weak_order=weak, stepping="either", sde_type=calculus, levy_area=levy,
                        integrate=integrate, description=text, error_estimate=True,
                        options=options.get(name, ())))


_register()
