"""Convergence studies and solver comparisons: :func:`study` over a :class:`StudyProblem`.

One module per concept: ``_problem`` (the problem protocol and :class:`Measure`), ``_spec`` (methods and
budgets), ``_runner`` (rows, references, the results file), ``_fit`` (fitted orders with intervals),
``_table`` (the tidy table), ``_plots`` (matplotlib figures), ``_defaults`` (the built-in problems, taken
from :mod:`sdekit.validation` by lazy imports: the engine itself never imports it).
"""

from ._fit import OrderFit, fit_slope
from ._problem import Measure, StudyProblem
from ._report import save_report
from ._spec import Budget, MethodSpec
from ._study import study
from ._table import StudyTable

__all__ = ["study", "StudyProblem", "StudyTable", "Measure", "MethodSpec", "Budget", "OrderFit", "fit_slope",
           "save_report"]

from ._defaults import ExactSDEProblem, GaussianProblem, MixtureProblem  # noqa: E402  (validation imported lazily)

__all__ += ["MixtureProblem", "GaussianProblem", "ExactSDEProblem"]
