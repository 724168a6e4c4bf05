"""What a study varies: methods with their options (:class:`MethodSpec`) and budgets (:class:`Budget`).

A method is named as ``sdekit.methods()`` lists it (``"euler"``, ``"torchdiffeq.euler"``), optionally
prefixed by the process it solves: ``"sde:ddim"`` (the reverse SDE) or ``"ode:ddim"`` (the probability
flow).  Without a prefix an ODE-only method solves the flow and any other the SDE.

A budget is a step count (``steps``), a step size (``dt``), a number of score evaluations (``nfe``) or a
tolerance (``tol``, used as ``rtol = atol``).  Shared budgets go to the methods that can use them: step,
step-size and NFE budgets to fixed-step methods and torchsde's (which do both), tolerances to adaptive
methods; a method's own ``budgets`` replace the shared ones.
"""

import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from .._errors import ArgumentTypeError, InvalidParameterError, UnknownMethodError
from .._methods import lookup
from .._optimized_schedule import jsonable as _jsonable

__all__ = ["MethodSpec", "Budget", "parse_budgets", "as_method_spec", "config_hash", "OPTIMIZED"]

KINDS = ("steps", "dt", "nfe", "tol")
_EXAMPLE = {"steps": "16", "dt": "0.05", "nfe": "20", "tol": "1e-4"}


