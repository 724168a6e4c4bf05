"""``sdekit methods``: the table of registered methods, or one method's details (``sdekit methods NAME``)."""

from . import COMMANDS
from ._common import UsageError


def add_parser(sub):
    m = sub.add_parser("methods", help=COMMANDS["methods"],
                       description="List the registered methods; with NAME (e.g. dpmpp_2m, torchsde.euler, "
                                   "ode:euler) show that method's details: its orders, stepping, what it needs, "
                                   "its options and notes.")
    m.add_argument("name", nargs="?", metavar="NAME",
                   help="a method, as solve(method=...) takes it; sde: or ode: picks the one a process resolves to")
    m.add_argument("--kind", help="sde or ode")
    m.add_argument("--backend", help="torchsde, torchdiffeq, scipy or sdekit")
    m.set_defaults(run=run)


def run(args) -> int:
    from .._methods import methods
    if args.kind not in (None, "sde", "ode"):
        raise UsageError(f"--kind must be sde or ode, got {args.kind!r}")
    if args.name is not None:
        found = matching(args.name, args.kind, args.backend)
        print("\n\n".join(details(m) for m in found))
        return 0
    table = methods(kind=args.kind, backend=args.backend)
    if not table:
        raise UsageError(f"no methods of backend {args.backend!r}; backends: torchsde, torchdiffeq, scipy, sdekit")
    print(table)
    return 0


def matching(name: str, kind=None, backend=None) -> list:
    """The registered methods ``name`` names (a short name may name one per backend); an unknown name raises the
    library's own error (with its suggestion)."""
    from .._methods import REGISTRY, lookup
    process = None
    if ":" in name:
        process, name = name.split(":", 1)
        if process not in ("sde", "ode"):
            raise UsageError(f"a method's prefix is sde: or ode:, got {process!r}:")
    key = name.lower()
    found = ([m for m in REGISTRY.values() if m.qualified_name.lower() == key]
             or [m for m in REGISTRY.values() if m.name.lower() == key])
    if not found:
        lookup(name, process or kind or "sde")          # raises UnknownMethodError, as solve(method=...) would
    if process is not None:
        found = [lookup(name, process)]
    found = [m for m in found if (kind is None or m.kind == kind) and (backend is None or m.backend == backend)]
    if not found:
        raise UsageError(f"{name!r} is not a method of{' kind ' + kind if kind else ''}"
                         f"{' backend ' + backend if backend else ''}; drop --kind/--backend to see it")
    return found


def _names(m) -> str:
    """How ``solve(method=...)`` reaches ``m``: its qualified name, and its short one where that resolves to it."""
    from .._methods import lookup
    short = [k for k in m.accepts if lookup(m.name, k) is m]
    where = {("sde", "ode"): "", ("sde",): " for an SDE", ("ode",): " for a probability flow"}[tuple(short)] \
        if short else ""
    return f"method={m.qualified_name!r}" + (f" or method={m.name!r}{where}" if short else
                                             f" ({m.name!r} alone names another backend's)")


def details(m) -> str:
    """One method's card: what ``sdekit.methods()`` lists of it, its description, options and notes."""
    from .._solve import DEFAULT_ATOL, DEFAULT_RTOL

    def fmt(v):
        return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))
    rtol = DEFAULT_RTOL if m.default_rtol is None else m.default_rtol
    atol = DEFAULT_ATOL if m.default_atol is None else m.default_atol
    takes = " and ".join({"sde": "SDEs (reverse or forward)", "ode": "ODEs (probability flow)"}[k] for k in m.accepts)
    if m.options is None:
        options = "the backend's own (passed through solve(options=...))"
    else:
        options = ", ".join(m.options) if m.options else "none"
    rows = [
        ("method", m.qualified_name),
        ("select with", _names(m)),
        ("description", m.description or "-"),
        ("kind", f"{m.kind.upper()} method; takes {takes}"),
        ("order", fmt(m.order) + (" (strong, diagonal noise)" if m.kind == "sde" and m.order is not None else "")),
    ]
    if m.kind == "sde":
        rows += [("additive order", fmt(m.order_additive)), ("weak order", fmt(m.weak_order)),
                 ("calculus", fmt(m.sde_type)), ("Levy area", m.levy_area)]
    rows += [
        ("stepping", m.stepping + ("" if m.stepping == "fixed" else
                                   f" (default rtol {fmt(float(rtol))}, atol {fmt(float(atol))})")),
        ("schedule", m.schedule if m.stepping != "adaptive" else "-"),
        ("frame", m.frame),
        ("needs", m.needs),
        ("history", str(m.history)),
        ("error estimate", "yes" if m.error_estimate else "no"),
        ("options", options),
        ("notes", m.notes or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
