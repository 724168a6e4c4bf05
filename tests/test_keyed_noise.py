"""Keyed noise: ``keyed_normal`` is standard normal and uncorrelated; ``KeyedBrownian`` is Brownian motion,
one path per sample keyed by (seed, sample index), independent of the batch, the query order and refinement.

Statistical checks use fixed seeds; their tolerances are 4 standard errors computed from the sample size
(a sample mean of N(0, 1) has standard error 1/sqrt(n), a sample variance sqrt(2/n), a correlation
1/sqrt(n)); KS tests ask p > 1e-3.  float32 and float64 draw different streams of the same law (24-bit and
53-bit uniforms), so each is checked in its own right and for bit-for-bit reproducibility, not against the other.
``tests/test_philox.py`` checks the generator itself and the statistics on millions of draws.
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


def _assert_standard_normal(z, what):
    """KS p > 1e-3, mean within K / sqrt(n) of 0 and variance within K sqrt(2 / n) of 1."""
    z = z.flatten().double()
    n = z.numel()
    p = stats.kstest(z.numpy(), "norm").pvalue
    assert p > 1e-3, f"{what}: KS p-value {p:.2e} over n={n}"
    assert abs(float(z.mean())) < K / math.sqrt(n), f"{what}: mean {float(z.mean()):.4f} over n={n}"
    assert abs(float(z.var()) - 1) < K * math.sqrt(2 / n), f"{what}: variance {float(z.var()):.4f} over n={n}"


def _assert_no_shared_values(a, b, what):
    """No value of ``a`` equals a value of ``b`` (a few thousand float64 normals: expected coincidences ~1e-9)."""
    assert not bool(torch.isin(a.flatten(), b.flatten()).any()), f"{what}: shared values"


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


def test_keyed_normal_float32_is_standard_normal_and_reproducible():
    """float32 draws are their own stream (24-bit uniforms), not float64's rounded: standard normal in their own
    right, uncorrelated, and the same bits on every call, in any batch."""
    z = _normals(rows=4000, size=16, dtype=torch.float32)
    assert z.dtype == torch.float32 and z.shape == (4000, 16)
    _assert_standard_normal(z, "float32 keyed_normal")
    for col in (0, 7, 8, 15):                   # cosine and sine columns of both lanes
        assert stats.kstest(z[:, col].double().numpy(), "norm").pvalue > 1e-3
    _assert_uncorrelated(z[:-1], z[1:], "float32: neighbouring rows")
    assert torch.equal(z, _normals(rows=4000, size=16, dtype=torch.float32))
    idx = torch.tensor([3999, 0, 17, 2 ** 47], dtype=torch.int64)
    some = _normals(index=idx, size=16, dtype=torch.float32)
    assert torch.equal(some[:3], z[[3999, 0, 17]])


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


def test_float32_path_is_brownian_and_reproducible():
    """A float32 path is Brownian motion in its own right (its own stream of normals) and the same bits whatever
    the batch, the query order or the object that answers."""
    n = 4000
    times = [0.0, 0.1, 0.35, 0.6, 0.6001, 1.0]
    bm = KeyedBrownian(0.0, 1.0, (n, 1), seed=11, dtype=torch.float32)
    w = [bm.value(torch.full((n,), t, dtype=torch.float64)) for t in times]
    assert all(wk.dtype == torch.float32 for wk in w)
    assert torch.equal(w[0], torch.zeros(n, 1))
    z = [(b - a).double() / math.sqrt(tb - ta) for a, b, ta, tb in zip(w, w[1:], times, times[1:])]
    for k, zk in enumerate(z):
        _assert_standard_normal(zk, f"float32 increment {k}")
    for a in range(len(z)):
        for b in range(a + 1, len(z)):
            _assert_uncorrelated(z[a], z[b], f"float32 increments {a} and {b}")
    again = KeyedBrownian(0.0, 1.0, (n, 1), seed=11, dtype=torch.float32)
    for t, wt in reversed(list(zip(times, w))):
        assert torch.equal(again.value(torch.full((n,), t, dtype=torch.float64)), wt)
    big = _path(50, dtype=torch.float32)
    assert big.dtype == torch.float32
    assert torch.equal(_path(1, index=torch.tensor([4]), dtype=torch.float32)[:, 0], big[:, 4])
    assert torch.equal(_path(50, dtype=torch.float32), big)


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


# ------------------------------------------------------------------------------------------------
# KeyedBrownian.step_normal: fresh noise for a step, one draw
# ------------------------------------------------------------------------------------------------

def _full(n, t):
    return torch.full((n,), float(t), dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_step_normal_is_a_reproducible_standard_normal(dtype):
    n = 3000
    bm = KeyedBrownian(0.0, 1.0, (n, 2), seed=8, dtype=dtype)
    t = _full(n, 0.37)
    z = bm.step_normal(t)
    assert z.shape == (n, 2) and z.dtype == dtype
    _assert_standard_normal(z, "step_normal")
    _assert_uncorrelated(z[:, 0], z[:, 1], "step_normal's two coordinates")
    _assert_uncorrelated(z[:-1], z[1:], "step_normal's neighbouring samples")
    assert torch.equal(z, bm.step_normal(t.clone()))
    assert torch.equal(z, KeyedBrownian(0.0, 1.0, (n, 2), seed=8, dtype=dtype).step_normal(t))
    assert not torch.isclose(z, KeyedBrownian(0.0, 1.0, (n, 2), seed=9, dtype=dtype).step_normal(t)).any()


def test_step_normal_is_independent_of_the_path_and_the_tagged_normals():
    """At the same time, step_normal, the path's value, its increment from t, and normal(t, tag) for any tag are
    different draws: uncorrelated, and no value shared (float64)."""
    n = 3000
    bm = KeyedBrownian(0.0, 1.0, (n, 2), seed=8, dtype=torch.float64)
    t = _full(n, 0.37)
    z = bm.step_normal(t)
    w = bm.value(t)
    dw = bm.increment(t, _full(n, 0.38))
    for other, what in ((w, "W(t)"), (dw, "W(t + 0.01) - W(t)")):
        _assert_uncorrelated(z, other, f"step_normal and {what}")
    for tag in (0, 1, 255, 2 ** sdekit._keyed._TAG_BITS - 1):
        tagged = bm.normal(t, tag)
        _assert_uncorrelated(z, tagged, f"step_normal and normal(t, tag={tag})")
        _assert_no_shared_values(z, tagged, f"step_normal and normal(t, tag={tag})")


def test_step_normal_is_fresh_for_each_start_time():
    n = 3000
    bm = KeyedBrownian(0.0, 1.0, (n, 2), seed=8, dtype=torch.float64)
    z = bm.step_normal(_full(n, 0.37))
    step = 2.0 ** -40                            # a few of the 2**-44 time positions away
    for t in (0.38, 0.37 + step, 0.0, 1.0):
        other = bm.step_normal(_full(n, t))
        _assert_uncorrelated(z, other, f"step_normal at 0.37 and {t}")
        _assert_no_shared_values(z, other, f"step_normal at 0.37 and {t}")
    # per-sample start times: each sample gets its own time's normal
    t = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    mixed = bm.step_normal(t)
    for i in (0, 1234, n - 1):
        assert torch.equal(mixed[i], bm.step_normal(_full(n, float(t[i])))[i])


def test_step_normal_does_not_depend_on_the_batch():
    """Sample i's step normal is keyed by its index, not its row: the same in any batch, order or subset."""
    t = 0.61
    big = KeyedBrownian(0.0, 1.0, (300, 3), seed=21, dtype=torch.float64)
    z = big.step_normal(_full(300, t))
    one = KeyedBrownian(0.0, 1.0, (1, 3), seed=21, index=torch.tensor([4]), dtype=torch.float64)
    assert torch.equal(one.step_normal(_full(1, t))[0], z[4])
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    shuffled = KeyedBrownian(0.0, 1.0, (300, 3), seed=21, index=perm, dtype=torch.float64)
    assert torch.equal(shuffled.step_normal(_full(300, t)), z[perm])
    keep = torch.tensor([299, 3, 150])
    assert torch.equal(big.rows(keep).step_normal(_full(3, t)), z[keep])
    # the depth of the tree plays no part in a step normal
    shallow = KeyedBrownian(0.0, 1.0, (300, 3), seed=21, depth=3, dtype=torch.float64)
    assert torch.equal(shallow.step_normal(_full(300, t)), z)


