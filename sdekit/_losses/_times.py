r"""Times for denoising score matching: the weightings :math:`\lambda(t)` and the laws :math:`t` is drawn from.

For a linear SDE with :math:`x_t \mid x_0 \sim N(\alpha_t x_0, \sigma_t^2 I)` the variance obeys
:math:`\tfrac{d}{dt}\sigma_t^2 = 2f(t)\sigma_t^2 + g(t)^2`, so the log-SNR :math:`\lambda_t = \log\alpha_t -
\log\sigma_t` has :math:`\dot\lambda_t = -g(t)^2 / (2\sigma_t^2)`.  The importance law of Song et al. (2021b),
:math:`q(t) \propto g(t)^2/\sigma_t^2` on :math:`[\epsilon, T]`, is therefore *uniform in log-SNR*: its CDF is
:math:`(\lambda_\epsilon - \lambda_t)/(\lambda_\epsilon - \lambda_T)`, its normaliser
:math:`Z = \int_\epsilon^T g^2/\sigma^2\,dt = 2(\lambda_\epsilon - \lambda_T)`, and its inverse CDF is the SDE's
own :meth:`sdekit.LinearSDE.t_of_log_snr` (closed form for the built-in SDEs, float64 bisection for any other).
"""

import math
import numbers

import torch

from .._errors import ArgumentTypeError, InvalidParameterError, ShapeError
from .._sde import LinearSDE

__all__ = ["WEIGHTINGS", "T_SAMPLERS", "check_linear", "interval", "coefficients", "weighting_values",
           "sample_times", "given_times", "likelihood_normaliser"]

#: The named weightings :math:`\lambda(t)` (k-diffusion's ``"soft-min-snr"`` is accepted for ``"soft_min_snr"``,
#: ``"edm"`` for ``"karras"``; its ``"snr"`` is ``"variance"``).
WEIGHTINGS = ("variance", "likelihood", "karras", "soft_min_snr")
_WEIGHTING_ALIASES = {"edm": "karras", "soft-min-snr": "soft_min_snr", "snr": "variance"}
#: The laws of ``t``.
T_SAMPLERS = ("uniform", "importance")


def check_linear(sde):
    """``sde`` if it is a :class:`sdekit.LinearSDE`, else a one-line error."""
    if not isinstance(sde, LinearSDE):
        raise ArgumentTypeError(f"sde must be an sdekit.LinearSDE (denoising score matching needs its Gaussian "
                                f"transition kernel), got {type(sde).__name__}")
    return sde


def interval(sde, eps):
    """``(eps, T)`` as floats, ``eps`` defaulting to ``sde.eps``; refuses ``eps`` outside ``(0, T)``."""
    if eps is None:
        eps = sde.eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 < float(eps) < sde.T):
        raise InvalidParameterError(f"eps must be a number with 0 < eps < T = {sde.T}, got {eps!r}")
    return float(eps), float(sde.T)


def coefficients(sde, t64):
    r"""``(log_alpha, sigma)`` of :math:`x_t \mid x_0` at float64 times for a :class:`sdekit.LinearSDE` (checked by
    :func:`check_linear`): the closed forms, or the numerical moments (:meth:`sdekit.LinearSDE.log_alpha_sigma`)."""
    log_alpha, sigma = sde.log_alpha_sigma(t64)
    return log_alpha.to(torch.float64), sigma.to(torch.float64)


def _log_snr_ends(sde, eps, T):
    ends = torch.tensor([eps, T], dtype=torch.float64)
    log_alpha, sigma = coefficients(sde, ends)
    lam = log_alpha - torch.log(sigma)
    lam_eps, lam_T = float(lam[0]), float(lam[1])
    if not (math.isfinite(lam_eps) and math.isfinite(lam_T) and lam_eps > lam_T):
        raise InvalidParameterError(
            f"importance sampling needs a log-SNR that falls from t = eps to T; {type(sde).__name__} has "
            f"lambda(eps) = {lam_eps:.6g}, lambda(T) = {lam_T:.6g}; use t_sampler='uniform'")
    return lam_eps, lam_T


def likelihood_normaliser(sde, eps=None) -> float:
    r""":math:`Z = \int_\epsilon^T g^2/\sigma^2\,dt = 2(\lambda_\epsilon - \lambda_T)` (``eps`` defaults to
    ``sde.eps``): the normaliser of the importance law, and :math:`1/d` times the integral of
    :math:`\mathbb E\,g^2\|\nabla\log p_{0t}\|^2`."""
    eps, T = interval(check_linear(sde), eps)
    lam_eps, lam_T = _log_snr_ends(sde, eps, T)
    return 2.0 * (lam_eps - lam_T)


