"""``sdekit.study``: a convergence study or a solver comparison in one call."""

import math
import numbers
import os
from typing import Dict, List, Optional, Sequence, Union

import torch

from .._errors import ArgumentTypeError, InvalidParameterError
from .._solve import MAX_GRID_STEPS
from ._executors import make_executor
from ._runner import DEFAULT_REFERENCE, Settings, family, plan_rows, reference_steps, run_rows
from ._spec import Budget, MethodSpec, as_method_spec, parse_budgets
from ._table import StudyTable

__all__ = ["study", "check_budgets", "check_plan", "MAX_SAMPLES", "SEED_LIMIT"]

#: A row holds its samples, their reference and exact samples in memory at once: at most this many per row
#: (more seeds give more samples).
MAX_SAMPLES = 10 ** 7
#: Seeds are integers in ``[0, SEED_LIMIT)`` (64 bits).
SEED_LIMIT = 2 ** 64
_STEP_KEYS = ("steps", "torchsde_steps", "sdekit_steps")


def check_budgets(specs: List[MethodSpec], budgets: List[Budget]):
    """Each method with the budgets that apply to it; a method that none applies to is an error."""
    pairs = [(spec, spec.budgets_from(budgets)) for spec in specs]
    for spec, bs in pairs:
        if not bs:
            kinds = "tol=..." if spec.info.stepping == "adaptive" else "steps=..., dt=... or nfe=..."
            raise InvalidParameterError(f"no budget applies to {spec.label} ({spec.info.stepping} stepping); "
                                        f"give budgets such as {kinds}")
    return pairs


def check_plan(problem, specs: List[MethodSpec], budgets: List[Budget], reference: Optional[dict] = None):
    """Refuse, before anything runs, a plan that cannot run: a method no budget applies to, a reference setting
    that is unknown or out of range, a row or a reference solve of more than ``MAX_GRID_STEPS`` (10**7) fixed
    steps (each is built in memory: a larger one would take minutes and gigabytes before failing).
    Returns each spec with its budgets."""
    pairs = check_budgets(specs, budgets)
    given = dict(reference or {})
    unknown = set(given) - set(DEFAULT_REFERENCE) - set(_STEP_KEYS)
    if unknown:
        raise InvalidParameterError(f"unknown reference settings {sorted(unknown)}; use steps, torchsde_steps, "
                                    f"sdekit_steps, {', '.join(DEFAULT_REFERENCE)}")
    for key in _STEP_KEYS:
        v = given.get(key)
        if key in given and (isinstance(v, bool) or not isinstance(v, numbers.Integral)
                             or not 1 <= v <= MAX_GRID_STEPS):
            raise InvalidParameterError(f"reference {key} must be a whole number from 1 to {MAX_GRID_STEPS:.0e} "
                                        f"(the steps of the fine reference solves), got {v!r}")
    tol = given.get("ode_tol")
    if "ode_tol" in given and (isinstance(tol, bool) or not isinstance(tol, numbers.Real)
                               or not (math.isfinite(tol) and tol > 0)):
        raise InvalidParameterError(f"reference ode_tol must be a positive number such as 1e-10, got {tol!r}")
    for key in ("torchsde", "sdekit", "ode"):
        if key in given and not isinstance(given[key], str):
            raise InvalidParameterError(f"reference {key} must be a method name such as "
                                        f"{DEFAULT_REFERENCE[key]!r}, got {given[key]!r}")
    span = abs(float(problem.t_start) - float(problem.t_end))
    for spec, bs in pairs:
        for b in bs:
            steps = span / b.value if b.kind == "dt" else b.value if b.kind in ("steps", "nfe") else 0
            if steps > MAX_GRID_STEPS:
                raise InvalidParameterError(f"budget {b} of {spec.label} asks for {steps:.4g} steps, more than the "
                                            f"{MAX_GRID_STEPS:.0e} a fixed-step solve takes (each step is kept in "
                                            f"memory and calls the score); give fewer steps, a larger dt, or a "
                                            f"tolerance")
    most = 2 ** int(math.log2(MAX_GRID_STEPS)) // 8          # the most steps whose default reference fits
    for fam in ("torchsde", "sdekit"):
        rows = [(spec, bs) for spec, bs in pairs if spec.process == "sde" and family(spec) == fam]
        if not rows or given.get(f"{fam}_steps", given.get("steps")) is not None:
            continue
        steps = reference_steps(rows, problem, fam)
        if steps > MAX_GRID_STEPS:
            raise InvalidParameterError(f"the reference of the {fam} SDE rows would take {steps} steps (8 times a "
                                        f"row's most, as a power of two), more than the {MAX_GRID_STEPS:.0e} a "
                                        f"reference solve takes: give SDE rows at most {most} steps, or set the "
                                        f"reference's steps (reference=dict(steps=N), sdekit study "
                                        f"--reference-steps N) to N <= {MAX_GRID_STEPS:.0e}")
    return pairs


