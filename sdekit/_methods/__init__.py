"""The registry of integration methods: one plain dict, filled by one module per backend."""

from typing import List

from .._errors import UnknownMethodError, did_you_mean
from .._solution import Outcome
from ._base import REGISTRY, Method, Problem, register


def lookup(name: str, kind: str) -> Method:
    """The method called ``name`` (short or ``backend.name``, any case) for a process of ``kind`` ("sde"/"ode").

    Names are matched without regard to case (``"Euler"``, ``"DOPRI5"``, ``"rk45"``, ``"TorchSDE.euler"``).
    A short name shared by two backends (``euler``, ``midpoint``) resolves to the one of the process's
    own kind: torchsde's for a reverse SDE, torchdiffeq's for a probability-flow ODE; among methods of
    the same kind, the first registered.  An unknown name is refused with the closest names first
    (``"dpm++2m"``: did you mean ``'dpmpp_2m'``?) and every valid name after them.
    """
    if not isinstance(name, str):
        raise UnknownMethodError(f"method must be a string, got {type(name).__name__}; valid: {_names()}")
    key = name.lower()
    found = ([m for m in REGISTRY.values() if m.qualified_name.lower() == key]
             or [m for m in REGISTRY.values() if m.name.lower() == key])
    if not found:
        raise UnknownMethodError(f"unknown method {name!r}{_suggest(name)}; valid methods: {_names()}")
    same_kind = [m for m in found if m.kind == kind]
    return (same_kind or found)[0]


def _names() -> str:
    return ", ".join(sorted({m.name for m in REGISTRY.values()} | set(REGISTRY), key=str.lower))


def _suggest(name: str) -> str:
    """`` (did you mean 'dpmpp_2m'?)`` for a misspelt name: its closest short names (qualified ones when ``name``
    names a backend), matched as spelt and with punctuation removed (``"dpm++2m"``)."""
    qualified = "." in name
    names = sorted(REGISTRY) if qualified else sorted({m.name for m in REGISTRY.values()}, key=str.lower)
    return did_you_mean(name, names)


class MethodTable(list):
    """A list of :class:`Method` that prints as a table."""

    def __str__(self):
        def fmt(v):
            return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))
        head = ("method", "backend", "kind", "takes", "order", "additive", "weak", "stepping", "calculus", "frame",
                "needs", "history", "err_est", "schedule", "notes")
        rows = [(m.name, m.backend, m.kind.upper(), "+".join(k.upper() for k in m.accepts), fmt(m.order),
                 fmt(m.order_additive),
                 fmt(m.weak_order), m.stepping, fmt(m.sde_type), m.frame, m.needs, str(m.history),
                 "yes" if m.error_estimate else "no", m.schedule if m.stepping != "adaptive" else "-", m.notes)
                for m in self]
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
        return "\n".join(lines)

    __repr__ = __str__


def methods(kind: str = None, backend: str = None) -> List[Method]:
    """Every registered method (optionally of one ``kind`` or ``backend``), printable as a table.

    Columns: name, backend, kind (SDE or ODE method), the processes it takes (SDE: a reverse or forward SDE;
    ODE: a probability flow), order (the ODE order, or the strong order under diagonal noise for SDE methods), strong order
    under additive noise, weak order, fixed/adaptive stepping, calculus, the frame it steps in (t, sigma,
    log-SNR), what it needs from the model (drift, score, x0, eps), the model outputs it keeps
    (history), whether it estimates its error, the default schedule of ``steps=``, and notes (the option that
    reaches a higher order than the default's, a ``steps=`` that counts evaluations).  Every declared order is
    the asymptotic slope its default options reach (``tests/orders/test_declared_orders.py`` fits it).
    """
    return MethodTable(m for m in REGISTRY.values()
                       if (kind is None or m.kind == kind) and (backend is None or m.backend == backend))


from . import _torchsde, _torchdiffeq, _scipy, _native  # noqa: E402,F401  (fill the registry)

__all__ = ["Method", "Problem", "Outcome", "REGISTRY", "register", "lookup", "methods"]
