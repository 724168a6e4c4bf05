"""What a stepper is: a small object that advances the state over one step, declaring what it is."""

import numbers
from typing import Callable, Dict, Optional

import numpy as np
import torch

from .._errors import InvalidParameterError, MethodArgumentError
from .._methods._base import close_names, unknown_options_message


class Stepper:
    r"""One step of a native method; the loop (:func:`sdekit._stepping.run`) owns everything else.

    A subclass declares, as class attributes:

    - ``name``, ``description`` (one line naming the paper and algorithm);
    - ``kind``: ``"ode"`` (deterministic: probability-flow ODE) or ``"sde"`` (stochastic: reverse SDE);
    - ``order``: its order of convergence with its default options, as measured asymptotically (ODE order, or
      weak order for stochastic samplers; ``None`` unknown); ``notes``: what else a user choosing it must know
      (the option that reaches a higher order, a ``steps=`` that counts evaluations);
    - ``frame``: ``"t"``, ``"sigma"`` or ``"logsnr"``; ``needs``: ``"drift"``, ``"score"``, ``"x0"`` or ``"eps"``;
    - ``history``: model outputs kept between steps (multistep); ``error_estimate``: whether it has one;
    - ``schedule``: the default grid for ``steps=``;
    - ``grid_steps``: ``None``, or for a stepper whose ``steps=`` is a budget of model evaluations, the function
      giving the number of grid steps a budget takes;
    - ``defaults``: its options and their default values.

    An instance lives for one solve (it holds the history) and is built with the caller's options.
    ``steps`` is the caller's ``steps=`` (``None`` when the grid came from ``grid=`` or ``dt=``).
    ``step(x, t, t_next, i, n)`` returns the state at ``t_next``; ``t`` and ``t_next`` are float64
    tensors of shape ``(batch,)`` (per-sample times), ``i`` the step's index among ``n``.
    """

    name = ""
    description = ""
    kind = "ode"
    order: Optional[float] = None
    notes = ""
    frame = "t"
    needs = "score"
    history = 0
    error_estimate = False
    schedule = "uniform"
    grid_steps: Optional[Callable[[int], int]] = None
    defaults: Dict[str, object] = {}

    #: the options the loop takes out before the stepper sees the rest (:func:`sdekit._stepping.run`)
    loop_options = ("denoise", "hook")

    def __init__(self, frame, noise, options: dict, steps: Optional[int] = None):
        unknown = sorted(set(options) - set(self.defaults), key=str)
        if unknown:
            raise MethodArgumentError(unknown_options_message(
                self.name, unknown, tuple(sorted(self.defaults)) + self.loop_options))
        self.frame = frame
        self.noise = noise
        self.steps = steps
        self.opts = {**self.defaults, **options}
        self.setup(**self.opts)

    def setup(self, **options):
        """Check and keep the options (each subclass names its own)."""

    def plan(self, grid: torch.Tensor):
        """Called once with the solve's float64 grid (host, ``save_at`` times included) before the first step, for
        a stepper that acts at chosen grid points (``restart``); by default nothing."""

    def step(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, i: int, n: int) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------------
    def fresh_normal(self, t, t_next, x):
        r"""The standard normal of a step whose noise is new at each step (ancestral steps, EDM's churn): one fresh
        keyed draw (:meth:`KeyedBrownian.step_normal`), or with a path built ``refine=True`` the step's increment of
        the path, normalised (:meth:`brownian_normal`), so that a finer grid refines the same path."""
        if self.noise.refine:
            return self.brownian_normal(t, t_next, x)
        return self.noise.step_normal(t).to(x.dtype)

    def brownian_normal(self, t, t_next, x):
        r"""The standard normal :math:`(W(t') - W(t))/\sqrt{|t' - t|}` of this step, from the keyed path: for
        samplers that discretise the path itself (SDE-DPM-Solver++, Euler–Maruyama), so that a finer grid refines it."""
        dw = self.noise.increment(t, t_next).to(x.dtype)
        return dw * (1 / torch.sqrt((t_next - t).abs())).to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))


