r"""Philox4x32 (``sdekit._philox``) and the statistics of the keyed generator built on it (``sdekit._keyed``).

1. Known answers: ``philox4x32`` reproduces Random123's published ``kat_vectors`` bit for bit (Philox4x32-10
   and -7), agrees with a plain-integer transcription of the algorithm on random counters and keys, and
   evaluates batches and broadcast counters as it evaluates single counters.
2. Statistics that would have caught the previous generator, which folded (seed, index, counter) into 32 bits:
   seeds 27206 and 27207 gave the same samples permuted, the 2**20 samples of one seed repeated W(0.5) 133
   times, and 2e7 draws repeated 63,136 values.  So: no value shared between adjacent seeds or between two
   samples of one seed, no repeated float64 value, Brownian increments with the right variance and no
   correlation at coarse scales, at the leaf width and across leaf boundaries, normality (KS) and tail counts.

Every check uses fixed seeds, and its tolerance is computed from the sample size:

- a sample mean of N(0, 1) within 4 standard errors 1/sqrt(n), a sample variance within 4 sqrt(2/n) (relative),
  a sample correlation within 4/sqrt(n), a KS test p > 1e-3;
- counts of rare events (tail draws, coincident values) within 5 standard deviations of their expectation:
  binomial sqrt(n p (1 - p)) for tails, Poisson sqrt(E) for coincidences, whose expectation is the birthday
  count (pairs) x (the probability ``q`` that two independent draws round to the same value).

``q`` is that of a standard normal rounded to the dtype, :math:`q = \sum_v p(v)^2 \approx \int \phi(v)^2\,
\mathrm{ulp}(v)\,dv` (the spacing of floats is constant on a binade, so the integral is a sum of error
functions): 1.37e-8 in float32, 2.55e-17 in float64.  In float32 the rounding of the output, not the 24-bit
uniforms, dominates it; the model predicts 1.926e6 repeated pairs among 2**24 float32 draws of one seed, and
1.924e6 are observed.  ``-m slow`` runs the 2e7-draw checks.
"""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

import sdekit
from sdekit import KeyedBrownian, keyed_normal
from sdekit._philox import MASK32, philox4x32
from sdekit.validation import GaussianMixture

K = 4.0        # standard errors allowed for means, variances and correlations
K_COUNT = 5.0  # standard deviations allowed for counts of rare events
F64 = torch.float64
CHUNK = 2 ** 20  # draws generated, or summed, at once


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _words(counter, key, rounds=10):
    """Philox4x32-``rounds`` of one counter (four uint32) and a key given as two uint32 words ``(k0, k1)``."""
    c = [torch.tensor([w], dtype=torch.int64) for w in counter]
    return [int(o) & MASK32 for o in philox4x32(*c, key[0] | (key[1] << 32), rounds=rounds)]


def _philox_reference(counter, key, rounds=10):
    """Philox4x32 on Python integers, transcribed from Salmon et al. (2011) / Random123's ``philox.h``."""
    x0, x1, x2, x3 = counter
    k0, k1 = key
    for _ in range(rounds):
        p0, p2 = 0xD2511F53 * x0, 0xCD9E8D57 * x2
        x0, x1, x2, x3 = (p2 >> 32) ^ x1 ^ k0, p2 & MASK32, (p0 >> 32) ^ x3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
    return [x0, x1, x2, x3]