# ------------------------------------------------------------------------------------------------
# KeyedBrownian: depth, leaves and the grid
# ------------------------------------------------------------------------------------------------

def _leaves(times, t0, t1, depth):
    """The leaf (0 .. 2**depth - 1) each time falls in."""
    u = (times.double() - t0) / (t1 - t0)
    return torch.clamp((u * 2 ** depth).floor(), max=2 ** depth - 1).to(torch.int64)


def test_depth_for_deepens_for_a_fine_grid():
    coarse = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)          # step 1/8
    fine = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)         # step 1e-3, below a depth-2..9 leaf
    assert KeyedBrownian.depth_for(0.0, 1.0, coarse, depth=6) == 6
    assert KeyedBrownian.depth_for(0.0, 1.0, fine) == 24               # the default floor
    need = KeyedBrownian.depth_for(0.0, 1.0, fine, depth=2)
    assert need > 9 and 2.0 ** -need < 1e-3
    assert _leaves(fine[:-1], 0.0, 1.0, need).unique().numel() == 1000  # one time a leaf (t1 is a node)
    assert KeyedBrownian.depth_for(0.0, 1.0, fine.flip(0), depth=2) == need          # the order plays no part
    assert KeyedBrownian.depth_for(0.0, 1.0, torch.cat([fine, fine]), depth=2) == need  # nor repeated times
    assert KeyedBrownian.depth_for(0.0, 1.0, torch.tensor([0.5]), depth=7) == 7
    ulp_apart = torch.tensor([0.5, math.nextafter(0.5, 1.0)], dtype=torch.float64)
    assert KeyedBrownian.depth_for(0.0, 1.0, ulp_apart, depth=2) == KeyedBrownian.MAX_DEPTH   # capped
    # on another span the leaf scales with it
    assert KeyedBrownian.depth_for(10.0, 14.0, 10.0 + 4 * fine, depth=2) == need


