r"""A Gaussian mixture under a linear SDE: exact marginals, scores and component posteriors.

For data :math:`\sum_k w_k N(\mu_k, \Sigma_k)` every marginal is again a mixture with the same weights,

.. math::

    p_t = \sum_k w_k N(\alpha_t\mu_k, C_{k,t}), \quad C_{k,t} = \alpha_t^2\Sigma_k + \sigma_t^2 I,

its score is the posterior-weighted mean of the component scores,
:math:`\nabla\log p_t(x) = \sum_k \pi_k(x, t)\,[-C_{k,t}^{-1}(x - \alpha_t\mu_k)]`, and
:math:`\pi_k(x, t) = p(k \mid x_t = x)` is an exact noise-conditional classifier.
"""

import math
from typing import Optional

import torch

from sdekit import InvalidParameterError, ShapeError

from ._diffused import Diffused
from ._gaussian import GaussianData, _normal
from ._linalg import as_float64, spd_eigh
from ._moments import LinearMoments
from ._times import is_scalar_time

__all__ = ["GaussianMixture"]


class GaussianMixture(Diffused):
    r"""Data :math:`\sum_{k=1}^K w_k N(\mu_k, \Sigma_k)` in :math:`\mathbb{R}^d` diffused by a linear SDE.

    **Arguments**

    - ``weights``: :math:`w`, shape ``(K,)``, positive, summing to 1.
    - ``means``: :math:`\mu_k`, shape ``(K, d)``.
    - ``covs``: :math:`\Sigma_k`, shape ``(K, d, d)``, each symmetric positive definite.
    - ``sde``: an :class:`sdekit.LinearSDE`; ``moments``: a :class:`LinearMoments` to share (optional).

    Parameters are stored in float64 on the CPU and cast to the input's dtype and device on use.
    Each :math:`\Sigma_k = U_k\operatorname{diag}(\lambda_k)U_k^\top` is decomposed once.
    """

    _stored = ("log_weights", "means", "eigvals", "eigvecs")

    def __init__(self, weights, means, covs, sde, moments: Optional[LinearMoments] = None):
        weights = as_float64(weights, "weights")
        means = as_float64(means, "means")
        covs = as_float64(covs, "covs")
        if weights.dim() != 1 or weights.shape[0] < 1:
            raise ShapeError(f"weights must have shape (K,), got {tuple(weights.shape)}")
        K = weights.shape[0]
        if means.dim() != 2 or means.shape[0] != K:
            raise ShapeError(f"means must have shape ({K}, d) to match weights, got {tuple(means.shape)}")
        d = means.shape[1]
        if covs.shape != (K, d, d):
            raise ShapeError(f"covs must have shape ({K}, {d}, {d}) to match means, got {tuple(covs.shape)}")
        if not (weights > 0).all():
            raise InvalidParameterError("weights must be positive; drop empty components")
        if abs(float(weights.sum()) - 1.0) > 1e-9:
            raise InvalidParameterError(f"weights must sum to 1, got {float(weights.sum()):.12g}; pass w / w.sum()")
        self.eigvals, self.eigvecs, self.covs = spd_eigh(covs, "covs")
        self.weights, self.means = weights / weights.sum(), means
        self.log_weights = self.weights.log()
        self.n_components, self.dim, self.event_shape = K, d, (d,)
        self.sde = sde
        self.moments = LinearMoments(sde) if moments is None else moments
        self._cache = {}

    @classmethod
    def default_2d(cls, sde, moments: Optional[LinearMoments] = None) -> "GaussianMixture":
        r"""The 2-D test problem: three well-separated modes with unequal weights and correlated covariances.

        Weights ``(0.5, 0.3, 0.2)``; means ``(-3, -1)``, ``(2.5, 2.5)``, ``(2, -3)``; standard deviations
        0.3 to 0.6 with correlations of either sign, so the modes are more than 7 standard deviations apart.
        """
        weights = [0.5, 0.3, 0.2]
        means = [[-3.0, -1.0], [2.5, 2.5], [2.0, -3.0]]
        covs = [[[0.36, 0.12], [0.12, 0.25]],
                [[0.16, -0.06], [-0.06, 0.20]],
                [[0.09, 0.03], [0.03, 0.30]]]
        return cls(weights, means, covs, sde, moments=moments)

    # -- helpers --------------------------------------------------------------------------
    def _terms(self, x, t):
        """Component log-densities (batch, K) and whitened residuals: ``z / den`` in each eigenbasis (batch, K, d)."""
        self._check_x(x)
        a, den = self._coefs(t, x.shape[0], x.dtype, x.device)
        _, mu, _, U = self._params(x.dtype, x.device)
        diff = x[:, None, :] - a[:, None, None] * mu                 # (batch, K, d)
        z = torch.einsum("bkd,kde->bke", diff, U)                   # U_k^T (x - a mu_k)
        logp = -0.5 * (self.dim * math.log(2 * math.pi) + den.log().sum(-1) + (z * z / den).sum(-1))
        return logp, z / den

    # -- public ---------------------------------------------------------------------------
    @property
    def components(self):
        """The components as :class:`GaussianData` sharing this mixture's SDE and moments."""
        if "components" not in self._cache:
            self._cache["components"] = tuple(GaussianData(self.means[k], self.covs[k], self.sde, moments=self.moments)
                                              for k in range(self.n_components))
        return self._cache["components"]

    def marginal(self, t):
        r"""``(weights, means_t, covs_t)``: :math:`w_k`, :math:`\alpha_t\mu_k` and :math:`C_{k,t}`.

        A single time gives shapes ``(K,)``, ``(K, d)``, ``(K, d, d)``; ``t`` of shape ``(batch,)`` adds a
        leading batch dimension to the means and covariances.  dtype and device follow ``t``.
        """
        dtype, device = self._dtype_device(t)
        batch = 1 if is_scalar_time(t) else t.shape[0]
        a, den = self._coefs(t, batch, dtype, device)
        logw, mu, _, U = self._params(dtype, device)
        means_t = a[:, None, None] * mu
        covs_t = (U * den[:, :, None, :]) @ U.transpose(-1, -2)
        if is_scalar_time(t):
            means_t, covs_t = means_t[0], covs_t[0]
        return logw.exp(), means_t, covs_t

    def moments_at(self, t):
        r"""Overall mean and covariance of :math:`p_t` at a single time:
        :math:`m = \sum_k w_k m_k`, :math:`C = \sum_k w_k (C_k + m_k m_k^\top) - m m^\top`."""
        if not is_scalar_time(t):
            raise ShapeError("moments_at takes a single time; call it once per time")
        w, m_k, C_k = self.marginal(t)
        m = w @ m_k
        C = torch.einsum("k,kij->ij", w, C_k + m_k[:, :, None] * m_k[:, None, :]) - m[:, None] * m[None, :]
        return m, C

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The exact log-density, shape ``(batch,)``:
        :math:`\log p_t(x) = \operatorname{logsumexp}_k[\log w_k + \log N(x; \alpha_t\mu_k, C_{k,t})]`."""
        logp, _ = self._terms(x, t)
        return torch.logsumexp(logp + self._params(x.dtype, x.device)[0], dim=-1)

    def log_posterior(self, x: torch.Tensor, t) -> torch.Tensor:
        r""":math:`\log\pi_k(x, t) = \log w_k + \log N_k(x) - \log p_t(x)`, shape ``(batch, K)``."""
        logp, _ = self._terms(x, t)
        return torch.log_softmax(logp + self._params(x.dtype, x.device)[0], dim=-1)

    def posterior(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The component posterior :math:`\pi_k(x, t) = p(k \mid x_t = x)`, shape ``(batch, K)``; rows sum to 1.

        The exact noise-conditional classifier of the mixture's components (for classifier guidance,
        and to read mode masses off samples).
        """
        return self.log_posterior(x, t).exp()

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The exact score :math:`\sum_k \pi_k(x, t)\,[-C_{k,t}^{-1}(x - \alpha_t\mu_k)]`.

        Usable as ``score_fn(x, t)``: ``x`` of shape ``(batch, d)``, ``t`` a number or shape ``(batch,)``.
        """
        logp, r = self._terms(x, t)
        _, _, _, U = self._params(x.dtype, x.device)
        post = torch.softmax(logp + self._params(x.dtype, x.device)[0], dim=-1)    # (batch, K)
        return -torch.einsum("bk,kde,bke->bd", post, U, r)

    def sample(self, n: int, t=0.0, generator: Optional[torch.Generator] = None, return_components: bool = False,
               dtype: Optional[torch.dtype] = None, device=None):
        r"""``n`` draws from :math:`p_t`: a component :math:`k \sim w`, then
        :math:`\alpha_t\mu_k + U_k\operatorname{diag}(\alpha_t^2\lambda_k + \sigma_t^2)^{1/2}\varepsilon`.

        ``t`` is a number or a tensor of shape ``(n,)``; dtype and device default to ``t``'s (float64 on
        the CPU for a number).  Components, then normals, are drawn from ``generator`` on its device.
        With ``return_components``, returns ``(x, k)`` with ``k`` the component indices (long, shape ``(n,)``).
        """
        n = int(n)
        tdtype, tdevice = self._dtype_device(t)
        dtype = tdtype if dtype is None else dtype
        device = tdevice if device is None else torch.device(device)
        gen_device = generator.device if generator is not None else device
        k = torch.multinomial(self.weights.to(gen_device), n, replacement=True, generator=generator).to(device)
        eps = _normal((n, self.dim), generator, dtype, device)
        a, den = self._coefs(t, n, dtype, device)
        _, mu, _, U = self._params(dtype, device)
        rows = torch.arange(n, device=device)
        x = a[:, None] * mu[k] + torch.einsum("bde,be->bd", U[k], eps * den[rows, k].sqrt())
        return (x, k) if return_components else x

    def __repr__(self):
        return f"GaussianMixture(K={self.n_components}, dim={self.dim}, sde={self.sde!r})"
