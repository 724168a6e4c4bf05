r"""The probability-flow ODE with its log-density change: a :class:`~sdekit.Process` for any drift-only method.

For :math:`dx/dt = v(t, x) = f(t, x) - \tfrac12 g(t)^2\,s_\theta(x, t)` the instantaneous change of variables
(Chen et al. 2018; Song et al. 2021, appendix D.2) gives

.. math::

    \frac{d}{dt}\log p_t(x_t) = -\nabla\!\cdot v(t, x_t), \qquad
    \log p_{\epsilon}(x_\epsilon) = \log p_T(x_T) + \int_\epsilon^T \nabla\!\cdot v(t, x_t)\,dt.

The augmented state is ``y = [x.flatten(), Δ_1, ..., Δ_k]`` of shape ``(batch, D + k)``, with
:math:`d\Delta_j/dt` the divergence (exact: ``k = 1``) or its Hutchinson estimate with probe :math:`j`.
``drift(t, y)`` takes ``t`` of shape ``()`` or ``(batch,)`` (per-sample times), so torchdiffeq's methods,
scipy's and sdekit's drift-only Runge–Kutta methods integrate it through :func:`sdekit.solve`.
"""

import math
from typing import Optional, Sequence

import torch

from .._errors import ScoreFunctionError, ShapeError
from .._evaluator import finite_rows
from .._process import ProbabilityFlowODE
from ._divergence import divergence

__all__ = ["AugmentedFlow"]


