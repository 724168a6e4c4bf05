r"""Measured orders of convergence of sdekit's methods: ``python -m sdekit.validation.orders``.

Prints a Markdown table of every method's fitted order against exact solutions: strong orders of
the torchsde methods on the exact-solution SDEs of :mod:`sdekit.validation` (``exact_sdes()``),
ODE orders of the torchdiffeq and scipy methods on the Gaussian probability-flow ODE under VP and
VE, tolerance proportionality of the adaptive ODE methods, and the weak order of Euler–Maruyama
on the reverse VP-SDE.  ``--full`` uses the settings of the slow tests (``pytest -m slow``);
``--parts strong,ode`` runs some of the studies.  The tests in ``tests/orders`` assert the same
plan; ``docs/orders.md`` shows its output.

The functions are importable from here: :func:`strong_order`, :func:`ode_order`,
:func:`tolerance_study`, :func:`weak_order`, :func:`order_table`, :func:`format_table`, :func:`fit_order`.
"""

import argparse
import sys
import time

import torch

from ._orders import (ODE_EXCEPTIONS, ODE_PLAN, STRONG_EXCEPTIONS, STRONG_PLAN, TOLERANCE_PLAN, GaussianFlow, OrderResult,
                      expected_strong_order, fit_order, format_table, gaussian_flows, ode_order, order_table,
                      strong_order, tolerance_study, weak_order)

__all__ = ["OrderResult", "GaussianFlow", "gaussian_flows", "fit_order", "strong_order", "ode_order",
           "tolerance_study", "weak_order", "order_table", "format_table", "expected_strong_order",
           "STRONG_PLAN", "STRONG_EXCEPTIONS", "ODE_PLAN", "ODE_EXCEPTIONS", "TOLERANCE_PLAN", "main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdekit.validation.orders", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the larger settings of the slow tests")
    parser.add_argument("--parts", default="strong,ode,tolerance,weak",
                        help="comma-separated studies to run (default: strong,ode,tolerance,weak)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: these are small tensors, and extra threads "
                             "only contend)")
    parser.add_argument("--verbose", action="store_true", help="print each result as it comes, with its errors")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"strong", "ode", "tolerance", "weak"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from strong, ode, tolerance, weak")
    start = time.perf_counter()
    progress = (lambda r: print(r.describe(), file=sys.stderr, flush=True)) if args.verbose else None
    rows = order_table(full=args.full, parts=parts, progress=progress)
    print(format_table(rows))
    outside = [r for r in rows if not r.within()]
    print(f"\n{len(rows)} fits in {time.perf_counter() - start:.0f} s; "
          f"{len(outside)} outside ±0.3 of the expected order"
          + ("" if not outside else ": " + ", ".join(f"{r.method}/{r.problem}" for r in outside)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
