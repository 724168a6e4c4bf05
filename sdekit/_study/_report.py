"""Writing a study to its folder: ``summary.md`` (rows, verdicts, fitted orders), ``rows.csv`` and the plots."""

import csv
import os
from typing import List

from ._plots import save_plots

__all__ = ["save_report"]


def save_report(table, out: str, problem=None, plots: bool = True, log=print) -> List[str]:
    """Write the study's summary, its rows as CSV and (with ``plots``) its figures into ``out``; returns the paths."""
    os.makedirs(out, exist_ok=True)
    summary = os.path.join(out, "summary.md")
    with open(summary, "w", encoding="utf-8") as fh:
        fh.write(f"# Study: {table.problem}\n\n{table.report()}\n\nFitted against NFE (negative: error falls as "
                 f"work grows):\n\n{table.orders_table(x='nfe')}\n")
    rows = os.path.join(out, "rows.csv")
    keys = list(dict.fromkeys(k for r in table.rows for k in r if k != "measures"))
    with open(rows, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for r in table.rows:
            writer.writerow({k: r.get(k) for k in keys})
    paths = [summary, rows]
    if plots:
        paths += save_plots(table, out, problem=problem, log=log)
    return paths
