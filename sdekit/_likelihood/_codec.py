r"""Encoding and decoding: the probability-flow map between data at ``eps`` and the latent at ``T``.

:math:`\mathrm{encode}(x) = \Phi_{\epsilon\to T}(x)` and :math:`\mathrm{decode}(z) = \Phi_{T\to\epsilon}(z)`, with
:math:`\Phi` the flow of :math:`dx/dt = f - \tfrac12 g^2 s_\theta(x, t)` (Song et al. 2021, section 4.3): a
deterministic, invertible code; a round trip returns the input up to the solver's error.
"""

from typing import Optional

import torch

from .._solution import Solution
from .._solve import solve
from ._loglik import check_data, check_flow, check_span_options, likelihood_eps

__all__ = ["encode", "decode"]


def encode(flow, x: torch.Tensor, method: str = "dopri5", *, eps: Optional[float] = None, **solve_options) -> Solution:
    r"""The latent :math:`z = \Phi_{\epsilon\to T}(x)` of data ``x``: a :class:`sdekit.Solution` whose ``x`` is ``z``.

    **Arguments**

    - ``flow``: ``sdekit.probability_flow(sde, score_fn)``.
    - ``x``: data at ``eps``, shape ``(batch, *event_shape)``.
    - ``method``: any ODE method (default ``dopri5``); ``eps``: the data time (default ``min(sde.eps, 1e-5)``,
      as for :func:`sdekit.log_likelihood`).
    - other keywords (``rtol``, ``atol``, ``steps``, ...) go to :func:`sdekit.solve`.
    """
    check_flow(flow)
    check_data(x)
    check_span_options(solve_options, "encode")
    return solve(flow, x, method, t_start=likelihood_eps(flow.sde, eps), t_end=flow.sde.T, **solve_options)


def decode(flow, z: torch.Tensor, method: str = "dopri5", *, eps: Optional[float] = None, **solve_options) -> Solution:
    r"""The data :math:`x = \Phi_{T\to\epsilon}(z)` of a latent ``z``: a :class:`sdekit.Solution` holding it as ``x``.

    Arguments as for :func:`encode`; ``decode(flow, encode(flow, x).x).x`` returns ``x`` within the solver's error.
    """
    check_flow(flow)
    check_data(z, "z")
    check_span_options(solve_options, "decode")
    return solve(flow, z, method, t_start=flow.sde.T, t_end=likelihood_eps(flow.sde, eps), **solve_options)
