"""Shared helpers of the core test suite: an exact Gaussian score and a recording score wrapper.

The score and moments here are the textbook formulas, written out so the tests check sdekit against
them; the probability-flow map is ``sdekit.validation``'s (one implementation, tested there).

For data :math:`N(\\mu, \\Sigma)` under a linear SDE with mean coefficient :math:`\\alpha(t)` and
std :math:`\\sigma(t)`, :math:`p_t = N(\\alpha\\mu, \\alpha^2\\Sigma + \\sigma^2 I)` and the score is
:math:`-(\\alpha^2\\Sigma + \\sigma^2 I)^{-1}(x - \\alpha\\mu)`.
"""

import math
import os

import pytest
import torch
from hypothesis import settings

# Hypothesis: the default profile is seeded (derandomized) and bounded so the suite fits CI's budget;
# SDEKIT_HYPOTHESIS_PROFILE=thorough runs many more random examples (tests leave max_examples to the profile).
settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None, database=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("SDEKIT_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Run the whole suite on one intra-op thread (``SDEKIT_TEST_THREADS=N`` to change), then restore the count.

    The tests' tensors are small: one thread does their elementwise work in microseconds, while several
    threads on a loaded machine mostly wait for each other (measured on two shared cores: 12-28x slower).
    sdekit itself never changes torch's thread count; the test suite chooses it here, as a user would.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SDEKIT_TEST_THREADS", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Gaussian:
    """Data ``N(mu, Sigma)`` on an event of shape ``mu.shape``; ``Sigma`` diagonal (``var``) or full (``cov``).

    ``alpha(t)`` and ``sigma(t)`` are callables on a ``(batch,)`` tensor of times (e.g. ``sde.alpha``,
    ``sde.sigma`` of a :class:`sdekit.LinearSDE`).
    """

    def __init__(self, mu, alpha, sigma, var=None, cov=None):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.shape = tuple(self.mu.shape)
        self.d = self.mu.numel()
        if (var is None) == (cov is None):
            raise ValueError("give var (diagonal) or cov (full)")
        self.var = None if var is None else torch.as_tensor(var, dtype=torch.float64).expand(self.shape).clone()
        self.cov = None if cov is None else torch.as_tensor(cov, dtype=torch.float64)
        self._eig = None if cov is None else torch.linalg.eigh(self.cov)
        self.alpha, self.sigma = alpha, sigma

    @classmethod
    def under(cls, sde, mu, var=None, cov=None):
        return cls(mu, sde.alpha, sde.sigma, var=var, cov=cov)

    # -- the marginal p_t -----------------------------------------------------------------
    def _coefs(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        a = self.alpha(t).reshape((-1,) + (1,) * (x.dim() - 1))
        s = self.sigma(t).reshape((-1,) + (1,) * (x.dim() - 1))
        return a, s

    def score(self, x, t):
        """The exact score of p_t at x (natural shape), t of shape (batch,)."""
        a, s = self._coefs(t, x)
        mu = self.mu.to(x)
        if self.var is not None:
            return -(x - a * mu) / (a * a * self.var.to(x) + s * s)
        # Sigma = Q diag(lam) Q^T, so cov_t = Q diag(a^2 lam + s^2) Q^T: invert in the eigenbasis
        n = x.shape[0]
        lam, Q = self._eig
        lam, Q = lam.to(x), Q.to(x)
        a, s = a.reshape(n, 1), s.reshape(n, 1)
        r = x.reshape(n, self.d) - a * mu.reshape(1, -1)
        return -(((r @ Q) / (a * a * lam + s * s)) @ Q.T).reshape(x.shape)

    def mean_cov(self, t):
        """Mean (d,) and covariance (d, d) of p_t, float64, flattened event."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        a, s = float(self.alpha(tt)[0]), float(self.sigma(tt)[0])
        base = torch.diag(self.var.flatten()) if self.var is not None else self.cov
        return a * self.mu.flatten(), a * a * base + s * s * torch.eye(self.d, dtype=torch.float64)

    def sample(self, t, n, generator, dtype=torch.float64):
        """``n`` exact samples of p_t, shape ``(n, *event)``."""
        mean, cov = self.mean_cov(t)
        L = torch.linalg.cholesky(cov)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return (mean + z @ L.T).reshape((n,) + self.shape).to(dtype)

    def flow_map(self, x_t, t, s):
        """The exact probability-flow map from time t to time s (diagonal Sigma): sdekit.validation's
        :meth:`GaussianData.flow_map` on the flattened event, with this helper's alpha(t) and sigma(t)."""
        from sdekit.validation import GaussianData
        assert self.var is not None, "the flow map is taken with a diagonal Sigma"
        flat = GaussianData(self.mu.flatten(), torch.diag(self.var.flatten()), sde=None, moments=self)
        return flat.flow_map(x_t.reshape(x_t.shape[0], -1), t, s).reshape(x_t.shape)


class Recorder:
    """Wraps a score function: counts calls and records the times and shapes it was called with."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0
        self.t_min = math.inf
        self.t_max = -math.inf
        self.t_seen = []        # t[:1] of each call (one time per call when the batch steps together)
        self.t_shared = True    # whether every call had one time for the whole batch
        self.t_devices = set()
        self.x_shapes = set()
        self.t_shapes = set()
        self.t_dtypes = set()
        self.x_dtypes = set()

    def __call__(self, x, t):
        self.calls += 1
        self.t_min = min(self.t_min, float(t.min()))
        self.t_max = max(self.t_max, float(t.max()))
        self.t_seen.append(t[:1].detach().clone())
        self.t_shared = self.t_shared and bool((t == t[0]).all())
        self.t_devices.add(t.device)
        self.x_shapes.add(tuple(x.shape))
        self.t_shapes.add(tuple(t.shape))
        self.t_dtypes.add(t.dtype)
        self.x_dtypes.add(x.dtype)
        return self.fn(x, t)


def mc_tolerance_mean(var, n, k=4.0):
    """k standard errors of a sample mean: k * sqrt(var / n)."""
    return k * math.sqrt(var / n)


def mc_tolerance_cov(var_i, var_j, cov_ij, n, k=4.0):
    """k standard errors of a Gaussian sample covariance: Var(S_ij) = (S_ii S_jj + S_ij^2) / (n - 1)."""
    return k * math.sqrt((var_i * var_j + cov_ij ** 2) / (n - 1))


def assert_gaussian_moments(samples, mean, cov, k=4.0, bias=0.0):
    """Check the sample mean and covariance of ``samples`` (n, d) against ``mean``/``cov`` within k SE.

    ``bias`` is an extra allowance for a known discretisation bias (an absolute amount, stated by the caller).
    """
    x = samples.reshape(samples.shape[0], -1).to(torch.float64)
    n, d = x.shape
    m_hat = x.mean(0)
    c_hat = torch.cov(x.T).reshape(d, d)
    for i in range(d):
        tol = mc_tolerance_mean(float(cov[i, i]), n, k) + bias
        assert abs(float(m_hat[i] - mean[i])) < tol, \
            f"mean[{i}] = {float(m_hat[i]):.5g}, expected {float(mean[i]):.5g} +- {tol:.3g}"
        for j in range(d):
            tol = mc_tolerance_cov(float(cov[i, i]), float(cov[j, j]), float(cov[i, j]), n, k) + bias
            assert abs(float(c_hat[i, j] - cov[i, j])) < tol, \
                f"cov[{i},{j}] = {float(c_hat[i, j]):.5g}, expected {float(cov[i, j]):.5g} +- {tol:.3g}"


@pytest.fixture
def gaussian():
    """The :class:`Gaussian` helper class."""
    return Gaussian


@pytest.fixture
def recorder():
    """The :class:`Recorder` wrapper class."""
    return Recorder


@pytest.fixture
def check_moments():
    """:func:`assert_gaussian_moments`."""
    return assert_gaussian_moments


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread, then restore the count (the session already runs on one by default;
    this keeps a test on one thread when ``SDEKIT_TEST_THREADS`` asks for more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def unet():
    """A tiny diffusers UNet2DModel (2 channels, 8 x 8), seeded: the diffusers adapter tests' network."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
