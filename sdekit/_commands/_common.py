"""What the ``sdekit`` commands share: the usage error, the argument parser, loading ``module:attr``, and the
problem, device, dtype and thread choices.

Nothing here imports torch (nor scipy, torchsde, torchdiffeq) at import time: ``sdekit --help``, ``--version``
and each command's ``--help`` build the parser without them; the functions that need torch import it.
"""

import argparse
import importlib
import importlib.util
import math
import os
import sys
from typing import Optional

from .._errors import SDEKitError

#: States with fewer numbers than this run on one thread by default (12-28x faster on two busy cores).
SMALL_STATE = 1 << 16

#: Seeds are integers in ``[0, SEED_LIMIT)``: 64 bits, as ``torch.Generator.manual_seed`` and the keyed noise take.
SEED_LIMIT = 2 ** 64


class UsageError(SDEKitError, ValueError):
    """A command-line or configuration mistake: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def count(text) -> int:
    """An argparse ``type`` for counts: ``2000``, ``2_000`` or ``2e3`` (a whole number written with an exponent)."""
    word = str(text).strip().replace("_", "")
    try:
        return int(word)
    except ValueError:
        pass
    try:
        value = float(word)
        if math.isfinite(value) and value == int(value):
            return int(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a whole number such as 2000 or 1e4, got {text!r}")


def check_seed(seed, what: str = "--seed") -> int:
    """``seed`` if it is an integer in ``[0, 2**64)``, else a one-line error."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"{what} must be an integer in [0, 2**64), got {seed!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"{what} must be in [0, 2**64) = [0, {SEED_LIMIT - 1}], got {seed}; seeds are 64-bit")
    return seed


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


def _problem(sde: Optional[str], problem: Optional[str], score: Optional[str], shape, model: Optional[str] = None,
             exact: bool = False) -> object:
    """The problem of ``--sde``, ``--problem``, ``--score`` (with ``--shape``) or ``--model``; ``sde`` is ``None``
    where no ``--sde`` was given (the default, VP, or the SDE a model or score object carries)."""
    from .._study_engine import StudyProblem
    from sdekit.studies import SDES, ExactSDEProblem, GaussianProblem, default_problem, trained_problem
    if sde is not None and sde not in SDES:
        raise UsageError(f"unknown --sde {sde!r}; choose from {', '.join(SDES)}")
    if model:
        if problem or score:
            raise UsageError("give --model or --problem/--score, not both")
        out = trained_problem(model, exact=exact)
        _same_sde(sde, out.sde, f"{model} was trained")
        return out
    if problem and score:
        raise UsageError("give --problem or --score, not both")
    if problem in ("mixture", "gaussian") or (problem or "").startswith("exact:"):
        if problem == "gaussian":
            return GaussianProblem(SDES[sde or "vp"]())
        if problem.startswith("exact:"):
            return ExactSDEProblem(problem[len("exact:"):])
        return default_problem(sde or "vp")
    if problem:
        obj = load_attr(problem)
        if not hasattr(obj, "sde_process") and callable(obj):
            obj = obj()
        if not hasattr(obj, "sde_process"):
            raise UsageError(f"{problem} is not a StudyProblem (nor a function returning one); "
                             "see sdekit.StudyProblem")
        return obj
    if score:
        from .._sde import SDE
        fn = load_attr(score)
        if not callable(fn):
            raise UsageError(f"{score} is not callable; it must be score(x, t)")
        own = getattr(fn, "sde", None)          # an sdekit Adapter (load_model's) carries the SDE it was built for
        if isinstance(own, SDE):
            _same_sde(sde, own, f"{score} was built")
            the_sde, sde_name = own, type(own).__name__
        else:
            the_sde, sde_name = SDES[sde or "vp"](), sde or "vp"
        dtype = _score_dtype(fn, tuple(shape), score)
        return StudyProblem(the_sde, fn, name=f"{score} {sde_name}", event_shape=shape, score_dtype=dtype,
                            config=dict(score=score))
    return default_problem(sde or "vp")


def _same_sde(name: Optional[str], sde, what: str):
    """Refuse an explicit ``--sde`` that names another SDE than the one a model or score carries."""
    from sdekit.studies import SDES
    if name is not None and type(sde) is not SDES[name]:
        raise UsageError(f"{what} for {sde!r}, not --sde {name}; drop --sde: the model's own SDE is used")


def _score_dtype(fn, shape: tuple, name: str):
    """The dtype ``fn`` computes in: that of the network behind it where it has one, else the first of float64
    and float32 it runs in (a float32 network fails on float64 states); ``None`` for float64."""
    import torch
    dtypes = set()
    for candidate in (fn, getattr(fn, "network", None), getattr(fn, "unet", None), getattr(fn, "__self__", None)):
        if isinstance(candidate, torch.nn.Module):
            dtypes = {p.dtype for p in candidate.parameters() if p.is_floating_point()}
            break
    if len(dtypes) == 1:                        # a network of one dtype: no probe needed
        dtype = dtypes.pop()
        return None if dtype == torch.float64 else dtype
    failure = None
    for dtype in (torch.float64, torch.float32):
        x = torch.zeros((2,) + shape, dtype=dtype)
        t = torch.full((2,), 0.5, dtype=dtype)
        try:
            with torch.no_grad():
                fn(x, t)
        except Exception as err:                # noqa: BLE001 (the user's code: any error is a reason to say so)
            failure = failure or err
            continue
        return None if dtype == torch.float64 else dtype
    raise UsageError(f"{name}(x, t) failed on a probe batch x of shape {(2,) + shape} in float64 and float32 "
                     f"({type(failure).__name__}: {_one_line(failure)[:200]}); check --shape and the function")


def _shape(text) -> tuple:
    if isinstance(text, (list, tuple)):
        return tuple(int(v) for v in text)
    try:
        return tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--shape takes comma-separated sizes such as 2 or 3,16,16, got {text!r}") from None


def _device(name: str) -> str:
    """``name`` if torch can compute on it here, else a one-line error."""
    import torch
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {name!r} is not a torch device; use cpu, cuda, cuda:1, mps") from None
    if dev.type == "cpu":
        return name
    if dev.type == "cuda":                      # no allocation: under torchrun every rank would touch cuda:0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: no cuda device is available here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} cuda device(s), cuda:0 to "
                             f"cuda:{count - 1}; pick one of them")
        return name
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                  and torch.backends.mps.is_available()):
        raise UsageError(f"--device {name}: no mps device is available here; use --device cpu")
    try:                                        # meta, and any backend torch cannot compute on here
        torch.ones(2, device=dev).add(1).sum().cpu().item()
    except Exception as err:                    # noqa: BLE001 (whatever the backend raises)
        raise UsageError(f"--device {name}: torch cannot compute on it here ({_one_line(err)[:120]}); use cpu or "
                         f"cuda") from None
    return name


def _dtype(name: str):
    import torch
    if name not in ("float32", "float64"):
        raise UsageError(f"--dtype must be float32 or float64, got {name!r}")
    return getattr(torch, name)


def _threads(requested, numel: int, device: str):
    """The thread count for the run and why."""
    import torch
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
