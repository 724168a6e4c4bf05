r"""Gaussian data under a linear SDE: every marginal, its score and the probability-flow map are exact.

For data :math:`x_0 \sim N(\mu, \Sigma)` and :math:`x_t \mid x_0 \sim N(\alpha_t x_0, \sigma_t^2 I)`,

.. math::

    p_t = N(\alpha_t\mu,\ C_t), \quad C_t = \alpha_t^2\Sigma + \sigma_t^2 I, \quad
    \nabla\log p_t(x) = -C_t^{-1}(x - \alpha_t\mu).

With :math:`\Sigma = U\operatorname{diag}(\lambda)U^\top` computed once,
:math:`C_t = U\operatorname{diag}(\alpha_t^2\lambda + \sigma_t^2)U^\top`, so every per-sample
inverse, log-determinant and square root is a diagonal operation in the eigenbasis.
"""

import math
from typing import Optional

import torch

from sdekit import ShapeError

from ._diffused import Diffused
from ._linalg import as_float64, spd_eigh
from ._moments import LinearMoments
from ._times import is_scalar_time

__all__ = ["GaussianData"]


class GaussianData(Diffused):
    r"""Data :math:`N(\mu, \Sigma)` in :math:`\mathbb{R}^d` (event shape ``(d,)``) diffused by a linear SDE.

    **Arguments**

    - ``mean``: :math:`\mu`, shape ``(d,)``.
    - ``cov``: :math:`\Sigma`, shape ``(d, d)``, symmetric positive definite.
    - ``sde``: an :class:`sdekit.LinearSDE`; its moments come from :class:`LinearMoments`
      (closed forms, or the moment ODEs when it has none).
    - ``moments``: a :class:`LinearMoments` to share (optional).

    The parameters are stored in float64 on the CPU and cast to the input's dtype and device on use.
    Times ``t`` are a number or a tensor of shape ``(batch,)`` (one time per sample).
    """

    _stored = ("mean", "eigvals", "eigvecs")

    def __init__(self, mean, cov, sde, moments: Optional[LinearMoments] = None):
        mean = as_float64(mean, "mean")
        cov = as_float64(cov, "cov")
        if mean.dim() != 1:
            raise ShapeError(f"mean must have shape (d,), got {tuple(mean.shape)}")
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ShapeError(f"cov must have shape ({d}, {d}) to match mean, got {tuple(cov.shape)}")
        self.eigvals, self.eigvecs, self.cov = spd_eigh(cov, "cov")
        self.mean = mean
        self.dim = d
        self.event_shape = (d,)
        self.sde = sde
        self.moments = LinearMoments(sde) if moments is None else moments
        self._cache = {}

    # -- public ---------------------------------------------------------------------------
    def marginal(self, t):
        r"""``(mean_t, cov_t)`` of :math:`p_t`: :math:`\alpha_t\mu` and :math:`\alpha_t^2\Sigma + \sigma_t^2 I`.

        A single time gives shapes ``(d,)`` and ``(d, d)``; ``t`` of shape ``(batch,)`` gives
        ``(batch, d)`` and ``(batch, d, d)``.  dtype and device follow ``t`` (float64 for a number).
        """
        dtype, device = self._dtype_device(t)
        batch = 1 if is_scalar_time(t) else t.shape[0]
        a, den = self._coefs(t, batch, dtype, device)
        mu, _, U = self._params(dtype, device)
        mean_t = a[:, None] * mu
        cov_t = (U * den[:, None, :]) @ U.T
        if is_scalar_time(t):
            return mean_t[0], cov_t[0]
        return mean_t, cov_t

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The exact score :math:`\nabla_x\log p_t(x) = -C_t^{-1}(x - \alpha_t\mu)`; usable as ``score_fn(x, t)``."""
        self._check_x(x)
        a, den = self._coefs(t, x.shape[0], x.dtype, x.device)
        mu, _, U = self._params(x.dtype, x.device)
        z = (x - a[:, None] * mu) @ U
        return -(z / den) @ U.T

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The exact log-density, shape ``(batch,)``:

        .. math::

            \log p_t(x) = -\tfrac12\big[d\log 2\pi + \log\det C_t + (x - \alpha_t\mu)^\top C_t^{-1}(x - \alpha_t\mu)\big].
        """
        self._check_x(x)
        a, den = self._coefs(t, x.shape[0], x.dtype, x.device)
        mu, _, U = self._params(x.dtype, x.device)
        z = (x - a[:, None] * mu) @ U
        return -0.5 * (self.dim * math.log(2 * math.pi) + den.log().sum(-1) + (z * z / den).sum(-1))

    def sample(self, n: int, t=0.0, generator: Optional[torch.Generator] = None,
               dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        r"""``n`` draws from :math:`p_t`:
        :math:`\alpha_t\mu + U\operatorname{diag}(\alpha_t^2\lambda + \sigma_t^2)^{1/2}\varepsilon`.

        ``t`` is a number or a tensor of shape ``(n,)``.  dtype and device default to ``t``'s
        (float64 on the CPU for a number).  The standard normals are drawn on the generator's device,
        so a seeded generator gives the same samples on every device.
        """
        n = int(n)
        tdtype, tdevice = self._dtype_device(t)
        dtype = tdtype if dtype is None else dtype
        device = tdevice if device is None else torch.device(device)
        eps = _normal((n, self.dim), generator, dtype, device)
        a, den = self._coefs(t, n, dtype, device)
        mu, _, U = self._params(dtype, device)
        return a[:, None] * mu + (eps * den.sqrt()) @ U.T

    def flow_map(self, x: torch.Tensor, t, s) -> torch.Tensor:
        r"""The exact probability-flow map from time ``t`` to time ``s`` (either direction).

        The probability-flow ODE of Gaussian data is linear and its solution is

        .. math::

            x_s = \alpha_s\mu + U\operatorname{diag}\Big(\sqrt{\tfrac{\alpha_s^2\lambda + \sigma_s^2}
                  {\alpha_t^2\lambda + \sigma_t^2}}\Big)U^\top (x_t - \alpha_t\mu),

        which pushes :math:`N(\alpha_t\mu, C_t)` onto :math:`N(\alpha_s\mu, C_s)`.  ``t`` and ``s`` are numbers
        or tensors of shape ``(batch,)``.
        """
        self._check_x(x)
        a_t, den_t = self._coefs(t, x.shape[0], x.dtype, x.device)
        a_s, den_s = self._coefs(s, x.shape[0], x.dtype, x.device)
        mu, _, U = self._params(x.dtype, x.device)
        z = (x - a_t[:, None] * mu) @ U
        return a_s[:, None] * mu + (z * (den_s / den_t).sqrt()) @ U.T

    def __repr__(self):
        return f"GaussianData(dim={self.dim}, sde={self.sde!r})"


def _normal(shape, generator, dtype, device):
    """Standard normals drawn on the generator's device (CPU by default), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)
