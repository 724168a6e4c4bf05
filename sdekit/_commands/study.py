"""``sdekit study``: every method at every budget and seed on one problem; results, summary, orders and plots."""

import copy
import os
import sys

from . import COMMANDS
from ._common import SEED_LIMIT, UsageError, _device, _dtype, _problem, _say, _shape, _threads, check_seed, count

#: Samples per row at most (as ``sdekit.study``'s ``MAX_SAMPLES``: a row holds its samples in memory at once).
MAX_SAMPLES = 10 ** 7

#: The settings of a study and their defaults; a TOML file's [study] table takes these keys, a flag wins over it.
#: ``sde`` None: VP, or the SDE of ``--model`` / of a ``--score`` object that carries one.
DEFAULTS = dict(sde=None, problem=None, score=None, shape="2", methods=None, budgets=None, samples=2000, seed=0,
                seeds=1, device="cpu", dtype="float64", threads=None, workers=None, executor=None, scheduler=None,
                out="sdekit-study", reference={}, quiet=False, model=None)
STUDY_KEYS = tuple(DEFAULTS)


def _read_toml(path: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"no config file {path!r}; give the path of a study TOML file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; give the path of a study TOML file") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8, as TOML "
                         f"requires") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"bad TOML in {path}: {err}; fix the file (docs/study.md shows one)") from None
    data = data.get("study", data)
    if not isinstance(data, dict):
        raise UsageError(f"study in {path} must be a table ([study] with keys such as samples = 2000), got "
                         f"{data!r:.60}")
    unknown = sorted(set(data) - set(STUDY_KEYS))
    if unknown:
        raise UsageError(f"unknown keys {unknown} in {path}; valid keys: {', '.join(STUDY_KEYS)}")
    return data


def add_parser(sub):
    p = sub.add_parser("study", help=COMMANDS["study"],
                       description="Run a study: every method at every budget and seed; results, summary, orders "
                                   "and plots go to --out, resumable after a kill.")
    p.add_argument("--config", metavar="FILE", help="a TOML file describing the study ([study] table)")
    p.add_argument("--sde", help="forward SDE of the built-in problem: vp (default), subvp, ve")
    p.add_argument("--problem", metavar="NAME|MODULE:ATTR",
                   help="mixture (default), gaussian, exact:NAME (gbm, gbm-tv, additive, additive-tv, arctan, sinh: "
                        "forward SDEs with exact solutions), or your StudyProblem (or a function returning one)")
    p.add_argument("--score", metavar="MODULE:ATTR", help="your score(x, t); the reference is then a fine solve")
    p.add_argument("--model", metavar="FILE|digits",
                   help="a model saved by sdekit train, or digits (the shipped digits U-Net): the study runs on it "
                        "and, for a model of the mixture, on the exact score beside it, under the SDE it was trained "
                        "with (--sde, if given, must name it); a digits model adds digits.md, likelihoods and "
                        "pictures (docs/trained_models.md)")
    p.add_argument("--shape", help="event shape for --score, comma-separated (default 2)")
    p.add_argument("--methods", help="comma-separated, e.g. 'euler,sde:ddim,ode:dpmpp_2m,dopri5'")
    p.add_argument("--budgets", help="e.g. '8,16,32' (steps), 'nfe=10,20', 'steps=8,16;tol=1e-3,1e-5'")
    p.add_argument("--samples", type=count, help=f"samples per row, 2 to {MAX_SAMPLES:.0e} (default 2000)")
    p.add_argument("--seed", type=int, help="first seed, in [0, 2**64) (default 0)")
    p.add_argument("--seeds", type=count, help="number of seeds, from --seed on (default 1)")
    p.add_argument("--device", help="cpu (default), cuda, ...")
    p.add_argument("--dtype", help="float64 (default) or float32")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 for small CPU states)")
    p.add_argument("--workers", type=int, help="local processes of --executor processes (default: the CPU count)")
    p.add_argument("--executor", choices=("serial", "processes", "dask"),
                   help="where rows run: serial (default; processes when --workers > 1), processes, dask")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler of --executor dask, e.g. tcp://10.0.0.1:8786 (default: dask's configured "
                        "one, else a LocalCluster here)")
    p.add_argument("--reference-steps", type=count, dest="reference_steps",
                   help="steps of the fine SDE reference solves, 1 to 1e7 (default 8x the most steps, at least "
                        "256)")
    p.add_argument("--out", help="output folder (default sdekit-study)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--no-likelihood", dest="no_likelihood", action="store_true",
                   help="digits models: skip the test split's bits per pixel (a few CPU minutes)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a row's verdict is not ok")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no printed table")
    p.set_defaults(run=run)