def check_number(name: str, value, low: float = 0.0, high: float = float("inf"), integer: bool = False):
    """``value`` as a float (or int) in ``[low, high]``, or an :class:`InvalidParameterError`.

    A real number (a Python or NumPy number, or a 0-dim real tensor), never a bool or a string ("0.5" is
    refused, not parsed); with ``integer`` an integral one (``4``, ``np.int64(4)``; not ``4.0``).
    """
    number = value
    if isinstance(number, torch.Tensor) and number.dim() == 0 and not number.is_complex() \
            and number.dtype != torch.bool:
        number = number.item()
    ok = not isinstance(number, bool) and isinstance(number, numbers.Integral if integer else numbers.Real)
    if not ok or not (low <= number <= high):
        kind = "an integer" if integer else "a number"
        raise InvalidParameterError(f"option {name} must be {kind} in [{low}, {high}], "
                                    f"got {type(value).__name__} {value!r:.40}")
    return int(number) if integer else float(number)


def check_bool(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False`` (or a NumPy bool); anything else (``"no"``, ``0``, ``None``) is an
    :class:`InvalidParameterError`, never read by its truth value."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InvalidParameterError(f"option {name} must be True or False, got {type(value).__name__} {value!r:.40}")


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of the strings ``choices``, or an :class:`InvalidParameterError` naming them."""
    if isinstance(value, str) and value in choices:
        return value
    hint = close_names(value, choices) if isinstance(value, str) else []
    said = f" (did you mean {' or '.join(map(repr, hint))}?)" if hint else ""
    raise InvalidParameterError(f"option {name} must be one of {', '.join(map(repr, choices))}, "
                                f"got {value!r:.40}{said}")


class AdaptiveStepper(Stepper):
    r"""One attempted step of an adaptive method with its error estimate; the adaptive loop
    (:func:`sdekit._stepping.run_adaptive`) owns the per-sample times, step sizes, acceptance and control.

    Besides :class:`Stepper`'s attributes a subclass declares

    - ``error_order``: the order :math:`q` of its error estimate (the controller's exponent uses :math:`q + 1`);
    - ``evals``: model evaluations per attempt (for the docs; the loop counts the real ones);
    - ``clock``: the variable its step size is measured in, ``"t"`` or ``"logsnr"`` (:math:`\lambda`);
    - ``default_rtol``, ``default_atol``: its tolerances when the caller gives none (``None``: solve's);

    and implements

    - ``start(x, t) -> carry``: a dict of per-sample tensors ``(batch, ...)`` kept between steps (first-same-as-last
      evaluations, the last accepted low-order estimate, the Brownian path's value); the loop indexes them
      when samples finish and merges them row by row on acceptance;
    - ``initial_step(x, t, t_end, carry) -> h``: the first step size per sample, float64 ``(batch,)``, positive,
      in its clock;
    - ``attempt(x, t, t_next, carry, attempt) -> (x_next, err, carry_next)``: the step from per-sample times
      ``t`` to ``t_next`` (float64 ``(batch,)``), its error ratio ``err`` (float64 ``(batch,)``, accepted when
      ``<= 1``; see :mod:`sdekit._stepping._control`) and the carry at ``t_next``; ``attempt`` counts the
      loop's iterations (it keys fresh noise where a method redraws it);
    - ``controller()``: its :class:`~sdekit._stepping._control.Controller`, built from its options.

    ``bind(process, rtol, atol)`` gives it the process (``process.drift(t, x)``, ``process.diffusion(t, x)`` at
    per-sample ``t``) and the tolerances before the solve.
    """

    error_estimate = True
    loop_options = ("denoise", "sync_every")   # the adaptive loop's own (it refuses hook)
    error_order = 1.0
    evals = 1
    clock = "t"
    default_rtol: Optional[float] = None   # the method's own tolerances when the caller gives none
    default_atol: Optional[float] = None

    def bind(self, process, rtol: float, atol: float):
        self.process, self.rtol, self.atol = process, float(rtol), float(atol)

    def to_clock(self, t: torch.Tensor) -> torch.Tensor:
        """The clock at times ``t`` (float64); increasing or decreasing in ``t``."""
        return t

    def from_clock(self, u: torch.Tensor) -> torch.Tensor:
        """The times at clock values ``u`` (float64)."""
        return u

    def start(self, x, t) -> dict:
        return {}

    def initial_step(self, x, t, t_end, carry) -> torch.Tensor:
        raise NotImplementedError

    def attempt(self, x, t, t_next, carry, attempt):
        raise NotImplementedError

    def controller(self):
        raise NotImplementedError
