"""The guarded call of the expensive function of a process (the score network).

One :class:`Evaluator` wraps ``fn(x, t)``.  It hands the function times of shape ``(batch,)`` (the
score: in at least float32), checks every output's type, shape, dtype and device (tensor metadata, read on
the host without a synchronisation), counts the evaluations (NFE), and keeps, per sample, the
first evaluation at which something went non-finite: the function's output, the state handed to
it, or the time a method asked for.  The record is a few tensors of shape ``(batch,)`` updated on
the device and read once, at the end of a solve, and a host list with one entry per solver step (the call
at which the step began); it does not grow with the number of calls.  A loop reads the record of its running
samples on the device (:meth:`Evaluator.failed_rows`) to stop a sample that went non-finite, and a caller that
computes more from the output (a likelihood's divergence) adds its own non-finite rows
(:meth:`Evaluator.mark_non_finite`).
"""

import bisect
import math
import numbers
from typing import Callable, NamedTuple, Optional

import torch

from ._broadcast import batch_times, time_dtype
from ._errors import ArgumentTypeError, InvalidParameterError, ScoreFunctionError

_SCORE, _STATE, _TIME = 1, 2, 3
CAUSES = {_SCORE: "output", _STATE: "state", _TIME: "time"}


class NonFiniteRecord(NamedTuple):
    """Where non-finite values first appeared, and which samples ever went non-finite.

    - ``evaluation``: the number of the call (1-based); ``step``: the solver's step then, or ``None``.
    - ``time``: the time of that call; ``samples``: the samples hit at that call.
    - ``cause``: ``"output"`` (the function returned non-finite values for a finite state),
      ``"state"`` (the state handed to it was already non-finite: the method or the SDE's f or g made it so)
      or ``"time"`` (the method asked for the drift at t = NaN).
    - ``failed``: a boolean tensor of shape ``(batch,)``, every sample with a record.
    """
    evaluation: int
    step: Optional[int]
    time: float
    samples: list
    cause: str = "output"
    failed: Optional[torch.Tensor] = None


_ONES = {}   # (size, dtype, device) -> a vector of ones: short rows are summed by a matrix-vector product


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """A boolean ``(batch,)`` tensor: which samples of ``x`` (shape ``(batch, *event_shape)``) are all finite; no sync.

    A row is checked through its sum (NaN and inf propagate, and inf - inf is NaN): one vectorised
    reduction and no state-sized temporary, cheaper on the CPU than ``amax``/``amin`` and far cheaper than
    ``isfinite(x).all(1)`` (torch's CPU isfinite and bool ``all`` are not vectorised).  Rows of at most 64
    float32/float64 entries are summed as a product with a vector of ones (torch's CPU reduction over a short
    last dimension is 4x slower).  Half-precision rows are summed in float32.  A row whose sum overflows
    (entries near the dtype's largest value) counts as non-finite.
    """
    flat = x.reshape(x.shape[0], -1)
    size = flat.shape[1]
    if size <= 64 and flat.dtype in (torch.float32, torch.float64):
        key = (size, flat.dtype, flat.device)
        ones = _ONES.get(key)
        if ones is None:
            ones = _ONES[key] = torch.ones(size, dtype=flat.dtype, device=flat.device)
        return torch.isfinite(torch.mv(flat, ones))
    return torch.isfinite(flat.sum(1, dtype=time_dtype(flat.dtype)))


def _cost(fn, name) -> int:
    cost = getattr(fn, "nfe_per_call", 1)
    if isinstance(cost, bool) or not isinstance(cost, numbers.Integral):
        raise ArgumentTypeError(f"{name}.nfe_per_call must be a positive integer (network evaluations per call), "
                                f"got {type(cost).__name__} {cost!r}")
    if cost < 1:
        raise InvalidParameterError(f"{name}.nfe_per_call must be a positive integer (network evaluations per call), "
                                    f"got {cost}")
    return int(cost)


