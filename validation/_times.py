"""Time arguments of the validation objects: a number, a 0-dim tensor or one time per sample."""

import torch

from sdekit import ShapeError

__all__ = ["batch_times"]


def batch_times(t, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``t`` as a tensor of shape ``(batch,)`` with the given dtype and device.

    ``t`` is a python number, a 0-dim tensor or a tensor of shape ``(batch,)`` (one time per sample).
    """
    if isinstance(t, torch.Tensor):
        if t.dim() == 0:
            return t.to(device=device, dtype=dtype).expand(batch).contiguous()
        if t.dim() == 1 and t.shape[0] == batch:
            return t.to(device=device, dtype=dtype)
        raise ShapeError(f"time must be a scalar or have shape ({batch},), got shape {tuple(t.shape)}")
    return torch.full((batch,), float(t), dtype=dtype, device=device)


def is_scalar_time(t) -> bool:
    """Whether ``t`` is a single time (python number or 0-dim tensor) rather than one per sample."""
    return not isinstance(t, torch.Tensor) or t.dim() == 0
