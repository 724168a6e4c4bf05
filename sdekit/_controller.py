r"""Step-size control shared by every adaptive loop that sdekit runs itself, and the check of a method's options.

The error of a step is the RMS over all entries of :math:`(y_1 - y_2)/(\text{atol} + \text{rtol}\max(|y_1|, |y_2|))`,
where :math:`y_1, y_2` are two estimates of the same step (one full step against two half steps).
A sample whose estimates are not finite is left out of the RMS (it failed; the evaluator records it and the solve
reports it), so that it does not stop the batch.  A step is accepted when the error is at most 1; the next step is
:math:`h\,\min(\text{fac}_{max}, \max(\text{fac}_{min}, 0.9\,\text{err}^{-1/(p+1)}))` for a method of order :math:`p`.
"""

import torch

from ._errors import MethodArgumentError
from ._evaluator import finite_rows

SAFETY, FAC_MIN, FAC_MAX = 0.9, 0.2, 5.0


def error_ratio(y1: torch.Tensor, y2: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """The scaled RMS difference of two estimates of shape ``(batch, ...)`` (a 0-dim tensor; no host sync).

    A sample whose estimates are not finite (it went non-finite: the evaluator records it and the solve
    reports it as failed) is left out, so that it does not stop the others; with every sample non-finite the
    ratio is NaN.  With every sample finite it is the RMS over all entries, as before.
    """
    scale = atol + rtol * torch.maximum(y1.abs(), y2.abs())
    r2 = ((y1 - y2) / scale).pow(2)
    whole = r2.mean()
    if r2.dim() == 0:
        return whole.sqrt()
    ok = finite_rows(y1) & finite_rows(y2)
    rows = r2.reshape(r2.shape[0], -1).mean(1)
    part = torch.where(ok, rows, 0.0).sum() / ok.sum()   # 0 / 0 = NaN when no sample is finite
    return torch.where(ok.all(), whole, part).sqrt()


def next_step(h: float, err: float, order: float, accepted: bool) -> float:
    """The next step size after a step of size ``h`` with error ratio ``err``."""
    if err == 0.0:
        factor = FAC_MAX
    else:
        factor = SAFETY * err ** (-1.0 / (order + 1.0))
    factor = min(FAC_MAX if accepted else 1.0, max(FAC_MIN, factor))
    return h * factor


def check_options(method, options: dict) -> None:
    """Refuse option keys that ``method`` does not take (its ``options`` field), listing the ones it does."""
    unknown = sorted(str(k) for k in options if k not in method.options)
    if unknown:
        takes = ", ".join(method.options) if method.options else "none"
        raise MethodArgumentError(f"{method.name} ({method.backend}) does not take the option(s) {', '.join(unknown)}; "
                                  f"it takes: {takes}")
