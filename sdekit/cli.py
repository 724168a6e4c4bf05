"""The ``sdekit`` command: ``sdekit study``, ``sdekit methods``, ``sdekit sample``, ``sdekit orders``.

``sdekit study`` with no arguments runs the default study: the 2-D Gaussian mixture under the VP SDE with
its exact score, reverse-SDE samplers of torchsde and sdekit and probability-flow solvers of torchdiffeq and
sdekit over a range of budgets.  It writes the results (JSON lines, resumable), a summary with a verdict per
row, the fitted orders and the plots into ``--out``, and prints the summary.

The built-in problems are made of :mod:`sdekit.validation` and live beside the core in ``sdekit.studies``;
this module imports that lazily, inside the functions that need it, so ``import sdekit`` never does.

Errors (bad arguments, a bad TOML file, an unknown method, a ``module:attr`` that is not there) print one
line naming the fix and exit with status 2; a failure while running exits with 1, an interrupt with 130.
"""

import argparse
import importlib
import importlib.util
import os
import sys
from typing import List, Optional

import torch

from ._errors import InvalidParameterError, SDEKitError

__all__ = ["main"]

#: States with fewer numbers than this run on one thread by default (12-28x faster on two busy cores).
SMALL_STATE = 1 << 16

STUDY_KEYS = ("sde", "problem", "score", "shape", "methods", "budgets", "samples", "seed", "seeds", "device",
              "dtype", "threads", "workers", "out", "reference", "quiet")


class UsageError(SDEKitError, ValueError):
    """A command-line or configuration mistake: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _say(quiet, *args):
    if not quiet:
        print(*args, flush=True)


# -- loading things by name -----------------------------------------------------------------
def load_attr(spec: str):
    """``module:attr`` (or ``path/to/file.py:attr``; ``attr`` may be dotted) imported from the current folder."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise UsageError(f"expected module:attribute (e.g. mymodels:score), got {spec!r}")
    mod_name, attr = spec.split(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if mod_name.endswith(".py"):
            if not os.path.exists(mod_name):
                raise UsageError(f"no file {mod_name!r}; give module:attribute with a file that exists")
            s = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(mod_name))[0], mod_name)
            module = importlib.util.module_from_spec(s)
            s.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ModuleNotFoundError as err:
        raise UsageError(f"cannot import {mod_name!r} ({err}); run from the folder that holds it or install it") \
            from None
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"importing {mod_name!r} failed ({type(err).__name__}: {_one_line(err)}); fix that module") \
            from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{mod_name!r} has no attribute {attr!r}; check the name after the colon in {spec!r}")
        obj = getattr(obj, part)
    return obj


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
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"bad TOML in {path}: {err}; fix the file (docs/study.md shows one)") from None
    data = data.get("study", data)
    unknown = sorted(set(data) - set(STUDY_KEYS))
    if unknown:
        raise UsageError(f"unknown keys {unknown} in {path}; valid keys: {', '.join(STUDY_KEYS)}")
    return data


def _problem(sde: str, problem: Optional[str], score: Optional[str], shape) -> object:
    from ._study import StudyProblem
    from sdekit.studies import SDES, default_problem
    if sde not in SDES:
        raise UsageError(f"unknown --sde {sde!r}; choose from {', '.join(SDES)}")
    if problem and score:
        raise UsageError("give --problem or --score, not both")
    if problem in ("mixture", "gaussian") or (problem or "").startswith("exact:"):
        from sdekit.studies import ExactSDEProblem, GaussianProblem
        if problem == "gaussian":
            return GaussianProblem(SDES[sde]())
        if problem.startswith("exact:"):
            return ExactSDEProblem(problem[len("exact:"):])
        return default_problem(sde)
    if problem:
        obj = load_attr(problem)
        if not hasattr(obj, "sde_process") and callable(obj):
            obj = obj()
        if not hasattr(obj, "sde_process"):
            raise UsageError(f"{problem} is not a StudyProblem (nor a function returning one); "
                             "see sdekit.StudyProblem")
        return obj
    if score:
        fn = load_attr(score)
        if not callable(fn):
            raise UsageError(f"{score} is not callable; it must be score(x, t)")
        return StudyProblem(SDES[sde](), fn, name=f"{score} {sde}", event_shape=shape, config=dict(score=score))
    return default_problem(sde)


