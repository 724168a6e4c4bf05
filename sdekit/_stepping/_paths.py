"""The keyed Brownian path of a solve: the caller's, checked, or one built over the span from ``seed=``/``generator=``,
deep enough for the fixed grid (:class:`sdekit.KeyedBrownian`)."""

import torch

from .._errors import InvalidParameterError, MethodArgumentError
from .._keyed import KeyedBrownian

_ENTROPY_HIGH = 2 ** 62


def solve_brownian(pb, x):
    """The keyed Brownian path of this solve: the caller's, or one over the span keyed by seed/generator."""
    lo, hi = min(pb.t_start, pb.t_end), max(pb.t_start, pb.t_end)
    if pb.noise is not None:
        bm = pb.noise
        if not isinstance(bm, KeyedBrownian):
            raise MethodArgumentError("native stochastic methods take noise=sdekit.KeyedBrownian(...) "
                                      "(or seed=/generator=); torchsde Brownian motions are for torchsde methods")
        if bm.shape != tuple(x.shape) or not bm.covers(lo, hi):
            raise InvalidParameterError(f"noise covers [{bm.t0}, {bm.t1}] with shape {bm.shape}, but the solve "
                                        f"needs [{lo}, {hi}] and shape {tuple(x.shape)}")
        check_depth(bm, pb)
        return bm
    return keyed_path(pb, x)


def keyed_path(pb, x):
    """A keyed Brownian path over the solve's span, shaped like ``x``, from ``seed=`` or ``generator=``; deep
    enough that no two points of a fixed grid share a leaf (24 levels unless the grid needs more)."""
    lo, hi = min(pb.t_start, pb.t_end), max(pb.t_start, pb.t_end)
    seed = pb.seed
    if seed is None:
        where = pb.generator.device if pb.generator is not None else "cpu"
        seed = int(torch.randint(0, _ENTROPY_HIGH, (1,), generator=pb.generator, device=where))
    grid = stepping_grid(pb)
    depth = KeyedBrownian.depth_for(lo, hi, grid) if grid is not None else 24
    return KeyedBrownian(lo, hi, tuple(x.shape), seed=int(seed), depth=depth, dtype=x.dtype, device=x.device)


def stepping_grid(pb):
    """The fixed grid's own times, without the ``save_at`` times merged into it (``None`` when adaptive).

    The keyed path's depth follows these alone: a save time must not change the path, so one closer to a grid
    time than the leaf width shares that leaf's bridge normal (an approximation at that scale).
    """
    if pb.grid is None:
        return None
    if pb.save_at is None:
        return pb.grid
    return pb.grid[~torch.isin(pb.grid, pb.save_at.to(pb.grid))]


def check_depth(bm, pb):
    """Refuse a caller's keyed path whose leaves are wider than the fixed grid's smallest step."""
    grid = stepping_grid(pb)
    if grid is not None and not bm.separates(grid):
        need = KeyedBrownian.depth_for(bm.t0, bm.t1, grid)
        raise InvalidParameterError(f"the grid's smallest step is below the noise's leaf width {bm.leaf:.3g}, "
                                    f"where its values would share a normal: build it with depth={need}")
