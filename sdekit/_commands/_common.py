"""What the ``sdekit`` commands share: the usage error, the argument parser, loading ``module:attr``, and the
problem, device, dtype and thread choices."""

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Optional

import torch

from .._errors import SDEKitError

#: States with fewer numbers than this run on one thread by default (12-28x faster on two busy cores).
SMALL_STATE = 1 << 16


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


def _problem(sde: str, problem: Optional[str], score: Optional[str], shape, model: Optional[str] = None,
             exact: bool = False) -> object:
    from .._study import StudyProblem
    from sdekit.studies import SDES, default_problem
    if model:
        if problem or score:
            raise UsageError("give --model or --problem/--score, not both")
        from sdekit.studies import trained_problem
        return trained_problem(model, exact=exact)
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


def _one_line(err) -> str:
    return " ".join(str(err).split()) or type(err).__name__
