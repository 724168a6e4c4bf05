r"""Running a study: the plan of rows, the references they share, each row's solve and errors, resuming.

**The shared Brownian path.** Strong errors compare each solve with a reference driven by the same
Brownian path.  torchsde's ``BrownianInterval`` gives values that depend on the order of the queries made
before, so every torchsde row builds its own ``sdekit.brownian_motion`` from the row's seed (Lévy area
``"foster"``, which every torchsde method accepts) and first queries it on the reference grid of
``reference_steps`` uniform steps, as the reference solve does; its own steps then read that same path
(refined by Brownian bridges between grid points).  sdekit's native samplers take one
``sdekit.KeyedBrownian`` of the row's seed, the same path whatever the grid.  So a row is a function of
its configuration alone: in any order, in any process, resumed or not, it gives the same numbers.

**Results that survive.** Each finished row is appended to the JSON-lines results file (``_results``),
flushed and fsynced before the next starts, with a checksum of its payload, under a lock that lets several
studies share one file.  Every row carries the hash of the configuration that produced it (problem
fingerprint, sample count, dtype, device type, reference, method, budget, seed, sdekit's version); a re-run
skips the rows whose hash is there and ignores any other (stale) row.  A row of the plan that is damaged (its
checksum fails, it is not UTF-8, it lacks a field of :data:`REQUIRED`) is skipped with a warning and run again.
"""

import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

import sdekit

from .. import _optimized_schedule
from .._brownian import brownian_motion
from .._errors import InvalidParameterError, SolveError
from .._grid import uniform_grid
from .._keyed import KeyedBrownian
from ._measures import pathwise_error, verdict, weak_error
from ._results import append_row, read_results, write_in_order
from ._spec import OPTIMIZED, Budget, MethodSpec, config_hash

__all__ = ["Settings", "Row", "SeedContext", "plan_rows", "run_rows", "run_row", "solve_row", "seed_context",
           "optimized_grids", "CALIBRATION_SEED", "CALIBRATION_SAMPLES"]

#: The reference solves when a problem has no exact one: per family of noise, a method and its options.
#: ``torchsde_steps`` / ``sdekit_steps`` (or ``steps`` for both) default to :func:`reference_steps`.
DEFAULT_REFERENCE = {"torchsde": "srk", "sdekit": "ddim", "ode": "dopri5", "ode_tol": 1e-10}


@dataclass
class Settings:
    """What every row of a study shares."""

    samples: int
    dtype: str = "float64"
    device: str = "cpu"
    reference: dict = field(default_factory=dict)
    threads: Optional[int] = None
    #: The grids of ``schedule="optimized"`` rows, ``{(label, str(budget)): [times]}`` (:func:`optimized_grids`).
    grids: dict = field(default_factory=dict)


@dataclass
class Row:
    """One planned row: a method spec, a budget and a seed, with its configuration hash."""

    spec: MethodSpec
    budget: Budget
    seed: int
    key: str


def reference_steps(specs_budgets, problem, fam: str) -> int:
    """Steps of the SDE reference of ``fam`` (and of the torchsde path's shared grid): 8 times the most steps
    of any of its rows, rounded up to a power of two, at least 256."""
    span = abs(problem.t_start - problem.t_end)
    most = 0
    for spec, budgets in specs_budgets:
        if spec.process != "sde" or family(spec) != fam:
            continue
        for b in budgets:
            most = max(most, {"steps": b.value, "nfe": b.value, "dt": span / b.value}.get(b.kind, 0))
    return max(256, 2 ** math.ceil(math.log2(max(1, 8 * most))))