def test_separates_and_leaf():
    fine = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    shallow = KeyedBrownian(0.0, 1.0, (1, 1), seed=0, depth=2)
    assert shallow.leaf == 0.25
    assert not shallow.separates(fine)
    assert shallow.separates(torch.tensor([0.0, 0.6]))
    need = KeyedBrownian.depth_for(0.0, 1.0, fine, depth=2)
    deep = KeyedBrownian(0.0, 1.0, (1, 1), seed=0, depth=need)
    assert deep.leaf == 2.0 ** -need and deep.separates(fine)
    assert KeyedBrownian(0.0, 1.0, (1, 1), seed=0).separates(fine)     # depth 24


SDE = sdekit.VPSDE()


def _reverse_problem(batch=16):
    from sdekit.validation import GaussianMixture
    rev = sdekit.reverse(SDE, GaussianMixture.default_2d(SDE).score)
    x = SDE.prior_sampling((batch, 2), generator=torch.Generator().manual_seed(0)).to(torch.float64)
    return rev, x


def _solve_with_a_shallow_path_is_refused(method):
    rev, x = _reverse_problem()
    shallow = KeyedBrownian(SDE.eps, SDE.T, x.shape, seed=0, depth=2, dtype=torch.float64)
    with pytest.raises(sdekit.SDEKitError, match=r"depth=\d+") as err:
        rev.solve(x, method=method, steps=30, noise=shallow)
    need = int(str(err.value).rsplit("depth=", 1)[1].split()[0].rstrip(".,;)"))
    deep = KeyedBrownian(SDE.eps, SDE.T, x.shape, seed=0, depth=need, dtype=torch.float64)
    assert rev.solve(x, method=method, steps=30, noise=deep).success


@pytest.mark.parametrize("method", ["euler_ancestral", "dpmpp_2m_sde", "pc"])
def test_solve_refuses_a_user_path_too_shallow_for_its_grid(method):
    """A 30-step grid has steps below a depth-2 tree's leaf (span / 4): the values there would share a leaf's
    normal, so the solve refuses the path and names the depth to build it with."""
    _solve_with_a_shallow_path_is_refused(method)


