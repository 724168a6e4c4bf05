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

from ._brownian import brownian_motion
from ._errors import (ArgumentTypeError, InvalidParameterError, MethodArgumentError, ScoreFunctionError,
                      SDEKitError, ShapeError, SolveError, UnknownMethodError)
from ._grid import SCHEDULES, karras_grid, log_snr_grid, quadratic_grid, schedule_grid, step_grid, uniform_grid
from ._keyed import KeyedBrownian, keyed_normal
from ._likelihood import AugmentedFlow, BitsPerDim, Likelihood, bits_per_dim, decode, encode, log_likelihood
from ._methods import Method, methods
from ._process import ForwardSDE, ProbabilityFlowODE, Process, ReverseSDE, forward, probability_flow, reverse
from ._sde import SDE, LinearSDE, SubVPSDE, VESDE, VPSDE
from ._solution import PerSample, Result, Solution
from ._solve import solve
from ._study import Budget, Measure, MethodSpec, StudyProblem, StudyTable, study
from . import losses

__version__ = "0.1.0"

__all__ = [
    "study", "StudyProblem", "StudyTable", "MethodSpec", "Budget", "Measure",
    "SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE",
    "Process", "ReverseSDE", "ProbabilityFlowODE", "ForwardSDE", "reverse", "probability_flow", "forward",
    "solve", "Solution", "PerSample", "Result", "Method", "methods", "brownian_motion", "uniform_grid", "step_grid",
    "log_snr_grid", "karras_grid", "quadratic_grid", "schedule_grid", "SCHEDULES", "KeyedBrownian", "keyed_normal",
    "SDEKitError", "ArgumentTypeError", "InvalidParameterError", "ShapeError", "ScoreFunctionError",
    "UnknownMethodError",
    "MethodArgumentError", "SolveError",
    "log_likelihood", "bits_per_dim", "encode", "decode", "Likelihood", "BitsPerDim", "AugmentedFlow",
]