def plan_rows(problem, pairs, seeds, settings: Settings, test_functions) -> List[Row]:
    """Every (method, budget, seed) row of the study in order, each with its configuration hash; ``pairs``: each
    method with its budgets, as :func:`check_plan` returns them (it refuses unknown reference settings)."""
    for spec, bs in pairs:
        if spec.process == "ode" and problem.ode_process() is None:
            raise InvalidParameterError(f"{problem.name} is a forward SDE: it has no probability flow for "
                                        f"{spec.label}; use SDE methods")
    if CALIBRATION_SEED in {int(s) for s in seeds} and any(spec.schedule == OPTIMIZED for spec, _ in pairs):
        raise InvalidParameterError(f"seed {CALIBRATION_SEED} (2**64 - 1) draws the calibration states of "
                                    f"schedule=optimized rows, which must stay apart from the test states; use "
                                    f"other seeds")
    given = dict(settings.reference)
    ref = dict(DEFAULT_REFERENCE)
    for fam in ("torchsde", "sdekit"):
        ref[f"{fam}_steps"] = int(given.pop(f"{fam}_steps", given.get("steps") or reference_steps(pairs, problem, fam)))
    given.pop("steps", None)
    ref.update(given)
    settings.reference = ref
    base = {"format": 1, "sdekit": sdekit.__version__, "problem": problem.fingerprint(), "samples": settings.samples,
            "dtype": settings.dtype, "device": torch.device(settings.device).type, "reference": ref,
            "tests": sorted(test_functions)}
    rows = []
    for spec, bs in pairs:
        for b in bs:
            for seed in seeds:
                key = config_hash(dict(base, method=spec.config(), budget=b.config(), seed=int(seed)))
                rows.append(Row(spec, b, int(seed), key))
    return rows


# -- noise and references ---------------------------------------------------------------------
def torchsde_noise(problem, process, x, seed: int, steps: int):
    """The row's torchsde Brownian motion: built from ``seed`` and queried first on the reference grid."""
    s0, s1 = float(process._t_of_s(problem.t_start)), float(process._t_of_s(problem.t_end))
    y = x.reshape(x.shape[0], -1)
    bm = brownian_motion(s0, s1, y.shape, dtype=x.dtype, device=x.device, seed=int(seed), levy_area="foster",
                         dt=(s1 - s0) / steps)
    s = list(process._t_of_s(uniform_grid(problem.t_start, problem.t_end, steps)).unbind())
    for a, b in zip(s[:-1], s[1:]):
        bm(a, b)
    return bm


def keyed_noise(problem, x, seed: int):
    """The row's keyed Brownian path (one per sample, the same whatever the grid; ancestral steps read it too)."""
    lo, hi = sorted((problem.t_start, problem.t_end))
    return KeyedBrownian(lo, hi, tuple(x.shape), seed=int(seed), dtype=x.dtype, device=x.device, refine=True)


def family(spec: MethodSpec) -> str:
    """Which reference a row compares with: ``"torchsde"``, ``"sdekit"`` (SDE rows) or ``"ode"``."""
    if spec.process == "ode":
        return "ode"
    return "sdekit" if spec.info.backend == "sdekit" else "torchsde"


@dataclass
class SeedContext:
    """What the rows of one seed share: initial states, exact samples and the pathwise references."""

    seed: int
    x0: torch.Tensor
    exact: Optional[torch.Tensor] = None
    refs: Dict[str, torch.Tensor] = field(default_factory=dict)


def seed_context(problem, seed: int, settings: Settings, families) -> SeedContext:
    """Initial states (generator seeded with ``seed``), exact samples (seed ``seed + 2**32``) and the
    references of the ``families`` that pending rows need, in float64 on the study's device."""
    x0 = problem.initial(settings.samples, torch.Generator().manual_seed(int(seed)))
    exact = None
    if problem.exact_samples is not None:
        generator = torch.Generator().manual_seed((int(seed) + 2 ** 32) % 2 ** 64)
        exact = problem.exact_samples(settings.samples, generator).detach().to(torch.float64)
    ctx = SeedContext(int(seed), x0, exact)
    x = x0.to(device=settings.device)
    ref = settings.reference
    with torch.no_grad():
        for fam in families:
            try:
                ctx.refs[fam] = _reference(problem, fam, x, seed, ref)
            except SolveError as err:
                raise SolveError(f"the {fam} reference of seed {seed} failed ({err}); give the problem an exact "
                                 f"reference or change it with reference=dict(...)", err.solution) from None
    problem.prepare(settings.samples, int(seed))
    return ctx


