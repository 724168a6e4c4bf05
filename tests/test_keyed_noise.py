"""Keyed noise: ``keyed_normal`` is standard normal and uncorrelated; ``KeyedBrownian`` is Brownian motion,
one path per sample keyed by (seed, sample index), independent of the batch, the query order and refinement.

Statistical checks use fixed seeds; their tolerances are 4 standard errors computed from the sample size
(a sample mean of N(0, 1) has standard error 1/sqrt(n), a sample variance sqrt(2/n), a correlation
1/sqrt(n)); KS tests ask p > 1e-3.
"""

import math

import pytest
import torch
from scipy import stats

import sdekit
from sdekit import KeyedBrownian, keyed_normal

K = 4.0   # standard errors allowed


def _normals(seed=3, rows=4000, size=6, counter=1, dtype=torch.float64, index=None):
    index = torch.arange(rows, dtype=torch.int64) if index is None else index
    return keyed_normal(seed, index, torch.full_like(index, counter), size, dtype)


def _assert_uncorrelated(a, b, what):
    """Sample correlation of two equally long 1-D samples within K / sqrt(n) of 0."""
    a, b = a.flatten().double(), b.flatten().double()
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(r) < K / math.sqrt(a.numel()), f"{what}: correlation {r:.4f} over n={a.numel()}"


# ------------------------------------------------------------------------------------------------
# keyed_normal
# ------------------------------------------------------------------------------------------------

def test_keyed_normal_is_standard_normal():
    z = _normals(rows=4000, size=5)            # 20000 draws, odd size: the last pair's sine is dropped
    assert z.shape == (4000, 5) and z.dtype == torch.float64
    flat = z.flatten()
    n = flat.numel()
    assert stats.kstest(flat.numpy(), "norm").pvalue > 1e-3
    assert abs(float(flat.mean())) < K / math.sqrt(n)
    assert abs(float(flat.var()) - 1) < K * math.sqrt(2 / n)
    for col in range(5):                        # cosine and sine columns alike
        assert stats.kstest(z[:, col].numpy(), "norm").pvalue > 1e-3


def test_keyed_normal_columns_and_rows_uncorrelated():
    z = _normals(rows=3000, size=8)
    c = torch.corrcoef(z.T)
    off = c - torch.diag(torch.diagonal(c))
    assert float(off.abs().max()) < K / math.sqrt(3000), "columns correlated"
    _assert_uncorrelated(z[:-1], z[1:], "neighbouring rows (sample indices)")
    _assert_uncorrelated(z[:, :-1], z[:, 1:], "neighbouring columns (cosine/sine pairs)")
    other = _normals(rows=3000, size=8, counter=2)
    _assert_uncorrelated(z, other, "counters 1 and 2 of the same samples")


def test_keyed_normal_is_a_function_of_its_key():
    idx = torch.tensor([5, 0, 17, 2 ** 40], dtype=torch.int64)
    a = _normals(index=idx, size=4)
    b = _normals(index=idx.flip(0), size=4).flip(0)
    assert torch.equal(a, b)
    assert not torch.equal(a, _normals(seed=4, index=idx, size=4))
    assert not torch.equal(a, _normals(counter=9, index=idx, size=4))


def test_keyed_normal_float32_matches_float64():
    a = _normals(rows=2000, size=16, dtype=torch.float32)
    b = _normals(rows=2000, size=16, dtype=torch.float64)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# KeyedBrownian: the law
# ------------------------------------------------------------------------------------------------

def test_brownian_increments_independent_normal():
    n = 4000
    times = [0.0, 0.1, 0.35, 0.6, 0.6001, 1.0]
    bm = KeyedBrownian(0.0, 1.0, (n, 1), seed=11, dtype=torch.float64)
    w = [bm.value(torch.full((n,), t, dtype=torch.float64)).flatten() for t in times]
    assert torch.equal(w[0], torch.zeros(n, dtype=torch.float64))         # W(t0) = 0
    z = [(b - a) / math.sqrt(tb - ta) for a, b, ta, tb in zip(w, w[1:], times, times[1:])]
    for k, zk in enumerate(z):
        assert stats.kstest(zk.numpy(), "norm").pvalue > 1e-3, f"increment {k} is not N(0, dt)"
        assert abs(float(zk.var()) - 1) < K * math.sqrt(2 / n), f"increment {k}: variance {float(zk.var()):.4f}"
        assert abs(float(zk.mean())) < K / math.sqrt(n)
    for a in range(len(z)):
        for b in range(a + 1, len(z)):
            _assert_uncorrelated(z[a], z[b], f"increments {a} and {b}")


def test_brownian_value_has_variance_t_minus_t0_and_covariance_min():
    n = 4000
    bm = KeyedBrownian(0.5, 2.0, (n, 2), seed=2, dtype=torch.float64)
    s, t = 0.9, 1.7
    ws = bm.value(torch.full((n,), s, dtype=torch.float64)).flatten()
    wt = bm.value(torch.full((n,), t, dtype=torch.float64)).flatten()
    m = ws.numel()
    # Var W(s) = s - t0; Cov(W(s), W(t)) = s - t0 (standard error sqrt((var_s var_t + cov^2) / m))
    assert abs(float(ws.var()) - 0.4) < K * 0.4 * math.sqrt(2 / m)
    assert abs(float(wt.var()) - 1.2) < K * 1.2 * math.sqrt(2 / m)
    cov = float(torch.cov(torch.stack([ws, wt]))[0, 1])
    assert abs(cov - 0.4) < K * math.sqrt((0.4 * 1.2 + 0.4 ** 2) / m)


