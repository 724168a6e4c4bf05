"""Time grids for fixed-step methods, built in float64 on the CPU and ending exactly where asked.

A grid is a 1-D float64 tensor of times, strictly monotone in the direction of integration,
whose first entry is ``t_start`` and whose last is ``t_end``.  Every fixed-step method takes one,
so a schedule (uniform in t, in log-SNR, Karras) is only a different grid.
"""

import math
import numbers
from typing import Optional, Sequence, Union

import torch

from ._errors import InvalidParameterError
from ._sde import LinearSDE

__all__ = ["uniform_grid", "step_grid", "log_snr_grid", "karras_grid", "quadratic_grid", "schedule_grid",
           "SCHEDULES", "as_grid", "merge_times", "save_indices", "strictly_monotone"]


def uniform_grid(t_start: float, t_end: float, steps: int) -> torch.Tensor:
    """``steps`` equal steps from ``t_start`` to ``t_end`` (either direction), endpoints exact."""
    steps = _check_steps(steps)
    grid = torch.linspace(float(t_start), float(t_end), steps + 1, dtype=torch.float64)
    grid[0], grid[-1] = float(t_start), float(t_end)
    return _check_strict(grid, steps)


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
    if n > 1 and not sign * (float(t_end) - float(grid[-2])) > 0:   # rounding put the last full step at t_end
        grid = torch.cat([grid[:-2], grid[-1:]])
    return _check_strict(grid, grid.numel() - 1)


def log_snr_grid(sde, steps: int, t_start: Optional[float] = None, t_end: Optional[float] = None) -> torch.Tensor:
    r"""``steps`` equal steps in log-SNR :math:`\lambda(t) = \log\alpha(t) - \log\sigma(t)`, as times.

    :math:`\lambda_i = \lambda(t_{start}) + \tfrac{i}{N}(\lambda(t_{end}) - \lambda(t_{start}))`,
    :math:`t_i = \lambda^{-1}(\lambda_i)` by ``sde.t_of_log_snr``; DPM-Solver's time schedule
    (Lu et al. 2022, "DPM-Solver", sec. 3.3).

    **Arguments**

    - ``sde``: any :class:`sdekit.LinearSDE` (closed-form ``log_alpha`` and ``sigma``, or the moments of its
      ``drift_coef`` and ``diffusion_coef`` solved numerically: ``sde.log_alpha_sigma``).
    - ``steps``: the number of steps, a positive integer.
    - ``t_start``, ``t_end``: default ``sde.T`` and ``sde.eps``; either direction, both in ``[0, T]``
      where :math:`\sigma > 0` (so not ``t = 0``).

    Returns a float64 CPU tensor of ``steps + 1`` times, strictly monotone, endpoints exact.
    """
    steps = _check_steps(steps)
    t_start, t_end, lam_start, lam_end = _schedule_span(sde, t_start, t_end, "log_snr_grid")
    frac = torch.arange(steps + 1, dtype=torch.float64) / steps
    return _times_of(sde, lam_start + frac * (lam_end - lam_start), t_start, t_end, steps)


