"""What a solve returns: :class:`Solution`, always the same type, with a :class:`Result` code."""

import enum
from dataclasses import dataclass, field
from typing import List, Optional

import torch

__all__ = ["Result", "Solution", "PerSample", "Outcome"]


class Result(enum.Enum):
    """How a solve ended; each member carries a message that says what to do."""

    SUCCESS = "reached t_end"
    MAX_STEPS = ("the step limit was reached before t_end: raise max_steps=, or loosen rtol/atol if the method "
                 "adapts its step")
    NON_FINITE = ("non-finite values appeared; check score_fn at that time, use smaller steps, "
                  "or keep t_end away from 0 (eps)")
    DT_TOO_SMALL = ("the step size fell below its minimum; the problem is stiff or the score is rough there: "
                    "loosen rtol/atol, raise eps, or use a fixed-step method")

    @property
    def message(self) -> str:
        return self.value


STATUS = (Result.SUCCESS, Result.MAX_STEPS, Result.NON_FINITE, Result.DT_TOO_SMALL)
"""The per-sample status codes: ``PerSample.status[i]`` is an index into this tuple."""


@dataclass
class PerSample:
    """What each sample of a solve went through; every field a tensor of shape ``(batch,)`` on x's device.

    **Fields**

    - ``nfe``: model evaluations the sample went through (int64); with a shared step every sample has the
      solve's NFE.
    - ``steps``, ``rejected``: its accepted and rejected steps (int64), ``None`` where the backend does not say.
    - ``status``: an index into :data:`STATUS` (int8): 0 reached ``t_end``, 1 hit ``max_steps``, 2 went
      non-finite, 3 its step fell below ``dt_min``; :meth:`results` reads it as :class:`Result` members.
    - ``t``: the time the sample reached (float64): ``t_end`` unless it stopped early.

    Totals over the batch are :meth:`total` (``total("nfe")``, ``total("rejected")``).
    """

    nfe: torch.Tensor
    status: torch.Tensor
    t: torch.Tensor
    steps: Optional[torch.Tensor] = None
    rejected: Optional[torch.Tensor] = None

    def results(self):
        """The status of each sample as a list of :class:`Result`."""
        return [STATUS[int(c)] for c in self.status.tolist()]

    def total(self, name: str) -> int:
        """The sum over the batch of ``nfe``, ``steps`` or ``rejected`` (``None`` where not known)."""
        v = getattr(self, name)
        return None if v is None else int(v.sum())

    def __repr__(self):
        def span(v):
            return "-" if v is None else f"{int(v.min())}..{int(v.max())} (mean {float(v.double().mean()):.4g})"
        counts = ", ".join(f"{STATUS[c].name}={n}" for c, n in
                           enumerate(torch.bincount(self.status.long().cpu(), minlength=len(STATUS)).tolist()) if n)
        return f"PerSample(nfe={span(self.nfe)}, steps={span(self.steps)}, rejected={span(self.rejected)}, {counts})"


@dataclass
class Solution:
    """The outcome of :func:`sdekit.solve`.

    **Fields**

    - ``x``: the state at ``t`` (the final state), in the input's shape, dtype and device.
    - ``t``: the time of ``x``: ``t_end`` on success, and where the solve stopped otherwise.
    - ``failed``: a boolean tensor of shape ``(batch,)`` on x's device: the samples that went non-finite
      (their rows of ``x`` are not to be used); the other rows are valid states at ``t``.
    - ``ts``, ``path``: the ``save_at`` times (float64) and the states there, ``path[k]`` at ``ts[k]``,
      shape ``(len(ts), *x.shape)``; ``None`` when nothing was asked for.
    - ``nfe``: evaluations of the score network (per sample), start-up calls of the backend included.
    - ``steps``, ``rejected``: accepted and rejected steps, ``None`` where the backend does not say.
    - ``method``, ``backend``: what integrated it; ``wall_time``: seconds.
    - ``result``: a :class:`Result`; ``detail``: a sentence on what went wrong, if anything.
    - ``per_sample``: a :class:`PerSample`, each sample's NFE, steps, rejected steps, status and time.  With
      per-sample step sizes (sdekit's adaptive methods) ``nfe`` is the number of model calls (each on the samples
      still running), ``steps`` and ``rejected`` are the largest counts of any sample, and ``stats`` adds
      ``nfe_mean`` (mean per-sample NFE), ``row_evaluations`` (samples the model saw, summed over calls,
      finished samples waiting to drop out included) and ``syncs`` (host reads of the loop).
    - ``stats``: backend-specific figures (a dict).
    """

    x: torch.Tensor
    t: float
    nfe: int
    method: str
    backend: str
    wall_time: float
    steps: Optional[int] = None
    rejected: Optional[int] = None
    ts: Optional[torch.Tensor] = None
    path: Optional[torch.Tensor] = None
    result: Result = Result.SUCCESS
    detail: str = ""
    failed: Optional[torch.Tensor] = None
    stats: dict = field(default_factory=dict)
    per_sample: Optional[PerSample] = None

    @property
    def success(self) -> bool:
        """Whether the solve reached ``t_end`` with finite values."""
        return self.result is Result.SUCCESS

    def __repr__(self):
        steps = "" if self.steps is None else f", steps={self.steps}"
        rej = "" if self.rejected is None else f", rejected={self.rejected}"
        n_failed = 0 if self.failed is None else int(self.failed.sum())
        failed = f", failed={n_failed} of {len(self.failed)}" if n_failed else ""
        return (f"Solution(method={self.method!r}, backend={self.backend!r}, result={self.result.name}, "
                f"t={self.t:.6g}, x=<{tuple(self.x.shape)} {self.x.dtype}>{failed}, nfe={self.nfe}{steps}{rej}, "
                f"wall_time={self.wall_time:.4g}s)")


@dataclass
class Outcome:
    """What a method reached: the state ``x`` at time ``t``, the saved states, step counts, a result code."""

    x: torch.Tensor
    t: float
    path: List[torch.Tensor] = field(default_factory=list)
    steps: Optional[int] = None
    rejected: Optional[int] = None
    result: Result = Result.SUCCESS
    detail: str = ""
    per_sample: Optional[dict] = None   # tensors (batch,): nfe, steps, rejected, status, t (per-sample stepping)
    stats: dict = field(default_factory=dict)
