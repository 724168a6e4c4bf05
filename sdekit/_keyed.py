r"""Keyed noise: every random number of a native method is a function of (seed, sample index, where on the path).

:func:`keyed_normal` draws standard normals from Philox4x32-10 (:mod:`sdekit._philox`; Salmon et al. 2011,
the generator of cuRAND and of torch's CUDA backend), vectorised over the batch.  The seed is the 64-bit
key; the 128-bit counter holds the sample index (48 bits), the stream (56 bits: which draw on the path) and
the block of the draw (24 bits).  Philox is a bijection of the counter for each key, so two distinct
(seed, index, stream, column) never share a word: no two seeds, samples or draws share their randomness.
Uniforms carry 24 bits in float32 (one word each) and 53 bits in float64 (two words each); Box–Muller
turns pairs of them into normals.  float32 and float64 draws are different streams of the same law.

:class:`KeyedBrownian` builds on it one Brownian path per sample, a virtual Brownian tree (Li et al. 2020,
"Scalable gradients for stochastic differential equations", sec. 3.2): the values at the dyadic points of
the span come from a Brownian bridge keyed by the tree node, so the path can be queried at any per-sample
time, in any order, and gives the same values each time.  Then

- sample ``i`` is the same whatever the batch it is drawn in (its key is its index, not its row);
- a finer grid (``save_at``, a rejected adaptive step) queries the same path, so it refines it;
- noise that is fresh at each step (ancestral samplers) costs one draw, not a tree query:
  :meth:`KeyedBrownian.step_normal`; noise that is not a Brownian increment (a Langevin corrector's)
  comes from :meth:`KeyedBrownian.normal`, keyed by the time and a tag.
"""

import math
from typing import Optional, Sequence

import torch

from ._errors import ArgumentTypeError, InvalidParameterError, ShapeError
from ._philox import MASK32, philox4x32

__all__ = ["keyed_normal", "KeyedBrownian", "INDEX_BITS", "COUNTER_BITS"]

INDEX_BITS = 48           #: sample indices are below 2**48
STREAM_BITS = 56          #: a row's stream (which draw of the path) is below 2**56
COUNTER_BITS = 52         #: keyed_normal's public counters are below 2**52 (the streams of domain 0)
BLOCK_BITS = 24           #: a draw holds at most 2**24 Philox blocks a row
_DOMAIN_SHIFT = 53        #: a stream is its domain (3 bits) above a 53-bit payload
_USER, _TREE, _LEAF, _TAGGED, _STEP = range(5)     # stream domains
_STEP_TIME_BITS = 44      #: a step normal's start on the span, in units of span / 2**44
_TAG_TIME_BITS = 32       #: a tagged normal's time on the span, in units of span / 2**32
_TAG_BITS = 21            #: tags are below 2**21
_TWO_PI = 2 * math.pi
_BLOCK = 1 << 21          #: normals drawn at once by a tree query: rows are taken in blocks of at most this many
_CHUNK = 1 << 22          #: Philox blocks generated at once by a draw


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise InvalidParameterError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return seed


def _stream(domain: int, payload: torch.Tensor) -> torch.Tensor:
    return payload | (domain << _DOMAIN_SHIFT)


def keyed_words(seed: int, index: torch.Tensor, stream: torch.Tensor, blocks: int):
    """The four Philox words ``(rows, blocks)`` (int64 holding uint32; see :func:`sdekit._philox.philox4x32`) of
    rows with sample ``index`` (48 bits) and ``stream`` (56 bits; int64, broadcast to ``(rows,)``), key ``seed``.

    The 128-bit counter: word 0 the block (24 bits) and the stream's top 8 bits, word 1 the stream's low 32
    bits, word 2 the index's low 32 bits, word 3 the index's top 16 bits and the stream's bits 32-47.
    """
    index, stream = torch.broadcast_tensors(index, stream)
    index, stream = index.reshape(-1, 1), stream.reshape(-1, 1)
    col = torch.arange(blocks, dtype=torch.int64, device=index.device).unsqueeze(0)
    return philox4x32(col | ((stream >> 48) << BLOCK_BITS), stream & MASK32, index & MASK32,
                      (index >> 32) | (((stream >> 32) & 0xFFFF) << 16), seed)