def _settings(args) -> dict:
    conf = _read_toml(args.config) if args.config else {}
    out = dict(DEFAULTS, reference={})
    out.update(conf)
    for key in DEFAULTS:
        v = getattr(args, key, None)
        if v is not None and v is not False:
            out[key] = v
    if not isinstance(out["reference"], dict):
        raise UsageError(f"reference must be a table such as {{ steps = 1024 }}, got {out['reference']!r}")
    if getattr(args, "reference_steps", None) is not None:
        if args.reference_steps < 1:
            raise UsageError(f"--reference-steps must be at least 1, got {args.reference_steps}")
        out["reference"] = dict(out["reference"], steps=args.reference_steps)
    for keys, kind, what in ((("samples", "seed", "seeds", "workers", "threads"), int, "an integer"),
                             (("sde", "device", "dtype", "out", "executor", "scheduler"), str, "a string")):
        for key in keys:                         # None only where the default is None: TOML has no null
            if out[key] is not None and (isinstance(out[key], bool) or not isinstance(out[key], kind)):
                raise UsageError(f"{key} must be {what}, got {out[key]!r}")
    if out["samples"] < 2 or out["seeds"] < 1 or (out["workers"] or 1) < 1:
        raise UsageError("need samples >= 2, seeds >= 1 and workers >= 1")
    if out["samples"] > MAX_SAMPLES:
        raise UsageError(f"samples is {out['samples']}, more than the {MAX_SAMPLES:.0e} a row takes (a row holds its "
                         f"samples, their reference and exact samples in memory); run more seeds for more samples")
    check_seed(out["seed"], "seed")
    if out["seed"] + out["seeds"] > SEED_LIMIT:
        raise UsageError(f"seeds run from seed {out['seed']} to seed + seeds - 1, which must stay below 2**64; "
                         f"give a smaller seed or fewer seeds")
    _device(out["device"])
    return out


def run(args) -> int:
    s = _settings(args)
    if getattr(args, "model_part", None) is None and s["model"]:
        return _run_with_model(args, s)
    return _run_study(args, s)[0]


def _run_study(args, s: dict, problem=None):
    """The study of the settings ``s`` (on ``problem`` where the caller has built it): its exit status and its
    :class:`sdekit.StudyTable` (this run's rows)."""
    import torch
    from .._study_engine import as_method_spec, check_budgets, check_plan, parse_budgets, save_report, study
    from sdekit.studies import DEFAULT_BUDGETS, DEFAULT_METHODS
    quiet = bool(s["quiet"])
    methods = DEFAULT_METHODS if s["methods"] is None else s["methods"]
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not isinstance(methods, list):
        raise UsageError(f"methods must be a list or a comma-separated string, got {methods!r}")
    if not methods:
        raise UsageError("methods is empty; name at least one, e.g. methods = [\"sde:euler\", \"ode:dpmpp_2m\"] "
                         "(leave it out for the default methods)")
    methods = [as_method_spec(m) for m in methods]          # unknown names fail here, before anything runs
    budgets = parse_budgets(DEFAULT_BUDGETS if s["budgets"] is None else s["budgets"])
    check_budgets(methods, budgets)                          # before any folder is made
    if problem is None:
        problem = _problem(s["sde"], s["problem"], s["score"], _shape(s["shape"]), model=s["model"],
                           exact=getattr(args, "model_part", None) == "exact")
    check_plan(problem, methods, budgets, s["reference"])   # steps and reference sizes, before any folder
    x = problem.initial(2, torch.Generator().manual_seed(0))
    numel = s["samples"] * x[0].numel()
    threads, why = _threads(s["threads"], numel, s["device"])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = s["out"]
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    _say(quiet, f"problem: {problem.name}; {s['samples']} samples per row, seeds "
                f"{s['seed']}..{s['seed'] + s['seeds'] - 1}, {s['dtype']} on {s['device']}")
    _say(quiet, f"threads: {threads} ({why})")
    _say(quiet, f"results: {results} (each row saved as it finishes; re-run to resume)")
    try:
        table = study(problem, methods, budgets, samples=s["samples"], seeds=range(s["seed"], s["seed"] + s["seeds"]),
                      results=results, workers=s["workers"], executor=s["executor"], scheduler=s["scheduler"],
                      reference=s["reference"], dtype=_dtype(s["dtype"]), device=s["device"], progress=not quiet)
    finally:
        torch.set_num_threads(before)
    files = save_report(table, out, problem=problem, plots=not args.no_plots, log=lambda m: _say(quiet, m))
    _say(quiet, f"\n{table.report()}\n")
    _say(quiet, f"wrote {', '.join(os.path.basename(f) for f in files)} to {out}/")
    if args.strict and any(r["verdict"] in ("CHECK", "failed") for r in table.rows):
        return 1, table
    return 0, table