def weighting_values(sde, weighting, t64, sigma_data=0.5):
    r""":math:`\lambda(t)` of the score loss at float64 times ``t64`` of shape ``(batch,)``; refuses negative,
    non-finite or misshapen values.

    - ``"variance"``: :math:`\sigma_t^2` (k-diffusion's ``"snr"``);
    - ``"likelihood"``: :math:`g(t)^2`;
    - ``"karras"`` (``"edm"``): EDM's
      :math:`\lambda(\tilde\sigma) = (\tilde\sigma^2 + \sigma_d^2)/(\tilde\sigma\sigma_d)^2` on the data loss
      in the VE frame (:math:`\tilde\sigma = \sigma/\alpha`), i.e. unit weight on EDM's :math:`F`:
      :math:`\alpha^2\tilde\sigma^2(\tilde\sigma^2 + \sigma_d^2)/\sigma_d^2` on the score loss;
    - ``"soft_min_snr"`` (k-diffusion's ``"soft-min-snr"``, Crowson et al. 2024): weight
      :math:`(\tilde\sigma\sigma_d)^2/(\tilde\sigma^2 + \sigma_d^2)^2` on :math:`F`, i.e.
      :math:`\sigma_t^2\,\tilde\sigma^2/(\tilde\sigma^2 + \sigma_d^2)` on the score loss;
    - a function: ``weighting(t64)``.

    (A weight :math:`w` on EDM's :math:`F`-loss is :math:`w\,\alpha^2\tilde\sigma^4/c_{out}^2` on the score loss,
    since :math:`\|F - F^*\|^2 = \|\hat x_0 - x_0\|^2/c_{out}^2` and :math:`\|\hat x_0 - x_0\|^2 =
    \alpha^2\tilde\sigma^4\|s - \nabla\log p_{0t}\|^2`.)
    """
    if isinstance(weighting, str):
        name = _WEIGHTING_ALIASES.get(weighting, weighting)
        if name == "likelihood":
            return sde.diffusion_coef(t64).to(torch.float64) ** 2
        if name in WEIGHTINGS:
            log_alpha, sigma = coefficients(sde, t64)
            if name == "variance":
                return sigma ** 2
            s2, d2 = (sigma * torch.exp(-log_alpha)) ** 2, float(sigma_data) ** 2      # VE-frame sigma~^2
            if name == "karras":
                return torch.exp(2 * log_alpha) * s2 * (s2 + d2) / d2
            return sigma ** 2 * s2 / (s2 + d2)
        raise InvalidParameterError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)} or a "
                                    f"function lambda(t) of the times (batch,) returning (batch,) weights >= 0")
    if not callable(weighting):
        raise ArgumentTypeError(f"weighting must be 'variance', 'likelihood' or callable lambda(t), "
                                f"got {type(weighting).__name__}")
    w = torch.as_tensor(weighting(t64), dtype=torch.float64, device=t64.device)
    if w.dim() == 0:
        w = w.expand(t64.shape)
    if w.shape != t64.shape:
        raise ShapeError(f"weighting(t) returned shape {tuple(w.shape)} for t of shape {tuple(t64.shape)}; "
                         f"return one weight per time")
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise InvalidParameterError(f"weighting(t) returned {float(w[i])!r} at t = {float(t64[i]):.6g}; "
                                    f"a weighting must be finite and >= 0 on [eps, T]")
    return w


def sample_times(sde, n, t_sampler, eps, T, generator, device):
    r"""``n`` times in :math:`[\epsilon, T]` (float64, on ``device``) and the factor that turns an average
    under their law into the average under :math:`U[\epsilon, T]`: :math:`1/((T - \epsilon)\,q(t))`.

    ``"uniform"``: :math:`t = \epsilon + (T - \epsilon)u`, factor 1.  ``"importance"``: :math:`\lambda` uniform on
    :math:`[\lambda_T, \lambda_\epsilon]`, :math:`t = t(\lambda)`, so :math:`q = g^2/(Z\sigma^2)` and the factor is
    :math:`Z\sigma_t^2 / ((T - \epsilon) g(t)^2)`.
    """
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=gen_device).to(device)
    if t_sampler == "uniform":
        return eps + (T - eps) * u, torch.ones_like(u)
    if t_sampler != "importance":
        raise InvalidParameterError(f"unknown t_sampler {t_sampler!r}; use 'uniform' or 'importance' "
                                    f"(t drawn with density proportional to g(t)^2 / sigma(t)^2)")
    lam_eps, lam_T = _log_snr_ends(sde, eps, T)
    lam = lam_eps + (lam_T - lam_eps) * u
    t = sde.t_of_log_snr(lam).to(device=device, dtype=torch.float64).clamp(eps, T)
    g2 = sde.diffusion_coef(t).to(torch.float64) ** 2
    sigma = coefficients(sde, t)[1]
    factor = 2.0 * (lam_eps - lam_T) * sigma ** 2 / ((T - eps) * g2)
    if not bool(torch.isfinite(factor).all()):
        raise InvalidParameterError(f"importance sampling needs g(t) > 0 on [eps, T]; {type(sde).__name__} has "
                                    f"g = 0 somewhere there: use t_sampler='uniform'")
    return t, factor


def given_times(t, n, eps, T, device):
    """The caller's times as float64 ``(n,)``, after checking that every one lies in ``[eps, T]``."""
    if not isinstance(t, torch.Tensor):
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise ArgumentTypeError(f"t must be a number or a tensor of shape ({n},), got {type(t).__name__}")
        t = torch.tensor(float(t), dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ShapeError(f"t must be a number or have shape ({n},), got {tuple(t.shape)}")
    t64 = t.detach().to(device=device, dtype=torch.float64)
    slack = 4 * torch.finfo(t.dtype if t.is_floating_point() else torch.float64).eps
    lo, hi = float(t64.min()), float(t64.max())
    if not (lo >= eps * (1 - slack) and hi <= T * (1 + slack)):   # also refuses NaN
        raise InvalidParameterError(f"times must lie in [eps, T] = [{eps:.6g}, {T:.6g}], got [{lo:.6g}, {hi:.6g}]; "
                                    f"the score is singular at t = 0 and undefined past T")
    return t64.clamp(eps, T)