def test_torchsde_method_refuses_a_user_path_too_shallow_for_its_grid():
    """The same for a torchsde method reading the keyed path (it takes W at each grid time, so within a leaf
    its increments would not be Brownian)."""
    _solve_with_a_shallow_path_is_refused("euler")


# ------------------------------------------------------------------------------------------------
# out-of-range arguments
# ------------------------------------------------------------------------------------------------

def test_keyed_arguments_out_of_range_raise_sdekit_errors():
    idx = torch.arange(3, dtype=torch.int64)
    for seed in (2 ** 64, -1, 2 ** 70, 1.0, True):
        with pytest.raises(sdekit.SDEKitError, match="seed"):
            keyed_normal(seed, idx, torch.zeros(3, dtype=torch.int64), 2)
        with pytest.raises(sdekit.SDEKitError, match="seed"):
            KeyedBrownian(0.0, 1.0, (3, 1), seed=seed)
    assert keyed_normal(2 ** 64 - 1, idx, torch.zeros(3, dtype=torch.int64), 2).shape == (3, 2)
    assert KeyedBrownian(0.0, 1.0, (3, 1), seed=2 ** 64 - 1).value(_full(3, 0.5)).shape == (3, 1)

    for bad in (2 ** 48, 2 ** 62, -1):
        index = torch.tensor([0, bad, 2], dtype=torch.int64)
        with pytest.raises(sdekit.SDEKitError, match="2\\*\\*48"):
            keyed_normal(0, index, torch.zeros(3, dtype=torch.int64), 2)
        with pytest.raises(sdekit.SDEKitError, match="2\\*\\*48"):
            KeyedBrownian(0.0, 1.0, (3, 1), seed=0, index=index)
    top = torch.tensor([2 ** 48 - 1], dtype=torch.int64)
    assert torch.isfinite(keyed_normal(0, top, torch.zeros(1, dtype=torch.int64), 2)).all()

    for counter in (2 ** 52, 2 ** 60, -1):
        with pytest.raises(sdekit.SDEKitError, match="counter"):
            keyed_normal(0, idx, torch.tensor([0, counter, 0]), 2)
        with pytest.raises(sdekit.SDEKitError, match="counter"):
            keyed_normal(0, idx, counter, 2)
    assert keyed_normal(0, idx, 2 ** 52 - 1, 2).shape == (3, 2)

    bm = KeyedBrownian(0.0, 1.0, (3, 1), seed=0)
    tags = 2 ** sdekit._keyed._TAG_BITS           # the documented bound of normal()'s tags
    for tag in (tags, -1, 1.0, True):
        with pytest.raises(sdekit.SDEKitError, match="tag"):
            bm.normal(_full(3, 0.5), tag=tag)
    assert bm.normal(_full(3, 0.5), tag=tags - 1).shape == (3, 1)


def test_large_draws_go_in_slices_of_rows_with_the_same_numbers(monkeypatch):
    """A draw too large for one pass is generated a slice of rows at a time: each row's numbers are its key's."""
    import sdekit._keyed as keyed
    idx = torch.arange(3000, dtype=torch.int64)
    bm = KeyedBrownian(0.0, 1.0, (3000, 7), seed=2, dtype=torch.float64)
    t = torch.full((3000,), 0.3, dtype=torch.float64)
    whole = {dt: keyed_normal(1, idx, torch.full_like(idx, 5), 7, dt) for dt in (torch.float32, torch.float64)}
    step = bm.step_normal(t)
    monkeypatch.setattr(keyed, "_CHUNK", 16)                  # 4 rows a slice
    for dt, z in whole.items():
        assert torch.equal(keyed_normal(1, idx, torch.full_like(idx, 5), 7, dt), z)
    assert torch.equal(bm.step_normal(t), step)


def test_half_precision_draws_come_in_the_dtype_asked_for():
    idx = torch.arange(10, dtype=torch.int64)
    z = keyed_normal(0, idx, torch.zeros_like(idx), 4, torch.float16)
    assert z.dtype == torch.float16
    assert torch.equal(z, keyed_normal(0, idx, torch.zeros_like(idx), 4, torch.float32).half())
