"""The one noise source of a solve: a Brownian motion over the whole interval, seeded from the caller.

sdekit builds a torchsde ``BrownianInterval`` over the full clock interval (never torchsde's
default ``[t0, t0 + 1]``, which clamps silently) and draws its entropy from the caller's
``torch.Generator`` or seed, so the same generator gives the same path bit for bit.  Any object
with torchsde's interface (``bm(ta, tb)`` returning the increment, ``levy_area_approximation``)
can be passed instead: a shared path across step sizes, or per-sample noise.
"""

import numbers
from typing import Optional, Sequence

import torch
import torchsde

from ._errors import ArgumentTypeError, InvalidParameterError

__all__ = ["brownian_motion"]

_ENTROPY_HIGH = 2 ** 62
SEED_HIGH = 2 ** 64


def check_entropy(seed, generator) -> None:
    """Refuse a seed that is not an integer in ``[0, 2**64)``, a generator that is not a ``torch.Generator``, or both."""
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ArgumentTypeError(f"seed must be an integer in [0, 2**64), got {type(seed).__name__} {seed!r:.40}")
        if not 0 <= seed < SEED_HIGH:
            raise InvalidParameterError(f"seed must be an integer in [0, 2**64), got {seed}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"generator must be a torch.Generator (torch.Generator().manual_seed(n)), "
                                f"got {type(generator).__module__}.{type(generator).__name__}; or pass seed=")
    if seed is not None and generator is not None:
        raise InvalidParameterError("give seed or generator, not both")


def brownian_motion(t0: float, t1: float, shape: Sequence[int], *, dtype=torch.float32, device=None,
                    seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                    levy_area: str = "none", dt: Optional[float] = None) -> torchsde.BrownianInterval:
    r"""A Brownian motion :math:`W` on ``[t0, t1]`` with values of shape ``(batch, d)``.

    **Arguments**

    - ``t0 < t1``: the clock interval it covers (for a reverse process ``[T - t_start, T - t_end]``).
    - ``shape``: ``(batch, d)``, the flattened state's shape.
    - ``seed`` or ``generator``: where its entropy comes from; with neither, torch's global generator.
    - ``levy_area``: ``"none"``, ``"space-time"``, ``"davie"`` or ``"foster"``; srk needs space-time,
      log_ode davie or foster.
    - ``dt``: the typical step that will query it.  torchsde then builds a balanced tree of
      intervals up front; without it, tens of thousands of sequential queries build a chain deep
      enough to exceed Python's recursion limit.  The same seed with another ``dt`` gives another path.
    """
    t0, t1 = float(t0), float(t1)
    if not t0 < t1:
        raise InvalidParameterError(f"a Brownian motion needs t0 < t1, got [{t0}, {t1}]")
    check_entropy(seed, generator)
    if seed is None:
        where = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, _ENTROPY_HIGH, (1,), generator=generator, device=where))
    if dt is not None and not 0 < float(dt) <= t1 - t0:
        raise InvalidParameterError(f"dt must lie in (0, t1 - t0] = (0, {t1 - t0}], got {dt}")
    return torchsde.BrownianInterval(t0=t0, t1=t1, size=tuple(shape), dtype=dtype, device=device,
                                     entropy=int(seed), levy_area_approximation=levy_area,
                                     dt=None if dt is None else float(dt))
