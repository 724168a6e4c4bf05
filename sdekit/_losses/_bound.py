r"""The likelihood bound of Song et al. (2021b), Theorem 3, by Monte Carlo with its standard error."""

import math
from dataclasses import dataclass

import torch

from .._errors import ArgumentTypeError, InvalidParameterError
from .._sde import LinearSDE
from ._dsm import check_data, score_matching_loss
from ._times import check_linear, coefficients, interval

__all__ = ["NLLBound", "nll_bound"]


@dataclass(frozen=True)
class NLLBound:
    r"""Per-sample estimates of the bound, in nats.

    - ``values``: ``(batch,)``, the bound for each data point (the mean over its ``draws``);
    - ``se``: ``(batch,)``, each value's Monte Carlo standard error (over the draws);
    - ``prior``: ``(batch,)``, :math:`\mathbb E[-\log\pi(x_T) \mid x_0]`;
    - ``score_term``: ``(batch,)``, :math:`\tfrac12\int_\epsilon^T \mathbb E\,g^2\|s_\theta - \nabla\log p_{0t}\|^2 dt`;
    - ``constant``: :math:`-d\log(\sigma_T/\sigma_\epsilon)`, the exact value of the remaining terms;
    - ``mean``, ``mean_se``: the average over the batch and its standard error (data and Monte Carlo
      variation together), an estimate of the cross-entropy bound :math:`\mathbb E_{p_0}[\,\cdot\,]`;
    - ``dim``: :math:`d`, the numbers per sample; ``bits_per_dim``: ``mean / (d ln 2)``.
    """

    values: torch.Tensor
    se: torch.Tensor
    prior: torch.Tensor
    score_term: torch.Tensor
    constant: float
    mean: float
    mean_se: float
    dim: int

    @property
    def bits_per_dim(self) -> float:
        return self.mean / (self.dim * math.log(2))

    def __repr__(self):
        return (f"NLLBound(mean={self.mean:.6g} ± {self.mean_se:.2g} nats, {self.bits_per_dim:.4g} bits/dim, "
                f"batch={self.values.shape[0]})")


def _prior_term(sde, x0, alpha_T, sigma_T, draws, generator):
    """:math:`\\mathbb E[-\\log\\pi(\\alpha_T x_0 + \\sigma_T z)]`: exact for sdekit's Gaussian prior, else by
    Monte Carlo."""
    n, d = x0.shape[0], x0[0].numel()
    if type(sde).prior_logp is LinearSDE.prior_logp:          # pi = N(0, prior_std^2 I): in closed form
        p2 = float(sde.prior_std) ** 2
        sq = x0.reshape(n, -1).to(torch.float64).pow(2).sum(1)
        value = 0.5 * d * math.log(2 * math.pi * p2) + (alpha_T ** 2 * sq + d * sigma_T ** 2) / (2 * p2)
        return value.to(x0.dtype), torch.zeros_like(value, dtype=x0.dtype)
    gen_device = generator.device if generator is not None else x0.device
    vals = []
    for _ in range(draws):
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gen_device).to(x0.device)
        vals.append(-sde.prior_logp(alpha_T * x0 + sigma_T * z))
    v = torch.stack(vals)
    return v.mean(0), (v.std(0) / math.sqrt(draws) if draws > 1 else torch.zeros_like(v[0]))


