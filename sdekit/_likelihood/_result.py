"""What :func:`sdekit.log_likelihood` and :func:`sdekit.bits_per_dim` return."""

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._solution import Solution

__all__ = ["Likelihood", "BitsPerDim"]


@dataclass
class Likelihood:
    r"""Per-sample log-likelihoods from the probability-flow ODE, with the solve that made them.

    :math:`\log p(x) = \log\pi(z) + \Delta`, :math:`z` the latent at ``T`` and
    :math:`\Delta = \int_\epsilon^T \nabla\!\cdot v(t, x_t)\,dt` (averaged over the Hutchinson probes).

    **Fields**

    - ``log_likelihood``: :math:`\log p(x)` in nats, shape ``(batch,)``; NaN for a sample that was not
      integrated to ``T`` (it went non-finite or stopped early; ``throw=False``), as are its ``prior_logp``,
      ``delta_logp``, ``stderr`` and ``z``.
    - ``prior_logp``: :math:`\log\pi(z)`; ``delta_logp``: :math:`\Delta`; both ``(batch,)``.
    - ``stderr``: with ``probes >= 2``, the standard error of the Hutchinson estimate of each sample
      (the spread of the probes' integrals over :math:`\sqrt{k}`), shape ``(batch,)``; ``None`` otherwise.
    - ``z``: the latent :math:`x_T`, shaped like the input.
    - ``dim``: :math:`D`, the dimensions of one sample; ``divergence``: ``"exact"``, ``"rademacher"`` or
      ``"gaussian"``; ``probes``: how many probes (1 for exact).
    - ``solution``: the :class:`sdekit.Solution` of the augmented ODE (state ``(batch, D + k)``).
    - ``nfe``, ``steps``, ``rejected``, ``wall_time``, ``method``, ``result``: the solution's.
      One evaluation is one forward pass of the score and, for the divergence, one backward pass per
      probe (``D`` for exact).
    """

    log_likelihood: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    stderr: Optional[torch.Tensor]
    z: torch.Tensor
    dim: int
    divergence: str
    probes: int
    solution: Solution

    nfe = property(lambda self: self.solution.nfe)
    steps = property(lambda self: self.solution.steps)
    rejected = property(lambda self: self.solution.rejected)
    wall_time = property(lambda self: self.solution.wall_time)
    method = property(lambda self: self.solution.method)
    result = property(lambda self: self.solution.result)

    @property
    def nll_per_dim(self) -> torch.Tensor:
        r"""The negative log-likelihood in nats per dimension, :math:`-\log p(x)/D`, shape ``(batch,)``."""
        return -self.log_likelihood / self.dim

    def __repr__(self):
        mean = float(self.log_likelihood.detach().float().mean())
        return (f"Likelihood(batch={self.log_likelihood.shape[0]}, mean log p={mean:.6g} nats, dim={self.dim}, "
                f"divergence={self.divergence!r}, probes={self.probes}, nfe={self.nfe}, method={self.method!r})")


@dataclass
class BitsPerDim:
    r"""Bits per dimension of quantised data, with the dequantised input and its likelihood.

    .. math::

        \mathrm{bpd} = \frac{-\log p(x) + \log q(u \mid n)}{D\ln 2} + \log_2\frac{\mathrm{bins}}{hi - lo}

    **Fields**

    - ``bpd``: shape ``(batch,)``; average it over the data set.
    - ``offset``: :math:`\log_2(\mathrm{bins}/(hi - lo))` in bits per dimension (8 for 256 bins on
      ``[0, 1]``, 7 on ``[-1, 1]``).
    - ``log_q``: :math:`\log q(u \mid n)` of the dequantisation, ``(batch,)`` (zeros for uniform).
    - ``x``: the continuous model input :math:`x = lo + (hi - lo)(n + u)/\mathrm{bins}`.
    - ``likelihood``: the :class:`Likelihood` of ``x``.
    """

    bpd: torch.Tensor
    offset: float
    log_q: torch.Tensor
    x: torch.Tensor
    likelihood: Likelihood

    nfe = property(lambda self: self.likelihood.nfe)

    def __repr__(self):
        mean = float(self.bpd.detach().float().mean())
        return (f"BitsPerDim(batch={self.bpd.shape[0]}, mean={mean:.6g} bits/dim, offset={self.offset:g}, "
                f"nfe={self.nfe})")


LN2 = math.log(2.0)
