r"""``log_likelihood``: per-sample log-densities through the probability-flow ODE, on the input's device.

.. math::

    \log p_\epsilon(x) = \log\pi(x_T) + \int_\epsilon^T \nabla\!\cdot v(t, x_t)\,dt, \qquad
    \frac{dx_t}{dt} = v(t, x_t) = f - \tfrac12 g^2 s_\theta(x_t, t), \quad x_\epsilon = x,

with :math:`\pi` the SDE's prior (Song et al. 2021, appendix D.2; Chen et al. 2018; Grathwohl et al. 2019).
The augmented ODE (:class:`AugmentedFlow`) is integrated by :func:`sdekit.solve` from ``eps`` to ``T``,
so NFE counting, non-finite checks, result codes and the device and dtype of the input come with it.  With
``throw=False`` a sample that did not reach ``T`` (it went non-finite, or hit ``max_steps``) has NaN in every
per-sample field of the result, never a number computed from where it stopped.
"""

import math
import numbers
from typing import Iterable, Optional

import torch

from .._brownian import check_entropy
from .._errors import ArgumentTypeError, InvalidParameterError, MethodArgumentError, ShapeError
from .._methods import lookup, methods
from .._process import ProbabilityFlowODE
from .._solution import Result
from .._solve import DEFAULT_ATOL, DEFAULT_RTOL, solve
from ._adjoint import adjoint_solve
from ._divergence import draw_probes, resolve_divergence
from ._flow import AugmentedFlow
from ._norm import plan_norm
from ._result import Likelihood

__all__ = ["log_likelihood", "LIKELIHOOD_EPS", "likelihood_eps", "check_flow", "check_data", "check_method",
           "check_span_options", "generator_from"]

#: The default start time of a likelihood (score_sde's): the data are taken at ``min(sde.eps, 1e-5)``.
LIKELIHOOD_EPS = 1e-5


def likelihood_eps(sde, eps=None) -> float:
    """The start time of the flow: ``eps``, or ``min(sde.eps, LIKELIHOOD_EPS)``; checked to lie in ``(0, T)``."""
    if eps is None:
        return min(sde.eps, LIKELIHOOD_EPS)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 < float(eps) < sde.T):
        raise InvalidParameterError(f"eps must be a number in (0, T={sde.T}), got {eps!r}")
    return float(eps)


def check_span_options(options, what):
    """``t_start``/``t_end`` are set by ``what`` (eps and T): a one-line error instead of a duplicate keyword."""
    given = sorted(k for k in ("t_start", "t_end") if k in options)
    if given:
        raise MethodArgumentError(f"{what} runs between eps and T and sets {' and '.join(given)} itself; "
                                  "give eps= to move the data end")


def check_flow(flow):
    if not isinstance(flow, ProbabilityFlowODE):
        raise ArgumentTypeError("likelihoods are computed through the probability-flow ODE: pass "
                                f"sdekit.probability_flow(sde, score_fn), got {type(flow).__name__}")


def check_data(x, what="x", quantised=False):
    """``x`` a tensor ``(batch, *event_shape)``, ``batch >= 1``; floating point unless ``quantised`` (levels allowed)."""
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{what} must be a torch.Tensor of shape (batch, *event_shape), got {type(x).__name__}")
    if not quantised and not x.is_floating_point():
        raise ArgumentTypeError(f"{what} is an integer tensor ({x.dtype}): quantised data need a dequantisation; "
                                "use sdekit.bits_per_dim(flow, x, data_range=..., dequantize='uniform')")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ShapeError(f"{what} must have shape (batch, *event_shape) with batch >= 1, got {tuple(x.shape)}")


def _drift_methods() -> str:
    """The ODE methods that integrate the drift; a short name shared by two backends is given in full as well."""
    ok = [m for m in methods(kind="ode") if m.needs == "drift"]
    names = {m.name for m in ok}
    shared = {n for n in names if sum(m.name == n for m in ok) > 1}
    names |= {m.qualified_name for m in ok if m.name in shared and lookup(m.name, "ode") is not m}
    return ", ".join(sorted(names, key=str.lower))