def _draws(seed, n, dtype, counter=0, size=64, first_row=0):
    """``n`` keyed normals (flat): rows ``first_row ..`` of ``size`` columns at ``counter``."""
    index = torch.arange(first_row, first_row + n // size, dtype=torch.int64)
    return keyed_normal(seed, index, torch.tensor(counter), size, dtype).flatten()


def _chunks(seed, n, dtype, chunk=CHUNK, size=64):
    """``n`` keyed normals of ``seed`` in chunks of ``chunk`` (distinct sample indices), to keep memory modest."""
    for start in range(0, n, chunk):
        yield _draws(seed, min(chunk, n - start), dtype, size=size, first_row=start // size)


def _collision_probability(dtype) -> float:
    r"""The probability ``q`` that two independent standard normals rounded to ``dtype`` are equal.

    :math:`q = \sum_v p(v)^2` with :math:`p(v) \approx \phi(v)\,\mathrm{ulp}(v)`; on the binade
    :math:`[2^e, 2^{e+1})` the ulp is :math:`2^{e - m}` (``m`` mantissa bits) and
    :math:`\int \phi^2 = (\mathrm{erf}(b) - \mathrm{erf}(a)) / (4\sqrt\pi)`; both signs.
    """
    mantissa = round(-math.log2(torch.finfo(dtype).eps))     # stored mantissa bits: 23, 52
    q = 0.0
    for e in range(-80, 4):
        a, b = 2.0 ** e, 2.0 ** (e + 1)
        q += 2 * 2.0 ** (e - mantissa) * (special.erf(b) - special.erf(a)) / (4 * math.sqrt(math.pi))
    return q


def _shared_pairs(a: torch.Tensor, b: torch.Tensor) -> int:
    """The number of pairs ``(i, j)`` with ``a[i] == b[j]`` (exact equality of values)."""
    ua, ca = torch.unique(a.flatten(), return_counts=True)
    ub, cb = torch.unique(b.flatten(), return_counts=True)
    pos = torch.searchsorted(ub, ua).clamp_max(ub.numel() - 1)
    hit = ub[pos] == ua
    return int((ca[hit] * cb[pos[hit]]).sum())


def _repeated_pairs(x: torch.Tensor) -> int:
    """The number of pairs ``i < j`` with ``x[i] == x[j]``."""
    _, c = torch.unique(x.flatten(), return_counts=True)
    return int((c * (c - 1) // 2).sum())


def _count_bound(expected: float) -> float:
    """The largest count of a rare event (Poisson) allowed: its expectation plus ``K_COUNT`` standard deviations."""
    return expected + K_COUNT * math.sqrt(expected)


def _ks_pvalue(x_sorted: torch.Tensor) -> float:
    """Two-sided KS p-value of a sorted sample against N(0, 1) (as scipy's ``kstest``; the CDF in chunks)."""
    n, d = x_sorted.numel(), 0.0
    for s in range(0, n, CHUNK):
        cdf = special.ndtr(x_sorted[s:s + CHUNK].double().numpy())
        i = np.arange(s, s + cdf.size)
        d = max(d, float(((i + 1) / n - cdf).max()), float((cdf - i / n).max()))
    return float(stats.kstwo.sf(d, n))


def _assert_standard_normal(z: torch.Tensor, what: str) -> torch.Tensor:
    """KS p > 1e-3, mean within K/sqrt(n), variance within K sqrt(2/n) of 1 (sums in float64, in chunks).
    Returns the sorted sample."""
    x = z.flatten().clone()
    x.numpy().sort()                  # in place: no index tensor
    n = x.numel()
    p = _ks_pvalue(x)
    assert p > 1e-3, f"{what}: KS p-value {p:.2e} over n={n}"
    s1 = sum(float(x[s:s + CHUNK].double().sum()) for s in range(0, n, CHUNK))
    s2 = sum(float(x[s:s + CHUNK].double().square().sum()) for s in range(0, n, CHUNK))
    mean, var = s1 / n, (s2 - s1 * s1 / n) / (n - 1)
    assert abs(mean) < K / math.sqrt(n), f"{what}: mean {mean:.2e} over n={n}"
    assert abs(var - 1) < K * math.sqrt(2 / n), f"{what}: variance {var:.5f} over n={n}"
    return x


def _assert_uncorrelated(a: torch.Tensor, b: torch.Tensor, what: str):
    """Sample correlation of two equally long samples within K/sqrt(n) of 0."""
    a, b = a.flatten().double(), b.flatten().double()
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(r) < K / math.sqrt(a.numel()), f"{what}: correlation {r:.4f} over n={a.numel()}"


def _full(n, t):
    return torch.full((n,), float(t), dtype=F64)


# ------------------------------------------------------------------------------------------------
# 1. known answers and vectorisation
# ------------------------------------------------------------------------------------------------

# Random123 kat_vectors: (rounds, counter words, key words, output words)
KAT = [
    (10, (0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]


@pytest.mark.parametrize("rounds, counter, key, expected", KAT, ids=["zeros", "ones", "pi", "pi-7-rounds"])
def test_known_answers(rounds, counter, key, expected):
    assert _words(counter, key, rounds) == list(expected)
    assert _philox_reference(counter, key, rounds) == list(expected)     # the reference used below is right too


def _random_words(gen, shape):
    return torch.randint(0, 2 ** 32, shape, dtype=torch.int64, generator=gen)


def test_random_counters_and_keys_match_the_reference():
    gen = torch.Generator().manual_seed(0)
    c = [_random_words(gen, (64,)) for _ in range(4)]
    for key in (0, 1, 2 ** 32, 2 ** 64 - 1, 0x299F31D0A4093822, int(torch.randint(0, 2 ** 62, (1,), generator=gen))):
        out = philox4x32(*c, key)
        for row in range(64):
            counter = [int(w[row]) for w in c]
            want = _philox_reference(counter, (key & MASK32, key >> 32))
            assert [int(o[row]) & MASK32 for o in out] == want, f"key {key:#x}, counter {counter}"


def test_first_and_third_words_are_exact():
    """The documented contract: words 0 and 2 carry no bits above bit 31 (words 1 and 3 may)."""
    gen = torch.Generator().manual_seed(1)
    out = philox4x32(*[_random_words(gen, (1000,)) for _ in range(4)], 0x0123456789ABCDEF)
    for w in (out[0], out[2]):
        assert bool(((w >= 0) & (w <= MASK32)).all())


def test_a_batch_gives_row_by_row_what_single_evaluations_give():
    gen = torch.Generator().manual_seed(2)
    c = [_random_words(gen, (37,)) for _ in range(4)]
    key = 0xA4093822299F31D0
    batch = [o & MASK32 for o in philox4x32(*c, key)]
    for row in range(37):
        single = philox4x32(*[w[row:row + 1] for w in c], key)
        assert [int(o) & MASK32 for o in single] == [int(b[row]) for b in batch]
    # the caller's counters are not written to
    again = [o & MASK32 for o in philox4x32(*c, key)]
    assert all(torch.equal(a, b) for a, b in zip(again, batch))


def test_broadcast_counters():
    """(rows, 1) and (1, cols) counters give what the expanded (rows, cols) counters give, in any word."""
    gen = torch.Generator().manual_seed(3)
    rows, cols, key = 9, 13, 2 ** 64 - 12345
    col = [_random_words(gen, (rows, 1)) for _ in range(4)]
    row = [_random_words(gen, (1, cols)) for _ in range(4)]
    for pattern in ((col[0], row[1], col[2], row[3]), (row[0], col[1], row[2], col[3]),
                    (col[0], col[1], col[2], row[3]), (row[0], row[1], row[2], row[3])):
        out = philox4x32(*pattern, key)
        shape = torch.broadcast_shapes(*(w.shape for w in pattern))
        full = philox4x32(*(w.expand(shape).contiguous() for w in pattern), key)
        assert all(o.shape == shape for o in out)
        assert all(torch.equal(a & MASK32, b & MASK32) for a, b in zip(out, full))


# ------------------------------------------------------------------------------------------------
# 2. statistics: no shared or repeated values
# ------------------------------------------------------------------------------------------------

def test_no_repeated_brownian_values_among_2_20_samples():
    """The old generator repeated W(0.5) 133 times among 2**20 samples.  Expected repeated pairs of 2**20
    independent float64 normals (variance 1/2 here, which scales q by about sqrt(2)): 2**39 q64 sqrt(2) ~ 2e-5,
    so none is allowed."""
    n = 2 ** 20
    bm = KeyedBrownian(0.0, 1.0, (n, 1), seed=0, dtype=F64)
    w = bm.value(_full(n, 0.5))
    assert _repeated_pairs(w) == 0
    assert abs(float(w.var()) - 0.5) < K * 0.5 * math.sqrt(2 / n)


@pytest.mark.parametrize("seeds", [(27206, 27207), (5195, 7973)])
def test_adjacent_seeds_share_no_values_float64(seeds):
    """2**20 float64 draws per seed: expected shared pairs 2**40 q64 ~ 3e-5, so none is allowed (the old
    generator gave the same values permuted)."""
    n = 2 ** 20
    a, b = (_draws(s, n, F64) for s in seeds)
    assert 2 ** 40 * _collision_probability(F64) < 1e-3
    assert _shared_pairs(a, b) == 0
    assert _repeated_pairs(torch.cat([a, b])) == 0


@pytest.mark.parametrize("seeds", [(27206, 27207), (5195, 7973)])
def test_adjacent_seeds_share_only_chance_values_float32(seeds):
    """2**20 float32 draws per seed: float32 normals do coincide by chance; expected shared pairs
    E = 2**40 q32 = 15,046, allowed E + 5 sqrt(E) = 15,660 (the old generator shared all 2**20)."""
    n = 2 ** 20
    a, b = (_draws(s, n, torch.float32) for s in seeds)
    expected = n * n * _collision_probability(torch.float32)
    assert 14_000 < expected < 16_000                       # the model's number, stated above
    shared = _shared_pairs(a, b)
    assert shared <= _count_bound(expected), f"{shared} shared values, expected {expected:.0f}"


@pytest.mark.parametrize("seeds", [(27206, 27207), (5195, 7973)])
def test_adjacent_seeds_sample_different_points(seeds):
    """An ancestral sampler from the same x_T with two adjacent seeds: no sample of one equals any of the other
    (no coordinate value is shared either; float64, expected coincidences ~ 0)."""
    sde = sdekit.VPSDE()
    data = GaussianMixture.default_2d(sde)
    x_T = sde.prior_sampling((1024, 2), generator=torch.Generator().manual_seed(0)).to(F64)
    rev = sdekit.reverse(sde, data.score)
    a, b = (rev.solve(x_T, method="euler_ancestral", steps=30, seed=s).x for s in seeds)
    assert a.shape == b.shape == (1024, 2) and bool(torch.isfinite(a).all() & torch.isfinite(b).all())
    assert not bool((a[:, None, :] == b[None, :, :]).all(-1).any()), "a sample of one seed equals one of the other"
    assert _shared_pairs(a, b) == 0
    # and each seed is its own, reproducible, sample
    assert torch.equal(a, rev.solve(x_T, method="euler_ancestral", steps=30, seed=seeds[0]).x)


def test_two_samples_of_one_seed_share_no_tree_normals():
    """Samples 115784 and 22907 of seed 0 (a colliding pair of the old generator): W at the 4097 points of the
    dyadic partition of [0, 1] into 4096 intervals (tree nodes at depth 12, so the increments are exactly
    i.i.d. N(0, 1/4096)).  The increments of the two samples are uncorrelated at lags -1, 0, 1 (4/sqrt(4096)),
    each has variance 1/4096 (4 sqrt(2/4096) relative), and no value or increment of one equals one of the other."""
    m = 4096
    t = torch.arange(m + 1, dtype=F64) / m
    paths = {}
    for i in (115784, 22907):
        bm = KeyedBrownian(0.0, 1.0, (m + 1, 1), seed=0, index=torch.full((m + 1,), i), depth=12, dtype=F64)
        paths[i] = bm.value(t).flatten()
    a, b = paths[115784], paths[22907]
    assert a[0] == 0 and b[0] == 0
    za, zb = (torch.diff(w) * math.sqrt(m) for w in (a, b))
    for z, i in ((za, 115784), (zb, 22907)):
        assert abs(float(z.var()) - 1) < K * math.sqrt(2 / m), f"sample {i}: increment variance {float(z.var())}"
        _assert_uncorrelated(z[1:], z[:-1], f"sample {i}: neighbouring increments")
    _assert_uncorrelated(za, zb, "the two samples' increments")
    _assert_uncorrelated(za[1:], zb[:-1], "the two samples' increments, lag 1")
    _assert_uncorrelated(za[:-1], zb[1:], "the two samples' increments, lag -1")
    assert _shared_pairs(a[1:], b[1:]) == 0
    assert _shared_pairs(za, zb) == 0
    # the default depth (24) gives the same path at these nodes: the tree normals are the sample's own
    deep = KeyedBrownian(0.0, 1.0, (2, 1), seed=0, index=torch.tensor([115784, 22907]), dtype=F64)
    for k in (1, 1000, 2048, 4095, 4096):
        assert torch.equal(deep.value(_full(2, k / m)).flatten(), torch.stack([a[k], b[k]]))


# ------------------------------------------------------------------------------------------------
# 2. statistics: Brownian increments across scales (depth 10: leaf width w = 1/1024 on [0, 1])
# ------------------------------------------------------------------------------------------------

W10 = 1 / 1024


@pytest.mark.parametrize("start, span", [
    (0.125, 1 / 8),                # coarse
    (5 * W10, W10),                # one leaf, on leaf boundaries (tree nodes)
    (0.3 * W10, W10),              # one leaf's width, each increment across a leaf boundary
    (0.5 * W10, 3 * W10),          # three leaves
    (0.3 * W10, 1.4 * W10),        # 0.3/1024 -> 1.7/1024 -> 3.1/1024 -> 4.5/1024: in leaves 0, 1, 3, 4
], ids=["1/8", "leaf-aligned", "leaf-unaligned", "3-leaves", "across-boundaries"])
def test_increments_have_variance_span_and_are_uncorrelated(start, span):
    """Four consecutive increments of length ``span`` (endpoints in distinct leaves, so the joint law is exact):
    variance ``span`` within 4 sqrt(2/n) relative and lag-1, lag-2 correlations within 4/sqrt(n); n = 20000."""
    n = 20000
    bm = KeyedBrownian(0.0, 1.0, (n, 1), seed=31, depth=10, dtype=F64)
    assert bm.leaf == W10
    times = [start + k * span for k in range(5)]
    assert len({int(t / W10) for t in times}) == len(times)          # the points lie in distinct leaves
    w = [bm.value(_full(n, t)).flatten() for t in times]
    z = [(hi - lo) / math.sqrt(span) for lo, hi in zip(w, w[1:])]
    for k, zk in enumerate(z):
        assert abs(float(zk.var()) - 1) < K * math.sqrt(2 / n), f"increment {k}: variance {float(zk.var()):.4f}"
        assert abs(float(zk.mean())) < K / math.sqrt(n)
    for k in range(len(z) - 1):
        _assert_uncorrelated(z[k], z[k + 1], f"increments {k} and {k + 1}")
    for k in range(len(z) - 2):
        _assert_uncorrelated(z[k], z[k + 2], f"increments {k} and {k + 2}")


# ------------------------------------------------------------------------------------------------
# 2. statistics: normality
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_keyed_normal_is_standard_normal_on_a_million_draws(dtype):
    z = _draws(123, 2 ** 20, dtype)
    assert z.dtype == dtype and z.numel() == 2 ** 20
    _assert_standard_normal(z, f"{dtype} keyed_normal")


def _tail_expectation(threshold: float) -> float:
    """P(|z| > threshold) for a standard normal: 6.334e-5 at 4, 5.733e-7 at 5."""
    return 2 * stats.norm.sf(threshold)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_keyed_normal_on_2e7_draws(dtype):
    """20 * 2**20 = 20,971,520 draws (in chunks of 2**20): KS p > 1e-3, mean and variance within 4 standard
    errors, counts of |z| > 4 (expected 1,328, sd 36) and |z| > 5 (expected 12.0, sd 3.5) within 5 binomial
    standard deviations, and in float64 no repeated value (expected repeated pairs n**2/2 q64 = 0.0056).
    float32 radii come from 24-bit uniforms: P(|z| > 5) is 5.62e-7 there, 2% below the normal's, well inside."""
    n = 20 * 2 ** 20
    counts = {4.0: 0, 5.0: 0}
    z, at = torch.empty(n, dtype=dtype), 0
    for chunk in _chunks(2024, n, dtype):
        for threshold in counts:
            counts[threshold] += int((chunk.abs() > threshold).sum())
        z[at:at + chunk.numel()] = chunk
        at += chunk.numel()
    assert at == n
    x = _assert_standard_normal(z, f"{dtype} keyed_normal")
    del z
    for threshold, count in counts.items():
        p = _tail_expectation(threshold)
        sd = math.sqrt(n * p * (1 - p))
        assert abs(count - n * p) < K_COUNT * sd, f"|z| > {threshold}: {count}, expected {n * p:.1f} +- {sd:.1f}"
    if dtype == F64:
        assert n * n / 2 * _collision_probability(F64) < 0.01
        assert int((x[1:] == x[:-1]).sum()) == 0, "repeated float64 values"
