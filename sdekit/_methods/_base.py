"""What a method is (:class:`Method`), what it is given (:class:`Problem`) and what it gives back (:class:`Outcome`)."""

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

import torch

from .._solution import Result


@dataclass(frozen=True)
class Method:
    r"""A registered integration method.

    **Fields**

    - ``name``: what ``solve(method=...)`` accepts; ``backend.name`` is also accepted.
    - ``backend``: ``"sdekit"`` (its own stepping layer), ``"torchsde"``, ``"torchdiffeq"`` or ``"scipy"``.
    - ``kind``: ``"sde"`` or ``"ode"``: what it integrates (an SDE method also takes an ODE, whose noise is zero).
    - ``order``: the ODE order, or for an SDE method the strong order with diagonal noise.
    - ``order_additive``: an SDE method's strong order with additive noise (g independent of x),
      the case of VP, sub-VP and VE; ``weak_order``: its weak order.
    - ``stepping``: ``"fixed"``, ``"adaptive"`` or ``"either"`` (adaptive when tolerances are given).
    - ``sde_type``: the calculus the method needs (``"ito"``/``"stratonovich"``), ``None`` for ODE methods.
    - ``levy_area``: the Lévy-area approximation its Brownian motion must carry.
    - ``integrate``: ``integrate(method, problem) -> Outcome``.
    - ``frame``: the variable it steps in: ``"t"`` (time), ``"sigma"`` (the VE-frame noise level
      :math:`\sigma/\alpha`) or ``"logsnr"`` (:math:`\lambda = \log\alpha - \log\sigma`).
    - ``needs``: what it asks of the model: ``"drift"`` (the process's drift), ``"score"``,
      ``"x0"`` (data prediction) or ``"eps"`` (noise prediction); the last two are derived from the score.
    - ``history``: how many earlier model outputs it keeps (multistep methods), 0 for single-step.
    - ``error_estimate``: whether it estimates its local error (and so can adapt its step).
    - ``schedule``: the grid ``solve(steps=...)`` builds for it unless ``schedule=`` says otherwise.
    - ``notes``: what else a user choosing it must know (an option reaching a higher order, a ``steps=`` that
      counts evaluations); shown by :func:`sdekit.methods`.
    - ``grid_steps``: for a method whose ``steps=`` is a budget of model evaluations (``dpm_solver_fast``),
      the number of grid steps a budget takes; ``None``: ``steps=`` counts steps.
    - ``options``: the option names it takes (``solve(options=...)``); ``None``: the backend's own.
    - ``default_rtol``, ``default_atol``: the tolerances an adaptive method uses when the caller gives none
      (``None``: ``solve()``'s, 1e-5 each).
    - ``processes``: the process kinds it integrates (``("sde", "ode")``); default: an SDE method takes both
      (an ODE is an SDE with zero noise), an ODE method only ODEs.
    """

    name: str
    backend: str
    kind: str
    order: Optional[float]
    stepping: str
    integrate: Callable = field(repr=False, compare=False)
    weak_order: Optional[float] = None
    order_additive: Optional[float] = None
    sde_type: Optional[str] = None
    levy_area: str = "none"
    description: str = ""
    frame: str = "t"
    needs: str = "drift"
    history: int = 0
    error_estimate: bool = False
    schedule: str = "uniform"
    grid_steps: Optional[Callable] = field(default=None, repr=False, compare=False)
    options: Optional[tuple] = None
    processes: Optional[tuple] = None
    default_rtol: Optional[float] = None
    default_atol: Optional[float] = None
    notes: str = ""

    @property
    def qualified_name(self) -> str:
        return f"{self.backend}.{self.name}"

    @property
    def accepts(self) -> tuple:
        """The process kinds it integrates: ``"sde"`` (reverse or forward SDE), ``"ode"`` (probability flow)."""
        if self.processes is not None:
            return self.processes
        return ("sde", "ode") if self.kind == "sde" else ("ode",)

    @property
    def adaptive(self) -> bool:
        """Whether the method can adapt its step."""
        return self.stepping in ("adaptive", "either")