class _Differentiable:
    """The score, checked to be differentiable in ``x``: a score computed under ``torch.no_grad()`` or
    detached would silently drop its part of the divergence."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.__name__ = getattr(score_fn, "__name__", type(score_fn).__name__)
        if hasattr(score_fn, "nfe_per_call"):
            self.nfe_per_call = score_fn.nfe_per_call
        self.bad = None   # the rows of the last call whose output was not finite (set to zeros), or None

    def __call__(self, x, t):
        out = self.score_fn(x, t)
        if isinstance(out, torch.Tensor) and x.requires_grad and torch.is_grad_enabled() and not out.requires_grad:
            raise ScoreFunctionError(
                "score_fn returned a tensor that autograd cannot trace back to x (torch.no_grad() or .detach() "
                "inside it?); the log-density needs the score's divergence: let autograd see the score")
        if isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype and out.dim() > 0:
            # a non-finite row is set to 0 here, before it enters the field: then no product of the field's
            # graph multiplies a NaN (the adjoint's backward pass differentiates the field in t); the flow
            # records the row as failed and freezes it
            ok = finite_rows(out.detach())
            self.bad = ~ok
            out = torch.where(ok.view((-1,) + (1,) * (out.dim() - 1)), out, torch.zeros((), dtype=out.dtype,
                                                                                       device=out.device))
        return out


class AugmentedFlow(ProbabilityFlowODE):
    r"""The probability-flow ODE with the log-density change, on ``y = [x.flatten(), Δ_1..Δ_k]``.

    .. math::

        \frac{dx}{dt} = v(t, x) = f - \tfrac12 g^2 s_\theta(x, t), \qquad
        \frac{d\Delta_j}{dt} = \begin{cases} \nabla\!\cdot v(t, x) & \text{exact } (k = 1)\\
        \varepsilon_j^\top\,\partial_x v(t, x)\,\varepsilon_j & \text{Hutchinson, probe } j \end{cases}

    Built by :func:`sdekit.log_likelihood`; usable directly with :func:`sdekit.solve` or torchdiffeq.

    **Arguments**

    - ``sde``, ``score_fn``: as for :func:`sdekit.probability_flow`.
    - ``data_shape``: the shape of one sample of ``x``, so ``D = prod(data_shape)``.
    - ``probes``: ``None`` (exact divergence) or Hutchinson probes of shape ``(k, batch, *data_shape)``,
      fixed for the solve.
    - ``weight``: the state holds :math:`w\Delta_j` (so that a per-sample RMS error norm gives the
      log-density its share; see ``error_norm`` of :func:`sdekit.log_likelihood`); :meth:`split` divides it out.

    Its default span is ``eps -> T`` (data to latent).  Under autograd (``grad=True``, the adjoint's
    backward pass) the divergence keeps its graph, so it can be differentiated with respect to the
    score network's parameters.
    """

    def __init__(self, sde, score_fn, *args, data_shape: Sequence[int], probes: Optional[torch.Tensor] = None,
                 weight: float = 1.0, **kw):
        score_fn = score_fn if isinstance(score_fn, _Differentiable) else _Differentiable(score_fn)
        super().__init__(sde, score_fn, *args, **kw)
        self.data_shape = tuple(int(n) for n in data_shape)
        self.dim = math.prod(self.data_shape)
        self.probes = probes
        self.columns = 1 if probes is None else probes.shape[0]
        self.weight = float(weight)

    def replace(self, **changes) -> "AugmentedFlow":
        """As :meth:`sdekit.Process.replace`, keeping ``data_shape``, ``probes`` and ``weight`` unless changed."""
        return super().replace(**{"data_shape": self.data_shape, "probes": self.probes, "weight": self.weight,
                                  **changes})

    def default_span(self):
        return self.sde.eps, self.sde.T

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented initial state ``[x.flatten(), 0, ..., 0]`` of shape ``(batch, D + k)``."""
        flat = x.reshape(x.shape[0], -1)
        return torch.cat([flat, flat.new_zeros(x.shape[0], self.columns)], 1)

    def split(self, y: torch.Tensor):
        """``(x, delta)``: the state in its natural shape and the log-density changes, shape ``(k, batch)``."""
        return y[:, :self.dim].reshape((y.shape[0],) + self.data_shape), y[:, self.dim:].T / self.weight

    def _natural_drift(self, t, y):
        batch = y.shape[0]
        if y.dim() != 2 or y.shape[1] != self.dim + self.columns:
            raise ShapeError(f"the augmented state must have shape (batch, {self.dim + self.columns}), "
                             f"got {tuple(y.shape)}; build it with AugmentedFlow.augment(x)")
        probes = self.probes
        if probes is not None and probes.shape[1] != batch:
            # sdekit's per-sample adaptive loop drops finished samples and tells the evaluator which rows of
            # the full batch are still running: each sample keeps its own probe
            rows = getattr(self.evaluator, "rows", None)
            if rows is None or rows.shape != (batch,):
                raise ShapeError(f"the flow holds probes for a batch of {probes.shape[1]}, got a batch of {batch}; "
                                 "draw the probes for this batch")
            probes = probes[:, rows.to(probes.device)]
        x = y[:, :self.dim].reshape((batch,) + self.data_shape)
        keep = torch.is_grad_enabled()   # a graph is wanted (grad=True, adjoint backward): keep the divergence's
        with torch.enable_grad():
            if not (keep and x.requires_grad):
                x = x.detach().requires_grad_(True)
            self.fn.bad = None
            v = super()._natural_drift(t, x)
            div = divergence(v, x, probes, create_graph=keep)
        if not keep:
            v, div = v.detach(), div.detach()
        if self.weight != 1.0:
            div = div * self.weight
        out = torch.cat([v.reshape(batch, self.dim), div.T.to(v.dtype)], 1)
        # A sample whose field went non-finite (the score, or only its divergence) is recorded as failed and
        # frozen: its derivative is 0, so a solver that refuses a non-finite state (torchdiffeq, scipy, the
        # adjoint) integrates the other samples to the end; log_likelihood gives the failed ones NaN.
        bad = ~finite_rows(out)
        if self.fn.bad is not None:
            bad = bad | self.fn.bad.to(bad.device)
        self.evaluator.mark_non_finite(bad, t)
        return torch.where(bad[:, None], torch.zeros((), dtype=out.dtype, device=out.device), out)
