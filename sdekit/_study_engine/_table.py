"""The tidy table a study returns: one row per (method, budget, seed), fitted orders, summaries."""

import math
from typing import List, Optional

from .._errors import InvalidParameterError
from .._methods import lookup
from ._fit import OrderFit, fit_slope
from ._measures import VERDICT_RULE

__all__ = ["StudyTable"]

#: A fitted order is "ok" when the expected order lies in its 95% interval widened by this much.
ORDER_BAND = 0.3


class StudyTable:
    """The rows of a study (plain dicts, in plan order) with what is needed to read them.

    - ``rows``: one dict per (method, budget, seed): ``label``, ``method``, ``backend``, ``process``,
      ``budget``, ``seed``, ``nfe``, ``steps``, ``rejected``, ``h`` (span / steps), ``wall_time``, ``result``,
      each error measure ``m`` as ``m``, ``m_se``, ``m_lo``, ``m_hi`` (95% Monte Carlo interval) and, where
      it has them, ``m_floor``, ``m_floor_std``, ``m_z``, ``m_ok``; and a ``verdict``.
    - ``measures``: the error measures present; ``samples``: each method's samples at its last budget
      (first seed) from this run; ``reused``, ``stale``: rows read back from the results file, rows there from
      another configuration (ignored).
    """

    def __init__(self, rows: List[dict], problem: str, noise: str = "additive", samples=None, reused: int = 0,
                 stale: int = 0, results: Optional[str] = None, info: Optional[dict] = None):
        self.rows, self.problem, self.noise = rows, problem, noise
        self.samples = dict(samples or {})
        self.reused, self.stale, self.results = reused, stale, results
        self.info = dict(info or {})
        self.measures = list(dict.fromkeys(m for r in rows for m in r.get("measures", [])))

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    @property
    def labels(self) -> List[str]:
        """The methods' labels, in the study's order."""
        return list(dict.fromkeys(r["label"] for r in self.rows))

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas
        except ImportError:
            raise InvalidParameterError("to_pandas() needs pandas: pip install pandas (or use table.rows, "
                                        "a list of dicts)") from None
        return pandas.DataFrame([{k: v for k, v in r.items() if k != "measures"} for r in self.rows])

    def pathwise(self, row: dict) -> Optional[str]:
        """The row's pathwise error measure: ``"strong"`` (SDE rows) or ``"ode"`` (flow rows), if measured."""
        name = "strong" if row["process"] == "sde" else "ode"
        return name if row.get(name) is not None else None

    def expected_order(self, label: str, measure: str) -> Optional[float]:
        """The order the method declares for ``measure`` (``None`` where it declares none, and for rows run at
        tolerances: the error of an adaptive solve against its mean step is no order to check)."""
        row = next(r for r in self.rows if r["label"] == label)
        if row["budget_kind"] == "tol":
            return None
        m = lookup(f"{row['backend']}.{row['method']}", row["process"])
        if measure == "strong":
            return m.order_additive if self.noise == "additive" else m.order
        if measure == "ode":
            return m.order
        if measure.startswith("weak:"):
            return m.weak_order
        return None

    def fit(self, label: str, measure: Optional[str] = None, x: str = "h") -> OrderFit:
        """The fitted slope of log ``measure`` on log ``x`` (``"h"``, the mean step, or ``"nfe"``) over the
        label's successful rows (every budget and seed); ``measure`` defaults to the pathwise error."""
        rows = [r for r in self.rows if r["label"] == label and r["result"] == "SUCCESS"]
        if not rows:
            return fit_slope([], [])
        measure = measure or self.pathwise(rows[0]) or ""
        return fit_slope([r.get(x) for r in rows], [r.get(measure) for r in rows])

    def orders(self, measures: Optional[List[str]] = None, x: str = "h") -> List[dict]:
        """One dict per (method, measure): the fitted order, its 95% interval, the declared order and a verdict
        (``ok`` when the declared order lies within the interval widened by 0.3, ``CHECK`` when not, ``-``
        when nothing is declared or there are too few points).  Against NFE (``x="nfe"``) the slope is
        negative: error falls as work grows."""
        out = []
        for label in self.labels:
            rows = [r for r in self.rows if r["label"] == label]
            names = measures or [n for n in (self.pathwise(rows[0]),) if n]
            for name in names:
                fit = self.fit(label, name, x)
                exp = self.expected_order(label, name) if x == "h" else None
                if exp is None or math.isnan(fit.slope) or math.isnan(fit.lo):
                    v = "-"
                else:
                    v = "ok" if fit.contains(exp, ORDER_BAND) else "CHECK"
                out.append(dict(label=label, measure=name, x=x, slope=fit.slope, lo=fit.lo, hi=fit.hi,
                                points=fit.points, expected=exp, verdict=v))
        return out

    # -- text ---------------------------------------------------------------------------------
    def summary(self) -> str:
        """A Markdown table of every row: NFE, steps, time, each measure with its interval, and the verdict."""
        cols = [m for m in self.measures if not m.startswith("weak:") and m not in ("strong", "ode")]
        head = ["method", "budget", "seed", "NFE", "steps", "rej", "wall s", "pathwise error"] + cols + ["verdict"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            cells = [r["label"], r["budget"], str(r["seed"]), str(r["nfe"]), _int(r.get("steps")),
                     _int(r.get("rejected")), f"{r['wall_time']:.2f}", _measure(r, self.pathwise(r))]
            cells += [_measure(r, m) for m in cols]
            lines.append("| " + " | ".join(cells + [r["verdict"]]) + " |")
        return "\n".join(lines)

    def orders_table(self, x: str = "h") -> str:
        """A Markdown table of the fitted orders (:meth:`orders`)."""
        head = ["method", "measure", f"order (log err / log {x})", "95% interval", "declared", "points", "verdict"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for o in self.orders(x=x):
            ci = "-" if math.isnan(o["lo"]) else f"[{o['lo']:.2f}, {o['hi']:.2f}]"
            slope = "-" if math.isnan(o["slope"]) else f"{o['slope']:.2f}"
            exp = "-" if o["expected"] is None else f"{o['expected']:g}"
            lines.append(f"| {o['label']} | {o['measure']} | {slope} | {ci} | {exp} | {o['points']} | {o['verdict']} |")
        return "\n".join(lines)

    def report(self) -> str:
        """The summary, the fitted orders and how to read the verdicts."""
        ok = sum(r["verdict"] == "ok" for r in self.rows)
        check = [f"{r['label']} {r['budget']}" for r in self.rows if r["verdict"] in ("CHECK", "failed")]
        parts = [f"{self.problem}: {len(self.rows)} rows ({self.reused} reused from the results file"
                 + (f", {self.stale} from another configuration ignored" if self.stale else "") + ")",
                 "", self.summary(), "", "Fitted orders (least squares of log error on log step, 95% interval):",
                 "", self.orders_table(), "", f"verdict: {VERDICT_RULE}",
                 f"{ok} of {len(self.rows)} rows ok" + ("" if not check else "; CHECK or failed: " + ", ".join(check))]
        return "\n".join(parts)

    def __str__(self):
        return self.report()

    def __repr__(self):
        return f"StudyTable({self.problem!r}, {len(self.rows)} rows, measures {self.measures})"


def _int(v):
    return "-" if v is None else str(v)


def _measure(r: dict, m: Optional[str]) -> str:
    v = None if m is None else r.get(m)
    if v is None:
        return "-"
    se = r.get(f"{m}_se")
    floor = r.get(f"{m}_floor")
    text = f"{v:.3g}"
    if se is not None:
        text += f" ± {1.96 * se:.2g}"
    if floor is not None:
        text += f" (floor {floor:.3g})"
    if r.get(f"{m}_z") is not None:
        text += f" (|z| {r[f'{m}_z']:.1f})"
    return text