@dataclass
class Problem:
    """A solve normalised for a method: a bound process, times in float64, stepping resolved.

    ``grid`` (fixed stepping) already contains the ``save_at`` times; ``rtol is not None``
    means adaptive stepping, with ``dt0`` the first step (``None``: the method chooses).  ``per_sample``:
    a step size per sample (``True``, the default of sdekit's adaptive methods) or one for the batch.
    """

    process: object
    x0: torch.Tensor
    t_start: float
    t_end: float
    grid: Optional[torch.Tensor] = None
    save_at: Optional[torch.Tensor] = None
    rtol: Optional[float] = None
    atol: Optional[float] = None
    dt0: Optional[float] = None
    dt_min: Optional[float] = None
    max_steps: Optional[int] = None
    noise: object = None
    generator: Optional[torch.Generator] = None
    seed: Optional[int] = None
    options: dict = field(default_factory=dict)
    per_sample: Optional[bool] = None
    steps: Optional[int] = None   # the caller's steps= (None: the grid came from grid= or dt=)

    @property
    def adaptive(self) -> bool:
        return self.rtol is not None


@dataclass
class Outcome:
    """What a method reached: the state ``x`` at time ``t``, the saved states, step counts, a result code."""

    x: torch.Tensor
    t: float
    path: List[torch.Tensor] = field(default_factory=list)
    steps: Optional[int] = None
    rejected: Optional[int] = None
    result: Result = Result.SUCCESS
    detail: str = ""
    per_sample: Optional[dict] = None   # tensors (batch,): nfe, steps, rejected, status, t (per-sample stepping)
    stats: dict = field(default_factory=dict)


def _squash(name: str) -> str:
    """``name`` lower-cased without punctuation, ``+`` read as ``p`` (``"DPM++ 2M"`` -> ``"dpmpp2m"``)."""
    return re.sub(r"[^0-9a-z]", "", name.lower().replace("+", "p"))


def close_names(word: str, names: Iterable[str], n: int = 3) -> List[str]:
    """The names closest to a misspelt ``word``: spelt alike (any case), or alike with punctuation removed.

    ``difflib.get_close_matches`` on the lower-cased names, then on the squashed ones (``"dpm++2m"`` finds
    ``"dpmpp_2m"``, ``"euler-ancestral"`` finds ``"euler_ancestral"``); a name equal to ``word`` once both are
    squashed is the only answer; otherwise at most ``n``.
    """
    names = list(dict.fromkeys(str(x) for x in names))
    word = str(word)
    found = [x for x in names if _squash(x) == _squash(word) and _squash(word)]
    if found:   # the same name but for case and punctuation: nothing else is as close
        return found[:n]
    by_lower = {}
    for x in names:
        by_lower.setdefault(x.lower(), x)
    found += [by_lower[x] for x in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.7)]
    by_squash = {}
    for x in names:
        by_squash.setdefault(_squash(x), x)
    found += [by_squash[x] for x in difflib.get_close_matches(_squash(word), list(by_squash), n=n, cutoff=0.75)]
    return list(dict.fromkeys(found))[:n]


def did_you_mean(word, names) -> str:
    """`` (did you mean 'a' or 'b'?)`` for the names close to ``word``, or ``""``."""
    hint = close_names(word, names) if isinstance(word, str) else []
    return f" (did you mean {' or '.join(map(repr, hint))}?)" if hint else ""


def unknown_options_message(method_name: str, unknown, takes) -> str:
    """One line: the options ``method_name`` does not take, a close match for each misspelt one, and every
    option it takes (``takes``, the loop's own included), last."""
    takes = tuple(takes)
    said = ", ".join(f"{k!r}{did_you_mean(k, takes)}" for k in unknown)
    return f"{method_name} does not take option(s) {said}; it takes: {', '.join(takes) or 'none'}"

