r"""sdekit.validation: exact test problems and honest metrics for samplers of score-based SDEs.

- :class:`LinearMoments`: :math:`\alpha(t)`, :math:`\sigma(t)` of any :class:`sdekit.LinearSDE`, from closed
  forms or from the moment ODEs; :func:`moment_residual` checks closed forms against those ODEs.
- :class:`GaussianData`: :math:`N(\mu, \Sigma)` data; exact marginals, scores, log-densities, samples and
  the probability-flow map in closed form.
- :class:`GaussianMixture`: mixtures with unequal weights and full covariances; exact marginals, scores,
  log-densities and component posteriors (:meth:`GaussianMixture.default_2d` is the 2-D test problem).
- Metrics with standard errors or Monte Carlo floors: :func:`mean_cov_error`, :func:`gaussian_w2`,
  :func:`fitted_gaussian_w2`, :func:`sliced_wasserstein`, :func:`energy_distance`, :func:`monte_carlo_floor`,
  :func:`mode_masses`; each result has ``within(k)``.
- SDEs with exact strong solutions given the Brownian path (:class:`GeometricBrownianMotion`,
  :class:`AdditiveSDE`, :class:`ArctanSDE`, :class:`SinhSDE`; :func:`exact_sdes` lists the standard
  problems); ``python -m sdekit.validation.orders`` measures every method's order on them.
- Convergence studies: :func:`strong_order` (SDE methods on the exact-solution SDEs), :func:`ode_order`
  (ODE methods on the Gaussian probability flow), :func:`fit_order` (the slope of log error on log step
  for a study of your own); each study returns an :class:`OrderResult`.
- :func:`check_sde`: a user's SDE against its own moment equations, its prior, and the exact-score
  reverse SDE and probability flow.
- ``python -m sdekit.validation.demo``: the main job, a solver comparison on the default mixture.

Example::

    import torch, sdekit
    from sdekit.validation import GaussianMixture, mode_masses, sliced_wasserstein, monte_carlo_floor
    sde = sdekit.VESDE()
    mix = GaussianMixture.default_2d(sde)
    x_T = mix.sample(4000, t=sde.T, generator=torch.Generator().manual_seed(1))
    x = sdekit.probability_flow(sde, mix.score).solve(x_T, method="dopri5").x
    mode_masses(x, mix).within(4)
"""

from ._check import CheckRow, SDECheckError, SDECheckReport, check_sde
from ._gaussian import GaussianData
from ._metrics import (Distance, Floor, MeanCovError, ModeMasses, energy_distance, fitted_gaussian_w2, gaussian_w2,
                       mean_cov_error, mode_masses, monte_carlo_floor, sliced_wasserstein)
from ._mixture import GaussianMixture
from ._moments import LinearMoments, MomentResidual, has_closed_form, moment_residual

__all__ = [
    "check_sde", "SDECheckReport", "SDECheckError", "CheckRow",
    "LinearMoments", "MomentResidual", "moment_residual", "has_closed_form",
    "GaussianData", "GaussianMixture",
    "MeanCovError", "Floor", "Distance", "ModeMasses",
    "mean_cov_error", "gaussian_w2", "fitted_gaussian_w2", "sliced_wasserstein", "energy_distance",
    "monte_carlo_floor", "mode_masses",
    "ExactSDE", "GeometricBrownianMotion", "AdditiveSDE", "ArctanSDE", "SinhSDE", "exact_sdes",
    "OrderResult", "fit_order", "strong_order", "ode_order",
]
from ._exact_sdes import AdditiveSDE, ArctanSDE, ExactSDE, GeometricBrownianMotion, SinhSDE, exact_sdes  # noqa: E402
from ._orders import OrderResult, fit_order, ode_order, strong_order  # noqa: E402
