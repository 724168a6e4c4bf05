r"""k-diffusion-style denoisers: ``model(x, sigma, **inputs)`` returning :math:`D(x; \sigma) \approx \hat x_0`.

k-diffusion's models (and EDM's preconditioned ``D``) live in the VE frame, :math:`x = x_0 + \sigma\varepsilon`.
:func:`from_k_diffusion` pairs one with its SDE: a :class:`sdekit.VESDE` from ``model.sigma_min`` and
``model.sigma_max`` (k-diffusion's continuous models, score_sde's convention :math:`\sigma(t) = \sigma_{min}
(\sigma_{max}/\sigma_{min})^t`), or, for a wrapper around a DDPM network with a ``sigmas`` table
(``DiscreteEpsDDPMDenoiser``, ``DiscreteVDDPMDenoiser``), the :class:`~sdekit.adapters.DiscreteVPSDE` of
:math:`\bar\alpha = 1/(1 + \sigma^2)`.  On a VP SDE the model is called on :math:`x/\alpha` at
:math:`\sigma/\alpha`, so any LinearSDE works.
"""

import torch

from sdekit import InvalidParameterError, VESDE

from ._adapter import Adapter
from ._discrete import DiscreteVPSDE

__all__ = ["from_k_diffusion"]


def from_k_diffusion(model, sde=None, inputs=None) -> Adapter:
    """An adapter for a k-diffusion denoiser ``model(x, sigma, **inputs) -> D(x; sigma)``.

    **Arguments**

    - ``model``: the denoiser.
    - ``sde``: the :class:`sdekit.LinearSDE` to sample; by default from the model's ``sigmas`` table or its
      ``sigma_min`` and ``sigma_max``.
    - ``inputs``: keyword inputs of every call (``cond=``, ``class_labels=``).
    """
    if sde is None:
        sigmas = getattr(model, "sigmas", None)
        lo, hi = getattr(model, "sigma_min", None), getattr(model, "sigma_max", None)
        if isinstance(sigmas, torch.Tensor):
            s = sigmas.detach().to(device="cpu", dtype=torch.float64)
            sde = DiscreteVPSDE(1 / (1 + s * s))
        elif lo is not None and hi is not None:
            sde = VESDE(sigma_min=float(lo), sigma_max=float(hi))
        else:
            raise InvalidParameterError("the model has neither a sigmas table nor sigma_min and sigma_max: "
                                        "pass sde= (e.g. sdekit.VESDE(sigma_min=0.002, sigma_max=80))")
    return Adapter(model, sde, "denoiser", "sigma", inputs=inputs)
