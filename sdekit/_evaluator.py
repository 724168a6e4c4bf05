"""The guarded call of the expensive function of a process (the score network).

One :class:`Evaluator` wraps ``fn(x, t)`` for the life of one solve.  It keeps every call
inside the time domain, checks the first output's type, shape, dtype and device, counts
the evaluations (NFE), and records which samples came back non-finite, without a host
synchronisation: the record is read once, at the end of the solve.
"""

from typing import Callable, NamedTuple, Optional

import torch

from ._errors import ScoreFunctionError


class NonFiniteRecord(NamedTuple):
    """Where non-finite values first appeared: NFE count, solver step, time, and the samples hit."""
    evaluation: int
    step: Optional[int]
    time: float
    samples: list


def _finite_rows(flat: torch.Tensor) -> torch.Tensor:
    """``isfinite(flat).all(1)`` for a 2-D tensor, computed the fast way for its device and row length; no sync.

    On the CPU a row is checked through its largest and smallest entries (``amax``/``amin`` propagate NaN,
    and an inf or -inf is the maximum or the minimum): two reductions and no state-sized temporary, ~0.04 ms
    for a 64 x 3072 float32 batch where ``isfinite(...).all(1)`` costs 0.4-1.4 ms (torch's CPU isfinite and
    bool ``all`` are not vectorised, and the state-sized bool temporary is a fresh allocation each call).
    Rows of one or two entries, and accelerators (where isfinite is cheap and each extra kernel launch is
    not), keep ``isfinite(...).all(1)``.
    """
    if flat.shape[1] <= 2 or flat.device.type != "cpu":
        return torch.isfinite(flat).all(1)
    return torch.isfinite(flat.amax(1)) & torch.isfinite(flat.amin(1))


class Evaluator:
    """Call ``fn(x, t)``, counting and checking each call.

    **Arguments**

    - ``fn``: the function, ``fn(x, t) -> tensor shaped like x`` (a score network); the process
      keeps ``t`` inside its interval.
    - ``name``: how error messages call the function.

    A function that evaluates a network more than once per call (classifier-free guidance: twice)
    says so with an attribute ``fn.nfe_per_call``; NFE counts network evaluations per sample.
    """

    def __init__(self, fn: Callable, name: str = "score_fn"):
        self.fn = fn
        self.name = name
        self.nfe = 0
        self.cost = int(getattr(fn, "nfe_per_call", 1))
        self.step: Optional[int] = None  # set by the method's loop, for error messages
        self._finite = []
        self._times = []
        self._steps = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.fn(x, t)
        if self.nfe == 0:
            self._check_output(out, x)
        self.nfe += self.cost
        self._finite.append(_finite_rows(out.reshape(out.shape[0], -1)))
        self._times.append(t[:1])
        self._steps.append(self.step)
        return out

    def _check_output(self, out, x):
        if not isinstance(out, torch.Tensor):
            raise ScoreFunctionError(f"{self.name} must return a torch.Tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ScoreFunctionError(
                f"{self.name} returned shape {tuple(out.shape)} for input of shape {tuple(x.shape)}; "
                "it must return a tensor shaped like x"
            )
        if out.dtype != x.dtype:
            raise ScoreFunctionError(
                f"{self.name} returned dtype {out.dtype} for input of dtype {x.dtype}; cast its output to x.dtype"
            )
        if out.device != x.device:
            raise ScoreFunctionError(
                f"{self.name} returned a tensor on {out.device} for input on {x.device}; keep it on x.device"
            )

    def first_non_finite(self) -> Optional[NonFiniteRecord]:
        """The first evaluation that returned a non-finite value, or ``None``; one host sync."""
        if not self._finite:
            return None
        finite = torch.stack(self._finite)
        bad_calls = (~finite.all(1)).nonzero()
        if bad_calls.numel() == 0:
            return None
        k = int(bad_calls[0, 0])
        samples = (~finite[k]).nonzero().flatten().tolist()
        return NonFiniteRecord(k + 1, self._steps[k], float(self._times[k][0]), samples)
