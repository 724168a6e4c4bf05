"""The study's figures (matplotlib, without pyplot): convergence, work–precision, and samples against the exact density.

Each figure is written as PNG and SVG.  :func:`save_plots` returns the paths written, or an empty list
with a message when matplotlib is not installed.
"""

import math
import os
from typing import List

from ._results import atomic_write

__all__ = ["save_plots"]


def _save(fig, out, name) -> List[str]:
    from matplotlib.ticker import NullFormatter
    for ax in fig.axes:                      # minor-tick labels of a short log x-axis overlap: drop them
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out, f"{name}.{ext}")
        atomic_write(path, lambda fh: fig.savefig(fh, format=ext, dpi=120, bbox_inches="tight"))
        paths.append(path)
    return paths


def _series(table, label, x, y):
    pts = [(r.get(x), r.get(y), r.get(f"{y}_se")) for r in table.rows
           if r["label"] == label and r["result"] == "SUCCESS"]
    return [p for p in pts if p[0] is not None and p[1] is not None and p[0] > 0 and p[1] > 0]


def _errorbars(ax, pts, label, marker="o"):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    err = [min(1.96 * (p[2] or 0.0), 0.999 * p[1]) for p in pts]
    return ax.errorbar(xs, ys, yerr=[err, [1.96 * (p[2] or 0.0) for p in pts]], marker=marker, ms=4, capsize=2,
                       label=label, lw=1)


def save_plots(table, out: str, problem=None, log=print) -> List[str]:
    """Write ``convergence``, ``work_precision_nfe``, ``work_precision_time`` and, for a 2-D problem with a
    density, ``samples`` into the folder ``out``; returns the files written."""
    try:                                     # no pyplot: the caller's backend and open figures are left alone
        from matplotlib.figure import Figure
    except ImportError:
        log("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    os.makedirs(out, exist_ok=True)
    paths = []
    labels = table.labels
    pathwise = {label: table.pathwise(next(r for r in table.rows if r["label"] == label)) for label in labels}

    # convergence: pathwise error against the step, the fitted slope in the legend
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for label in labels:
        measure = pathwise[label]
        if measure is None:
            continue
        pts = _series(table, label, "h", measure)
        if pts:
            fit = table.fit(label, measure)
            slope = "" if math.isnan(fit.slope) else f", order {fit}"
            _errorbars(ax, pts, f"{label} ({measure}{slope})")
    ax.set(xscale="log", yscale="log", xlabel="step h (span / steps)", ylabel="pathwise error (95% MC interval)",
           title=f"Convergence: {table.problem}")
    ax.legend(fontsize=7)
    paths += _save(fig, out, "convergence")

    # work-precision: each error measure against NFE and against wall time
    measures = [m for m in ("pathwise", "sw2", "modes", "moments") if m == "pathwise" or m in table.measures]
    for x, xlabel, name in (("nfe", "score evaluations (NFE)", "work_precision_nfe"),
                            ("wall_time", "wall time (s)", "work_precision_time")):
        fig = Figure(figsize=(5.5 * len(measures), 4.5))
        axes = fig.subplots(1, len(measures), squeeze=False)
        for ax, m in zip(axes[0], measures):
            for label in labels:
                y = pathwise[label] if m == "pathwise" else m
                if y is None:
                    continue
                pts = _series(table, label, x, y)
                if pts:
                    _errorbars(ax, pts, label)
            floor = [r.get(f"{m}_floor") for r in table.rows if r.get(f"{m}_floor") is not None]
            if floor:
                ax.axhline(sum(floor) / len(floor), color="k", ls="--", lw=1, label="Monte Carlo floor")
            ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=m if m != "pathwise" else "pathwise error",
                   title=m)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Work–precision: {table.problem}")
        paths += _save(fig, out, name)

    # samples against the exact density (2-D problems)
    density = getattr(problem, "density", None) if problem is not None else None
    shown = [(k, v) for k, v in table.samples.items() if v.dim() == 2 and v.shape[1] == 2]
    if density is not None and shown:
        import torch
        allx = torch.cat([v for _, v in shown]).to(torch.float64)
        lo, hi = torch.quantile(allx, 0.005, dim=0), torch.quantile(allx, 0.995, dim=0)
        pad = 0.15 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        gx, gy = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), 150, dtype=torch.float64),
                                torch.linspace(float(lo[1]), float(hi[1]), 150, dtype=torch.float64), indexing="xy")
        logp = density(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)).reshape(gx.shape)
        cols = min(3, len(shown))
        rows = math.ceil(len(shown) / cols)
        fig = Figure(figsize=(4.2 * cols, 4 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, (label, x) in zip(axes.flat, shown):
            shade = logp.clamp(min=float(logp.max()) - 10.0)          # log-density, 10 nats deep
            ax.contourf(gx.numpy(), gy.numpy(), shade.numpy(), levels=10, cmap="Blues")
            x = x[:2000].to(torch.float64)
            ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1.5, c="tab:red", alpha=0.5, rasterized=True)
            budget = next(r["budget"] for r in reversed(table.rows) if r["label"] == label)
            ax.set(title=f"{label}\n{budget}", xlim=(float(lo[0]), float(hi[0])), ylim=(float(lo[1]), float(hi[1])))
            ax.title.set_fontsize(8)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        fig.suptitle(f"Samples (red) against the exact log-density: {table.problem}")
        paths += _save(fig, out, "samples")
    return paths