def test_brownian_normal_tags_are_fresh_standard_normals():
    n = 3000
    bm = KeyedBrownian(0.0, 1.0, (n, 2), seed=8, dtype=torch.float64)
    t = torch.full((n,), 0.37, dtype=torch.float64)
    z0, z1 = bm.normal(t, tag=0), bm.normal(t, tag=1)
    z_other_t = bm.normal(torch.full((n,), 0.38, dtype=torch.float64), tag=0)
    assert torch.equal(z0, bm.normal(t.clone(), tag=0))
    for z in (z0, z1, z_other_t):
        assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    _assert_uncorrelated(z0, z1, "tags 0 and 1")
    _assert_uncorrelated(z0, z_other_t, "times 0.37 and 0.38")
    dw = bm.value(torch.full((n,), 0.5, dtype=torch.float64))
    _assert_uncorrelated(z0, dw, "tagged normal and the path")


# ------------------------------------------------------------------------------------------------
# KeyedBrownian: one path per sample
# ------------------------------------------------------------------------------------------------

QUERY = (0.9, 0.03, 0.5, 0.5000001, 0.77)


def _path(batch, index=None, seed=21, dtype=torch.float64, times=QUERY):
    bm = KeyedBrownian(0.0, 1.0, (batch, 3), seed=seed, index=index, dtype=dtype)
    return torch.stack([bm.value(torch.full((batch,), t, dtype=torch.float64)) for t in times])


def test_sample_path_does_not_depend_on_batch():
    big = _path(300)
    one = _path(1, index=torch.tensor([4], dtype=torch.int64))
    seven = _path(7)
    assert torch.equal(one[:, 0], big[:, 4])
    assert torch.equal(seven, big[:, :7])
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    shuffled = _path(300, index=perm)
    assert torch.equal(shuffled, big[:, perm])
    subset = torch.tensor([299, 3, 150], dtype=torch.int64)
    assert torch.equal(_path(3, index=subset), big[:, subset])


def test_sample_path_per_sample_times():
    """Each sample queried at its own time gets its own path's value there."""
    batch = 6
    bm = KeyedBrownian(0.0, 1.0, (batch, 2), seed=5, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, batch, dtype=torch.float64)
    mixed = bm.value(t)
    for i in range(batch):
        assert torch.equal(mixed[i], bm.value(torch.full((batch,), float(t[i]), dtype=torch.float64))[i])


def test_values_do_not_depend_on_query_order_or_refinement():
    base = _path(20)
    order = [4, 1, 3, 0, 2]
    reordered = _path(20, times=[QUERY[k] for k in order])
    assert torch.equal(reordered, base[order])
    # refining: many more times queried in between, the original times give the same values
    fine = sorted(set(QUERY) | {k / 64 for k in range(65)})
    refined = _path(20, times=fine)
    assert torch.equal(refined[[fine.index(t) for t in QUERY]], base)


def test_increment_reuses_the_last_end_exactly():
    batch = 9
    bm = KeyedBrownian(0.0, 1.0, (batch, 2), seed=6, dtype=torch.float64)
    ts = [torch.full((batch,), t, dtype=torch.float64) for t in (1.0, 0.7, 0.31, 0.0)]
    total = torch.zeros(batch, 2, dtype=torch.float64)
    for ta, tb in zip(ts, ts[1:]):
        inc = bm.increment(ta, tb)                  # ta is the previous call's tb: the cached value is used
        fresh = KeyedBrownian(0.0, 1.0, (batch, 2), seed=6, dtype=torch.float64)
        assert torch.equal(inc, fresh.value(tb) - fresh.value(ta))
        total = total + inc
    torch.testing.assert_close(total, bm.value(ts[-1]) - bm.value(ts[0]), rtol=0, atol=1e-12)


def test_seed_changes_the_path():
    a, b = _path(10, seed=1), _path(10, seed=2)
    assert not torch.isclose(a[1:], b[1:]).any()


def test_float32_path_matches_float64():
    a = _path(50, dtype=torch.float32)
    b = _path(50, dtype=torch.float64)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_sdekit_errors():
    with pytest.raises(sdekit.SDEKitError, match="t0 < t1"):
        KeyedBrownian(1.0, 0.0, (2, 1), seed=0)
    with pytest.raises(sdekit.SDEKitError, match="seed"):
        KeyedBrownian(0.0, 1.0, (2, 1), seed=-1)
    with pytest.raises(sdekit.SDEKitError, match="index"):
        KeyedBrownian(0.0, 1.0, (2, 1), seed=0, index=torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(sdekit.SDEKitError, match="non-negative"):
        KeyedBrownian(0.0, 1.0, (2, 1), seed=0, index=torch.tensor([0, -1]))
    with pytest.raises(sdekit.SDEKitError, match="batch"):
        KeyedBrownian(0.0, 1.0, (0, 1), seed=0)


def test_rows_is_the_same_path_for_a_subset_of_samples():
    """``rows(keep)`` (finished samples leaving an adaptive batch) answers as a path built for those indices."""
    bm = KeyedBrownian(0.0, 2.0, (9, 3), seed=5, dtype=torch.float64, index=torch.arange(9, dtype=torch.int64) * 7)
    keep = torch.tensor([1, 4, 8])
    fresh = KeyedBrownian(0.0, 2.0, (3, 3), seed=5, dtype=torch.float64, index=bm.index[keep])
    sub = bm.rows(keep)
    t = torch.tensor([0.3, 1.1, 1.9], dtype=torch.float64)
    assert sub.shape == (3, 3) and torch.equal(sub.index, fresh.index)
    assert torch.equal(sub.value(t), fresh.value(t)) and torch.equal(sub.normal(t, 2), fresh.normal(t, 2))
    assert torch.equal(sub.value(t), bm.value(torch.zeros(9, dtype=torch.float64).index_put((keep,), t))[keep])
