r"""Likelihoods through the probability-flow ODE: log-densities, bits per dimension, encoding and decoding.

- :func:`log_likelihood`: :math:`\log p(x) = \log\pi(x_T) + \int_\epsilon^T \nabla\!\cdot v\,dt`, exact or
  Hutchinson divergence, through :func:`sdekit.solve`; returns a :class:`Likelihood`.
- :func:`bits_per_dim`: dequantised 8-bit data, the offset :math:`\log_2(\mathrm{bins}/(hi-lo))` explicit;
  returns a :class:`BitsPerDim`.
- :func:`encode`, :func:`decode`: the flow map between data at ``eps`` and the latent at ``T``.
- :class:`AugmentedFlow`: the augmented ODE itself, a :class:`sdekit.Process`.
"""

from ._bpd import bits_per_dim
from ._codec import decode, encode
from ._flow import AugmentedFlow
from ._loglik import log_likelihood
from ._result import BitsPerDim, Likelihood

__all__ = ["log_likelihood", "bits_per_dim", "encode", "decode", "AugmentedFlow", "Likelihood", "BitsPerDim"]
