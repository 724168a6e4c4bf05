"""What a stepper is: a small object that advances the state over one step, declaring what it is."""

import numbers
from typing import Callable, Dict, Optional

import numpy as np
import torch

from .._errors import InvalidParameterError, MethodArgumentError, did_you_mean, unknown_options_message
from ._model import Coef


class Stepper:
    r"""One step of a native method; the loop (:func:`sdekit._stepping.run`) owns everything else.

    The whole contract is declared here, each attribute with its default; a subclass overrides what differs
    (``sdekit.methods()`` shows them, and ``tests/orders/test_declared_orders.py`` fits the orders):

    - ``name``, ``description`` (one line naming the paper and algorithm); ``notes`` (default ``""``): what else a
      user choosing it must know (the option that reaches a higher order, a ``steps=`` that counts evaluations);
    - ``kind`` (``"ode"``): ``"ode"`` (deterministic: probability-flow ODE) or ``"sde"`` (stochastic: reverse SDE);
    - ``order`` (``None``, unknown): its order of convergence on the probability flow with its default options, as
      measured asymptotically (an ODE stepper's, or a stochastic one's that also integrates the flow);
    - ``weak_order``, ``strong_order``, ``order_additive`` (``None``): a stochastic stepper's weak order, and its
      strong order with diagonal and with additive noise, where it has them;
    - ``deterministic_on_ode`` (``False``): a stochastic stepper that also integrates the probability flow (its
      noise vanishes there: ``ddim`` with ``eta=0``), with ``order`` its order there;
    - ``frame`` (``"t"``): the variable it steps in, ``"t"``, ``"sigma"`` or ``"logsnr"``; ``needs``
      (``"score"``): what it asks of the :class:`~sdekit._stepping._model.Model`, ``"drift"``, ``"score"``,
      ``"x0"`` or ``"eps"``;
    - ``history`` (0): model outputs kept between steps (multistep);
    - ``adaptive``, ``error_estimate`` (``False``), ``error_order`` (``None``): whether it adapts its step
      (:class:`AdaptiveStepper`), estimates its error, and the order of that estimate;
    - ``schedule`` (``"uniform"``): the default grid for ``steps=``;
    - ``grid_steps`` (``None``): for a stepper whose ``steps=`` is a budget of model evaluations, the function
      giving the number of grid steps a budget takes;
    - ``default_rtol``, ``default_atol`` (``None``: ``solve()``'s): an adaptive stepper's own tolerances;
    - ``defaults`` (none): its options and their default values; ``renamed_options`` (none): ``{old: new}`` for
      an option it took under another name, so that the old name is refused with the new one.

    An instance lives for one solve (it holds the history) and is built with the
    :class:`~sdekit._stepping._model.Model` (``self.model``: predictions, and coefficients as
    :class:`~sdekit._stepping._model.Coef` values), the keyed Brownian path of a stochastic solve
    (``self.brownian``, else ``None``) and the caller's options.  ``budget`` is the caller's ``steps=`` for a
    stepper with ``grid_steps`` (its evaluations), else ``None``.
    ``step(x, t, t_next, i, n)`` returns the state at ``t_next``; ``t`` and ``t_next`` are float64
    tensors of shape ``(batch,)`` (per-sample times), ``i`` the step's index among ``n``.
    """

    name = ""
    description = ""
    notes = ""
    kind = "ode"
    order: Optional[float] = None
    weak_order: Optional[float] = None
    strong_order: Optional[float] = None
    order_additive: Optional[float] = None
    deterministic_on_ode = False
    frame = "t"
    needs = "score"
    history = 0
    adaptive = False
    error_estimate = False
    error_order: Optional[float] = None
    schedule = "uniform"
    grid_steps: Optional[Callable[[int], int]] = None
    default_rtol: Optional[float] = None
    default_atol: Optional[float] = None
    defaults: Dict[str, object] = {}
    renamed_options: Dict[str, str] = {}

    #: the options the loop takes out before the stepper sees the rest (:func:`sdekit._stepping.run`)
    loop_options = ("denoise", "hook")

    def __init__(self, model, brownian, options: dict, budget: Optional[int] = None):
        unknown = sorted(set(options) - set(self.defaults), key=str)
        if unknown:   # solve() checks first, for every backend; a stepper built directly checks here
            raise MethodArgumentError(unknown_options_message(self.name, unknown,
                                                              tuple(sorted(self.defaults)) + self.loop_options,
                                                              self.renamed_options))
        self.model = model
        self.brownian = brownian
        self.budget = budget
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
        if self.brownian.refine:
            return self.brownian_normal(t, t_next, x)
        return self.brownian.step_normal(t).to(x.dtype)

    def brownian_normal(self, t, t_next, x):
        r"""The standard normal :math:`(W(t') - W(t))/\sqrt{|t' - t|}` of this step, from the keyed path: for
        samplers that discretise the path itself (SDE-DPM-Solver++, Euler–Maruyama), so that a finer grid refines
        it."""
        return self.brownian.increment(t, t_next).to(x.dtype) / Coef(t_next - t).abs().sqrt()


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
    raise InvalidParameterError(f"option {name} must be one of {', '.join(map(repr, choices))}, "
                                f"got {value!r:.40}{did_you_mean(value, choices)}")


class AdaptiveStepper(Stepper):
    r"""One attempted step of an adaptive method with its error estimate; the adaptive loop
    (:func:`sdekit._stepping.run`) owns the per-sample times, step sizes, acceptance and control.

    Besides :class:`Stepper`'s attributes (``error_order``, 1 here: the order :math:`q` of its error estimate, the
    controller's exponent uses :math:`q + 1`; ``default_rtol``, ``default_atol``) a subclass declares

    - ``evals`` (1): model evaluations per attempt (for the docs; the loop counts the real ones);
    - ``clock`` (``"t"``): the variable its step size is measured in, ``"t"`` or ``"logsnr"`` (:math:`\lambda`);

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

    adaptive = True
    error_estimate = True
    loop_options = ("denoise", "sync_every")   # the adaptive loop's own (it refuses hook)
    error_order = 1.0
    evals = 1
    clock = "t"

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
