r"""sdekit.adapters: any trained network as a score function, and guidance that composes.

- :class:`Adapter`: a network with its parameterisation (``eps``, ``x0``, ``v``, ``score``, ``denoiser``,
  ``edm``, ``flow``) and time convention (``t``, ``scaled``, ``index``, ``sigma``, ``log_sigma``, ``c_noise``)
  as ``score_fn(x, t)``, with ``.sde``, ``.data`` (:math:`\hat x_0`) and ``.noise`` (:math:`\hat\varepsilon`).
- :class:`DiscreteVPSDE`: a DDPM table of :math:`\bar\alpha_n` as a :class:`sdekit.LinearSDE`;
  :class:`RectifiedFlowSDE`: the flow-matching interpolation :math:`x_t = (1 - t)x_0 + t\varepsilon`.
- :func:`from_diffusers`, :func:`from_k_diffusion`: one call for those libraries' models;
  :class:`DiffusersScheduler`: sdekit's samplers as a diffusers scheduler, inside diffusers' own pipelines
  (imported on first use: it needs diffusers).
- :func:`classifier_guidance`, :func:`classifier_free_guidance`, :class:`Imputation`: conditional sampling.
- :func:`load_checkpoint`: safetensors or weights-only ``torch.load``; pickles that would run code are refused.
"""

from ._adapter import Adapter
from ._diffusers import DiffusersAdapter, from_diffusers
from ._discrete import DiscreteVPSDE
from ._flow import RectifiedFlowSDE
from ._kdiffusion import from_k_diffusion
from ._loading import UnsafeCheckpointError, load_checkpoint, load_weights
from ._guidance import (ClassifierFreeGuidance, ClassifierGuidance, Imputation, classifier_free_guidance,
                        classifier_guidance)
from ._parameterisation import PARAMETERISATIONS, Coefficients, Parameterisation, parameterisation
from ._time import TIME_CONVENTIONS, TimeConvention, time_convention

__all__ = [
    "Adapter", "DiscreteVPSDE", "RectifiedFlowSDE", "PARAMETERISATIONS", "Parameterisation", "Coefficients", "parameterisation",
    "TIME_CONVENTIONS", "TimeConvention", "time_convention", "ClassifierGuidance", "ClassifierFreeGuidance",
    "Imputation", "classifier_guidance", "classifier_free_guidance", "DiffusersAdapter", "from_diffusers",
    "from_k_diffusion", "UnsafeCheckpointError", "load_checkpoint", "load_weights", "DiffusersScheduler",
]


def __getattr__(name):
    if name == "DiffusersScheduler":     # imports diffusers, an optional extra: only when asked for
        from ._scheduler import DiffusersScheduler
        return DiffusersScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
