"""Writing a study to its folder: ``summary.md`` (rows, verdicts, fitted orders), ``rows.csv`` and the plots."""

import csv
import io
import os
from typing import List

from ._plots import save_plots
from ._results import atomic_write

__all__ = ["save_report"]


def save_report(table, out: str, problem=None, plots: bool = True, log=print) -> List[str]:
    """Write the study's summary, its rows as CSV and (with ``plots``) its figures into ``out``; returns the paths.

    Each file is written whole and renamed into place, so two studies finishing on one folder never leave one
    file mixed from both (each file is the last writer's)."""
    os.makedirs(out, exist_ok=True)
    summary = os.path.join(out, "summary.md")
    text = (f"# Study: {table.problem}\n\n{table.report()}\n\nFitted against NFE (negative: error falls as "
            f"work grows):\n\n{table.orders_table(x='nfe')}\n")
    atomic_write(summary, lambda fh: fh.write(text.encode("utf-8")))
    rows = os.path.join(out, "rows.csv")
    keys = list(dict.fromkeys(k for r in table.rows for k in r if k != "measures"))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for r in table.rows:
        writer.writerow({k: r.get(k) for k in keys})
    atomic_write(rows, lambda fh: fh.write(buffer.getvalue().encode("utf-8")))
    paths = [summary, rows]
    if plots:
        paths += save_plots(table, out, problem=problem, log=log)
    return paths