def nll_bound(sde, score_fn, x0, draws: int = 16, t_sampler: str = "importance", generator=None,
              eps=None) -> NLLBound:
    r"""Song et al. (2021b), Theorem 3: a per-sample upper bound on :math:`-\log p_\theta`, by Monte Carlo.

    For the reverse SDE driven by ``score_fn`` :math:`= s_\theta`, started from the prior :math:`\pi` at
    :math:`T` and stopped at :math:`\epsilon`, with density :math:`p_\theta`:

    .. math::

        \mathcal L(x_0) = \mathbb E[-\log\pi(x_T) \mid x_0]
        + \tfrac12\int_\epsilon^T \mathbb E\big[g^2\|s_\theta(x_t, t) - \nabla\log p_{0t}(x_t \mid x_0)\|^2
        - g^2\|\nabla\log p_{0t}(x_t \mid x_0)\|^2 - 2\nabla\!\cdot\! f(x_t, t)\big]\,dt
        \;\ge\; \mathbb E\big[-\log p_\theta(x_\epsilon) \,\big|\, x_0\big],

    :math:`x_t \mid x_0 \sim N(\alpha_t x_0, \sigma_t^2 I)`.  For a linear SDE the last two terms are exact:
    :math:`\mathbb E\,g^2\|\nabla\log p_{0t}\|^2 = d\,g^2/\sigma_t^2 = -2d\,\dot\lambda_t` and
    :math:`\nabla\!\cdot\!f = d f(t) = d\,\tfrac{d}{dt}\log\alpha_t`, so together they give
    :math:`-d\log(\sigma_T/\sigma_\epsilon)`.  The first integral is the likelihood-weighted denoising score
    matching loss times :math:`(T-\epsilon)/2` (:func:`score_matching_loss`, importance-sampled by default,
    which makes each draw :math:`(\lambda_\epsilon-\lambda_T)\|\sigma_t s_\theta + \varepsilon\|^2`).  The prior
    term is exact for sdekit's Gaussian priors, else a Monte Carlo average.

    **The t → 0 singularity.**  :math:`\nabla\log p_{0t}` grows like :math:`1/\sigma_t`, so the integrals stop at
    ``eps`` (default ``sde.eps``).  The bound is then exact, not approximate, for the model stopped at
    :math:`\epsilon`: averaged over the data it bounds the cross-entropy
    :math:`\mathbb E_{p_\epsilon}[-\log p_\theta]` and equals :math:`H(p_\epsilon) + \mathrm{KL}(p_T\|\pi) +
    \tfrac12\int_\epsilon^T g^2\,\mathbb E_{p_t}\|s_\theta - \nabla\log p_t\|^2dt` (Song et al. 2021b, Theorem 1),
    so with the exact score it is :math:`H(p_\epsilon) + \mathrm{KL}(p_T\|\pi)`.  Per sample it bounds
    :math:`-\log p_\theta` at :math:`x_\epsilon = \alpha_\epsilon x_0 + \sigma_\epsilon\varepsilon`, averaged over
    :math:`\varepsilon`, which tends to :math:`-\log p_\theta(x_0)` as :math:`\epsilon \to 0`; for a density of
    :math:`x_0` itself add the decoder :math:`x_0 = (x_\epsilon + \sigma_\epsilon z)/\alpha_\epsilon`, whose
    bound is ``values`` :math:`- d\log\alpha_\epsilon` (Jensen).

    **Arguments**

    - ``sde``: an :class:`sdekit.LinearSDE`; ``score_fn(x, t)``: the model's score (an adapter works).
    - ``x0``: data, ``(batch, *event_shape)``.
    - ``draws``: Monte Carlo draws of :math:`(t, \varepsilon)` per data point (at least 2, for ``se``).
    - ``t_sampler``: ``"importance"`` (default) or ``"uniform"``; ``generator``: a ``torch.Generator``.
    - ``eps``: the lower end of the time integral (default ``sde.eps``).

    Runs under the caller's grad mode.  Returns an :class:`NLLBound` (nats).
    """
    check_linear(sde)
    check_data(x0)
    if not callable(score_fn):
        raise ArgumentTypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise InvalidParameterError(f"draws must be an integer >= 2 (the standard error needs two), got {draws!r}")
    eps, T = interval(sde, eps)
    d = x0[0].numel()
    ends = torch.tensor([eps, T], dtype=torch.float64)
    log_alpha, sigma = coefficients(sde, ends)
    alpha_T, sigma_eps, sigma_T = math.exp(float(log_alpha[1])), float(sigma[0]), float(sigma[1])
    constant = -d * (math.log(sigma_T) - math.log(sigma_eps))
    prior, prior_se = _prior_term(sde, x0, alpha_T, sigma_T, draws, generator)
    terms = torch.stack([score_matching_loss(sde, score_fn, x0, weighting="likelihood", t_sampler=t_sampler,
                                             reduce="none", generator=generator, eps=eps)
                         for _ in range(draws)]) * (0.5 * (T - eps))
    score_term = terms.mean(0)
    values = prior + score_term + constant
    se = torch.sqrt(terms.detach().var(0) / draws + prior_se.detach() ** 2)
    v = values.detach().to(torch.float64)
    mean_se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float(se[0])
    return NLLBound(values, se, prior, score_term, constant, float(v.mean()), mean_se, d)
