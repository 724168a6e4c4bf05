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


def _s32(c: int) -> int:
    """An unsigned 32-bit constant as the int32 with the same bits."""
    c &= _M32
    return c - (1 << 32) if c >> 31 else c


def _i32(v: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of an int64 tensor as int32 (the same bits)."""
    v = v & _M32
    return (v - ((v >> 31) << 32)).to(torch.int32)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int32 tensors (the bits of unsigned values; products wrap).

    The shifts are logical: the arithmetic shift's sign bits are masked off.
    """
    x = x ^ ((x >> 16) & 0xFFFF)
    x.mul_(_s32(0x85EBCA6B))
    x.bitwise_xor_((x >> 13).bitwise_and_(0x7FFFF))
    x.mul_(_s32(0xC2B2AE35))
    return x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))


def _row_keys(seed: int, index: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row (int64 holding the unsigned value) from the seed (64 bits), the sample index
    and a per-row counter (both int64)."""
    return _counter_keys(_index_keys(seed, index), counter).to(torch.int64) & _M32


def _index_keys(seed: int, index: torch.Tensor) -> torch.Tensor:
    """The part of a row's key (int32 bits) that depends on (seed, sample index) only: computed once per path."""
    k = _mix(torch.full(index.shape, _s32(((seed >> 32) & _M32) ^ _GOLDEN), dtype=torch.int32,
                        device=index.device))
    k = _mix(k ^ _s32(seed))
    k = _mix(k ^ _i32(index))
    return _mix(k ^ _i32(index >> 32) ^ _s32(0x632BE5AB))


def _counter_keys(index_keys: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Row keys (int32 bits) from :func:`_index_keys` and per-row int64 counters (broadcast together)."""
    k = _mix(index_keys ^ _i32(counter))
    return _mix(k ^ _i32(counter >> 32) ^ _s32(0x7F4A7C15))


def _uniform(h: torch.Tensor, dtype) -> torch.Tensor:
    """:math:`h/2^{32} + \tfrac12` in :math:`[2^{-33}, 1]` for the int32 ``h`` (signed: the hash's top bit flipped)."""
    return h.to(dtype).mul_(1.0 / 4294967296.0).add_(0.5).clamp_min_(1.0 / 8589934592.0)


def keyed_normal(seed: int, index: torch.Tensor, counter: torch.Tensor, size: int,
                 dtype=torch.float32) -> torch.Tensor:
    r"""Standard normals of shape ``(len(index), size)``, a pure function of (seed, index, counter, column).

    **Arguments**

    - ``seed``: a non-negative integer below :math:`2^{64}`.
    - ``index``: int64 tensor ``(batch,)``, each row's sample index.
    - ``counter``: int64 tensor ``(batch,)``, where on the path (a tree node, a step, a tag).
    - ``size``: columns; ``dtype``: float32 or float64 (the arithmetic runs in it; device follows ``index``).

    Uniforms are :math:`h/2^{32} + \tfrac12` of the hash :math:`h` read as a signed 32-bit integer, at least
    :math:`2^{-33}`, so the tails are cut at :math:`|z| < 6.8`; pairs become normals by Box–Muller, both the cosine and the sine used.
    """
    return _normals(_counter_keys(_index_keys(seed, index), counter), size, dtype)


def _normals(keys: torch.Tensor, size: int, dtype) -> torch.Tensor:
    """Standard normals of shape ``(*keys.shape, size)`` from 32-bit row keys (int32 bits, any shape)."""
    pairs = (size + 1) // 2
    rows = keys.unsqueeze(-1)                                                    # (..., 1)
    col = torch.arange(pairs, device=keys.device, dtype=torch.int64)
    base = _mix(_i32(col * _GOLDEN))                                             # (pairs,)
    h1 = _mix(rows ^ base)
    h2 = _mix(h1 ^ _s32(0x5BD1E995))
    u1, u2 = _uniform(h1, dtype), _uniform(h2, dtype)
    r = u1.log_().mul_(-2.0).sqrt_()
    angle = u2.mul_(_TWO_PI)
    z = torch.empty(keys.shape + (2 * pairs,), dtype=dtype, device=keys.device)
    torch.mul(r, torch.cos(angle), out=z[..., :pairs])
    torch.mul(r, angle.sin_(), out=z[..., pairs:])
    return z[..., :size]


_FINAL = 1 << 62        # counters >= this are the in-leaf bridges and tagged draws, never tree nodes
_TAGGED = 3 << 60
_BLOCK = 1 << 21    # normals drawn at once by a query: rows are taken in blocks of at most this many


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
        self._keys = _index_keys(seed, self.index)
        self._root = self._draw(torch.ones_like(self.index)) * math.sqrt(t1 - t0)
        self._recent = []   # the last queries (time tensor, value), newest first: a step's end is the next's start

    def rows(self, keep: torch.Tensor) -> "KeyedBrownian":
        """The same paths for the samples ``keep`` (row positions, int64) only: a loop whose finished samples
        leave the batch queries this.  The index keys and root values are taken, not drawn again."""
        sub = object.__new__(KeyedBrownian)
        sub.__dict__.update(self.__dict__)
        sub.shape = (keep.numel(),) + self.shape[1:]
        sub.index, sub._keys, sub._root = self.index[keep], self._keys[keep], self._root[keep]
        sub._recent = []
        return sub

    def covers(self, t0: float, t1: float) -> bool:
        """Whether the path is defined on ``[min(t0, t1), max(t0, t1)]``."""
        return self.t0 <= min(t0, t1) and max(t0, t1) <= self.t1

    def _draw(self, counter: torch.Tensor) -> torch.Tensor:
        return _normals(_counter_keys(self._keys, counter), self.size, self.dtype)

    def value(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`W(t)` at per-sample times ``t`` (shape ``(batch,)``), shape ``(batch, *event_shape)``.

        The tree's recursion :math:`W(m) = \tfrac12(W(l) + W(h)) + \sqrt{(h - l)/4}\,z_{node}` is linear in
        the normals, so the value is their Lévy–Ciesielski sum: :math:`W(t) = \frac{t - t_0}{t_1 - t_0}W(t_1)
        + \sum_k \sqrt{(h_k - l_k)/4}\,\Lambda_k(t)\,z_k + s(t)\,z_{leaf}`, with :math:`\Lambda_k` the tent
        of the k-th interval on ``t``'s way down (1 at its midpoint, 0 at its ends) and :math:`s(t)` the
        leaf bridge's standard deviation.  The coefficients are per-sample scalars (float64); the normals
        of all levels are drawn at once, and each row is summed in the same order whatever the batch.
        """
        t = t.to(device=self.device, dtype=torch.float64).clamp(self.t0, self.t1)
        batch = self.shape[0]
        out = torch.empty((batch, self.size), dtype=self.dtype, device=self.device)
        rows = max(1, _BLOCK // ((self.depth + 1) * self.size))     # rows in a block: its normals stay in cache
        for r in range(0, batch, rows):
            out[r:r + rows] = self._sum(t[r:r + rows], self._keys[r:r + rows], self._root[r:r + rows])
        return out.view(self.shape)

    def _sum(self, t, keys, root):
        r"""The Lévy–Ciesielski sum for a block of rows (times ``t``, index keys, the root values).

        All levels at once: with :math:`u = (t - t_0)/(t_1 - t_0)`, at level :math:`k` the point lies in dyadic
        interval :math:`j_k = \lfloor 2^k u\rfloor` (tree node :math:`2^k + j_k`) at fraction
        :math:`f_k = 2^k u - j_k`; its tent is :math:`1 - |2 f_k - 1|` and the leaf bridge's standard deviation
        :math:`\sqrt{w f_d (1 - f_d)}` with :math:`w` the leaf width.
        """
        span = self.t1 - self.t0
        d = self.depth
        u = ((t - self.t0) / span).clamp(0.0, 1.0).unsqueeze(1)                      # (n, 1)
        scale = torch.exp2(torch.arange(d + 1, dtype=torch.float64, device=self.device))
        pos = u * scale                                                              # exact: powers of two
        j = torch.minimum(pos.floor(), scale - 1)
        frac = pos - j                                                               # (n, depth + 1) in [0, 1]
        c = torch.empty_like(frac)
        c[:, :d] = (1 - (2 * frac[:, :d] - 1).abs()) * torch.sqrt(span / (4 * scale[:d]))
        leaf = frac[:, d]
        c[:, d] = torch.sqrt((span / scale[d]) * leaf * (1 - leaf)).clamp_min(0)
        nodes = scale.to(torch.int64) + j.to(torch.int64)                            # heap numbering: root 1
        nodes[:, :d] *= 2
        nodes[:, d] += _FINAL
        c = c.to(self.dtype)
        z = _normals(_counter_keys(keys.unsqueeze(1), nodes), self.size, self.dtype)
        w = root * u.to(self.dtype)
        for k in range(d + 1):
            w.addcmul_(z[:, k], c[:, k:k + 1])
        return w

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
        lo, hi = (_mix(_i32(b)).to(torch.int64) & _M32 for b in (bits, bits >> 32))
        counter = lo ^ (hi << 16) ^ (int(tag) << 40) | _TAGGED
        return self._draw(counter).view(self.shape)

    def __repr__(self):
        return (f"KeyedBrownian(t0={self.t0}, t1={self.t1}, shape={self.shape}, seed={self.seed}, "
                f"depth={self.depth}, dtype={self.dtype})")