def karras_grid(sde, steps: int, rho: float = 7.0, t_start: Optional[float] = None,
                t_end: Optional[float] = None) -> torch.Tensor:
    r"""Karras et al. (2022), "Elucidating the design space of diffusion-based generative models", eq. 5, as times.

    In the VE-frame noise level :math:`s(t) = \sigma(t)/\alpha(t) = e^{-\lambda(t)}`, with
    :math:`s_{max} = s(t_{start})`, :math:`s_{min} = s(t_{end})`,

    .. math::

        s_i = \Big(s_{max}^{1/\rho} + \tfrac{i}{N}\big(s_{min}^{1/\rho} - s_{max}^{1/\rho}\big)\Big)^{\rho},
        \qquad t_i = \lambda^{-1}(-\log s_i).

    Unlike the paper, no final step to :math:`\sigma = 0` is appended: the grid ends at ``t_end``.

    **Arguments**

    - ``sde``: any :class:`sdekit.LinearSDE` (closed-form ``log_alpha`` and ``sigma``, or the moments of its
      ``drift_coef`` and ``diffusion_coef`` solved numerically: ``sde.log_alpha_sigma``).
    - ``steps``: the number of steps, a positive integer.
    - ``rho``: :math:`\rho > 0` (default 7); larger concentrates steps at low noise.
    - ``t_start``, ``t_end``: default ``sde.T`` and ``sde.eps``; either direction, both in ``[0, T]``
      where :math:`\sigma > 0` (so not ``t = 0``).

    Returns a float64 CPU tensor of ``steps + 1`` times, strictly monotone, endpoints exact.
    """
    steps = _check_steps(steps)
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not (0 < float(rho) < math.inf):
        raise InvalidParameterError(f"rho must be a positive finite number, got {rho!r}")
    rho = float(rho)
    t_start, t_end, lam_start, lam_end = _schedule_span(sde, t_start, t_end, "karras_grid")
    # u = s^(1/rho) = exp(-lambda / rho): interpolate u, then lambda_i = -rho log(u_i); s itself is never formed
    u_start, u_end = math.exp(-lam_start / rho), math.exp(-lam_end / rho)
    frac = torch.arange(steps + 1, dtype=torch.float64) / steps
    lam = -rho * torch.log((1 - frac) * u_start + frac * u_end)   # convex form: no cancellation, any rho
    return _times_of(sde, lam, t_start, t_end, steps)


def quadratic_grid(t_start: float, t_end: float, steps: int) -> torch.Tensor:
    r"""``steps`` steps quadratic in the step index, dense near ``t_end``: DDIM's "quad" spacing (Song et al. 2021a).

    :math:`t_i = t_{end} + (t_{start} - t_{end})(1 - i/N)^2`; either direction, endpoints exact.
    """
    steps = _check_steps(steps)
    frac = 1 - torch.arange(steps + 1, dtype=torch.float64) / steps
    grid = float(t_end) + (float(t_start) - float(t_end)) * frac * frac
    grid[0], grid[-1] = float(t_start), float(t_end)
    return _check_strict(grid, steps)


SCHEDULES = ("uniform", "logsnr", "karras", "quadratic")


def schedule_grid(sde, schedule: str, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """The grid of ``steps`` steps from ``t_start`` to ``t_end`` spaced by the named ``schedule``.

    ``"uniform"`` (equal steps in t, any SDE), ``"logsnr"`` (:func:`log_snr_grid`), ``"karras"``
    (:func:`karras_grid`, rho = 7) or ``"quadratic"`` (:func:`quadratic_grid`); the last but one and
    ``"logsnr"`` need a :class:`sdekit.LinearSDE`.
    """
    if schedule == "uniform":
        return uniform_grid(t_start, t_end, steps)
    if schedule == "logsnr":
        return log_snr_grid(sde, steps, t_start, t_end)
    if schedule == "karras":
        return karras_grid(sde, steps, t_start=t_start, t_end=t_end)
    if schedule == "quadratic":
        return quadratic_grid(t_start, t_end, steps)
    raise InvalidParameterError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}, "
                                "or pass grid= for any other spacing")


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise InvalidParameterError(f"steps must be a positive integer, got {steps!r}")
    return int(steps)


def strictly_monotone(grid: torch.Tensor) -> bool:
    """Whether the 1-D ``grid`` is finite and strictly increasing or strictly decreasing."""
    d = grid.diff()
    return bool(torch.isfinite(grid).all()) and bool((d > 0).all() or (d < 0).all())


def _check_strict(grid: torch.Tensor, steps: int) -> torch.Tensor:
    if not strictly_monotone(grid):
        raise InvalidParameterError(f"[{float(grid[0])}, {float(grid[-1])}] is too narrow for {steps} distinct steps "
                                    "in float64; take fewer steps or a wider span")
    return grid


