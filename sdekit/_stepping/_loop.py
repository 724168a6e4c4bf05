r"""The one loop under every native method: the grid, step counting, ``max_steps``, ``save_at``, the noise.

``run(stepper_class, method, problem)`` builds the stepper for one solve, walks the float64 grid
with per-sample times of shape ``(batch,)`` (all samples share them on a fixed grid), keeps the
states at the ``save_at`` times and stops at ``max_steps``.  NFE and the non-finite record live in
the process's evaluator, and ``solve()`` turns the outcome into a :class:`sdekit.Solution`, so
neither is repeated here.  The loop makes no host synchronisation: the grid is on the host and
every decision it takes is known before the solve starts.

With ``options={"denoise": True}`` a final step replaces the state at ``t_end`` by the data
prediction :math:`\hat x_0` there (Tweedie's formula; one more score evaluation, counted).

With ``options={"hook": fn}`` the loop calls ``x = fn(x, t, noise)`` after every step (and once on the
initial state), with ``t`` the per-sample times ``(batch,)`` of ``x`` (float64) and ``noise`` the solve's
:class:`sdekit.KeyedBrownian` (built for an ODE too when a hook is given), so that a hook's own random
numbers are keyed like the sampler's: imputation replaces known coordinates there.
"""

import torch

from .._errors import InvalidParameterError, MethodArgumentError
from .._grid import save_indices
from .._keyed import KeyedBrownian
from .._solution import Outcome, Result
from ._frame import Frame
from ._stepper import check_bool

_ENTROPY_HIGH = 2 ** 62


def run(stepper_class, method, pb):
    """Integrate ``pb`` (a :class:`~sdekit._methods.Problem` on a fixed grid) with ``stepper_class``."""
    if pb.adaptive:
        raise MethodArgumentError(f"{method.name} takes fixed steps: give steps=, dt= or grid=")
    proc = pb.process
    if stepper_class.kind == "sde" and proc.kind == "ode" and not stepper_class.deterministic_on_ode:
        raise MethodArgumentError(f"{method.name} samples the reverse SDE; integrate sdekit.reverse(sde, score_fn) "
                                  f"with it, or use an ODE sampler (ddim, dpmpp_2m, ...) on the probability flow")
    options = dict(pb.options)
    hook = options.pop("hook", None)
    if hook is not None and not callable(hook):
        raise InvalidParameterError(f"option hook must be callable as hook(x, t, noise) -> x, "
                                    f"got {type(hook).__name__}")
    denoise, frame = denoise_and_frame(options, stepper_class, method, proc)
    stochastic = stepper_class.kind == "sde" and proc.kind == "sde"
    noise = _noise(pb, pb.x0) if stochastic or hook is not None else None
    stepper = stepper_class(frame, noise if stochastic else None, options, steps=pb.steps)
    stepper.plan(pb.grid)
    return walk(stepper, pb, frame=frame, hook=hook, noise=noise, denoise=denoise)


def denoise_and_frame(options: dict, stepper_class, method, proc):
    """Take the ``denoise`` option out of ``options`` (checked), and the :class:`Frame` the stepper or the final
    denoising step needs (``None`` for a stepper of the drift alone that does not denoise)."""
    denoise = check_bool("denoise", options.pop("denoise", False))
    return denoise, Frame(proc, method.name) if stepper_class.needs != "drift" or denoise else None


