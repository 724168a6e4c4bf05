r"""Likelihoods through the probability-flow ODE: log-densities, bits per dimension, encoding and decoding.

- :func:`log_likelihood`: :math:`\log p(x) = \log\pi(x_T) + \int_\epsilon^T \nabla\!\cdot v\,dt`, exact or
  Hutchinson divergence, through :func:`sdekit.solve`; returns a :class:`Likelihood`.
- :func:`bits_per_dim`: dequantised 8-bit data, the offset :math:`\log_2(\mathrm{bins}/(hi-lo))` explicit;
  returns a :class:`BitsPerDim`.
- :func:`encode`, :func:`decode`: the flow map between data at ``eps`` and the latent at ``T``.
- :class:`AugmentedFlow`: the augmented ODE itself, a :class:`sdekit.Process`.
"""

from ._bpd import bits_per_dim, data_offset, dequantize_uniform
from ._codec import decode, encode
from ._divergence import AUTO_EXACT_DIM, DIVERGENCES, EXACT_MAX_DIM, divergence, draw_probes
from ._flow import AugmentedFlow
from ._loglik import LIKELIHOOD_EPS, log_likelihood
from ._result import BitsPerDim, Likelihood

__all__ = ["log_likelihood", "bits_per_dim", "encode", "decode", "AugmentedFlow", "Likelihood", "BitsPerDim",
           "dequantize_uniform", "data_offset", "divergence", "draw_probes", "DIVERGENCES", "EXACT_MAX_DIM",
           "AUTO_EXACT_DIM", "LIKELIHOOD_EPS"]
