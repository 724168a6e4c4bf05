r"""What Gaussian data and Gaussian mixtures share once diffused by a linear SDE.

Their parameters are kept in float64 on the CPU and cast once per (dtype, device); each covariance
:math:`\Sigma = U\operatorname{diag}(\lambda)U^\top` is decomposed once, so the marginal covariance
:math:`C_t = \alpha_t^2\Sigma + \sigma_t^2 I` has eigenvalues :math:`\alpha_t^2\lambda + \sigma_t^2` in the same basis.
"""

import torch

from sdekit import ShapeError

from ._times import batch_times


class Diffused:
    """Base of :class:`GaussianData` and :class:`GaussianMixture`: cached casts, input checks, per-sample moments.

    A subclass sets ``_stored`` (the names of its float64 parameters, in the order :meth:`_params`
    returns them, one of them ``"eigvals"``), ``dim``, ``moments`` and ``_cache = {}``.
    """

    _stored = ()

    def _params(self, dtype, device):
        """The stored parameters cast to ``dtype`` and ``device`` (cached)."""
        key = (dtype, str(device))
        if key not in self._cache:
            self._cache[key] = tuple(getattr(self, name).to(dtype=dtype, device=device) for name in self._stored)
        return self._cache[key]

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"x must be a tensor of shape (batch, {self.dim}), got {shape}")

    def _coefs(self, t, batch, dtype, device):
        r"""Per-sample :math:`\alpha_t` ``(batch,)`` and the eigenvalues :math:`\alpha_t^2\lambda + \sigma_t^2` of
        every marginal covariance, shape ``(batch, *eigvals.shape)``."""
        tb = batch_times(t, batch, dtype, device)
        a, s = self.moments.alpha(tb), self.moments.sigma(tb)
        lam = self._params(dtype, device)[self._stored.index("eigvals")]
        shape = (-1,) + (1,) * lam.dim()
        return a, a.reshape(shape) ** 2 * lam + s.reshape(shape) ** 2

    @staticmethod
    def _dtype_device(t):
        """The dtype and device a bare time implies: the tensor's own, float64 on the CPU for a number."""
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.dtype, t.device
        return torch.float64, torch.device("cpu")
