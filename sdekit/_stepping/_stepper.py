"""What a stepper is: a small object that advances the state over one step, declaring what it is."""

from typing import Dict, Optional

import torch

from .._errors import InvalidParameterError, MethodArgumentError


class Stepper:
    r"""One step of a native method; the loop (:func:`sdekit._stepping.run`) owns everything else.

    A subclass declares, as class attributes:

    - ``name``, ``description`` (one line naming the paper and algorithm);
    - ``kind``: ``"ode"`` (deterministic: probability-flow ODE) or ``"sde"`` (stochastic: reverse SDE);
    - ``order``: its order of convergence (ODE order, or weak order for stochastic samplers; ``None`` unknown);
    - ``frame``: ``"t"``, ``"sigma"`` or ``"logsnr"``; ``needs``: ``"drift"``, ``"score"``, ``"x0"`` or ``"eps"``;
    - ``history``: model outputs kept between steps (multistep); ``error_estimate``: whether it has one;
    - ``schedule``: the default grid for ``steps=``;
    - ``defaults``: its options and their default values.

    An instance lives for one solve (it holds the history) and is built with the caller's options.
    ``step(x, t, t_next, i, n)`` returns the state at ``t_next``; ``t`` and ``t_next`` are float64
    tensors of shape ``(batch,)`` (per-sample times), ``i`` the step's index among ``n``.
    """

    name = ""
    description = ""
    kind = "ode"
    order: Optional[float] = None
    frame = "t"
    needs = "score"
    history = 0
    error_estimate = False
    schedule = "uniform"
    defaults: Dict[str, object] = {}

    def __init__(self, frame, noise, options: dict):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            takes = ", ".join(sorted(self.defaults)) or "none"
            raise MethodArgumentError(f"{self.name} does not take option(s) {', '.join(map(repr, unknown))}; "
                                      f"it takes: {takes}")
        self.frame = frame
        self.noise = noise
        self.opts = {**self.defaults, **options}
        self.setup(**self.opts)

    def setup(self, **options):
        """Check and keep the options (each subclass names its own)."""

    def step(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, i: int, n: int) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------------
    def brownian_normal(self, t, t_next, x):
        r"""The standard normal :math:`(W(t') - W(t))/\sqrt{|t' - t|}` of this step, from the keyed path."""
        dw = self.noise.increment(t, t_next).to(x.dtype)
        return dw * (1 / torch.sqrt((t_next - t).abs())).to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))


def check_number(name: str, value, low: float = 0.0, high: float = float("inf"), integer: bool = False):
    """``value`` as a float (or int) in ``[low, high]``, or an :class:`InvalidParameterError`."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (not integer or isinstance(value, int))
    if not ok or not (low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise InvalidParameterError(f"option {name} must be {kind} in [{low}, {high}], got {value!r}")
    return value
