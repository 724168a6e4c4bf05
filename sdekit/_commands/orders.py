"""``sdekit orders``: every method's order measured against exact solutions (docs/orders.md)."""

from . import COMMANDS
from ._common import UsageError


def add_parser(sub):
    o = sub.add_parser("orders", help=COMMANDS["orders"],
                       description="Measure every method's order against exact solutions (docs/orders.md).")
    o.add_argument("--full", action="store_true", help="the slow tests' settings")
    o.add_argument("--parts", default="strong,ode,tolerance,weak")
    o.add_argument("--threads", type=int, default=1)
    o.add_argument("--verbose", action="store_true")
    o.set_defaults(run=run)


def run(args) -> int:
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
