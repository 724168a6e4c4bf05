"""Time grids for fixed-step methods, built in float64 on the CPU and ending exactly where asked.

A grid is a 1-D float64 tensor of times, strictly monotone in the direction of integration,
whose first entry is ``t_start`` and whose last is ``t_end``.  Every fixed-step method takes one,
so a schedule (uniform in t, in log-SNR, Karras) is only a different grid.
"""

import math
from typing import Optional, Sequence, Union

import torch

from ._errors import InvalidParameterError

__all__ = ["uniform_grid", "step_grid", "as_grid", "merge_times"]


def uniform_grid(t_start: float, t_end: float, steps: int) -> torch.Tensor:
    """``steps`` equal steps from ``t_start`` to ``t_end`` (either direction), endpoints exact."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidParameterError(f"steps must be a positive integer, got {steps!r}")
    grid = torch.linspace(float(t_start), float(t_end), steps + 1, dtype=torch.float64)
    grid[0], grid[-1] = float(t_start), float(t_end)
    return grid


def step_grid(t_start: float, t_end: float, dt: float) -> torch.Tensor:
    """Steps of size ``dt > 0`` from ``t_start`` towards ``t_end``; the last one is shortened to end exactly."""
    dt = float(dt)
    span = abs(float(t_end) - float(t_start))
    if not (dt > 0 and math.isfinite(dt)):
        raise InvalidParameterError(f"dt must be a positive finite step size, got {dt}")
    n = max(1, math.ceil(span / dt * (1 - 1e-12)))
    sign = 1.0 if t_end >= t_start else -1.0
    grid = float(t_start) + sign * dt * torch.arange(n + 1, dtype=torch.float64)
    grid[-1] = float(t_end)
    return grid


def as_grid(grid: Union[torch.Tensor, Sequence[float]], low: float, high: float) -> torch.Tensor:
    """Check a user's grid: 1-D, at least two times, strictly monotone, inside ``[low, high]``."""
    # dtype=float64 here, not only in .to(): a list of floats would otherwise pass through float32
    g = torch.as_tensor(grid, dtype=torch.float64).detach().to(device="cpu").flatten()
    if torch.as_tensor(grid).dim() != 1 or g.numel() < 2:
        raise InvalidParameterError("grid must be a 1-D tensor of at least two times, from t_start to t_end")
    if not torch.isfinite(g).all():
        raise InvalidParameterError("grid contains non-finite times")
    d = g.diff()
    if not ((d > 0).all() or (d < 0).all()):
        raise InvalidParameterError("grid must be strictly monotone (T down to eps for a reverse process)")
    tol = 1e-12 * max(1.0, abs(high))
    if g.min() < low - tol or g.max() > high + tol:
        raise InvalidParameterError(
            f"grid spans [{float(g.min())}, {float(g.max())}] but the process lives on [{low}, {high}]"
        )
    return g


def merge_times(grid: torch.Tensor, times: Optional[torch.Tensor]) -> torch.Tensor:
    """The grid refined to contain ``times`` (save points), keeping its direction."""
    if times is None or times.numel() == 0:
        return grid
    merged = torch.unique(torch.cat([grid, times]))  # sorted ascending
    return merged if grid[-1] > grid[0] else merged.flip(0)
