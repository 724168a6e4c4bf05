"""Shape helpers shared by every module: per-sample coefficients against states of any event shape."""

import torch

from ._errors import ShapeError

_HALF = (torch.float16, torch.bfloat16)


def per_sample(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a coefficient of shape ``(batch,)`` (or a 0-dim tensor) so that it broadcasts against ``x``.

    ``x`` has shape ``(batch, *event_shape)``; the result has shape ``(batch, 1, ..., 1)``.
    A coefficient already shaped like ``x`` is returned unchanged.
    """
    if coef.dim() == 0 or coef.shape == x.shape:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))


def time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which the score sees time for a state of ``dtype``: the state's, but at least float32.

    float16 and bfloat16 have too few digits for time (bfloat16 tells only ~500 times in [0, 1] apart).
    """
    return torch.float32 if dtype in _HALF else dtype


def batch_times(t, x: torch.Tensor, dtype=None) -> torch.Tensor:
    """A time (python number, 0-dim or ``(batch,)`` tensor) as a ``(batch,)`` tensor on x's device.

    Its dtype is ``dtype``, by default x's.
    """
    dtype = x.dtype if dtype is None else dtype
    if isinstance(t, torch.Tensor):
        if t.dim() == 1 and t.shape[0] == x.shape[0]:
            return t.to(device=x.device, dtype=dtype)
        if t.dim() == 0:
            return t.to(device=x.device, dtype=dtype).expand(x.shape[0]).contiguous()
        raise ShapeError(f"time must be a scalar or have shape ({x.shape[0]},), got shape {tuple(t.shape)}")
    return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)
