r"""Keyed noise: every random number of a native method is a function of (seed, sample index, where on the path).

:func:`keyed_normal` is a counter-based normal generator: a 32-bit integer hash (murmur3's finaliser,
applied to the key and a counter) turned into standard normals by Box–Muller, vectorised over the
batch.  :class:`KeyedBrownian` builds on it one Brownian path per sample, a virtual Brownian tree
(Li et al. 2020, "Scalable gradients for stochastic differential equations", sec. 3.2): the values at
the dyadic points of the span come from a Brownian bridge keyed by the tree node, so the path can be
queried at any per-sample time, in any order, and gives the same values each time.  Then

- sample ``i`` is the same whatever the batch it is drawn in (its key is its index, not its row);
- a finer grid (``save_at``, a rejected adaptive step) queries the same path, so it refines it;
- fresh noise that is not a Brownian increment (a Langevin corrector's) comes from the same key
  through :meth:`KeyedBrownian.normal`, keyed by the time and a tag.
"""

import math
from typing import Optional, Sequence

import torch

from ._errors import ArgumentTypeError, InvalidParameterError, ShapeError

__all__ = ["keyed_normal", "KeyedBrownian"]

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_TWO_PI = 2 * math.pi


def _mix(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding unsigned 32-bit values (products wrap; low bits kept)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def _row_keys(seed: int, index: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row from the seed (64 bits), the sample index and a per-row counter (both int64)."""
    k = _mix(torch.full_like(index, (seed >> 32) & _M32) ^ _GOLDEN)
    k = _mix(k ^ (seed & _M32))
    k = _mix(k ^ (index & _M32))
    k = _mix(k ^ ((index >> 32) & _M32) ^ 0x632BE5AB)
    k = _mix(k ^ (counter & _M32))
    return _mix(k ^ ((counter >> 32) & _M32) ^ 0x7F4A7C15)


def keyed_normal(seed: int, index: torch.Tensor, counter: torch.Tensor, size: int,
                 dtype=torch.float32) -> torch.Tensor:
    r"""Standard normals of shape ``(len(index), size)``, a pure function of (seed, index, counter, column).

    **Arguments**

    - ``seed``: a non-negative integer below :math:`2^{64}`.
    - ``index``: int64 tensor ``(batch,)``, each row's sample index.
    - ``counter``: int64 tensor ``(batch,)``, where on the path (a tree node, a step, a tag).
    - ``size``: columns; ``dtype``: float32 or float64 (the arithmetic runs in it; device follows ``index``).

    Uniforms are :math:`(h + \tfrac12)/2^{32}` of the hash :math:`h`, so the tails are cut at
    :math:`|z| < 6.7`; pairs become normals by Box–Muller, both the cosine and the sine used.
    """
    pairs = (size + 1) // 2
    rows = _row_keys(seed, index, counter).unsqueeze(1)                         # (batch, 1)
    col = torch.arange(pairs, device=index.device, dtype=torch.int64).unsqueeze(0)
    base = _mix((col * _GOLDEN) & _M32)                                          # (1, pairs)
    h1 = _mix(rows ^ base)
    h2 = _mix(h1 ^ 0x5BD1E995)
    scale = 1.0 / 4294967296.0
    u1 = (h1.to(dtype) + 0.5) * scale
    u2 = (h2.to(dtype) + 0.5) * scale
    r = torch.sqrt(-2.0 * torch.log(u1))
    angle = _TWO_PI * u2
    z = torch.cat([r * torch.cos(angle), r * torch.sin(angle)], dim=1)           # (batch, 2 * pairs)
    return z[:, :size]


_FINAL = 1 << 62        # counters >= this are the in-leaf bridges and tagged draws, never tree nodes
_TAGGED = 3 << 60


class KeyedBrownian:
    r"""One Brownian path per sample on ``[t0, t1]``, keyed by ``(seed, sample index)``; query at any times.

    ``W(t)`` is built as a virtual Brownian tree of ``depth`` levels over the span: :math:`W(t_0) = 0`,
    :math:`W(t_1) = \sqrt{t_1 - t_0}\,z_{root}`, each dyadic midpoint a Brownian bridge between its
    parents with the normal keyed by its node; below the last level the value at ``t`` is the exact
    bridge between the leaf's ends.  Queries in distinct leaves are exact joint samples of Brownian
    motion; two queries closer than the leaf width ``(t1 - t0) / 2**depth`` share the leaf's bridge
    normal (an approximation of that size, as torchsde's ``BrownianTree`` has its ``tol``).

    **Arguments**

    - ``t0 < t1``: the span (natural time; a reverse solve queries it from ``t1`` down).
    - ``shape``: ``(batch, *event_shape)`` of the state the noise drives.
    - ``seed``: a non-negative integer below :math:`2^{64}`.
    - ``index``: the samples' global indices (int64 ``(batch,)``); default ``0 .. batch - 1``.  Give the
      indices when a batch is part of a larger run (a shard), so that sample ``i`` is the same everywhere.
    - ``depth``: tree levels (default 24); ``dtype``, ``device``: of the values (float32 or float64).

    A query costs ``depth + 1`` keyed normal draws of the state's size: measured in
    ``benchmarks/samplers.py``.
    """

    keyed = True

    def __init__(self, t0: float, t1: float, shape: Sequence[int], seed: int, index: Optional[torch.Tensor] = None,
                 depth: int = 24, dtype=torch.float32, device=None):
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise InvalidParameterError(f"a Brownian path needs finite t0 < t1, got [{t0}, {t1}]")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
            raise InvalidParameterError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 60:
            raise InvalidParameterError(f"depth must be an integer in [1, 60], got {depth!r}")
        shape = tuple(int(n) for n in shape)
        if len(shape) < 1 or shape[0] < 1:
            raise ShapeError(f"shape must be (batch, *event_shape) with batch >= 1, got {shape}")
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32   # half states draw in float32 and cast
        self.t0, self.t1, self.shape, self.seed, self.depth = t0, t1, shape, seed, depth
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.size = math.prod(shape[1:])
        if index is None:
            index = torch.arange(shape[0], dtype=torch.int64, device=self.device)
        elif not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or tuple(index.shape) != shape[:1]:
            raise ArgumentTypeError(f"index must be an int64 tensor of shape ({shape[0]},), one global index a sample")
        elif bool((index < 0).any()):
            raise InvalidParameterError("sample indices must be non-negative")
        self.index = index.to(self.device)
        self._root = keyed_normal(seed, self.index, torch.ones_like(self.index), self.size, dtype) \
            * math.sqrt(t1 - t0)
        self._recent = []   # the last queries (time tensor, value), newest first: a step's end is the next's start

    def covers(self, t0: float, t1: float) -> bool:
        """Whether the path is defined on ``[min(t0, t1), max(t0, t1)]``."""
        return self.t0 <= min(t0, t1) and max(t0, t1) <= self.t1

    def _draw(self, counter: torch.Tensor) -> torch.Tensor:
        return keyed_normal(self.seed, self.index, counter, self.size, self.dtype)

    def value(self, t: torch.Tensor) -> torch.Tensor:
        """:math:`W(t)` at per-sample times ``t`` (shape ``(batch,)``), shape ``(batch, *event_shape)``."""
        t = t.to(device=self.device, dtype=torch.float64).clamp(self.t0, self.t1)
        batch = self.shape[0]
        lo = torch.full((batch,), self.t0, dtype=torch.float64, device=self.device)
        hi = torch.full((batch,), self.t1, dtype=torch.float64, device=self.device)
        w_lo = torch.zeros((batch, self.size), dtype=self.dtype, device=self.device)
        w_hi = self._root
        node = torch.ones(batch, dtype=torch.int64, device=self.device)
        for _ in range(self.depth):
            mid = 0.5 * (lo + hi)
            node = 2 * node
            half = (0.5 * (hi - lo)).to(self.dtype).unsqueeze(1)
            w_mid = 0.5 * (w_lo + w_hi) + torch.sqrt(0.5 * half) * self._draw(node)
            right = t >= mid
            r = right.unsqueeze(1)
            w_lo, w_hi = torch.where(r, w_mid, w_lo), torch.where(r, w_hi, w_mid)
            lo, hi = torch.where(right, mid, lo), torch.where(right, hi, mid)
            node = node + right.to(torch.int64)
        width = hi - lo
        a = ((t - lo) / width).to(self.dtype).unsqueeze(1)
        s = torch.sqrt(((t - lo) * (hi - t) / width).clamp_min(0)).to(self.dtype).unsqueeze(1)
        w = w_lo + a * (w_hi - w_lo) + s * self._draw(node + _FINAL)
        return w.view(self.shape)

    def increment(self, ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        r""":math:`W(t_b) - W(t_a)` per sample (``ta``, ``tb`` of shape ``(batch,)``; either order).

        The last few values are kept by time tensor: a loop that passes a step's end as the next step's
        start, or a step that takes two increments from the same start, queries each time once.
        """
        return self._cached(tb) - self._cached(ta)

    def _cached(self, t: torch.Tensor) -> torch.Tensor:
        for seen, w in self._recent:
            if seen is t:
                return w
        w = self.value(t)
        self._recent = [(t, w)] + self._recent[:2]
        return w

    def normal(self, t: torch.Tensor, tag: int = 0) -> torch.Tensor:
        """Fresh standard normals keyed by the time ``t`` (per sample, float64 bits) and a small ``tag``.

        For noise that is not a Brownian increment: the ``tag``-th Langevin step at ``t``.
        """
        bits = t.to(device=self.device, dtype=torch.float64).contiguous().view(torch.int64)
        counter = _mix(bits & _M32) ^ (_mix((bits >> 32) & _M32) << 16) ^ (int(tag) << 40) | _TAGGED
        return self._draw(counter).view(self.shape)

    def __repr__(self):
        return (f"KeyedBrownian(t0={self.t0}, t1={self.t1}, shape={self.shape}, seed={self.seed}, "
                f"depth={self.depth}, dtype={self.dtype})")