def study(problem, methods: Sequence, budgets=None, *, samples: int = 1000, seeds: Union[int, Sequence[int]] = 0,
          results: Optional[Union[str, os.PathLike]] = None, workers: Optional[int] = None,
          executor=None, scheduler=None, reference: Optional[dict] = None,
          test_functions: Optional[Dict[str, callable]] = None, dtype=torch.float64, device="cpu",
          progress: bool = False, keep_samples: bool = True) -> StudyTable:
    r"""Run every method at every budget and seed on ``problem``; one row each, with errors and their error bars.

    **Arguments**

    - ``problem``: a :class:`sdekit.StudyProblem` (an SDE, a score, initial states, a reference).
    - ``methods``: names (``"euler"``, ``"ode:ddim"``, ``"torchdiffeq.rk4"``), dicts
      (``{"method": "pc", "options": {...}, "budgets": [...]}``) or :class:`sdekit.MethodSpec`.
    - ``budgets``: step counts (``[10, 20, 40]``), or strings ``"nfe=10,20"``, ``"dt=0.1,0.05"``,
      ``"tol=1e-3,1e-5"`` (``rtol = atol``), or :class:`sdekit.Budget`; each goes to the methods that can use it.
    - ``samples``: samples per row; ``seeds``: a seed or a list (rows per seed; the seed keys the initial states,
      the exact samples and the Brownian path).
    - ``results``: a JSON-lines file: each row is appended as it finishes, and a re-run skips rows already there
      with the same configuration hash.
    - ``executor``: where the rows run: ``"serial"`` (here, in order), ``"processes"`` (``workers`` local
      processes, spawned; default the CPU count), ``"dask"`` (a ``dask.distributed`` cluster at ``scheduler``)
      or a ``distributed.Client``; default ``"processes"`` when ``workers > 1``, else ``"serial"``.  Each row
      is a function of its configuration alone, so every executor gives the same rows and the same results
      file (written in the plan's order once the rows are done).
    - ``workers``: local processes of ``executor="processes"``.
    - ``scheduler``: the Dask scheduler's address (``"tcp://host:8786"``); default dask's configured one, else
      a new ``LocalCluster`` on this machine.
    - ``reference``: overrides of the fine reference solves, ``{"steps": 4096, "torchsde": "srk",
      "sdekit": "ddim", "ode": "dopri5", "ode_tol": 1e-10}``; exact references are used where the problem has them.
    - ``test_functions``: ``{name: phi}`` for weak errors (default: the problem's).
    - ``dtype``, ``device``: of the solves (references run in float64).
    - ``progress``: show a progress bar on stderr.

    Returns a :class:`sdekit.StudyTable`.  Errors measured per row: ``strong`` (SDE rows: the mean over samples
    of the mean absolute difference from the reference on the same Brownian path), ``ode`` (flow rows: the
    same against the exact flow map or a fine solve), ``weak:<name>`` and the problem's distributional
    measures (sliced W2, mode masses, moments for the built-in problems), each with its Monte Carlo standard
    error or floor.  ``table.orders()`` fits the orders.
    """
    if isinstance(methods, (str, dict)):
        methods = [methods]
    specs = [as_method_spec(m) for m in methods]
    if not specs:
        raise InvalidParameterError("give at least one method, e.g. methods=['euler', 'ode:dpmpp_2m']")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise InvalidParameterError(f"two methods share a label ({labels}); give each a distinct label=")
    shared = parse_budgets(budgets) if budgets is not None else []
    seeds = [seeds] if isinstance(seeds, numbers.Integral) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s < SEED_LIMIT
                        for s in seeds):
        raise InvalidParameterError(f"seeds must be integers in [0, 2**64), got {seeds!r:.200}")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or not 2 <= samples <= MAX_SAMPLES:
        raise InvalidParameterError(f"samples must be an integer from 2 to {MAX_SAMPLES:.0e} per row (a row holds "
                                    f"its samples in memory; more seeds give more), got {samples!r}")
    if reference is not None and not isinstance(reference, dict):
        raise ArgumentTypeError(f"reference must be a dict such as dict(steps=1024), got {type(reference).__name__}")
    pairs = check_plan(problem, specs, shared, reference)
    runner = make_executor(executor, workers, scheduler)
    if dtype not in (torch.float32, torch.float64):
        raise ArgumentTypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    tests = dict(test_functions) if test_functions else dict(problem.test_functions)
    settings = Settings(samples=int(samples), dtype=str(dtype).replace("torch.", ""), device=str(device),
                        reference=dict(reference or {}), threads=torch.get_num_threads())
    rows = plan_rows(problem, pairs, seeds, settings, tests)
    path = None if results is None else os.fspath(results)
    records, reused, stale, kept = run_rows(problem, rows, settings, tests, runner, results=path, progress=progress,
                                            keep_samples=keep_samples)
    noise = problem.noise_kind() if any(s.process == "sde" for s in specs) else "additive"
    return StudyTable(records, problem.name, noise, kept, reused, stale, path,
                      info=dict(reference=settings.reference, samples=settings.samples, seeds=seeds))