class Evaluator:
    """Call ``fn(x, t)``, counting and checking each call.

    **Arguments**

    - ``fn``: the function, ``fn(x, t) -> tensor shaped like x`` (a score network); ``t`` has shape
      ``(batch,)``, x's dtype and x's device.
    - ``name``: how error messages call the function.  The score (``"score_fn"``) sees times in at least
      float32, also for a float16/bfloat16 state; any other function (a forward SDE's drift ``"f"``, like
      the SDE's coefficients) sees them in x's dtype.

    A function that evaluates a network more than once per call (classifier-free guidance: twice)
    says so with an attribute ``fn.nfe_per_call``, a positive integer; NFE counts network evaluations
    per sample.  An exception raised by ``fn`` itself is kept as :attr:`user_error` and passes through
    unchanged.
    """

    def __init__(self, fn: Callable, name: str = "score_fn"):
        self.fn = fn
        self.name = name
        self._score_times = name == "score_fn"
        self.nfe = 0
        self.calls = 0
        self.cost = _cost(fn, name)
        self.step: Optional[int] = None  # set by the method's loop, for error messages
        # Set by a loop that hands the function a subset of the batch (finished samples dropped): the rows'
        # indices in the full batch (int64, on the device) and its size, so the record names the right samples.
        self.rows: Optional[torch.Tensor] = None
        self.batch: Optional[int] = None
        self.user_error: Optional[BaseException] = None
        self._first = self._time = None  # per-sample record: see _note
        self._steps = [(1, None)]         # (first call, the solver's step from that call on), host-side
        self._handed = None                            # (time handed out, exact time, raw time) from times()

    def times(self, t, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        """``t`` as a ``(batch,)`` tensor for ``x``, clamped into ``[low, high]``, in x's dtype.

        A NaN time is a failure of the method (its step went non-finite): the time is replaced by ``high``,
        so the function is never evaluated at NaN, and a call with the returned tensor records the sample
        with the cause "time".  For a float16/bfloat16 state such a call hands the score this time in
        float32, before its rounding to the state's dtype.
        """
        raw = batch_times(t, x, dtype=self._time_dtype(x))
        exact = raw.clamp(low, high).nan_to_num(nan=high)
        t = exact if exact.dtype == x.dtype else exact.to(x.dtype)
        self._handed = (t, exact, raw)   # read by a call with this very tensor
        return t

    def _time_dtype(self, x):
        return time_dtype(x.dtype) if self._score_times else x.dtype

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        handed, self._handed = self._handed, None
        if handed is not None and handed[0] is t:
            t, raw = handed[1], handed[2]
        else:
            t = raw = batch_times(t, x, dtype=self._time_dtype(x))
        self.calls += 1
        if self.step != self._steps[-1][1]:
            self._steps.append((self.calls, self.step))
        try:
            out = self.fn(x, t)
        except Exception as err:
            self.user_error = err
            raise
        if not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype
                and out.device == x.device):
            raise ScoreFunctionError(self._wrong_output(out, x))
        self.nfe += self.cost
        self._note(x, raw, out)
        return out

    def _note(self, x, t, out):
        """Record the samples that first went non-finite at this call (:meth:`_record`); ``t != t``: a NaN time."""
        x_ok = finite_rows(x)
        self._record(x_ok & finite_rows(out) & (t == t), t, x_ok)

    def _record(self, ok, t, x_ok=None):
        """Record, on the device (no host sync), the samples not ``ok`` at the latest call that have no record yet,
        with the time ``t`` it asked for and the cause: the state where ``x_ok`` is false, else the output.

        ``_first`` holds, per sample, ``call << 2 | cause`` of its first bad call (0: none), ``_time`` the time of
        that call (NaN when the method asked for a NaN time); ``_steps`` the solver's step at each call from which
        it changed.
        """
        key = self.calls << 2
        if self.rows is not None:                 # a subset of the batch: scatter into the full batch's rows
            ok, t = self._scatter(ok, True), self._scatter(t, 0)
            x_ok = None if x_ok is None else self._scatter(x_ok, True)
        if self._first is None or self._first.shape != ok.shape or self._first.device != ok.device:
            self._first = torch.zeros(ok.shape, dtype=torch.int64, device=ok.device)
            self._time = torch.zeros(ok.shape, dtype=t.dtype, device=ok.device)
        keep = ok | (self._first != 0)
        code = key | _SCORE if x_ok is None else torch.where(x_ok, key | _SCORE, key | _STATE)
        self._first = torch.where(keep, self._first, code)
        self._time = torch.where(keep, self._time, t.to(self._time.dtype))

    def _scatter(self, v, fill):
        """``v``, the values of the running rows ``self.rows``, in a tensor over the full batch filled with ``fill``."""
        return torch.full((self.batch,), fill, dtype=v.dtype, device=v.device).index_copy(0, self.rows, v)

    def failed_rows(self, rows: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Which samples have a record so far, a boolean tensor on the device (no host sync), or ``None`` before any.

        ``rows``: indices into the full batch (a loop that hands the function a subset): the answer for those
        rows, in their order; ``None``: for the whole batch the record has.
        """
        if self._first is None:
            return None
        failed = self._first != 0
        return failed if rows is None else failed.index_select(0, rows.to(failed.device))

    def mark_non_finite(self, bad: torch.Tensor, t) -> None:
        """Record the samples ``bad`` (a boolean tensor over the batch of the latest call) as having gone
        non-finite at that call, for a failure the function's output did not show: a value computed from it
        (the divergence of a likelihood's flow, say).  Samples already recorded keep their first record; no sync.
        """
        if self.calls:
            self._record(~bad, batch_times(t, bad, dtype=torch.float64))

    def _wrong_output(self, out, x) -> str:
        where = f"at evaluation {self.calls}" + ("" if self.step is None else f" (step {self.step})")
        if not isinstance(out, torch.Tensor):
            return f"{self.name} returned {type(out).__name__} {where}; it must return a torch.Tensor shaped like x"
        if out.shape != x.shape:
            return (f"{self.name} returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)} {where}; "
                    "it must return a tensor shaped like x")
        if out.dtype != x.dtype:
            return f"{self.name} returned {out.dtype} for x of {x.dtype} {where}; cast its output to x.dtype"
        return f"{self.name} returned a tensor on {out.device} for x on {x.device} {where}; keep it on x.device"

    def first_non_finite(self) -> Optional[NonFiniteRecord]:
        """The first evaluation at which a sample went non-finite, or ``None``; one host sync."""
        if self._first is None:
            return None
        first = self._first.cpu()
        failed = first > 0
        if not bool(failed.any()):
            return None
        call = first >> 2
        k = int(call[failed].min())
        at = failed & (call == k)
        samples = at.nonzero().flatten().tolist()
        step = self._steps[bisect.bisect_right([c for c, _ in self._steps], k) - 1][1]
        time = float(self._time[samples[0]])
        cause = _TIME if math.isnan(time) else int((first[at] & 3).max())
        return NonFiniteRecord(k, step, time, samples, CAUSES[cause],
                               failed.to(self._first.device))

