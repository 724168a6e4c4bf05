"""Convergence studies and solver comparisons: :func:`study` over a :class:`StudyProblem`.

One module per concept: ``_problem`` (the problem protocol and :class:`Measure`), ``_spec`` (methods and
budgets), ``_runner`` (rows, shared Brownian paths, references, resuming), ``_executors`` (where
rows run: serially, local processes, a Dask cluster), ``_measures`` (a
row's errors and verdict), ``_results`` (the JSON-lines file), ``_fit`` (fitted orders with intervals),
``_table`` (the tidy table), ``_plots`` (matplotlib figures), ``_report`` (the output folder).  The built-in
problems, made of :mod:`sdekit.validation`, are in ``sdekit.studies`` beside the core.
"""

from ._fit import OrderFit, fit_slope
from ._problem import Measure, StudyProblem
from ._report import save_report
from ._spec import Budget, MethodSpec, as_method_spec, parse_budgets
from ._study import check_budgets, check_plan, study
from ._table import StudyTable

__all__ = ["study", "StudyProblem", "StudyTable", "Measure", "MethodSpec", "Budget", "OrderFit", "fit_slope",
           "save_report", "as_method_spec", "parse_budgets", "check_budgets", "check_plan"]