def _run_with_model(args, s: dict) -> int:
    """``--model FILE``: the study on the trained network (``OUT/model``) and, where its data has an exact score,
    on that score (``OUT/exact``), then the two side by side (``OUT/comparison.md``); ``s`` the settings."""
    from sdekit.studies._trained import comparison_table
    out, model = s["out"], s["model"]
    if not isinstance(model, str):
        raise UsageError(f"model must be the path of a .safetensors file from sdekit train, got {model!r}")
    problem = _problem(s["sde"], s["problem"], s["score"], _shape(s["shape"]), model=model)   # built once
    data = problem.config.get("model_info", {}).get("data")
    if data == "digits":
        return _run_digits(args, s, problem)
    parts = ["model", "exact"] if data == "mixture-2d" else ["model"]
    status, tables = 0, {}
    for part in parts:
        a = copy.copy(args)
        a.model_part, a.model, a.out = part, model, os.path.join(out, part)
        code, tables[part] = _run_study(a, dict(s, out=a.out), problem if part == "model" else None)
        status = max(status, code)
    if len(parts) == 2:
        text = comparison_table(tables["model"].rows, tables["exact"].rows)
        with open(os.path.join(out, "comparison.md"), "w") as fh:
            fh.write(text + "\n")
        _say(args.quiet, f"\n{text}")
        _say(args.quiet, f"wrote comparison.md to {out}/")
    return status


#: ``sdekit study --model digits``: the samplers of 5-20 NFE (docs/trained_models.md), where no flag or config
#: file says otherwise.
DIGITS_METHODS = ["ode:torchdiffeq.euler", "ode:ddim", "ode:dpmpp_2m", "ode:unipc", "ode:edm_heun",
                  "sde:euler_ancestral", "sde:dpmpp_2m_sde", "sde:ddim"]
DIGITS_BUDGETS = "nfe=5,10,20"
DIGITS_SAMPLES = 1000
#: The flow's reference: dopri5 at 1e-5 (a float32 network's flow cannot be solved to 1e-10; the rows' errors at
#: 5-20 NFE are above 1e-3).
DIGITS_REFERENCE = {"ode_tol": 1e-5}


def _run_digits(args, s: dict, problem) -> int:
    """``--model`` of a digits model (``problem``, built once: its judge's test features and floor are computed
    once): the study on it (``OUT``), then ``digits.md``, the likelihoods and the pictures of
    :mod:`sdekit.studies._digits_report`."""
    from sdekit.studies._digits_report import write_digits_report
    s = dict(s)
    given = _read_toml(args.config) if getattr(args, "config", None) else {}
    if s["methods"] is None:
        s["methods"] = list(DIGITS_METHODS)
    if s["budgets"] is None:
        s["budgets"] = DIGITS_BUDGETS
    if getattr(args, "samples", None) is None and "samples" not in given:
        s["samples"] = DIGITS_SAMPLES
    if not s["reference"]:
        s["reference"] = dict(DIGITS_REFERENCE)
    a = copy.copy(args)
    a.model_part = "model"
    status, table = _run_study(a, s, problem)
    files = write_digits_report(problem, table, s["out"], plots=not args.no_plots,
                                likelihood=not getattr(args, "no_likelihood", False),
                                log=lambda m: _say(bool(s["quiet"]), m))
    _say(bool(s["quiet"]), f"wrote {', '.join(os.path.basename(f) for f in files)} to {s['out']}/")
    return status
