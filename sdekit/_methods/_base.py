"""What a method is (:class:`Method`) and what it is given (:class:`Problem`); what it gives back,
:class:`~sdekit._solution.Outcome`, lives beside :class:`~sdekit.Solution`."""

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch

from .._grid import schedule_grid


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
    - ``options``: the option names it takes (``solve(options=...)``); ``None``: the backend's own;
      ``renamed_options``: ``{old: new}`` for options it took under another name (refused, naming the new one).
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
    renamed_options: dict = field(default_factory=dict, repr=False, compare=False)
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

    def steps_grid(self, sde, steps: int, t_start: float, t_end: float, schedule: Optional[str] = None):
        """The grid ``solve(steps=..., schedule=...)`` builds for this method: ``schedule`` (default the method's
        own) from ``t_start`` to ``t_end``, with the grid steps a budget takes for a method whose ``steps=``
        counts evaluations (``grid_steps``)."""
        return schedule_grid(sde, schedule or self.schedule, self.grid_steps(steps) if self.grid_steps else steps,
                             t_start, t_end)


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
    budget: Optional[int] = None   # steps= of a method whose steps= counts evaluations (``Method.grid_steps``)

    @property
    def adaptive(self) -> bool:
        return self.rtol is not None


#: The registry of integration methods: one plain dict under ``backend.name``, filled by one module per backend.
REGISTRY: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method under ``backend.name``; its short ``name`` resolves to it where unambiguous."""
    REGISTRY[method.qualified_name] = method
    return method