def check_method(method: str):
    """The method for the augmented ODE: an ODE method that integrates the drift (no sampler frame)."""
    m = lookup(method, "ode")
    if m.kind != "ode" or m.needs != "drift":
        how = (f"steps the probability flow in the {m.frame} frame from the model's {m.needs} prediction"
               if m.needs != "drift" else "is an SDE method (the likelihood runs the flow from eps up to T)")
        raise MethodArgumentError(f"{m.name} {how} and cannot carry the log-density; use an ODE method that "
                                  f"integrates the drift: {_drift_methods()}")
    return m


def generator_from(generator, seed) -> Optional[torch.Generator]:
    """The probes' generator: ``generator``, one seeded with ``seed`` (on the CPU), or ``None`` (torch's global)."""
    check_entropy(seed, generator)
    return generator if seed is None else torch.Generator().manual_seed(int(seed))


def log_likelihood(flow: ProbabilityFlowODE, x: torch.Tensor, method: str = "dopri5", *,
                   rtol: Optional[float] = None, atol: Optional[float] = None, divergence: str = "auto",
                   probes: int = 1, generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                   eps: Optional[float] = None, grad: bool = False, adjoint: bool = False,
                   adjoint_params: Optional[Iterable[torch.Tensor]] = None, throw: bool = True,
                   error_norm: str = "sample", **solve_options) -> Likelihood:
    r"""Per-sample :math:`\log p(x)` in nats under the model the probability-flow ODE defines.

    .. math::

        \log p_\epsilon(x) = \log\pi(x_T) + \int_\epsilon^T \nabla\!\cdot v(t, x_t)\,dt,\qquad
        v = f - \tfrac12 g^2 s_\theta,

    integrated from ``eps`` up to ``T`` with the state and its log-density change together.  With
    the exact score this is the data density at ``eps`` up to the mismatch between :math:`p_T` and the
    prior :math:`\pi` (the model density is :math:`\pi` pushed back through the flow).

    **Arguments**

    - ``flow``: ``sdekit.probability_flow(sde, score_fn)``; the SDE supplies ``prior_logp``.
    - ``x``: data, shape ``(batch, *event_shape)``, floating point; the result follows its device and dtype.
    - ``method``: any ODE method that integrates the drift (``dopri5``, ``bosh3``, ``rk4`` ... from
      torchdiffeq, sdekit's own drift-only Runge–Kutta methods, scipy's); the diffusion samplers (ddim,
      dpmpp_2m, unipc ...) step from a data prediction and cannot carry the log-density.
    - ``rtol``, ``atol``: the tolerances of an adaptive method (default ``1e-5``, score_sde's); fixed-step
      methods take ``steps=`` (or ``dt=``, ``grid=``) instead.
    - ``divergence``: ``"exact"`` (D backward passes per evaluation, D <= 256), ``"rademacher"``
      (= ``"hutchinson"``) or ``"gaussian"`` (Hutchinson–Skilling, one backward pass per probe), or ``"auto"``
      (exact for D <= 16, Rademacher above).
    - ``probes``: Hutchinson probes, drawn once for the solve and averaged; with ``probes >= 2`` each probe's
      integral is kept and ``Likelihood.stderr`` is their standard error.
    - ``generator``, ``seed``: where the probes come from (reproducible); neither: torch's global generator.
    - ``eps``: the start time (default ``min(sde.eps, 1e-5)``).
    - ``grad``: keep the autograd graph (differentiate through the solver's steps); ``adjoint``: compute
      gradients with torchdiffeq's adjoint method instead (memory independent of the steps), with respect to
      ``adjoint_params`` (default ``score_fn.parameters()`` when the score is a ``torch.nn.Module``).
    - ``throw``: raise :class:`sdekit.SolveError` when the solve fails (default), else return what was reached:
      the samples that did not reach ``T`` then have NaN log-likelihoods (``solution.per_sample.status`` says why).
    - ``error_norm``: ``"sample"`` (default): the tolerance holds for each sample's state and for its
      log-density apart (torchdiffeq's ``norm`` option; a weighted log-density column for other adaptive
      methods); ``"rms"``: torchdiffeq's RMS over the whole batch, as score_sde does.
    - other keywords (``steps``, ``max_steps``, ``options``, ...) go to :func:`sdekit.solve`.

    Returns a :class:`Likelihood` (``log_likelihood``, ``prior_logp``, ``delta_logp``, ``stderr``, ``z``,
    ``nfe``, ``steps``, ``solution``).
    """
    check_flow(flow)
    check_data(x)
    check_span_options(solve_options, "log_likelihood")
    if torch.is_inference_mode_enabled():
        raise InvalidParameterError("the divergence needs autograd, which torch.inference_mode() switches off: "
                                    "call log_likelihood outside it (under torch.no_grad() is fine)")
    m = check_method(method)
    if isinstance(probes, bool) or not isinstance(probes, numbers.Integral) or probes < 1:
        raise InvalidParameterError(f"probes must be a positive integer, got {probes!r}")
    dim = math.prod(x.shape[1:])
    kind = resolve_divergence(divergence, dim)
    if kind == "exact" and probes != 1:
        raise InvalidParameterError(f"probes={probes} applies to Hutchinson estimates, but the divergence is exact "
                                    f"here (D={dim}); pass divergence='rademacher' or 'gaussian' to use probes")
    sde = flow.sde
    t0 = likelihood_eps(sde, eps)
    gen = generator_from(generator, seed)
    probe_tensor = draw_probes(kind, int(probes), x, gen)
    weight, options = plan_norm(error_norm, m, dim, 1 if probe_tensor is None else int(probes),
                                solve_options.pop("options", None))
    aug = AugmentedFlow(sde, flow.fn, data_shape=x.shape[1:], probes=probe_tensor, weight=weight)
    y0 = aug.augment(x)
    if adjoint:
        sol = adjoint_solve(aug, y0, m, t0, sde.T, DEFAULT_RTOL if rtol is None else rtol,
                            DEFAULT_ATOL if atol is None else atol, adjoint_params, throw, options=options,
                            **solve_options)
    else:
        sol = solve(aug, y0, method, rtol=rtol, atol=atol, t_start=t0, t_end=sde.T, grad=grad, throw=throw,
                    options=options or None, **solve_options)
    flow.evaluator.nfe += sol.nfe
    z, delta = aug.split(sol.x)
    prior = _prior_logp(sde, z)
    lost = _not_integrated(sol)
    if lost is not None:   # throw=False after a failure: what was not integrated to T is NaN, never a number
        z = torch.where(lost.view((-1,) + (1,) * (z.dim() - 1)), math.nan, z)
        delta = torch.where(lost, math.nan, delta)
        prior = torch.where(lost, math.nan, prior)
    k = delta.shape[0]
    delta_mean = delta.mean(0)
    stderr = delta.std(0) / math.sqrt(k) if k > 1 else None
    return Likelihood(log_likelihood=prior + delta_mean, prior_logp=prior, delta_logp=delta_mean, stderr=stderr,
                      z=z, dim=dim, divergence=kind, probes=k, solution=sol)


def _not_integrated(sol):
    """The samples that did not reach ``T`` with finite values, a boolean ``(batch,)`` tensor (``None`` when the
    solution says nothing of them): each sample's status where the backend gives one, and those it flags failed."""
    lost = sol.failed
    status = None if sol.per_sample is None else sol.per_sample.status
    if status is not None:
        status = status.to(sol.x.device) != 0        # 0: it reached t_end (sdekit._solution.STATUS)
        lost = status if lost is None else lost.to(sol.x.device) | status
    elif sol.result is not Result.SUCCESS:
        lost = torch.ones(sol.x.shape[0], dtype=torch.bool, device=sol.x.device)
    return lost


def _prior_logp(sde, z):
    try:
        logp = sde.prior_logp(z)
    except NotImplementedError:
        raise ArgumentTypeError(f"{type(sde).__name__} defines no prior_logp(z); define it (the log-density of "
                                "the prior at T, one value per sample) to compute likelihoods") from None
    if not isinstance(logp, torch.Tensor) or logp.shape != (z.shape[0],):
        raise ShapeError(f"{type(sde).__name__}.prior_logp must return a tensor of shape ({z.shape[0]},), one value "
                         f"per sample, got {getattr(logp, 'shape', type(logp).__name__)}")
    return logp