def _normals(seed: int, index: torch.Tensor, stream: torch.Tensor, size: int, dtype) -> torch.Tensor:
    r"""Standard normals ``(rows, size)`` for rows keyed by ``(index, stream)`` (int64, broadcast together).

    float32: each word gives a 24-bit uniform, its top 24 bits :math:`u = (\lfloor w_0 / 2^8\rfloor + 1) / 2^{24}`
    for radii (in :math:`(0, 1]`; words 0 and 2) and its low 24 bits :math:`(w_1 \bmod 2^{24}) / 2^{24}` for
    angles (words 1 and 3); a block of four words gives four normals.  float64: two words give a 53-bit
    uniform, :math:`(\lfloor w_0/2^5\rfloor 2^{26} + \lfloor w_1/2^6\rfloor)/2^{53}`; a block gives two normals.
    Box–Muller :math:`r = \sqrt{-2\ln u_1}`, :math:`z = (r\cos 2\pi u_2, r\sin 2\pi u_2)`; columns are all
    cosines of a lane, then all its sines.  Large draws go a slice of rows at a time (each row's numbers depend
    on its key alone), so the generator's integer temporaries stay near :data:`_CHUNK` blocks.
    """
    index, stream = (v.reshape(-1) for v in torch.broadcast_tensors(index, stream))
    wide = dtype == torch.float64
    dtype = torch.float64 if wide else torch.float32
    blocks = max(1, -(-size // (2 if wide else 4)))
    rows = max(1, _CHUNK // blocks)
    if index.numel() <= rows:
        return _normal_rows(seed, index, stream, size, blocks, dtype)
    out = torch.empty((index.numel(), size), dtype=dtype, device=index.device)
    for r in range(0, index.numel(), rows):
        out[r:r + rows] = _normal_rows(seed, index[r:r + rows], stream[r:r + rows], size, blocks, dtype)
    return out


def _normal_rows(seed, index, stream, size, blocks, dtype):
    """:func:`_normals` for one slice of rows (``blocks`` Philox blocks a row)."""
    wide = dtype == torch.float64
    w0, w1, w2, w3 = keyed_words(seed, index, stream, blocks)
    if wide:
        pairs = ((_u53(w0, w1), _u53(w2, w3)),)
        scale = 2.0 ** -53
    else:
        pairs = ((w0 >> 8, w1 & 0xFFFFFF), (w2 >> 8, w3 & 0xFFFFFF))    # words 0 and 2 have no bits above 31
        scale = 2.0 ** -24
    z = torch.empty((w0.shape[0], 2 * len(pairs) * blocks), dtype=dtype, device=w0.device)
    for k, (m1, m2) in enumerate(pairs):
        r = m1.to(dtype).add_(1).mul_(scale).log_().mul_(-2).sqrt_()         # sqrt(-2 ln u1), u1 = (m1 + 1) 2^-b
        angle = m2.to(dtype).mul_(_TWO_PI * scale)
        torch.mul(r, torch.cos(angle), out=z[:, 2 * k * blocks:(2 * k + 1) * blocks])
        torch.mul(r, angle.sin_(), out=z[:, (2 * k + 1) * blocks:(2 * k + 2) * blocks])
    return z[:, :size]


def _u53(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """53 bits from two words: the top 27 of ``hi`` (an exact word: no bits above 31) and the top 26 of ``lo``'s
    low 32 bits (an integer in [0, 2**53))."""
    return ((hi >> 5) << 26) | ((lo >> 6) & 0x3FFFFFF)


def _check_index(index, rows=None):
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.dim() != 1 or (
            rows is not None and index.numel() != rows):
        want = f"({rows},)" if rows is not None else "(batch,)"
        raise ArgumentTypeError(f"index must be an int64 tensor of shape {want}, one global index a sample")
    if index.numel() and bool(((index < 0) | (index >= 2 ** INDEX_BITS)).any()):
        raise InvalidParameterError(f"sample indices must be non-negative and below 2**{INDEX_BITS}")


def _check_counter(counter: torch.Tensor) -> torch.Tensor:
    if counter.numel() and bool(((counter < 0) | (counter >= 2 ** COUNTER_BITS)).any()):
        raise InvalidParameterError(f"counters must be non-negative and below 2**{COUNTER_BITS}")
    return counter


def keyed_normal(seed: int, index: torch.Tensor, counter: torch.Tensor, size: int,
                 dtype=torch.float32) -> torch.Tensor:
    r"""Standard normals of shape ``(len(index), size)``, a pure function of (seed, index, counter, column).

    **Arguments**

    - ``seed``: an integer in :math:`[0, 2^{64})`, Philox4x32-10's key.
    - ``index``: int64 tensor ``(batch,)``, each row's sample index, in :math:`[0, 2^{48})`.
    - ``counter``: int64 tensor ``(batch,)`` (or one broadcast value), which draw, in :math:`[0, 2^{52})`
      (the top two, :data:`sdekit._sharding.INITIAL_COUNTER` and the one below it, start samples).
    - ``size``: columns; ``dtype``: float32 (24-bit uniforms) or float64 (53-bit uniforms); the device
      follows ``index``.

    Distinct (seed, index, counter, column) never share a Philox word.  Radii come from uniforms in
    :math:`(0, 1]`, so the tails reach :math:`|z| = 5.8` in float32 and :math:`8.6` in float64.
    """
    seed = _check_seed(seed)
    _check_index(index)
    if not isinstance(counter, torch.Tensor):
        counter = torch.tensor(counter, dtype=torch.int64)
    counter = _check_counter(counter.to(device=index.device, dtype=torch.int64))
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= (2 ** BLOCK_BITS) * 2:
        raise InvalidParameterError(f"size must be an integer in [1, 2**25], got {size!r}")
    z = _normals(seed, index, _stream(_USER, counter), size, dtype)
    return z if dtype in (torch.float32, torch.float64) else z.to(dtype)     # half precisions draw in float32


def keyed_bits(seed: int, index: torch.Tensor, counter: int) -> torch.Tensor:
    """One 63-bit integer per sample (int64 ``(batch,)``), keyed like :func:`keyed_normal`'s draws: a seed for a
    per-sample ``torch.Generator``."""
    _check_index(index)
    counter = _check_counter(torch.tensor(counter, dtype=torch.int64))
    w0, w1, _, _ = keyed_words(_check_seed(seed), index, _stream(_USER, counter), 1)
    return (((w0 & 0x7FFFFFFF) << 32) | (w1 & MASK32)).flatten()


class KeyedBrownian:
    r"""One Brownian path per sample on ``[t0, t1]``, keyed by ``(seed, sample index)``; query at any times.

    ``W(t)`` is built as a virtual Brownian tree of ``depth`` levels over the span: :math:`W(t_0) = 0`,
    :math:`W(t_1) = \sqrt{t_1 - t_0}\,z_{root}`, each dyadic midpoint a Brownian bridge between its
    parents with the normal keyed by its node; below the last level the value at ``t`` is the exact
    bridge between the leaf's ends.  Queries in distinct leaves are exact joint samples of Brownian
    motion; two queries closer than the leaf width ``(t1 - t0) / 2**depth`` share the leaf's bridge
    normal, an approximation at that scale.  ``solve()`` builds its path deep enough that no two points
    of its grid share a leaf, and refuses a caller's path that is not.

    **Arguments**

    - ``t0 < t1``: the span (natural time; a reverse solve queries it from ``t1`` down).
    - ``shape``: ``(batch, *event_shape)`` of the state the noise drives.
    - ``seed``: an integer in :math:`[0, 2^{64})`.
    - ``index``: the samples' global indices (int64 ``(batch,)``, below :math:`2^{48}`); default
      ``0 .. batch - 1``.  Give the indices when a batch is part of a larger run (a shard), so that sample
      ``i`` is the same everywhere.
    - ``depth``: tree levels (default 24, at most 51); ``dtype``, ``device``: of the values (float32 or float64).
    - ``refine``: what samplers whose noise is fresh at each step (ancestral steps, EDM's churn) read: ``False``
      (default) one fresh keyed normal a step (:meth:`step_normal`, one draw); ``True`` the step's increment
      of this path, normalised (a tree query), so that a finer grid refines one path, as a convergence study
      needs.  Samplers that discretise the path itself (SDE-DPM-Solver++, Euler–Maruyama) always read it.

    A query costs ``depth + 1`` keyed normal draws of the state's size, a fresh step normal one draw:
    measured in ``benchmarks/keyed_noise.py``.
    """

    keyed = True
    MAX_DEPTH = 51

    def __init__(self, t0: float, t1: float, shape: Sequence[int], seed: int, index: Optional[torch.Tensor] = None,
                 depth: int = 24, dtype=torch.float32, device=None, refine: bool = False):
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise InvalidParameterError(f"a Brownian path needs finite t0 < t1, got [{t0}, {t1}]")
        _check_seed(seed)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.MAX_DEPTH:
            raise InvalidParameterError(f"depth must be an integer in [1, {self.MAX_DEPTH}], got {depth!r}")
        shape = tuple(int(n) for n in shape)
        if len(shape) < 1 or shape[0] < 1:
            raise ShapeError(f"shape must be (batch, *event_shape) with batch >= 1, got {shape}")
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32   # half states draw in float32 and cast
        if not isinstance(refine, bool):
            raise ArgumentTypeError(f"refine must be True or False, got {refine!r}")
        self.t0, self.t1, self.shape, self.seed, self.depth, self.refine = t0, t1, shape, seed, depth, refine
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.size = math.prod(shape[1:])
        if self.size > 2 ** 25:
            raise ShapeError(f"a keyed path draws at most 2**25 numbers a sample, got {self.size}")
        if index is None:
            index = torch.arange(shape[0], dtype=torch.int64, device=self.device)
        _check_index(index, shape[0])
        self.index = index.to(self.device)
        self._root_value = None
        self._recent = []   # the last queries (time tensor, value), newest first: a step's end is the next's start

    @property
    def leaf(self) -> float:
        """The leaf width ``(t1 - t0) / 2**depth``: queries closer than this share a leaf's bridge normal."""
        return (self.t1 - self.t0) / 2 ** self.depth

    @staticmethod
    def depth_for(t0: float, t1: float, times: torch.Tensor, depth: int = 24) -> int:
        """A depth, at least ``depth``, whose leaves of ``[t0, t1]`` hold at most one of ``times`` (one level more
        than the gap needs, so that rounding never puts two of them in one leaf)."""
        ts = torch.unique(times.to(torch.float64).flatten())
        if ts.numel() < 2:
            return depth
        gap = float((ts[1:] - ts[:-1]).min())
        need = math.ceil(math.log2((t1 - t0) / gap)) + 1 if gap > 0 else KeyedBrownian.MAX_DEPTH
        return min(KeyedBrownian.MAX_DEPTH, max(depth, need))

    def separates(self, times: torch.Tensor) -> bool:
        """Whether no two of ``times`` (distinct values) fall in one leaf."""
        return self.depth_for(self.t0, self.t1, times, 1) <= self.depth

    def rows(self, keep: torch.Tensor) -> "KeyedBrownian":
        """The same paths for the samples ``keep`` (row positions, int64) only: a loop whose finished samples
        leave the batch queries this.  The root values are taken, not drawn again."""
        sub = object.__new__(KeyedBrownian)
        sub.__dict__.update(self.__dict__)
        sub.shape = (keep.numel(),) + self.shape[1:]
        sub.index = self.index[keep]
        sub._root_value = None if self._root_value is None else self._root_value[keep]
        sub._recent = []
        return sub

    def covers(self, t0: float, t1: float) -> bool:
        """Whether the path is defined on ``[min(t0, t1), max(t0, t1)]``."""
        return self.t0 <= min(t0, t1) and max(t0, t1) <= self.t1

    def _draw(self, stream, index=None) -> torch.Tensor:
        return _normals(self.seed, self.index if index is None else index, stream, self.size, self.dtype)

    @property
    def _root(self):
        if self._root_value is None:
            self._root_value = self._draw(torch.tensor(_TREE << _DOMAIN_SHIFT, device=self.device)).mul_(
                math.sqrt(self.t1 - self.t0))
        return self._root_value

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
        root = self._root
        for r in range(0, batch, rows):
            out[r:r + rows] = self._sum(t[r:r + rows], self.index[r:r + rows], root[r:r + rows])
        return out.view(self.shape)

    def _sum(self, t, index, root):
        r"""The Lévy–Ciesielski sum for a block of rows (times ``t``, sample indices, the root values).

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
        nodes = scale.to(torch.int64) + j.to(torch.int64)                            # heap numbering: 2^k + j
        nodes[:, :d] |= _TREE << _DOMAIN_SHIFT
        nodes[:, d] |= _LEAF << _DOMAIN_SHIFT
        c = c.to(self.dtype)
        z = self._draw(nodes.flatten(), index.unsqueeze(1).expand_as(nodes).flatten()).view(
            nodes.shape + (self.size,))
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

    def _position(self, t: torch.Tensor, bits: int) -> torch.Tensor:
        """``t``'s place on the span, rounded to the nearest unit of ``span / 2**bits`` (int64, per sample).

        Rounding, not flooring: a grid time on a dyadic point (a uniform grid of 2**k steps) lies mid-way
        between two rounding edges, so the same grid computed another way (a rounding apart) keeps its keys.
        """
        u = (t.to(device=self.device, dtype=torch.float64) - self.t0) / (self.t1 - self.t0)
        top = 2 ** bits
        return (u.clamp(0.0, 1.0) * top).round().clamp_max(top - 1).to(torch.int64)

    def normal(self, t: torch.Tensor, tag: int = 0) -> torch.Tensor:
        """Fresh standard normals keyed by the time ``t`` (per sample) and a ``tag`` (``0 <= tag < 2**21``).

        For noise that is not a Brownian increment: the ``tag``-th Langevin step at ``t``.  Times closer than
        ``span / 2**32`` share their normals.
        """
        if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag < 2 ** _TAG_BITS:
            raise InvalidParameterError(f"tag must be an integer in [0, {2 ** _TAG_BITS}), got {tag!r}")
        stream = _stream(_TAGGED, self._position(t, _TAG_TIME_BITS) | (tag << _TAG_TIME_BITS))
        return self._draw(stream).view(self.shape)

    def step_normal(self, t: torch.Tensor) -> torch.Tensor:
        r"""Fresh standard normals for the step that starts at ``t`` (per sample): one draw, no tree query.

        For samplers whose noise is fresh at each step (ancestral steps, EDM's churn, a predictor's noise),
        where only the law of each step's normal matters, not a path shared with other grids.  Keyed by the
        step's start time (steps starting closer than ``span / 2**44`` share their normals).
        """
        return self._draw(_stream(_STEP, self._position(t, _STEP_TIME_BITS))).view(self.shape)

    def __repr__(self):
        return (f"KeyedBrownian(t0={self.t0}, t1={self.t1}, shape={self.shape}, seed={self.seed}, "
                f"depth={self.depth}, dtype={self.dtype}, refine={self.refine})")