def _schedule_span(sde, t_start, t_end, name):
    """Check the SDE and the span of a schedule; return the times and their finite log-SNRs."""
    if not isinstance(sde, LinearSDE):
        raise InvalidParameterError(f"{name} needs an sdekit.LinearSDE (it has a log-SNR), got {type(sde).__name__}")
    T = sde.T
    t_start = T if t_start is None else t_start
    t_end = sde.eps if t_end is None else t_end
    times = []
    for what, t in (("t_start", t_start), ("t_end", t_end)):
        try:
            value = float(t)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(t, bool) or not (0 <= value <= T):
            raise InvalidParameterError(f"{what}={t!r} must be a number in [0, T={T}]")
        times.append(value)
    t_start, t_end = times
    if t_start == t_end:
        raise InvalidParameterError(f"t_start and t_end are both {t_start}; a grid needs two distinct times")
    try:
        lam = sde.log_snr(torch.tensor([t_start, t_end], dtype=torch.float64))
    except NotImplementedError:   # a subclass's own log_snr that gives up
        raise InvalidParameterError(f"{name} needs the log-SNR of {type(sde).__name__}: define closed-form "
                                    f"log_alpha(t) and sigma(t), or drift_coef(t) and diffusion_coef(t)") from None
    lam_start, lam_end = float(lam[0]), float(lam[1])
    for what, t, v in (("t_start", t_start, lam_start), ("t_end", t_end, lam_end)):
        if not math.isfinite(v):
            raise InvalidParameterError(f"the log-SNR at {what}={t} is {v} (sigma = 0 there?); "
                                        f"keep both ends where sigma > 0, e.g. t_end=sde.eps={sde.eps}")
    if lam_start == lam_end:
        raise InvalidParameterError(f"the log-SNR is {lam_start} at both t_start={t_start} and t_end={t_end}; "
                                    "it must change over the span")
    return t_start, t_end, lam_start, lam_end


def _times_of(sde, lam: torch.Tensor, t_start: float, t_end: float, steps: int) -> torch.Tensor:
    """Times of the log-SNRs ``lam``, endpoints set exactly, clamped into the span, checked."""
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    grid = sde.t_of_log_snr(lam[1:-1]).to(dtype=torch.float64, device="cpu").clamp(lo, hi)
    grid = torch.cat([torch.tensor([t_start], dtype=torch.float64), grid,
                      torch.tensor([t_end], dtype=torch.float64)])
    if not bool(torch.isfinite(grid).all()):
        raise InvalidParameterError(f"{type(sde).__name__}.t_of_log_snr gave non-finite times; check its inverse")
    return _check_strict(grid, steps)


def as_grid(grid: Union[torch.Tensor, Sequence[float]], low: float, high: float) -> torch.Tensor:
    """Check a user's grid: 1-D, at least two times, strictly monotone, inside ``[low, high]``."""
    # dtype=float64 here, not only in .to(): a list of floats would otherwise pass through float32
    g = torch.as_tensor(grid, dtype=torch.float64).detach().to(device="cpu")
    if g.dim() != 1 or g.numel() < 2:
        raise InvalidParameterError("grid must be a 1-D tensor of at least two times, from t_start to t_end")
    if not torch.isfinite(g).all():
        raise InvalidParameterError("grid contains non-finite times")
    if not strictly_monotone(g):
        raise InvalidParameterError("grid must be strictly monotone (T down to eps for a reverse process)")
    tol = 1e-12 * max(1.0, abs(high))
    if g.min() < low - tol or g.max() > high + tol:
        raise InvalidParameterError(f"grid spans [{float(g.min())}, {float(g.max())}] but the process lives on "
                                    f"[{low}, {high}]")
    return g


def save_indices(grid: torch.Tensor, save_at: Optional[torch.Tensor]) -> set:
    """The positions in ``grid`` of the ``save_at`` times (which :func:`merge_times` put there)."""
    if save_at is None:
        return set()
    where = {float(t): i for i, t in enumerate(grid.tolist())}
    return {where[float(t)] for t in save_at.tolist()}


def merge_times(grid: torch.Tensor, times: Optional[torch.Tensor]) -> torch.Tensor:
    """The grid refined to contain ``times`` (save points), keeping its direction."""
    if times is None or times.numel() == 0:
        return grid
    merged = torch.unique(torch.cat([grid, times]))  # sorted ascending
    return merged if grid[-1] > grid[0] else merged.flip(0)
