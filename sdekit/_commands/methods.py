"""``sdekit methods``: the table of registered methods."""

from ._common import UsageError


def add_parser(sub):
    m = sub.add_parser("methods", help="list the registered methods", description="List the registered methods.")
    m.add_argument("--kind", help="sde or ode")
    m.add_argument("--backend", help="torchsde, torchdiffeq, scipy or sdekit")
    m.set_defaults(run=run)


def run(args) -> int:
    from .._methods import methods
    if args.kind not in (None, "sde", "ode"):
        raise UsageError(f"--kind must be sde or ode, got {args.kind!r}")
    table = methods(kind=args.kind, backend=args.backend)
    if not table:
        raise UsageError(f"no methods of backend {args.backend!r}; backends: torchsde, torchdiffeq, scipy, sdekit")
    print(table)
    return 0