def walk(stepper, pb, frame=None, hook=None, noise=None, denoise=False):
    """Walk ``pb``'s fixed grid with a built ``stepper``: the step counting, ``max_steps``, ``save_at``, the hook
    and the final denoising step, for sdekit's steppers and for torchsde's step functions alike.

    ``frame`` (a :class:`Frame`, needed for ``denoise``) computes the grid's coefficients once; ``hook`` and
    ``noise`` are the caller's per-step hook and the keyed path it sees.
    """
    proc = pb.process
    x = pb.x0
    batch = x.shape[0]
    times = pb.grid.to(device=x.device)
    n = times.numel() - 1
    ts = frame.remember(times, x) if frame is not None else [times[i].expand(batch) for i in range(n + 1)]
    save = save_indices(pb.grid, pb.save_at)
    if hook is not None:
        x = _hooked(hook, x, ts[0], noise)
    path = [x] if 0 in save else []
    limit = n if pb.max_steps is None else min(n, pb.max_steps)
    for i in range(limit):
        proc.evaluator.step = i + 1
        x = stepper.step(x, ts[i], ts[i + 1], i, n)
        if hook is not None:
            x = _hooked(hook, x, ts[i + 1], noise)
        if i + 1 in save:
            path.append(x)
    if limit < n:
        t_reached = float(pb.grid[limit])
        return Outcome(x, t_reached, path, steps=limit, rejected=0, result=Result.MAX_STEPS,
                       detail=f"stopped at t={t_reached:.6g} after max_steps={pb.max_steps} of {n} grid steps")
    if denoise:
        proc.evaluator.step = n + 1
        x = frame.data(x, ts[n])
    return Outcome(x, pb.t_end, path, steps=n, rejected=0)


def _hooked(hook, x, t, noise):
    out = hook(x, t, noise)
    if not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype):
        raise InvalidParameterError(f"the hook returned {type(out).__name__} "
                                    f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}; it must return "
                                    f"the state, a tensor of shape {tuple(x.shape)} and dtype {x.dtype}")
    return out


def _noise(pb, x):
    """The keyed Brownian path of this solve: the caller's, or one over the span keyed by seed/generator."""
    lo, hi = min(pb.t_start, pb.t_end), max(pb.t_start, pb.t_end)
    if pb.noise is not None:
        bm = pb.noise
        if not isinstance(bm, KeyedBrownian):
            raise MethodArgumentError("native stochastic methods take noise=sdekit.KeyedBrownian(...) "
                                      "(or seed=/generator=); torchsde Brownian motions are for torchsde methods")
        if bm.shape != tuple(x.shape) or not bm.covers(lo, hi):
            raise InvalidParameterError(f"noise covers [{bm.t0}, {bm.t1}] with shape {bm.shape}, but the solve "
                                        f"needs [{lo}, {hi}] and shape {tuple(x.shape)}")
        check_depth(bm, pb)
        return bm
    return keyed_path(pb, x)


def keyed_path(pb, x):
    """A keyed Brownian path over the solve's span, shaped like ``x``, from ``seed=`` or ``generator=``; deep
    enough that no two points of a fixed grid share a leaf (24 levels unless the grid needs more)."""
    lo, hi = min(pb.t_start, pb.t_end), max(pb.t_start, pb.t_end)
    seed = pb.seed
    if seed is None:
        where = pb.generator.device if pb.generator is not None else "cpu"
        seed = int(torch.randint(0, _ENTROPY_HIGH, (1,), generator=pb.generator, device=where))
    grid = stepping_grid(pb)
    depth = KeyedBrownian.depth_for(lo, hi, grid) if grid is not None else 24
    return KeyedBrownian(lo, hi, tuple(x.shape), seed=int(seed), depth=depth, dtype=x.dtype, device=x.device)


def stepping_grid(pb):
    """The fixed grid's own times, without the ``save_at`` times merged into it (``None`` when adaptive).

    The keyed path's depth follows these alone: a save time must not change the path, so one closer to a grid
    time than the leaf width shares that leaf's bridge normal (an approximation at that scale).
    """
    if pb.grid is None:
        return None
    if pb.save_at is None:
        return pb.grid
    return pb.grid[~torch.isin(pb.grid, pb.save_at.to(pb.grid))]


def check_depth(bm, pb):
    """Refuse a caller's keyed path whose leaves are wider than the fixed grid's smallest step."""
    grid = stepping_grid(pb)
    if grid is not None and not bm.separates(grid):
        need = KeyedBrownian.depth_for(bm.t0, bm.t1, grid)
        raise InvalidParameterError(f"the grid's smallest step is below the noise's leaf width {bm.leaf:.3g}, "
                                    f"where its values would share a normal: build it with depth={need}")