@dataclass(frozen=True)
class Budget:
    """How much work a row may do: ``kind`` is ``"steps"``, ``"dt"``, ``"nfe"`` or ``"tol"``; ``value`` the amount."""

    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidParameterError(f"a budget is one of {', '.join(KINDS)}, got {self.kind!r}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0 or not math.isfinite(v):
            raise InvalidParameterError(f"budget {self.kind} must be a positive finite number, got {v!r}; write "
                                        f"e.g. {self.kind}={_EXAMPLE[self.kind]}")
        if self.kind in ("steps", "nfe"):
            if int(v) != v:
                raise InvalidParameterError(f"budget {self.kind} must be a whole number, got {v!r}")
            object.__setattr__(self, "value", int(v))
        else:
            object.__setattr__(self, "value", float(v))

    @property
    def adaptive(self) -> bool:
        return self.kind == "tol"

    def __str__(self):
        return f"{self.kind}={self.value:g}"

    def config(self) -> dict:
        return {"kind": self.kind, "value": self.value}


def parse_budgets(spec) -> List[Budget]:
    """Budgets from a list (of :class:`Budget`, numbers as step counts, or ``"kind=value"`` strings) or a
    string such as ``"10,20,40"``, ``"nfe=10,20"`` or ``"steps=10,20;tol=1e-3,1e-5"``."""
    if isinstance(spec, Budget):
        return [spec]
    if isinstance(spec, str):
        out = []
        for group in spec.split(";"):
            kind, _, values = group.strip().rpartition("=")
            kind = kind.strip() or "steps"
            out += [Budget(kind, _number(v.strip(), kind)) for v in values.split(",") if v.strip()]
        if not out:
            raise InvalidParameterError(f"no budgets in {spec!r}; write e.g. '10,20,40' or 'nfe=10,20;tol=1e-3,1e-5'")
        return out
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        return [Budget("steps", spec)]
    if isinstance(spec, dict):
        out = [Budget(k, v) for k, vs in spec.items() for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
    elif isinstance(spec, (list, tuple)):
        out = [b for item in spec for b in parse_budgets(item)]
    else:
        raise ArgumentTypeError(f"budgets must be step counts, Budget objects or strings like 'nfe=10,20', "
                                f"got {type(spec).__name__}")
    if not out:
        raise InvalidParameterError(f"no budgets in {spec!r}; give at least one, e.g. [8, 16, 32] or "
                                    f"{{ steps = [8, 16], tol = [1e-3, 1e-5] }}")
    return out


def _number(text: str, kind: str):
    try:
        v = float(text)
    except ValueError:
        raise InvalidParameterError(f"budget {kind}={text!r} is not a number; write e.g. {kind}=10") from None
    if not math.isfinite(v):
        raise InvalidParameterError(f"budget {kind}={text} is not a finite number; write e.g. "
                                    f"{kind}={_EXAMPLE.get(kind, '10')}")
    return int(v) if kind in ("steps", "nfe") and v == int(v) else v


@dataclass(frozen=True)
class MethodSpec:
    """A method with its options, as one series of a study.

    - ``method``: a name from ``sdekit.methods()``, optionally prefixed ``"sde:"`` or ``"ode:"``;
    - ``process``: ``"sde"`` or ``"ode"`` (overrides the prefix; default: ODE-only methods solve the flow);
    - ``options``: passed to ``solve(options=...)``; ``schedule``: the grid of ``steps=`` (a name of
      ``sdekit.SCHEDULES``, or ``"optimized"``: a grid made by :func:`sdekit.optimize_schedule` for the problem,
      from calibration states apart from the rows' own; fixed-step ODE methods only);
    - ``label``: the name in tables and plots (default ``"sde:torchsde.euler"`` and the like);
    - ``budgets``: this method's own budgets (default: the study's).
    """

    method: str
    process: Optional[str] = None
    options: dict = field(default_factory=dict)
    schedule: Optional[str] = None
    label: Optional[str] = None
    budgets: Optional[tuple] = None

    def __post_init__(self):
        if not isinstance(self.method, str):
            raise ArgumentTypeError(f"a method is named by a string, got {type(self.method).__name__}")
        name, process = self.method, self.process
        if ":" in name:
            prefix, name = name.split(":", 1)
            if prefix not in ("sde", "ode"):
                raise InvalidParameterError(f"method prefix must be 'sde:' or 'ode:', got {prefix!r} in "
                                            f"{self.method!r}")
            process = process or prefix
        if process not in (None, "sde", "ode"):
            raise InvalidParameterError(f"process must be 'sde' or 'ode', got {process!r}")
        m = lookup(name, process or "sde")
        if process is None:
            process = "ode" if m.kind == "ode" else "sde"
        if process not in m.accepts:
            raise UnknownMethodError(f"{m.qualified_name} does not solve {process.upper()}s; it takes "
                                     f"{' and '.join(k.upper() for k in m.accepts)} (sdekit methods lists them)")
        if not isinstance(self.options, dict):
            raise ArgumentTypeError(f"options of {self.method!r} must be a dict, got {type(self.options).__name__}")
        if self.schedule == OPTIMIZED:
            _check_optimizable(m, process, self.method)
        object.__setattr__(self, "method", m.qualified_name)
        object.__setattr__(self, "process", process)
        if self.label is None:
            opts = "".join(f",{k}={v}" for k, v in sorted(self.options.items()))
            if self.schedule is not None:
                opts += f",schedule={self.schedule}"
            label = f"{process}:{m.qualified_name}" + (f"[{opts[1:]}]" if opts else "")
            object.__setattr__(self, "label", label)
        if self.budgets is not None:
            budgets = self.budgets if isinstance(self.budgets, str) else list(self.budgets)
            object.__setattr__(self, "budgets", tuple(parse_budgets(budgets)))

    @property
    def info(self):
        """The registered :class:`sdekit.Method`."""
        return lookup(self.method, self.process)

    def accepts(self, budget: Budget) -> bool:
        """Whether a shared ``budget`` applies to this method."""
        stepping = self.info.stepping
        return stepping == "adaptive" if budget.adaptive else stepping in ("fixed", "either")

    def budgets_from(self, shared: Sequence[Budget]) -> List[Budget]:
        """The budgets this method runs: its own, or the shared ones it accepts."""
        return list(self.budgets) if self.budgets is not None else [b for b in shared if self.accepts(b)]

    def config(self) -> dict:
        return {"method": self.method, "process": self.process, "options": _jsonable(self.options),
                "schedule": self.schedule}


#: ``schedule=`` of a fixed-step ODE row whose grid :func:`sdekit.optimize_schedule` makes for the problem
#: (``"ode:dpmpp_2m[schedule=optimized]"``): see ``sdekit/_study_engine/_runner.py``, :func:`optimized_grids`.
OPTIMIZED = "optimized"


def _check_optimizable(m, process, name):
    """Refuse ``schedule="optimized"`` for a method whose grid cannot be optimized (one line)."""
    if process != "ode" or "ode" not in m.accepts or m.stepping == "adaptive" or m.name == "dpm_solver_fast":
        raise InvalidParameterError(f"schedule='optimized' is for fixed-step methods of the probability flow "
                                    f"(ode:dpmpp_2m, ode:unipc, ...), not {process}:{m.qualified_name} in {name!r}")


def _parse_bracket(text: str) -> MethodSpec:
    """``"ode:dpmpp_2m[schedule=optimized]"``: a name with ``schedule=`` in brackets."""
    name, _, rest = text.partition("[")
    if not rest.endswith("]"):
        raise InvalidParameterError(f"a method with settings is written name[schedule=NAME], got {text!r}")
    kw = {}
    for item in rest[:-1].split(";"):
        key, eq, value = (p.strip() for p in item.partition("="))
        if key != "schedule" or not eq or not value:
            raise InvalidParameterError(f"{text!r}: brackets take schedule=NAME (e.g. ode:dpmpp_2m[schedule="
                                        f"optimized]); give options in a TOML method table")
        kw[key] = value
    return MethodSpec(name.strip(), **kw)


def as_method_spec(item) -> MethodSpec:
    """A :class:`MethodSpec` from a spec, a name (``"ode:unipc"``, or with a schedule in brackets:
    ``"ode:unipc[schedule=optimized]"``), or a dict of its fields (``{"method": "pc", "options": ...}``)."""
    if isinstance(item, MethodSpec):
        return item
    if isinstance(item, str):
        text = item.strip()
        return _parse_bracket(text) if "[" in text else MethodSpec(text)
    if isinstance(item, dict):
        unknown = set(item) - {"method", "process", "options", "schedule", "label", "budgets"}
        if unknown or "method" not in item:
            raise InvalidParameterError(f"a method entry takes method, process, options, schedule, label, budgets; "
                                        f"got {sorted(item)}")
        return MethodSpec(**item)
    raise ArgumentTypeError(f"a method is a name, a dict or a MethodSpec, got {type(item).__name__}")


def config_hash(config: dict) -> str:
    """A short SHA-256 of a JSON-able configuration (keys sorted)."""
    text = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]
