r"""sdekit.losses: training objectives for score models of any :class:`sdekit.LinearSDE`.

- :func:`score_matching_loss`: denoising score matching :math:`\mathbb E_t\,\lambda(t)\,\|s_\theta(x_t, t) -
  \nabla\log p_{0t}(x_t \mid x_0)\|^2` through the SDE's transition kernel, with the ``"variance"``
  (:math:`\sigma_t^2`), ``"likelihood"`` (:math:`g^2`), k-diffusion's ``"karras"`` and ``"soft_min_snr"`` or a
  custom weighting, uniform or importance-sampled times, and the model in any adapter parameterisation (written in
  its natural form: the ε-loss for ε, ...).
- :func:`nll_bound`: the upper bound on :math:`-\log p_\theta` of Song et al. (2021b), Theorem 3, per sample,
  with its Monte Carlo standard error (:class:`NLLBound`).

Example::

    import torch, sdekit
    from sdekit.adapters import Adapter
    sde = sdekit.VPSDE()
    model = Adapter(net, sde, "eps")
    loss = sdekit.losses.score_matching_loss(sde, model, x0, weighting="likelihood", t_sampler="importance")
    loss.backward()
    sdekit.losses.nll_bound(sde, model, x0_test).mean      # nats per sample
"""

from ._losses._bound import NLLBound, nll_bound
from ._losses._dsm import score_matching_loss
from ._losses._times import T_SAMPLERS, WEIGHTINGS, likelihood_normaliser

__all__ = ["score_matching_loss", "nll_bound", "NLLBound", "WEIGHTINGS", "T_SAMPLERS", "likelihood_normaliser"]
