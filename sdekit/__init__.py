r"""sdekit: score-based generative modelling through stochastic differential equations.

Forward SDEs (:class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`, or any :class:`SDE`), their
reverse-time SDE (:func:`reverse`) and probability-flow ODE (:func:`probability_flow`), solved by
torchsde, torchdiffeq, scipy or sdekit's own diffusion samplers through one :func:`solve`::

    import sdekit
    sde = sdekit.VPSDE()
    x_T = sde.prior_sampling((512, 2))
    sol = sdekit.reverse(sde, score_fn).solve(x_T, method="euler", steps=500, seed=0)
    sol.x, sol.nfe
"""

import importlib

from ._errors import (ArgumentTypeError, InvalidParameterError, MethodArgumentError, ScoreFunctionError,
                      SDEKitError, ShapeError, SolveError, UnknownMethodError)

__version__ = "0.1.0"

#: Where each public name lives: imported on first use (PEP 562), so that ``import sdekit`` and ``sdekit --help``
#: load neither torch nor scipy until something needs them.
_LAZY = {
    "brownian_motion": "_brownian",
    **dict.fromkeys(("SCHEDULES", "karras_grid", "log_snr_grid", "quadratic_grid", "schedule_grid", "step_grid",
                     "uniform_grid"), "_grid"),
    **dict.fromkeys(("KeyedBrownian", "keyed_normal"), "_keyed"),
    **dict.fromkeys(("AugmentedFlow", "BitsPerDim", "Likelihood", "bits_per_dim", "decode", "encode",
                     "log_likelihood"), "_likelihood"),
    **dict.fromkeys(("Method", "methods"), "_methods"),
    **dict.fromkeys(("ForwardSDE", "ProbabilityFlowODE", "Process", "ReverseSDE", "forward", "probability_flow",
                     "reverse"), "_process"),
    **dict.fromkeys(("SDE", "LinearSDE", "SubVPSDE", "VESDE", "VPSDE"), "_sde"),
    **dict.fromkeys(("PerSample", "Result", "Solution"), "_solution"),
    "solve": "_solve",
    **dict.fromkeys(("OptimizedSchedule", "load_schedule", "optimize_schedule"), "_optimized_schedule"),
    **dict.fromkeys(("Budget", "Measure", "MethodSpec", "StudyProblem", "StudyTable", "study"), "_study_engine"),
}

__all__ = [*_LAZY, "SDEKitError", "ArgumentTypeError", "InvalidParameterError", "ShapeError", "ScoreFunctionError",
           "UnknownMethodError", "MethodArgumentError", "SolveError"]


def __getattr__(name):
    if name == "losses":
        return importlib.import_module(".losses", __name__)
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'sdekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"losses"})