def _reference(problem, fam, x, seed, ref):
    """The pathwise reference of one family: exact where the problem has it, else a fine solve."""
    if fam == "ode":
        if problem.flow_map is not None:
            out = problem.flow_map(x, problem.t_start, problem.t_end)
        else:
            out = problem.ode_process().solve(x, method=ref["ode"], rtol=ref["ode_tol"], atol=ref["ode_tol"],
                                              t_start=problem.t_start, t_end=problem.t_end).x
    elif fam == "torchsde":
        process = problem.sde_process()
        bm = torchsde_noise(problem, process, x, seed, ref["torchsde_steps"])
        if problem.exact_solution is not None:
            out = problem.exact_solution(x, bm)
        else:
            out = process.solve(x, method=ref["torchsde"], steps=ref["torchsde_steps"], noise=bm,
                                t_start=problem.t_start, t_end=problem.t_end).x
    else:
        out = problem.sde_process().solve(x, method=ref["sdekit"], steps=ref["sdekit_steps"],
                                          noise=keyed_noise(problem, x, seed),
                                          t_start=problem.t_start, t_end=problem.t_end).x
    return out.detach().to(torch.float64).cpu()


# -- one row --------------------------------------------------------------------------------
def _steps_of(spec: MethodSpec, budget: Budget, problem, process, x) -> int:
    """The fixed steps of a steps, NFE or dt budget (an NFE budget over the score evaluations of a step)."""
    if budget.kind == "nfe":
        return max(1, budget.value // nfe_per_step(spec, problem, process, x))
    if budget.kind == "dt":
        return max(1, math.ceil(abs(problem.t_start - problem.t_end) / budget.value * (1 - 1e-12)))
    return int(budget.value)


def _budget_kwargs(spec: MethodSpec, budget: Budget, problem, process, x) -> dict:
    if budget.kind == "tol":
        return dict(rtol=budget.value, atol=budget.value)
    if budget.kind == "dt":
        return dict(dt=budget.value)
    out = dict(steps=_steps_of(spec, budget, problem, process, x))
    if spec.schedule is not None:
        out["schedule"] = spec.schedule
    return out


# -- optimized grids ----------------------------------------------------------------------------
#: The seed of the generator that draws the calibration states of ``schedule="optimized"`` rows from
#: ``problem.initial``; a study refuses it as a test seed, so calibration and test states never coincide.
CALIBRATION_SEED = 2 ** 64 - 1
#: Calibration states per optimized grid.
CALIBRATION_SAMPLES = 256


def optimized_grids(problem, rows: List[Row], settings: Settings, folder: Optional[str] = None, log=None) -> dict:
    """The grid of every ``schedule="optimized"`` (method, budget) of ``rows``, made once each by
    :func:`sdekit.optimize_schedule` on the problem's probability flow from :data:`CALIBRATION_SAMPLES` states of
    ``problem.initial`` drawn with :data:`CALIBRATION_SEED` (float64, on the study's device), and stored in
    ``settings.grids``.  With ``folder`` each is saved as ``folder/<hash>.json`` (the hash of the problem, the
    method, its options, the steps and the calibration) and read back, checked, by a later or resumed study."""
    wanted = {}
    for r in rows:
        if r.spec.schedule == OPTIMIZED:
            wanted.setdefault((r.spec.label, str(r.budget)), r)
    if not wanted:
        return settings.grids
    process = problem.ode_process()
    x_cal = None
    for (label, budget), r in wanted.items():
        if (label, budget) in settings.grids:
            continue
        if x_cal is None:
            x_cal = problem.initial(CALIBRATION_SAMPLES, torch.Generator().manual_seed(CALIBRATION_SEED))
            x_cal = x_cal.detach().to(device=settings.device, dtype=torch.float64)
        steps = _steps_of(r.spec, r.budget, problem, process, x_cal)
        key = config_hash(dict(problem=problem.fingerprint(), method=r.spec.config(), steps=steps,
                               calibration=[CALIBRATION_SEED, CALIBRATION_SAMPLES], sdekit=sdekit.__version__))
        path = None if folder is None else os.path.join(folder, f"{key}.json")
        schedule = None
        if path is not None and os.path.exists(path):
            try:
                schedule = _optimized_schedule.load_schedule(path, process, method=r.spec.method, steps=steps, options=r.spec.options,
                                         device=settings.device)
            except InvalidParameterError as err:
                if log is not None:
                    log(f"{err}: made again")
        if schedule is None:
            with torch.no_grad():
                schedule = _optimized_schedule.optimize_schedule(process, r.spec.method, steps, x_cal, options=r.spec.options,
                                             t_start=problem.t_start, t_end=problem.t_end)
            if path is not None:
                os.makedirs(folder, exist_ok=True)
                schedule.save(path)
        if log is not None:
            log(f"{label} {budget}: {schedule!r}")
        settings.grids[label, budget] = schedule.grid.tolist()
    return settings.grids


def nfe_per_step(spec: MethodSpec, problem, process, x) -> int:
    """Score evaluations per step of ``spec``: the difference between 3- and 2-step solves of two samples."""
    noise = dict(seed=0) if spec.process == "sde" else {}
    nfe = [process.solve(x[:2], method=spec.method, steps=n, options=spec.options or None, throw=False,
                         t_start=problem.t_start, t_end=problem.t_end, **noise).nfe for n in (2, 3)]
    return max(1, nfe[1] - nfe[0])


def solve_row(problem, row: Row, x0: torch.Tensor, settings: Settings):
    """The row's solve from ``x0`` on its own noise (no errors measured): a :class:`sdekit.Solution`."""
    spec, fam = row.spec, family(row.spec)
    process = problem.sde_process() if spec.process == "sde" else problem.ode_process()
    x0 = x0.to(device=settings.device, dtype=getattr(torch, settings.dtype))
    span = dict(t_start=problem.t_start, t_end=problem.t_end)
    if spec.schedule == OPTIMIZED:
        key = (spec.label, str(row.budget))
        if key not in settings.grids:
            optimized_grids(problem, [row], settings)
        kwargs, span = dict(grid=torch.tensor(settings.grids[key], dtype=torch.float64)), {}
    else:
        kwargs = _budget_kwargs(spec, row.budget, problem, process, x0)
    if fam == "torchsde":
        kwargs["noise"] = torchsde_noise(problem, process, x0, row.seed, settings.reference["torchsde_steps"])
    elif fam == "sdekit":
        kwargs["noise"] = keyed_noise(problem, x0, row.seed)
    with torch.no_grad():
        return process.solve(x0, method=spec.method, options=spec.options or None, throw=False, **span, **kwargs)


def run_row(problem, row: Row, ctx: SeedContext, settings: Settings, test_functions, keep: bool = False) -> dict:
    """Solve one row and measure its errors; returns the row's record (and its samples under ``"_x"`` if ``keep``)."""
    spec, budget = row.spec, row.budget
    fam = family(spec)
    sol = solve_row(problem, row, ctx.x0, settings)
    m = spec.info
    span = abs(problem.t_start - problem.t_end)
    record = dict(key=row.key, problem=problem.name, label=spec.label, method=m.name, backend=m.backend,
                  process=spec.process, options=json.dumps(spec.options, sort_keys=True, default=repr),
                  budget=str(budget), budget_kind=budget.kind, budget_value=budget.value, seed=row.seed,
                  samples=settings.samples, dtype=settings.dtype, nfe=int(sol.nfe), steps=sol.steps,
                  rejected=sol.rejected, h=(span / sol.steps) if sol.steps else None,
                  wall_time=float(sol.wall_time), result=sol.result.name, detail=sol.detail,
                  failed=int(sol.failed.sum()) if sol.failed is not None else 0)
    measures = {}
    if sol.success:
        x = sol.x.detach().to(torch.float64).cpu()
        ref = ctx.refs.get(fam)
        if ref is not None:
            measures["strong" if spec.process == "sde" else "ode"] = pathwise_error(x, ref)
        for name, phi in test_functions.items():
            measures[f"weak:{name}"] = weak_error(phi, x, ref, ctx.exact)
        if ctx.exact is not None and problem.measures is not None:
            measures.update(problem.measures(x, ctx.exact, row.seed))
    record["measures"] = sorted(measures)
    for name, meas in measures.items():
        record.update(meas.fields(name))
    record["verdict"] = verdict(record, measures)
    if keep and sol.success:
        record["_x"] = sol.x.detach().cpu()
    return record


# -- running --------------------------------------------------------------------------------
#: The fields every row of :func:`run_row` has and a study reads back: a row of the plan in the results file
#: without one of them is damaged (an edit, a foreign writer), skipped with a warning and run again.
REQUIRED = ("key", "label", "method", "backend", "process", "budget", "budget_kind", "budget_value", "seed",
            "samples", "nfe", "steps", "result", "measures", "verdict")


def run_rows(problem, rows: List[Row], settings: Settings, test_functions, executor, results=None, progress=None,
             keep_samples=True):
    """Run the rows not already in ``results`` on ``executor`` (:mod:`._executors`); returns (records in plan
    order, rows reused, stale rows, samples).  Each record is appended to ``results`` as it comes back; at the
    end the file is rewritten in the plan's order (stale rows after), so it is the same file, row for row,
    whichever executor ran the rows and in whatever order they finished."""
    keys = {r.key for r in rows}
    done = read_results(results, required=REQUIRED, keys=keys)
    stale = sum(1 for k in done if k not in keys)
    pending = [r for r in rows if r.key not in done]
    records = {r.key: done[r.key] for r in rows if r.key in done}
    keep = _keep(rows) if keep_samples else set()
    folder = None if results is None else os.path.join(os.path.dirname(os.path.abspath(results)), "schedules")
    optimized_grids(problem, rows, settings, folder)
    samples = {}
    bar = _bar(progress, len(rows), len(records))
    try:
        def finish(record):
            x = record.pop("_x", None)
            if x is not None:
                samples[record["label"]] = x
            if results is not None:
                append_row(results, record)
            records[record["key"]] = record
            if bar is not None:
                bar.set_postfix_str(f"{record['label']} {record['budget']}", refresh=False)
                bar.update(1)

        def stage(text):
            if bar is not None:
                bar.set_description_str(f"study ({text})")
                bar.refresh()

        seeds = {seed: sorted({family(r.spec) for r in pending if r.seed == seed})
                 for seed in sorted({r.seed for r in pending})}
        jobs = [(r, r.key in keep) for r in pending]
        if jobs:
            executor.run(problem, seeds, jobs, settings, dict(test_functions), finish, stage)
    finally:
        if bar is not None:
            bar.close()
    if results is not None and pending:
        write_in_order(results, [r.key for r in rows])
    for r in rows:     # samples of rows read back from the file, for the plots: solve again, measure nothing
        if r.key in keep and r.spec.label not in samples and records[r.key]["result"] == "SUCCESS":
            x0 = problem.initial(settings.samples, torch.Generator().manual_seed(r.seed))
            samples[r.spec.label] = solve_row(problem, r, x0, settings).x.detach().cpu()
    ordered = [records[r.key] for r in rows]
    return ordered, len(rows) - len(pending), stale, samples


def _keep(rows: List[Row]) -> set:
    """The rows whose samples the plots show: each method's last budget (its largest, as usually listed),
    first seed."""
    first = min((r.seed for r in rows), default=0)
    return set({r.spec.label: r.key for r in rows if r.seed == first}.values())


def _bar(progress, total, initial):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="study", unit="row", file=sys.stderr, dynamic_ncols=True)