def _shape(text) -> tuple:
    if isinstance(text, (list, tuple)):
        return tuple(int(v) for v in text)
    try:
        return tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--shape takes comma-separated sizes such as 2 or 3,16,16, got {text!r}") from None


def _device(name: str) -> str:
    """``name`` if torch can use it here, else a one-line error."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {name!r} is not a torch device; use cpu, cuda, cuda:1, mps") from None
    ok = {"cpu": True, "cuda": torch.cuda.is_available(),
          "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not ok.get(dev.type, True):
        raise UsageError(f"--device {name}: no {dev.type} device is available here; use --device cpu")
    return name


def _dtype(name: str):
    if name not in ("float32", "float64"):
        raise UsageError(f"--dtype must be float32 or float64, got {name!r}")
    return getattr(torch, name)


def _threads(requested, numel: int, device: str):
    """The thread count for the run and why."""
    if requested is not None:
        if int(requested) < 1:
            raise UsageError("--threads must be at least 1")
        return int(requested), "as asked"
    if torch.device(device).type != "cpu":
        return torch.get_num_threads(), "torch's default; the work runs on the device"
    if numel < SMALL_STATE:
        return 1, f"small problem: {numel} numbers per state; --threads N to change"
    return torch.get_num_threads(), f"large problem: {numel} numbers per state; --threads N to change"


# -- sdekit study ---------------------------------------------------------------------------
def _study_parser(sub):
    p = sub.add_parser("study", help="run a convergence study / solver comparison (default: the 2-D mixture)",
                       description="Run a study: every method at every budget and seed; results, summary, orders "
                                   "and plots go to --out, resumable after a kill.")
    p.add_argument("--config", metavar="FILE", help="a TOML file describing the study ([study] table)")
    p.add_argument("--sde", help="forward SDE of the built-in problem: vp (default), subvp, ve")
    p.add_argument("--problem", metavar="NAME|MODULE:ATTR",
                   help="mixture (default), gaussian, exact:NAME (gbm, gbm-tv, additive, additive-tv, arctan, sinh: "
                        "forward SDEs with exact solutions), or your StudyProblem (or a function returning one)")
    p.add_argument("--score", metavar="MODULE:ATTR", help="your score(x, t); the reference is then a fine solve")
    p.add_argument("--shape", help="event shape for --score, comma-separated (default 2)")
    p.add_argument("--methods", help="comma-separated, e.g. 'euler,sde:ddim,ode:dpmpp_2m,dopri5'")
    p.add_argument("--budgets", help="e.g. '8,16,32' (steps), 'nfe=10,20', 'steps=8,16;tol=1e-3,1e-5'")
    p.add_argument("--samples", type=int, help="samples per row (default 2000)")
    p.add_argument("--seed", type=int, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, help="number of seeds, from --seed on (default 1)")
    p.add_argument("--device", help="cpu (default), cuda, ...")
    p.add_argument("--dtype", help="float64 (default) or float32")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 for small CPU states)")
    p.add_argument("--workers", type=int, help="local processes running rows at once (default 1)")
    p.add_argument("--reference-steps", type=int, dest="reference_steps",
                   help="steps of the fine SDE reference solves (default 8x the most steps, at least 256)")
    p.add_argument("--out", help="output folder (default sdekit-study)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a row's verdict is not ok")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no printed table")
    p.set_defaults(run=cmd_study)


def _settings(args) -> dict:
    conf = _read_toml(args.config) if args.config else {}
    defaults = dict(sde="vp", problem=None, score=None, shape="2", methods=None, budgets=None, samples=2000, seed=0,
                    seeds=1, device="cpu", dtype="float64", threads=None, workers=1, out="sdekit-study",
                    reference={}, quiet=False)
    out = dict(defaults)
    out.update(conf)
    for key in defaults:
        v = getattr(args, key, None)
        if v is not None and v is not False:
            out[key] = v
    if getattr(args, "reference_steps", None):
        out["reference"] = dict(out.get("reference") or {}, steps=args.reference_steps)
    for key in ("samples", "seed", "seeds", "workers"):
        if isinstance(out[key], bool) or not isinstance(out[key], int):
            raise UsageError(f"{key} must be an integer, got {out[key]!r}")
    if out["samples"] < 2 or out["seeds"] < 1 or out["workers"] < 1 or out["seed"] < 0:
        raise UsageError("need samples >= 2, seeds >= 1, workers >= 1 and seed >= 0")
    if out["threads"] is not None and (isinstance(out["threads"], bool) or not isinstance(out["threads"], int)):
        raise UsageError(f"threads must be an integer, got {out['threads']!r}")
    for key in ("sde", "device", "dtype", "out"):
        if not isinstance(out[key], str):
            raise UsageError(f"{key} must be a string, got {out[key]!r}")
    _device(out["device"])
    if not isinstance(out["reference"], dict):
        raise UsageError(f"reference must be a table such as {{ steps = 1024 }}, got {out['reference']!r}")
    return out


def cmd_study(args) -> int:
    from ._study import save_report, study
    from sdekit.studies import DEFAULT_BUDGETS, DEFAULT_METHODS
    from ._study._spec import as_method_spec, parse_budgets
    s = _settings(args)
    quiet = bool(s["quiet"])
    methods = s["methods"] or DEFAULT_METHODS
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not isinstance(methods, list):
        raise UsageError(f"methods must be a list or a comma-separated string, got {methods!r}")
    methods = [as_method_spec(m) for m in methods]          # unknown names fail here, before anything runs
    budgets = parse_budgets(s["budgets"] or DEFAULT_BUDGETS)
    problem = _problem(s["sde"], s["problem"], s["score"], _shape(s["shape"]))
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
                      results=results, workers=s["workers"], reference=s["reference"], dtype=_dtype(s["dtype"]),
                      device=s["device"], progress=not quiet)
    finally:
        torch.set_num_threads(before)
    files = save_report(table, out, problem=problem, plots=not args.no_plots, log=lambda m: _say(quiet, m))
    _say(quiet, "")
    _say(quiet, table.report())
    _say(quiet, "")
    _say(quiet, f"wrote {', '.join(os.path.basename(f) for f in files)} to {out}/")
    if args.strict and any(r["verdict"] in ("CHECK", "failed") for r in table.rows):
        return 1
    return 0


# -- sdekit methods ---------------------------------------------------------------------------
def cmd_methods(args) -> int:
    from ._methods import methods
    if args.kind not in (None, "sde", "ode"):
        raise UsageError(f"--kind must be sde or ode, got {args.kind!r}")
    table = methods(kind=args.kind, backend=args.backend)
    if not table:
        raise UsageError(f"no methods of backend {args.backend!r}; backends: torchsde, torchdiffeq, scipy, sdekit")
    print(table)
    return 0


# -- sdekit sample ----------------------------------------------------------------------------
def cmd_sample(args) -> int:
    from ._study import MethodSpec
    problem = _problem(args.sde or "vp", args.problem, args.score, _shape(args.shape or "2"))
    spec = MethodSpec(args.method)
    if (args.steps is None) == (args.tol is None):
        raise UsageError("give --steps N (fixed steps) or --tol T (adaptive), one of them")
    if not args.out.endswith((".pt", ".npz")):
        raise UsageError(f"--out must end in .pt or .npz, got {args.out!r}")
    if args.samples < 1 or args.seed < 0:
        raise UsageError("need --samples >= 1 and --seed >= 0")
    _device(args.device)
    threads, why = _threads(args.threads, args.samples * problem.initial(1, torch.Generator())[0].numel(),
                            args.device)
    torch.set_num_threads(threads)
    x0 = problem.initial(args.samples, torch.Generator().manual_seed(args.seed))
    x0 = x0.to(device=args.device, dtype=_dtype(args.dtype))
    process = problem.sde_process() if spec.process == "sde" else problem.ode_process()
    if process is None:
        raise UsageError(f"{problem.name} has no probability flow; use an SDE method")
    budget = dict(steps=args.steps) if args.steps is not None else dict(rtol=args.tol, atol=args.tol)
    noise = dict(seed=args.seed) if spec.process == "sde" else {}
    sol = process.solve(x0, method=spec.method, t_start=problem.t_start, t_end=problem.t_end, **budget, **noise)
    x = sol.x.detach().cpu()
    meta = dict(problem=problem.name, method=spec.label, seed=args.seed, nfe=sol.nfe, steps=sol.steps,
                t_end=problem.t_end)
    if args.out.endswith(".pt"):
        torch.save(dict(x=x, **meta), args.out)
    else:
        import numpy as np
        np.savez(args.out, x=x.numpy(), **{k: np.asarray(str(v) if v is None else v) for k, v in meta.items()})
    _say(args.quiet, f"{args.samples} samples of {problem.name} by {spec.label} ({sol.nfe} NFE, "
                     f"{sol.wall_time:.2f} s, threads {threads}: {why}) -> {args.out}")
    return 0


# -- sdekit orders ----------------------------------------------------------------------------
def cmd_orders(args) -> int:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"strong", "ode", "tolerance", "weak"}
    if unknown or not parts:
        raise UsageError(f"unknown --parts {sorted(unknown)}; choose from strong, ode, tolerance, weak")
    if args.threads < 1:
        raise UsageError("--threads must be at least 1")
    from sdekit.studies import run_orders
    argv = ["--parts", ",".join(parts), "--threads", str(args.threads)]
    argv += ["--full"] if args.full else []
    argv += ["--verbose"] if args.verbose else []
    return run_orders(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdekit", description="sdekit: convergence studies and solver comparisons for "
                                                "score-based SDEs.")
    sub = parser.add_subparsers(dest="command", metavar="{study,methods,sample,orders}", parser_class=_Parser)
    _study_parser(sub)
    m = sub.add_parser("methods", help="list the registered methods", description="List the registered methods.")
    m.add_argument("--kind", help="sde or ode")
    m.add_argument("--backend", help="torchsde, torchdiffeq, scipy or sdekit")
    m.set_defaults(run=cmd_methods)
    s = sub.add_parser("sample", help="draw samples with one method and save them (.pt or .npz)",
                       description="Draw samples of a problem with one method; save them as .pt or .npz.")
    s.add_argument("--sde", help="vp (default), subvp, ve")
    s.add_argument("--problem", metavar="MODULE:ATTR")
    s.add_argument("--score", metavar="MODULE:ATTR")
    s.add_argument("--shape", help="event shape for --score (default 2)")
    s.add_argument("--method", default="sde:euler", help="e.g. euler, sde:ddim, ode:dpmpp_2m (default sde:euler)")
    s.add_argument("--steps", type=int)
    s.add_argument("--tol", type=float)
    s.add_argument("--samples", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float64")
    s.add_argument("--threads", type=int)
    s.add_argument("--out", default="samples.pt", help="file ending in .pt or .npz (default samples.pt)")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(run=cmd_sample)
    o = sub.add_parser("orders", help="measure every method's order (the table of docs/orders.md)",
                       description="Measure every method's order against exact solutions (docs/orders.md).")
    o.add_argument("--full", action="store_true", help="the slow tests' settings")
    o.add_argument("--parts", default="strong,ode,tolerance,weak")
    o.add_argument("--threads", type=int, default=1)
    o.add_argument("--verbose", action="store_true")
    o.set_defaults(run=cmd_orders)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``sdekit`` command; returns the exit status (0 ok, 1 failure or --strict, 2 usage, 130 interrupt)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
        if getattr(args, "run", None) is None:
            parser.print_help()
            return 2
        return args.run(args)
    except UsageError as err:
        text = str(err)
        command = next((a for a in argv if a in ("study", "methods", "sample", "orders")), None)
        if command and text.endswith("(see sdekit --help)"):
            text = text.replace("(see sdekit --help)", f"(see sdekit {command} --help)")
        print(f"sdekit: error: {text}", file=sys.stderr)
        return 2
    except BrokenPipeError:                      # `sdekit methods | head`: the reader has gone
        sys.stderr.close()
        return 0
    except (SDEKitError, OSError) as err:
        print(f"sdekit: error: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, (InvalidParameterError, ValueError, TypeError)) else 1
    except KeyboardInterrupt:
        print("sdekit: interrupted; finished rows are saved, run the same command to resume", file=sys.stderr)
        return 130


def _one_line(err) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
